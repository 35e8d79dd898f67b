// Meta's original LLaMA 1/2/3 folders: params.json + consolidated.00.pth … consolidated.NN.pth, one
// file per model-parallel rank (torch.save zip checkpoints, read by ./pth). One shard is mapped
// where it lies; several are merged per tensor along the dimension Meta's fairscale layers split:
// ColumnParallelLinear (wq, wk, wv, w1, w3, output) by rows, RowParallelLinear (wo, w2) by columns,
// ParallelEmbedding (LLaMA 1/2 tok_embeddings) by columns, VocabParallelEmbedding (LLaMA 3) by
// rows; norms are replicated. Q/K rows are in Meta's own order, so RoPE is interleaved.
import * as fs from 'fs';
import * as nodePath from 'path';
import type { FileMapping, Tensor } from '../native';
import { native } from '../native';
import { LlamaConfig, configProblems, headSize } from './config';
import { bytesOf, checkHolds, sumOf } from './bounds';
import type { LayerWeights, LoadArena, LoadOptions, LoadedWeights } from './weights';
import { TorchCheckpoint, TorchTensor, readTorchCheckpoint } from './pth/torch';
import { readAt } from './pth/zip';
import { f16ToF32 } from './pth/half';

export const META_PARAMS = 'params.json';
/** At most this many model-parallel shards (LLaMA-65B and 70B have 8). */
export const META_MAX_SHARDS = 64;

/** Meta's field names for configProblems. */
const META_FIELD_NAMES = { hidden_dim: 'the FFN width (from multiple_of, ffn_dim_multiplier)', seq_len: 'max_seq_len' };

/** The shard files of a Meta folder in rank order, checked to be consolidated.00 … NN. */
export function metaShards(dir: string): string[] {
  const names = fs.readdirSync(dir).filter((f) => /^consolidated\.\d+\.pth$/.test(f));
  names.sort((a, b) => Number(a.split('.')[1]) - Number(b.split('.')[1]));
  if (names.length === 0) throw new Error(`${dir} has ${META_PARAMS} but no consolidated.00.pth: not a complete Meta checkpoint folder`);
  if (names.length > META_MAX_SHARDS) throw new Error(`${dir}: ${names.length} shards, above the supported maximum ${META_MAX_SHARDS}`);
  names.forEach((n, i) => {
    if (Number(n.split('.')[1]) !== i)
      throw new Error(`${dir}: shard consolidated.${String(i).padStart(2, '0')}.pth is missing (found ${names.join(', ')})`);
  });
  return names.map((n) => nodePath.join(dir, n));
}

/** Meta's FeedForward width: 2/3 of 4·dim, scaled by ffn_dim_multiplier, rounded up to multiple_of. */
export function metaHiddenDim(dim: number, multipleOf: number, ffnDimMultiplier?: number): number {
  let h = Math.trunc((2 * 4 * dim) / 3);
  if (ffnDimMultiplier !== undefined) h = Math.trunc(ffnDimMultiplier * h);
  return multipleOf * Math.ceil(h / multipleOf);
}

export interface MetaParams {
  config: LlamaConfig;
  /** vocab_size was -1 (LLaMA 1): the embedding's rows decide */
  vocabFromWeights: boolean;
}

