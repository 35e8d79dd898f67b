// llama-adapter export --adapter FILE --format peft --out DIR
import * as fs from 'fs';
import { Adapter } from '../model/adapter';
import { readSafetensorsHeader } from '../model/safetensors';
import { LlamaConfig } from '../model/config';
import { parseFlags, requireString, UsageError } from './args';
import { checkOutputDir } from '../output';

export const usage = `Usage: llama-adapter export --adapter FILE --format peft --out DIR

Writes the adapter in PEFT's AdaptionPrompt format (adapter_config.json + adapter_model.safetensors).
PEFT applies one gate per layer, so only adapters trained with --gate scalar export exactly;
per-head gates are refused.`;

/** The base model's shape as recorded in an adapter file's metadata (export needs no model). */
function modelOf(file: string): LlamaConfig {
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
  if (format !== 'peft') throw new UsageError(`--format must be peft, got '${format}'`);
  if (!fs.existsSync(file)) throw new Error(`adapter file ${file} does not exist`);
  checkOutputDir(dir, '--out'); // before any work
  const adapter = Adapter.load(file, modelOf(file), 'cpu'); // only read back and rewritten: no device needed
  try {
    await adapter.exportPeft(dir);
    out.write(`${dir}\n`);
  } finally {
    adapter.dispose();
  }
}
