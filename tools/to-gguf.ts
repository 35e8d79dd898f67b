// Converts one of our checkpoints (a llama2.c .bin or a Hugging Face folder) and its tokenizer to a
// llama-architecture GGUF v3 file, the matrices quantized to one type:
//
//   node dist/tools/to-gguf.js <checkpoint> <out.gguf> [--type Q4_K] [--tokenizer PATH] [--pre NAME] [--force]
//
// --type F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_K | Q5_K | Q6_K (default F16) applies to the 2-D weights
// (embedding, attention, FFN, classifier); norms stay F32. A matrix whose rows are not a whole
// number of the type's blocks (32 values, 256 for the K types) falls back to Q8_0 when its rows
// are a multiple of 32, else to F16, as llama.cpp's quantizer does; the fallbacks are printed.
// Hugging Face q/k rows are permuted back to Meta's interleaved RoPE layout (llama.cpp's layout).
// The tokenizer (tokenizer.model or llama2.c tokenizer.bin; by default the one beside the
// checkpoint) goes into the metadata as tokenizer.ggml.model "llama"; a Hugging Face byte-level BPE
// tokenizer (--tokenizer FOLDER with tokenizer.json or vocab.json + merges.txt, or a tokenizer.json;
// LLaMA 3, GPT-2) as "gpt2" with its pre-tokenizer (recognised from tokenizer.json, or --pre).
import * as fs from 'fs';
import { loadCheckpoint } from '../lib/model/load';
import { LlamaConfig, headSize } from '../lib/model/config';
import { GGML_TYPES, GGML_TYPE_ID, GGUF_LAYER_NAMES, GgmlTypeName } from '../lib/model/gguf';
import { LayerWeights } from '../lib/model/weights';
import { parseModelProto, parseBytePiece } from '../lib/tokenizer/sentencepiece';
import { parseLlama2cVocab } from '../lib/tokenizer/llama2c';
import { GgufMeta, GgufTensorOut, quantize, writeGguf } from './gguf-writer';
import { bpeTokenizerMetadata, isBpeTokenizerPath } from './bpe-vocab';
import { Tensor } from '../lib/native';

export const GGUF_TYPES: GgmlTypeName[] = ['F32', 'F16', 'BF16', 'Q8_0', 'Q4_0', 'Q4_K', 'Q5_K', 'Q6_K'];

/** The vocabulary of a tokenizer as GGUF metadata (SentencePiece or llama2.c: "llama"; HF byte-level BPE: "gpt2"). */
export function tokenizerMetadata(path: string, opts: { pre?: string } = {}): [string, GgufMeta][] {
  if (isBpeTokenizerPath(path)) return bpeTokenizerMetadata(path, opts);
  if (opts.pre !== undefined) throw new Error(`--pre applies to byte-level BPE tokenizers (a folder or tokenizer.json), not ${path}`);
  const buf = fs.readFileSync(path);
  let pieces: { piece: string; score: number; type: number }[];
  let ids = { unk: 0, bos: 1, eos: 2 };
  if (buf[0] === 0x0a) {
    const m = parseModelProto(buf);
    pieces = m.pieces.map((p) => ({ piece: p.piece, score: p.score, type: p.type }));
    ids = { unk: m.unkId, bos: m.bosId, eos: m.eosId };
  } else {
    // llama2.c tokenizer.bin: pieces with '▁' written as ' ', BOS/EOS as "\n<s>\n", "\n</s>\n"
    const v = parseLlama2cVocab(buf);
    pieces = v.pieces.map((raw, i) => {
      const text = Buffer.from(raw, 'latin1').toString('utf8');
      const control = (i === 1 && text.trim() === '<s>') || (i === 2 && text.trim() === '</s>');
      const piece = control ? text.trim() : text.replace(/ /g, '\u2581');
      const type = i === 0 ? 2 : i === 1 || i === 2 ? 3 : parseBytePiece(piece) >= 0 ? 6 : 1;
      return { piece, score: v.scores[i], type };
    });
  }
  return [
    ['tokenizer.ggml.model', { type: 'string', value: 'llama' }],
    ['tokenizer.ggml.tokens', { type: 'array', itemType: 'string', value: pieces.map((p) => p.piece) }],
    ['tokenizer.ggml.scores', { type: 'array', itemType: 'f32', value: pieces.map((p) => p.score) }],
    ['tokenizer.ggml.token_type', { type: 'array', itemType: 'i32', value: pieces.map((p) => p.type) }],
    ['tokenizer.ggml.unknown_token_id', { type: 'u32', value: ids.unk }],
    ['tokenizer.ggml.bos_token_id', { type: 'u32', value: ids.bos }],
    ['tokenizer.ggml.eos_token_id', { type: 'u32', value: ids.eos }],
  ];
}

/** Per head of d rows: row i -> 2i, row i + d/2 -> 2i + 1 (Hugging Face's half layout back to Meta's). */
export function permuteRowsToInterleaved(w: Float32Array, heads: number, d: number, cols: number): Float32Array {
  const out = new Float32Array(w.length);
  const half = d / 2;
  for (let h = 0; h < heads; h++) {
    const base = h * d;
    for (let i = 0; i < half; i++) {
      out.set(w.subarray((base + i) * cols, (base + i + 1) * cols), (base + 2 * i) * cols);
      out.set(w.subarray((base + half + i) * cols, (base + half + i + 1) * cols), (base + 2 * i + 1) * cols);
    }
  }
  return out;
}

