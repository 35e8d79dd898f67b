// The hyper-parameters of a LLaMA model (SPEC §1), whatever file format they came from.
// (Kept free of the native addon so tools can use it.)
import * as fs from 'fs';
import * as nodePath from 'path';

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

/**
 * Problems with `c` that would make any weight shape meaningless, as short phrases; empty when
 * the config is usable. Loaders turn these into errors naming their file.
 */
export function configProblems(c: LlamaConfig): string[] {
  const out: string[] = [];
  const ints: [string, number][] = [
    ['dim', c.dim],
    ['hidden_dim', c.hiddenDim],
    ['n_layers', c.nLayers],
    ['n_heads', c.nHeads],
    ['n_kv_heads', c.nKvHeads],
    ['vocab_size', c.vocabSize],
    ['seq_len', c.maxSeqLen],
  ];
  for (const [k, v] of ints) {
    if (!Number.isSafeInteger(v) || v <= 0) out.push(`${k} must be a positive integer, got ${v}`);
  }
  if (out.length) return out;
  if (c.dim % c.nHeads !== 0) out.push(`n_heads ${c.nHeads} does not divide dim ${c.dim}`);
  else if ((c.dim / c.nHeads) % 2 !== 0) out.push(`head size ${c.dim / c.nHeads} is odd (RoPE rotates pairs)`);
  if (c.nHeads % c.nKvHeads !== 0) out.push(`n_kv_heads ${c.nKvHeads} does not divide n_heads ${c.nHeads}`);
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
