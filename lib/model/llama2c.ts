// llama2.c checkpoints (`.bin`), fp32 only:
//   v0 ("legacy"): 7 x int32 {dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len},
//       then the weights in run.c's memory_map_weights order; vocab_size < 0 means the classifier
//       is stored (untied) after the two unused freq_cis tables.
//   v1: a 256-byte header (uint32 magic 0x616b3432 "ak42", int32 version 1, the 7 int32 params,
//       uint8 shared_classifier, zeros), then the weights in export.py's version1_export order:
//       all norms first, then the embedding, then each matrix kind for every layer.
// Only the header is read with fs; the weights are mapped and become native tensors.
import * as fs from 'fs';
import { LlamaConfig, configProblems, describeConfig } from './config';
import { bytesOf, sumOf } from './bounds';
import type { LayerWeights, LoadArena, LoadOptions, LoadedWeights } from './weights';
import type { Tensor } from '../native';

export const LLAMA2C_MAGIC = 0x616b3432;
const V0_HEADER_BYTES = 28;
const V1_HEADER_BYTES = 256;

export type LayerKey = keyof LayerWeights;

/** Where one tensor lies in a llama2.c file. */
export interface Llama2cSlot {
  /** 'embedding' | 'finalNorm' | 'classifier' | 'layers.N.<LayerKey>' */
  name: string;
  /** the layer, for per-layer tensors */
  layer?: number;
  key: LayerKey | 'embedding' | 'finalNorm' | 'classifier';
  byteOffset: number;
  shape: number[];
}

export interface Llama2cHeader {
  path: string;
  version: 0 | 1;
  config: LlamaConfig;
  fileSize: number;
  /** every weight tensor in file order (the freq_cis tables of v0 are not listed) */
  slots: Llama2cSlot[];
}

/** Reads the first `n` bytes of `path` (fewer if the file is shorter). */
function readHead(path: string, n: number): { head: Buffer; size: number } {
  const fd = fs.openSync(path, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const head = Buffer.alloc(Math.min(n, size));
    let got = 0;
    while (got < head.length) {
      const r = fs.readSync(fd, head, got, head.length - got, got);
      if (r === 0) break;
      got += r;
    }
    return { head: head.subarray(0, got), size };
  } finally {
    fs.closeSync(fd);
  }
}

/** The exact size in bytes a header implies, computed from its fields alone (bounds.ts): known
 *  before any per-layer list is built. */
export function llama2cFileSize(version: 0 | 1, c: LlamaConfig, shared: boolean): bigint {
  const C = c.dim;
  const F = c.hiddenDim;
  const d = c.dim / c.nHeads;
  const kvDim = c.nKvHeads * d;
  const perLayer = sumOf([
    bytesOf([C], 4), // attention norm
    bytesOf([C, C], 4), // wq
    bytesOf([kvDim, C], 4), // wk
    bytesOf([kvDim, C], 4), // wv
    bytesOf([C, C], 4), // wo
    bytesOf([C], 4), // ffn norm
    bytesOf([F, C], 4), // w1
    bytesOf([C, F], 4), // w2
    bytesOf([F, C], 4), // w3
  ]);
  return sumOf([
    BigInt(version === 0 ? V0_HEADER_BYTES : V1_HEADER_BYTES),
    bytesOf([c.vocabSize, C], 4), // embedding
    BigInt(c.nLayers) * perLayer,
    bytesOf([C], 4), // final norm
    version === 0 ? bytesOf([c.maxSeqLen, d], 4) : 0n, // v0: freq_cis_real + freq_cis_imag, (seq_len, d/2) each
    shared ? 0n : bytesOf([c.vocabSize, C], 4), // untied classifier
  ]);
}

/** Tensor slots in file order, and the total size the header implies. */
function layout(version: 0 | 1, c: LlamaConfig, shared: boolean): { slots: Llama2cSlot[]; size: number } {
  const C = c.dim;
  const F = c.hiddenDim;
  const L = c.nLayers;
  const d = C / c.nHeads;
  const kvDim = c.nKvHeads * d;
  const slots: Llama2cSlot[] = [];
  let off = version === 0 ? V0_HEADER_BYTES : V1_HEADER_BYTES;
  const one = (key: 'embedding' | 'finalNorm' | 'classifier', shape: number[]) => {
    slots.push({ name: key, key, byteOffset: off, shape });
    off += 4 * shape.reduce((a, b) => a * b, 1);
  };
  const perLayer = (key: LayerKey, shape: number[]) => {
    for (let l = 0; l < L; l++) {
      slots.push({ name: `layers.${l}.${key}`, layer: l, key, byteOffset: off, shape });
      off += 4 * shape.reduce((a, b) => a * b, 1);
    }
  };
  const matrices = () => {
    perLayer('wq', [C, C]); // (H*d, C), H*d == C
    perLayer('wk', [kvDim, C]);
    perLayer('wv', [kvDim, C]);
    perLayer('wo', [C, C]);
  };
  if (version === 0) {
    one('embedding', [c.vocabSize, C]);
    perLayer('attnNorm', [C]);
    matrices();
    perLayer('ffnNorm', [C]);
    perLayer('w1', [F, C]);
    perLayer('w2', [C, F]);
    perLayer('w3', [F, C]);
    one('finalNorm', [C]);
    off += 2 * 4 * ((c.maxSeqLen * d) / 2); // freq_cis_real, freq_cis_imag: unused (RoPE is computed)
  } else {
    perLayer('attnNorm', [C]);
    perLayer('ffnNorm', [C]);
    one('finalNorm', [C]);
    one('embedding', [c.vocabSize, C]);
    matrices();
    perLayer('w1', [F, C]);
    perLayer('w2', [C, F]);
    perLayer('w3', [F, C]);
  }
  if (!shared) one('classifier', [c.vocabSize, C]);
  return { slots, size: off };
}

