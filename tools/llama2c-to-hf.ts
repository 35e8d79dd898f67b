// Converts a llama2.c checkpoint (.bin v0 or v1) to a Hugging Face LlamaForCausalLM folder:
// config.json + model.safetensors, or N shards + model.safetensors.index.json.
//
//   node dist/tools/llama2c-to-hf.js <model.bin> <outDir> [--shards N] [--force]
//
// q/k rows get the standard Meta -> HF permutation per head (rows 2i -> i, 2i+1 -> i + d/2), so
// rotate-half RoPE on the result equals interleaved RoPE on the original. Tensors are read and
// written one at a time, so at most one tensor of the model is in memory.
import * as fs from 'fs';
import * as nodePath from 'path';
import { Llama2cHeader, Llama2cSlot, readLlama2cHeader } from '../lib/model/llama2c';
import { LlamaConfig, findTokenizer, headSize } from '../lib/model/config';
import { SafetensorsTensor, writeSafetensors } from '../lib/model/safetensors';
import { HF_CONFIG, HF_INDEX, HF_SINGLE } from '../lib/model/hf';

export interface ConvertOptions {
  /** number of safetensors shards; 1 (default) writes model.safetensors */
  shards?: number;
  /** replace an existing conversion in outDir */
  overwrite?: boolean;
}

export interface ConvertResult {
  outDir: string;
  files: string[];
  config: LlamaConfig;
}

/** Per head of d rows: row 2i -> i, row 2i+1 -> i + d/2 (w is (heads*d, cols), row-major). */
export function permuteRowsForHf(w: Float32Array, heads: number, d: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  const half = d / 2;
  for (let h = 0; h < heads; h++) {
    const base = h * d;
    for (let i = 0; i < half; i++) {
      out.set(w.subarray((base + 2 * i) * cols, (base + 2 * i + 1) * cols), (base + i) * cols);
      out.set(w.subarray((base + 2 * i + 1) * cols, (base + 2 * i + 2) * cols), (base + half + i) * cols);
    }
  }
  return out;
}

function shardName(i: number, n: number): string {
  const p = (k: number) => String(k).padStart(5, '0');
  return `model-${p(i + 1)}-of-${p(n)}.safetensors`;
}

function hfConfigJson(c: LlamaConfig): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: c.dim,
    intermediate_size: c.hiddenDim,
    num_attention_heads: c.nHeads,
    num_key_value_heads: c.nKvHeads,
    num_hidden_layers: c.nLayers,
    head_dim: headSize(c),
    hidden_act: 'silu',
    rms_norm_eps: c.normEps,
    vocab_size: c.vocabSize,
    max_position_embeddings: c.maxSeqLen,
    rope_theta: c.ropeTheta,
    rope_scaling: null,
    attention_bias: false,
    mlp_bias: false,
    tie_word_embeddings: c.tiedEmbeddings,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: 'float32',
  };
}

