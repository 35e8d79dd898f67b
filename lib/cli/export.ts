// llama-adapter export --adapter FILE --format peft|official --out DIR|FILE
import * as fs from 'fs';
import * as nodePath from 'path';
import { Adapter } from '../model/adapter';
import { readSafetensorsHeader } from '../model/safetensors';
import { LlamaConfig } from '../model/config';
import { parseFlags, requireString, UsageError } from './args';
import { checkOutputDir } from '../output';
import { looksLikeZip } from '../model/pth/zip';

export const usage = `Usage: llama-adapter export --adapter FILE --format peft|official --out DIR|FILE

  --format peft      writes --out DIR in PEFT's AdaptionPrompt format (adapter_config.json +
                     adapter_model.safetensors). PEFT applies one gate per layer, so only adapters
                     trained with --gate scalar export exactly; per-head gates are refused.
  --format official  writes --out FILE (a .pth) in the official LLaMA-Adapter release layout, as
                     torch.save writes it: adapter_query.weight (L*K, C) and
                     layers.N.attention.gate (1, H, 1, 1) (or (1, 1, 1, 1) for a scalar gate), f32,
                     so that the official scripts' torch.load + load_state_dict read it.`;

/** The base model's shape as recorded in an adapter file's metadata (export needs no model). */
function modelOf(file: string): LlamaConfig {
  if (looksLikeZip(file))
    throw new Error(`${file} is an official .pth adapter, which records no model shape: pass our .safetensors adapter (e.g. one saved by train)`);
  const meta = readSafetensorsHeader(file).metadata;
  const num = (k: string) => {
    const v = Number(meta[k]);
    if (!Number.isInteger(v) || v < 1) throw new Error(`${file}: its metadata lacks ${k}; was it written by llama-adapter?`);
    return v;
  };
  return {
    dim: num('dim'),
    hiddenDim: 1,
    nLayers: num('n_layers'),
    nHeads: num('n_heads'),
    nKvHeads: num('n_kv_heads'),
    vocabSize: num('vocab_size'),
    maxSeqLen: 1,
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeLayout: 'interleaved',
    tiedEmbeddings: true,
  };
}

export async function run(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const { values } = parseFlags(argv, { adapter: { type: 'string' }, format: { type: 'string' }, out: { type: 'string' } }, usage);
  if (values.help) {
    out.write(usage + '\n');
    return;
  }
  const file = requireString(values, 'adapter', usage);
  const dir = requireString(values, 'out', usage);
  const format = requireString(values, 'format', usage);
  if (format !== 'peft' && format !== 'official') throw new UsageError(`--format must be peft or official, got '${format}'`);
  if (!fs.existsSync(file)) throw new Error(`adapter file ${file} does not exist`);
  // before any work: a folder for peft; for official a file whose folder exists and is writable
  if (format === 'peft') checkOutputDir(dir, '--out');
  else {
    if (fs.existsSync(dir) && fs.statSync(dir).isDirectory())
      throw new Error(`--out ${dir} is a folder: --format official writes one .pth file (e.g. --out ${nodePath.join(dir, 'adapter.pth')})`);
    checkOutputDir(nodePath.dirname(nodePath.resolve(dir)), `--out's folder`);
  }
  const adapter = Adapter.load(file, modelOf(file), 'cpu'); // only read back and rewritten: no device needed
  try {
    if (format === 'peft') await adapter.exportPeft(dir);
    else await adapter.exportOfficial(dir);
    out.write(`${dir}\n`);
  } finally {
    adapter.dispose();
  }
}