/** params.json validated; errors name the file and the key. vocab_size -1 leaves vocabSize 0. */
export function readMetaParams(dir: string): MetaParams {
  const file = nodePath.join(dir, META_PARAMS);
  let o: Record<string, unknown>;
  try {
    const j: unknown = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (typeof j !== 'object' || j === null || Array.isArray(j)) throw new Error('not a JSON object');
    o = j as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${file} is not a valid params.json (${(e as Error).message})`);
  }
  const has = (k: string) => o[k] !== undefined && o[k] !== null;
  const bad = (k: string, want: string) =>
    new Error(`${file}: ${has(k) ? `"${k}" must be ${want}, got ${JSON.stringify(o[k])}` : `missing "${k}" (${want})`}`);
  const int = (k: string, dflt?: number): number => {
    if (!has(k) && dflt !== undefined) return dflt;
    const v = o[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw bad(k, 'a positive integer');
    return v;
  };
  const num = (k: string, dflt?: number): number | undefined => {
    if (!has(k)) return dflt;
    const v = o[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw bad(k, 'a positive number');
    return v;
  };
  if (o.use_scaled_rope === true) throw new Error(`${file}: use_scaled_rope (LLaMA 3.1's RoPE scaling) is not supported`);
  if (has('moe') || has('vision_chunk_size')) throw new Error(`${file}: mixture-of-experts and vision models are not supported`);
  const dim = int('dim');
  const nHeads = int('n_heads');
  const nLayers = int('n_layers');
  const nKvHeads = int('n_kv_heads', nHeads);
  let vocabSize = 0;
  if (o.vocab_size !== -1) vocabSize = int('vocab_size');
  const multipleOf = int('multiple_of', 256);
  const ffnMult = num('ffn_dim_multiplier');
  const normEps = num('norm_eps', 1e-5)!;
  const ropeTheta = num('rope_theta', 10000)!;
  // Not in Meta's files (their code takes it as an argument): the context each generation used.
  const maxSeqLen = int('max_seq_len', ropeTheta >= 500000 ? 8192 : normEps === 1e-5 ? 4096 : 2048);
  const config: LlamaConfig = {
    dim,
    hiddenDim: metaHiddenDim(dim, multipleOf, ffnMult),
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize,
    maxSeqLen,
    normEps,
    ropeTheta,
    ropeLayout: 'interleaved',
    tiedEmbeddings: false,
  };
  const problems = configProblems({ ...config, vocabSize: vocabSize || 1 }, META_FIELD_NAMES);
  if (problems.length) throw new Error(`${file}: impossible model config: ${problems.join('; ')}`);
  return { config, vocabFromWeights: vocabSize === 0 };
}

type Split = 'rows' | 'columns' | 'replicated';

interface MetaTensor {
  name: string;
  shape: number[];
  split: Split;
  norm: boolean;
}

/** Every tensor of a Meta checkpoint with its full shape and how model parallelism splits it. */
function metaTensors(c: LlamaConfig, embeddingSplit: Split): MetaTensor[] {
  const C = c.dim;
  const F = c.hiddenDim;
  const kv = c.nKvHeads * headSize(c);
  const out: MetaTensor[] = [{ name: 'tok_embeddings.weight', shape: [c.vocabSize, C], split: embeddingSplit, norm: false }];
  for (let l = 0; l < c.nLayers; l++) {
    const p = `layers.${l}.`;
    out.push(
      { name: p + 'attention.wq.weight', shape: [C, C], split: 'rows', norm: false },
      { name: p + 'attention.wk.weight', shape: [kv, C], split: 'rows', norm: false },
      { name: p + 'attention.wv.weight', shape: [kv, C], split: 'rows', norm: false },
      { name: p + 'attention.wo.weight', shape: [C, C], split: 'columns', norm: false },
      { name: p + 'feed_forward.w1.weight', shape: [F, C], split: 'rows', norm: false },
      { name: p + 'feed_forward.w2.weight', shape: [C, F], split: 'columns', norm: false },
      { name: p + 'feed_forward.w3.weight', shape: [F, C], split: 'rows', norm: false },
      { name: p + 'attention_norm.weight', shape: [C], split: 'replicated', norm: true },
      { name: p + 'ffn_norm.weight', shape: [C], split: 'replicated', norm: true },
    );
  }
  out.push({ name: 'norm.weight', shape: [C], split: 'replicated', norm: true });
  out.push({ name: 'output.weight', shape: [c.vocabSize, C], split: 'rows', norm: false });
  return out;
}

const LAYER_KEYS: Record<string, keyof LayerWeights> = {
  'attention_norm.weight': 'attnNorm',
  'attention.wq.weight': 'wq',
  'attention.wk.weight': 'wk',
  'attention.wv.weight': 'wv',
  'attention.wo.weight': 'wo',
  'ffn_norm.weight': 'ffnNorm',
  'feed_forward.w1.weight': 'w1',
  'feed_forward.w2.weight': 'w2',
  'feed_forward.w3.weight': 'w3',
};

/** Buffers Meta's checkpoints carry that are not weights (LLaMA 1's RoPE table). */
const IGNORED = new Set(['rope.freqs']);

const shapeStr = (s: readonly number[]) => `[${s.join(', ')}]`;

/** The shape rank `k` of `n` shards holds of a tensor of `full` shape split as `split`. */
function shardShape(full: number[], split: Split, n: number): number[] | undefined {
  if (split === 'replicated' || n === 1) return full;
  const d = split === 'rows' ? 0 : 1;
  if (full[d] % n !== 0) return undefined;
  return full.map((s, i) => (i === d ? s / n : s));
}

/** The values of a shard's tensor as f32 (F16/BF16 widened exactly), read with fs. */
function readValues(fd: number, t: TorchTensor, file: string): Float32Array {
  const raw = readAt(fd, t.byteOffset, t.byteLength);
  if (raw.length !== t.byteLength) throw new Error(`${file}: tensor ${t.name} is truncated`);
  const n = t.byteLength / (t.dtype === 'F32' ? 4 : 2);
  if (t.dtype === 'F32') return new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length));
  const half = new Uint16Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length));
  if (t.dtype === 'BF16') {
    const u = new Uint32Array(n);
    for (let i = 0; i < n; i++) u[i] = half[i] << 16;
    return new Float32Array(u.buffer);
  }
  return f16ToF32(half);
}

