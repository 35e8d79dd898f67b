// The hyper-parameters of a LLaMA model (SPEC §1), whatever file format they came from.
// (Kept free of the native addon so tools can use it.)
import * as fs from 'fs';
import * as nodePath from 'path';
import { MODEL_LIMITS, limitProblems } from './bounds';

/** How RoPE pairs channels: Meta/llama2.c rotate (2i, 2i+1); Hugging Face rotates (i, i + d/2). */
export type RopeLayout = 'interleaved' | 'half';

export interface LlamaConfig {
  /** C, the residual width */
  dim: number;
  /** F, the FFN hidden width */
  hiddenDim: number;
  nLayers: number;
  /** H, query heads */
  nHeads: number;
  /** Hkv, key/value heads (H % Hkv == 0; grouped-query attention when smaller) */
  nKvHeads: number;
  vocabSize: number;
  maxSeqLen: number;
  normEps: number;
  ropeTheta: number;
  ropeLayout: RopeLayout;
  /** the classifier is the embedding table */
  tiedEmbeddings: boolean;
}

/** d = C / H */
export function headSize(c: LlamaConfig): number {
  return c.dim / c.nHeads;
}

/** The size fields of a config by their llama2.c names; `FieldNames` renames them for a format. */
type SizeField = 'dim' | 'hidden_dim' | 'n_layers' | 'n_heads' | 'n_kv_heads' | 'vocab_size' | 'seq_len';
export type FieldNames = Partial<Record<SizeField, string>>;

/** Hugging Face config.json names of the size fields. */
export const HF_FIELD_NAMES: FieldNames = {
  dim: 'hidden_size',
  hidden_dim: 'intermediate_size',
  n_layers: 'num_hidden_layers',
  n_heads: 'num_attention_heads',
  n_kv_heads: 'num_key_value_heads',
  vocab_size: 'vocab_size',
  seq_len: 'max_position_embeddings',
};

/**
 * Problems with `c` that would make any weight shape meaningless, as short phrases naming the
 * fields (by `names`, default llama2.c's); empty when the config is usable. Sizes above
 * MODEL_LIMITS are problems too. Loaders turn these into errors naming their file.
 */
export function configProblems(c: LlamaConfig, names: FieldNames = {}): string[] {
  const n = (k: SizeField) => names[k] ?? k;
  const out: string[] = [];
  const ints: [SizeField, number, number][] = [
    ['dim', c.dim, MODEL_LIMITS.dim],
    ['hidden_dim', c.hiddenDim, MODEL_LIMITS.hiddenDim],
    ['n_layers', c.nLayers, MODEL_LIMITS.layers],
    ['n_heads', c.nHeads, MODEL_LIMITS.heads],
    ['n_kv_heads', c.nKvHeads, MODEL_LIMITS.heads],
    ['vocab_size', c.vocabSize, MODEL_LIMITS.vocab],
    ['seq_len', c.maxSeqLen, MODEL_LIMITS.seqLen],
  ];
  for (const [k, v] of ints) {
    if (!Number.isSafeInteger(v) || v <= 0) out.push(`${n(k)} must be a positive integer, got ${v}`);
  }
  if (out.length) return out;
  // sane upper bounds before anything is sized by these fields (bounds.ts)
  out.push(...limitProblems(ints.map(([k, v, max]) => [n(k), v, max])));
  if (out.length) return out;
  if (c.dim % c.nHeads !== 0) out.push(`${n('n_heads')} ${c.nHeads} does not divide ${n('dim')} ${c.dim}`);
  else if ((c.dim / c.nHeads) % 2 !== 0) out.push(`head size ${c.dim / c.nHeads} is odd (RoPE rotates pairs)`);
  if (c.nHeads % c.nKvHeads !== 0) out.push(`${n('n_kv_heads')} ${c.nKvHeads} does not divide ${n('n_heads')} ${c.nHeads}`);
  if (!(c.normEps > 0) || !Number.isFinite(c.normEps)) out.push(`norm eps must be a positive number, got ${c.normEps}`);
  if (!(c.ropeTheta > 0) || !Number.isFinite(c.ropeTheta)) out.push(`rope theta must be a positive number, got ${c.ropeTheta}`);
  return out;
}

/** One line for error messages. */
export function describeConfig(c: LlamaConfig): string {
  return (
    `dim ${c.dim}, hidden_dim ${c.hiddenDim}, n_layers ${c.nLayers}, n_heads ${c.nHeads}, ` +
    `n_kv_heads ${c.nKvHeads}, vocab_size ${c.vocabSize}, seq_len ${c.maxSeqLen}`
  );
}

/** The first tokenizer file found in `dir`: tokenizer.model, tokenizer.bin, tok{V}.bin. */
export function findTokenizer(dir: string, vocabSize: number): string | undefined {
  for (const f of ['tokenizer.model', 'tokenizer.bin', `tok${vocabSize}.bin`]) {
    const p = nodePath.join(dir, f);
    if (fs.existsSync(p) && fs.statSync(p).isFile()) return p;
  }
  return undefined;
}