/** Parses and validates the header of a llama2.c checkpoint, including the exact file size. */
export function readLlama2cHeader(path: string): Llama2cHeader {
  const { head, size } = readHead(path, V1_HEADER_BYTES);
  const isV1 = head.length >= 4 && head.readUInt32LE(0) === LLAMA2C_MAGIC;
  const version: 0 | 1 = isV1 ? 1 : 0;
  const need = isV1 ? V1_HEADER_BYTES : V0_HEADER_BYTES;
  if (head.length < need)
    throw new Error(
      `${path} is truncated: ${size} bytes, less than the ${need}-byte llama2.c ${isV1 ? 'v1' : 'v0'} header`,
    );
  let p: number; // byte offset of the 7 params
  let shared: boolean;
  if (isV1) {
    const ver = head.readInt32LE(4);
    if (ver !== 1)
      throw new Error(
        `${path}: unsupported llama2.c checkpoint version ${ver} (magic 'ak42' found; only version 1, fp32, ` +
          `and the headerless v0 are supported; v2 is int8-quantised)`,
      );
    p = 8;
    const flag = head.readUInt8(36);
    if (flag > 1) throw new Error(`${path}: invalid llama2.c v1 header: shared_classifier byte is ${flag}, not 0 or 1`);
    shared = flag === 1;
  } else {
    p = 0;
    shared = head.readInt32LE(20) > 0; // negative vocab: untied classifier stored at the end
  }
  const i = (k: number) => head.readInt32LE(p + 4 * k);
  const vocabRaw = i(5);
  const config: LlamaConfig = {
    dim: i(0),
    hiddenDim: i(1),
    nLayers: i(2),
    nHeads: i(3),
    nKvHeads: i(4),
    vocabSize: isV1 ? vocabRaw : Math.abs(vocabRaw),
    maxSeqLen: i(6),
    normEps: 1e-5,
    ropeTheta: 10000,
    ropeLayout: 'interleaved',
    tiedEmbeddings: shared,
  };
  const problems = configProblems(config);
  if (problems.length)
    throw new Error(
      `${path} is not a valid llama2.c ${isV1 ? 'v1' : 'v0'} checkpoint: impossible header (${describeConfig(config)}): ` +
        problems.join('; ') +
        (isV1 ? '' : `; nor does it start with the v1 magic 0x${LLAMA2C_MAGIC.toString(16)} ('ak42')`),
    );
  // the exact size first (BigInt), then the per-layer slot list: never sized by an unchecked field
  const expected = llama2cFileSize(version, config, shared);
  const what = `its llama2.c v${version} header (${describeConfig(config)}${shared ? ', shared classifier' : ', separate classifier'})`;
  if (BigInt(size) < expected)
    throw new Error(`${path} is truncated: ${what} implies ${expected} bytes but the file has ${size}`);
  if (BigInt(size) > expected)
    throw new Error(
      `${path} has ${BigInt(size) - expected} bytes more than ${what} implies (${expected}): ` +
        `not a llama2.c checkpoint of a supported version, or a corrupt one`,
    );
  const { slots } = layout(version, config, shared);
  return { path, version, config, fileSize: size, slots };
}

/** Maps a llama2.c file and creates its tensors in `arena` (no finite check yet: see load.ts). */
export function loadLlama2c(path: string, arena: LoadArena, opts: LoadOptions = {}): LoadedWeights {
  const h = readLlama2cHeader(path);
  const dtype = opts.dtype ?? 'f32';
  const map = arena.map(path);
  if (map.size !== h.fileSize) throw new Error(`${path} changed while it was being loaded`);
  const c = h.config;
  const layers: Partial<LayerWeights>[] = Array.from({ length: c.nLayers }, () => ({}));
  let embedding: Tensor | undefined;
  let finalNorm: Tensor | undefined;
  let classifier: Tensor | undefined;
  for (const s of h.slots) {
    const isNorm = s.key === 'attnNorm' || s.key === 'ffnNorm' || s.key === 'finalNorm';
    const t = arena.tensor(map, s.byteOffset, s.shape, 'f32', isNorm ? 'f32' : dtype, s.name);
    if (s.key === 'embedding') embedding = t;
    else if (s.key === 'finalNorm') finalNorm = t;
    else if (s.key === 'classifier') classifier = t;
    else layers[s.layer!][s.key] = t;
  }
  return {
    config: c,
    format: h.version === 0 ? 'llama2c-v0' : 'llama2c-v1',
    weights: {
      embedding: embedding!,
      layers: layers as LayerWeights[],
      finalNorm: finalNorm!,
      classifier: classifier ?? embedding!,
    },
  };
}