/** Writes `text` beside `file` and renames it into place. */
function writeFileAtomic(file: string, text: string | Buffer): void {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

/** The HF tensors in HF order, each reading (and permuting) its llama2.c slot when written. */
function hfTensors(h: Llama2cHeader, fd: number): SafetensorsTensor[] {
  const c = h.config;
  const d = headSize(c);
  const slot = new Map<string, Llama2cSlot>(h.slots.map((s) => [s.name, s]));
  const read = (s: Llama2cSlot): Float32Array => {
    const n = s.shape.reduce((a, b) => a * b, 1);
    const out = new Float32Array(n);
    const buf = Buffer.from(out.buffer, out.byteOffset, out.byteLength);
    let got = 0;
    while (got < buf.length) {
      const r = fs.readSync(fd, buf, got, buf.length - got, s.byteOffset + got);
      if (r === 0) throw new Error(`${h.path}: unexpected end of file reading ${s.name}`);
      got += r;
    }
    return out;
  };
  const t = (name: string, src: string, permuteHeads?: number): SafetensorsTensor => {
    const s = slot.get(src);
    if (!s) throw new Error(`internal: no llama2.c slot ${src}`);
    return {
      name,
      dtype: 'F32',
      shape: s.shape,
      data: () => (permuteHeads ? permuteRowsForHf(read(s), permuteHeads, d, s.shape[1]) : read(s)),
    };
  };
  const out: SafetensorsTensor[] = [t('model.embed_tokens.weight', 'embedding')];
  for (let l = 0; l < c.nLayers; l++) {
    const p = `model.layers.${l}.`;
    const s = `layers.${l}.`;
    out.push(
      t(p + 'input_layernorm.weight', s + 'attnNorm'),
      t(p + 'mlp.down_proj.weight', s + 'w2'),
      t(p + 'mlp.gate_proj.weight', s + 'w1'),
      t(p + 'mlp.up_proj.weight', s + 'w3'),
      t(p + 'post_attention_layernorm.weight', s + 'ffnNorm'),
      t(p + 'self_attn.k_proj.weight', s + 'wk', c.nKvHeads),
      t(p + 'self_attn.o_proj.weight', s + 'wo'),
      t(p + 'self_attn.q_proj.weight', s + 'wq', c.nHeads),
      t(p + 'self_attn.v_proj.weight', s + 'wv'),
    );
  }
  out.push(t('model.norm.weight', 'finalNorm'));
  if (!c.tiedEmbeddings) out.push(t('lm_head.weight', 'classifier'));
  return out;
}

const bytesOf = (t: SafetensorsTensor) => 4 * t.shape.reduce((a, b) => a * b, 1);

export function convertLlama2cToHf(src: string, outDir: string, opts: ConvertOptions = {}): ConvertResult {
  const nShards = opts.shards ?? 1;
  const h = readLlama2cHeader(src); // validates the header and the exact file size
  const fd = fs.openSync(src, 'r');
  try {
    const tensors = hfTensors(h, fd);
    if (!Number.isInteger(nShards) || nShards < 1 || nShards > tensors.length)
      throw new Error(`shards must be an integer from 1 to ${tensors.length}, got ${nShards}`);

    fs.mkdirSync(outDir, { recursive: true });
    const ours = (f: string) => f === HF_CONFIG || f === HF_SINGLE || f === HF_INDEX || /^model-\d+-of-\d+\.safetensors$/.test(f);
    const stale = fs.readdirSync(outDir).filter(ours);
    if (stale.length && !opts.overwrite)
      throw new Error(`${outDir} already holds a model (${stale.join(', ')}); pass overwrite (--force) to replace it`);
    // config.json goes first and comes back last, so a half-finished folder never looks complete.
    for (const f of stale) fs.rmSync(nodePath.join(outDir, f), { force: true });

    const files: string[] = [];
    const metadata = { format: 'pt' };
    if (nShards === 1) {
      writeSafetensors(nodePath.join(outDir, HF_SINGLE), tensors, metadata);
      files.push(HF_SINGLE);
    } else {
      // Contiguous groups of about equal size, each at least one tensor.
      const total = tensors.reduce((a, t) => a + bytesOf(t), 0);
      const groups: SafetensorsTensor[][] = Array.from({ length: nShards }, () => []);
      let acc = 0;
      tensors.forEach((t, i) => {
        const left = tensors.length - i;
        let g = Math.min(nShards - 1, Math.floor((acc * nShards) / total));
        const firstEmpty = groups.findIndex((x) => x.length === 0);
        if (firstEmpty >= 0 && nShards - firstEmpty >= left) g = firstEmpty; // keep every shard non-empty
        groups[g].push(t);
        acc += bytesOf(t);
      });
      const weightMap: Record<string, string> = {};
      groups.forEach((g, i) => {
        const name = shardName(i, nShards);
        writeSafetensors(nodePath.join(outDir, name), g, metadata);
        for (const t of g) weightMap[t.name] = name;
        files.push(name);
      });
      writeFileAtomic(nodePath.join(outDir, HF_INDEX), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n');
      files.push(HF_INDEX);
    }
    const tok = findTokenizer(nodePath.dirname(src), h.config.vocabSize);
    if (tok) {
      fs.copyFileSync(tok, nodePath.join(outDir, nodePath.basename(tok)));
      files.push(nodePath.basename(tok));
    }
    writeFileAtomic(nodePath.join(outDir, HF_CONFIG), JSON.stringify(hfConfigJson(h.config), null, 2) + '\n');
    files.push(HF_CONFIG);
    return { outDir, files, config: h.config };
  } finally {
    fs.closeSync(fd);
  }
}

function main(argv: string[]): number {
  const usage = 'usage: llama2c-to-hf <model.bin> <outDir> [--shards N] [--force]';
  const pos: string[] = [];
  const opts: ConvertOptions = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--shards') {
      const v = argv[++i];
      if (v === undefined || !/^\d+$/.test(v)) {
        console.error(`--shards needs a positive integer\n${usage}`);
        return 2;
      }
      opts.shards = Number(v);
    } else if (a === '--force') opts.overwrite = true;
    else if (a === '-h' || a === '--help') {
      console.log(usage);
      return 0;
    } else if (a.startsWith('-')) {
      console.error(`unknown option ${a}\n${usage}`);
      return 2;
    } else pos.push(a);
  }
  if (pos.length !== 2) {
    console.error(usage);
    return 2;
  }
  try {
    const r = convertLlama2cToHf(pos[0], pos[1], opts);
    console.log(`wrote ${r.files.join(', ')} to ${r.outDir}`);
    return 0;
  } catch (e) {
    console.error(`llama2c-to-hf: ${(e as Error).message}`);
    return 1;
  }
}

if (require.main === module) process.exitCode = main(process.argv.slice(2));