export function modelMetadata(c: LlamaConfig, name: string): [string, GgufMeta][] {
  return [
    ['general.architecture', { type: 'string', value: 'llama' }],
    ['general.name', { type: 'string', value: name }],
    ['llama.context_length', { type: 'u32', value: c.maxSeqLen }],
    ['llama.embedding_length', { type: 'u32', value: c.dim }],
    ['llama.block_count', { type: 'u32', value: c.nLayers }],
    ['llama.feed_forward_length', { type: 'u32', value: c.hiddenDim }],
    ['llama.rope.dimension_count', { type: 'u32', value: headSize(c) }],
    ['llama.attention.head_count', { type: 'u32', value: c.nHeads }],
    ['llama.attention.head_count_kv', { type: 'u32', value: c.nKvHeads }],
    ['llama.attention.layer_norm_rms_epsilon', { type: 'f32', value: c.normEps }],
    ['llama.rope.freq_base', { type: 'f32', value: c.ropeTheta }],
    ['llama.vocab_size', { type: 'u32', value: c.vocabSize }],
  ];
}

/** The type a matrix with rows of K values is stored as, asked for `type`. */
export function typeFor(type: GgmlTypeName, K: number): GgmlTypeName {
  if (K % GGML_TYPES[GGML_TYPE_ID[type]].block === 0) return type;
  return K % 32 === 0 ? 'Q8_0' : 'F16';
}

export interface ToGgufOptions {
  type?: GgmlTypeName;
  tokenizer?: string;
  /** tokenizer.ggml.pre for a byte-level BPE tokenizer whose own pre-tokenizer is not recognised */
  pre?: string;
  overwrite?: boolean;
  /** called with one line per fallback and progress */
  log?: (line: string) => void;
}

export async function toGguf(checkpoint: string, out: string, opts: ToGgufOptions = {}): Promise<{ fallbacks: number }> {
  const type = opts.type ?? 'F16';
  if (!GGUF_TYPES.includes(type)) throw new Error(`--type must be one of ${GGUF_TYPES.join(', ')}, got ${type}`);
  if (fs.existsSync(out) && !opts.overwrite) throw new Error(`${out} exists; pass --force to replace it`);
  const ck = await loadCheckpoint(checkpoint, { device: 'cpu' });
  try {
    const c = ck.config;
    const tokPath = opts.tokenizer ?? ck.tokenizerPath;
    if (!tokPath) throw new Error(`no tokenizer beside ${checkpoint}; pass --tokenizer`);
    const vocabMeta = tokenizerMetadata(tokPath, { pre: opts.pre });
    const nTokens = (vocabMeta.find(([k]) => k === 'tokenizer.ggml.tokens')![1].value as string[]).length;
    if (nTokens !== c.vocabSize) throw new Error(`the tokenizer ${tokPath} has ${nTokens} tokens, the model ${c.vocabSize}`);
    const d = headSize(c);
    const tensors: GgufTensorOut[] = [];
    let fallbacks = 0;
    const add = async (name: string, t: Tensor, matrix: boolean, permuteHeads = 0) => {
      let x = (await t.read()) as Float32Array;
      const shape = [...t.shape];
      if (permuteHeads && c.ropeLayout === 'half') x = permuteRowsToInterleaved(x, permuteHeads, d, shape[1]);
      const ty = matrix ? typeFor(type, shape[shape.length - 1]) : 'F32';
      if (matrix && ty !== type) {
        fallbacks++;
        opts.log?.(`${name}: rows of ${shape[shape.length - 1]} values are not whole ${type} blocks; written as ${ty}`);
      }
      tensors.push({ name, shape, type: ty, data: quantize(x, ty) });
    };
    const w = ck.weights;
    await add('token_embd.weight', w.embedding, true);
    for (let l = 0; l < c.nLayers; l++) {
      const lw = w.layers[l];
      for (const k of Object.keys(GGUF_LAYER_NAMES) as (keyof LayerWeights)[]) {
        const heads = k === 'wq' ? c.nHeads : k === 'wk' ? c.nKvHeads : 0;
        await add(`blk.${l}.${GGUF_LAYER_NAMES[k]}.weight`, lw[k], k !== 'attnNorm' && k !== 'ffnNorm', heads);
      }
    }
    await add('output_norm.weight', w.finalNorm, false);
    if (!c.tiedEmbeddings) await add('output.weight', w.classifier, true);
    const name = checkpoint.split('/').filter(Boolean).pop() ?? 'model';
    writeGguf(out, [...modelMetadata(c, name), ...vocabMeta], tensors);
    return { fallbacks };
  } finally {
    ck.dispose();
  }
}

async function main(argv: string[]): Promise<void> {
  const pos: string[] = [];
  const opts: ToGgufOptions = { log: (l) => console.error(l) };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--type') opts.type = argv[++i] as GgmlTypeName;
    else if (a === '--tokenizer') opts.tokenizer = argv[++i];
    else if (a === '--pre') opts.pre = argv[++i];
    else if (a === '--force') opts.overwrite = true;
    else if (a === '--help' || a === '-h') {
      console.log('usage: node dist/tools/to-gguf.js <checkpoint (.bin or HF folder)> <out.gguf> [--type F32|F16|BF16|Q8_0|Q4_0|Q4_K|Q5_K|Q6_K] [--tokenizer PATH] [--pre NAME] [--force]');
      return;
    } else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else pos.push(a);
  }
  if (pos.length !== 2) throw new Error('usage: to-gguf <checkpoint> <out.gguf> [--type T] [--tokenizer PATH] [--pre NAME] [--force]');
  const { fallbacks } = await toGguf(pos[0], pos[1], opts);
  console.log(`wrote ${pos[1]} (${opts.type ?? 'F16'}${fallbacks ? `, ${fallbacks} matrices in a fallback type` : ''})`);
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(`to-gguf: ${(e as Error).message}`);
    process.exit(1);
  });
}