/** Reads params.json and every shard's pickle, then maps (one shard) or merges (several) the
 *  tensors into `arena`. */
export function loadMeta(dir: string, arena: LoadArena, opts: LoadOptions = {}): LoadedWeights {
  const dtype = opts.dtype ?? 'f32';
  const params = readMetaParams(dir);
  const paramsFile = nodePath.join(dir, META_PARAMS);
  const files = metaShards(dir);
  const n = files.length;
  let config = params.config;

  const shards: TorchCheckpoint[] = files.map((f) => readTorchCheckpoint(f, 'a Meta checkpoint shard (torch.save zip)'));
  // The implied size before any per-layer list (the pickles are small and bounded, read first so a
  // hostile one is named): the shards must hold at least 2 bytes a weight.
  const c0 = config;
  const kv = c0.nKvHeads * headSize(c0);
  const layerBytes = sumOf([bytesOf([c0.dim, c0.dim], 2), bytesOf([kv, c0.dim], 4), bytesOf([c0.dim, c0.dim], 2), bytesOf([c0.hiddenDim, c0.dim], 6)]);
  const fileBytes = files.reduce((s, f) => s + fs.statSync(f).size, 0);
  const why = `${paramsFile} (n_layers ${c0.nLayers}, dim ${c0.dim}, FFN width ${c0.hiddenDim}), at 2 bytes a weight,`;
  checkHolds(n > 1 ? `${dir} (its ${n} shards)` : files[0], why, BigInt(c0.nLayers) * layerBytes, fileBytes, { atLeast: true });

  const emb0 = shards[0].tensors.get('tok_embeddings.weight');
  if (!emb0 || emb0.shape.length !== 2) throw new Error(`${files[0]}: missing tensor tok_embeddings.weight (or it is not a matrix)`);
  // LLaMA 1/2 split the embedding's columns (ParallelEmbedding), LLaMA 3 its rows (the vocabulary)
  const embeddingSplit: Split = n === 1 ? 'replicated' : emb0.shape[1] === config.dim ? 'rows' : 'columns';
  const vocab = embeddingSplit === 'rows' ? emb0.shape[0] * n : emb0.shape[0];
  if (params.vocabFromWeights) {
    config = { ...config, vocabSize: vocab };
    const problems = configProblems(config);
    if (problems.length) throw new Error(`${files[0]}: tok_embeddings.weight ${shapeStr(emb0.shape)}: ${problems.join('; ')}`);
  }
  const expected = metaTensors(config, embeddingSplit);
  const known = new Set(expected.map((e) => e.name));
  shards.forEach((s, k) => {
    const extra = [...s.tensors.keys()].filter((name) => !known.has(name) && !IGNORED.has(name));
    if (extra.length)
      throw new Error(
        `${files[k]}: unexpected tensors ${extra.slice(0, 5).join(', ')}${extra.length > 5 ? ` and ${extra.length - 5} more` : ''}: ` +
          `not a plain LLaMA checkpoint (an adapter or a fine-tune with extra weights?)`,
      );
  });

  // merging several shards reads every weight: say so, then about once a second
  let lastReport = Date.now();
  if (n > 1) opts.onProgress?.(`merging the ${n} model-parallel shards of ${dir}`);
  const maps: (FileMapping | undefined)[] = new Array(n);
  const byName = new Map<string, Tensor>();
  for (const e of expected) {
    const want = shardShape(e.shape, e.split, n);
    const parts = shards.map((s, k) => {
      const t = s.tensors.get(e.name);
      if (!t) throw new Error(`${files[k]}: missing tensor ${e.name}`);
      if (!want || t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i]))
        throw new Error(
          `${files[k]}: tensor ${e.name} has shape ${shapeStr(t.shape)} but ${META_PARAMS} implies ${shapeStr(e.shape)}` +
            (n > 1 ? `, split by ${e.split} over ${n} shards: ${want ? shapeStr(want) : 'not divisible'} each` : ''),
        );
      return t;
    });
    const storeAs = e.norm ? 'f32' : dtype;
    if (n === 1 || e.split === 'replicated') {
      // mapped where it lies (replicated tensors: rank 0's copy)
      const t = parts[0];
      maps[0] ??= arena.map(files[0]);
      byName.set(e.name, arena.tensor(maps[0], t.byteOffset, e.shape, t.dtype === 'F32' ? 'f32' : t.dtype === 'F16' ? 'f16' : 'bf16', storeAs, e.name));
      continue;
    }
    // merged in memory: rank k's block of rows, or of columns, in rank order
    const full = new Float32Array(Number(bytesOf(e.shape, 1)));
    const [R, Cols] = e.shape;
    parts.forEach((t, k) => {
      const fd = fs.openSync(files[k], 'r');
      let v: Float32Array;
      try {
        v = readValues(fd, t, files[k]);
      } finally {
        fs.closeSync(fd);
      }
      if (e.split === 'rows') full.set(v, k * v.length);
      else {
        const w = Cols / n;
        for (let r = 0; r < R; r++) full.set(v.subarray(r * w, (r + 1) * w), r * Cols + k * w);
      }
    });
    const bad = full.findIndex((x) => !Number.isFinite(x));
    if (bad >= 0) throw new Error(`${dir}: tensor ${e.name} has a non-finite value (${full[bad]}) at element ${bad}`);
    const t = native.fromArray(full, e.shape, storeAs);
    arena.tensors.push(t);
    byName.set(e.name, t);
    if (Date.now() - lastReport >= 1000) {
      lastReport = Date.now();
      opts.onProgress?.(`merged ${e.name} (${byName.size}/${expected.length} tensors)`);
    }
  }

  const get = (name: string) => byName.get(name)!;
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayers; l++) {
    const lw: Partial<LayerWeights> = {};
    for (const [suffix, key] of Object.entries(LAYER_KEYS)) lw[key] = get(`layers.${l}.${suffix}`);
    layers.push(lw as LayerWeights);
  }
  return {
    config,
    format: 'meta',
    weights: { embedding: get('tok_embeddings.weight'), layers, finalNorm: get('norm.weight'), classifier: get('output.weight') },
  };
}
