// The gated-attention test cases shared by the CPU-vs-reference tests (train-ops.test.ts) and the
// backend-parametrised ones (backend-ops.test.ts): packed segments (empty ones included), prompt or
// none, per-head or scalar gate, GQA, odd head sizes; and the same over the non-causal (encoder)
// and per-segment-prompt (image-conditioned) modes (MODE_CASES).
import * as ref from './reference';
import * as tref from './train-reference';

export type GateMode = 'head' | 'scalar' | 'none';
export interface Case {
  name: string;
  H: number;
  Hkv: number;
  d: number;
  lens: number[];
  K: number;
  gate: GateMode;
  /** default true; false: every token attends to its whole segment */
  causal?: boolean;
  /** pk, pv (S, K, Hkv, d): one prompt per segment */
  perSegment?: boolean;
}
export const CASES: Case[] = [
  { name: 'GQA H = 2 Hkv, K = 10, per-head gate, segments 5, 1, 7, 3', H: 4, Hkv: 2, d: 8, lens: [5, 1, 7, 3], K: 10, gate: 'head' },
  { name: 'H = Hkv, K = 1, scalar gate, one segment of 13', H: 2, Hkv: 2, d: 16, lens: [13], K: 1, gate: 'scalar' },
  { name: 'odd head size d = 6, H = 6, Hkv = 3, K = 3, segments 1, 9, 2', H: 6, Hkv: 3, d: 6, lens: [1, 9, 2], K: 3, gate: 'head' },
  { name: 'no prompt, H = 3 Hkv, segments 33, 4, 40 (several query blocks)', H: 3, Hkv: 1, d: 12, lens: [33, 4, 40], K: 0, gate: 'none' },
  { name: 'd = 64, K = 10, per-head gate, segments 70, 1, 35', H: 2, Hkv: 2, d: 64, lens: [70, 1, 35], K: 10, gate: 'head' },
  { name: 'an empty segment, H = 2 Hkv, K = 2, scalar gate, segments 3, 0, 2', H: 2, Hkv: 1, d: 10, lens: [3, 0, 2], K: 2, gate: 'scalar' },
  {
    name: '60 short segments (lengths 1 .. 7, one empty) and one of 130: several work groups',
    H: 4, Hkv: 2, d: 8, lens: [...Array.from({ length: 60 }, (_, i) => (i * 5) % 8), 130], K: 5, gate: 'head',
  },
];


/** The non-causal and per-segment-prompt modes, alone and together: GQA, K = 1 or several (and no
 *  prompt), empty segments, segments of length 1, head sizes that are not multiples of 8, segments
 *  longer than a query block (32 rows on the CPU, 64 on CUDA). */
export const MODE_CASES: Case[] = [
  { name: 'non-causal, GQA H = 2 Hkv, K = 10, per-head gate, segments 5, 1, 7, 3', H: 4, Hkv: 2, d: 8, lens: [5, 1, 7, 3], K: 10, gate: 'head', causal: false },
  { name: 'non-causal, no prompt, H = 3 Hkv, d = 12, segments 33, 4, 40', H: 3, Hkv: 1, d: 12, lens: [33, 4, 40], K: 0, gate: 'none', causal: false },
  { name: 'non-causal, d = 6, K = 1, scalar gate, an empty segment: 1, 0, 9, 2', H: 6, Hkv: 3, d: 6, lens: [1, 0, 9, 2], K: 1, gate: 'scalar', causal: false },
  { name: 'non-causal, d = 64, K = 10, one image-like segment of 70 and one of 1', H: 2, Hkv: 2, d: 64, lens: [70, 1], K: 10, gate: 'head', causal: false },
  { name: 'per-segment prompts, causal, GQA, K = 3, segments 5, 1, 7, 3', H: 4, Hkv: 2, d: 8, lens: [5, 1, 7, 3], K: 3, gate: 'head', perSegment: true },
  { name: 'per-segment prompts, causal, d = 10, K = 1, scalar gate, empty segments: 0, 3, 0, 2, 0', H: 2, Hkv: 1, d: 10, lens: [0, 3, 0, 2, 0], K: 1, gate: 'scalar', perSegment: true },
  { name: 'per-segment prompts, non-causal, H = Hkv, d = 20, K = 5, segments 33, 1, 70', H: 2, Hkv: 2, d: 20, lens: [33, 1, 70], K: 5, gate: 'head', causal: false, perSegment: true },
  {
    name: 'per-segment prompts, non-causal, 40 short segments (0 .. 7) and one of 130: several work groups',
    H: 4, Hkv: 2, d: 8, lens: [...Array.from({ length: 40 }, (_, i) => (i * 5) % 8), 130], K: 4, gate: 'head', causal: false, perSegment: true,
  },
];

export interface Data {
  c: Case;
  N: number;
  seg: number[];
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  pk: Float32Array | null;
  pv: Float32Array | null;
  gate: Float32Array | null;
}
export function offsets(lens: number[]): number[] {
  const seg = [0];
  for (const l of lens) seg.push(seg[seg.length - 1] + l);
  return seg;
}
export function makeData(c: Case, seed: number): Data {
  const rng = new ref.Rng(seed);
  const seg = offsets(c.lens);
  const N = seg[seg.length - 1];
  const prompt = c.gate !== 'none';
  const P = c.perSegment ? c.lens.length : 1; // prompt sets
  return {
    c,
    N,
    seg,
    q: rng.normals(N * c.H * c.d),
    k: rng.normals(N * c.Hkv * c.d),
    v: rng.normals(N * c.Hkv * c.d),
    pk: prompt ? rng.normals(P * c.K * c.Hkv * c.d) : null,
    pv: prompt ? rng.normals(P * c.K * c.Hkv * c.d) : null,
    gate: c.gate === 'head' ? rng.uniforms(c.H, -1, 1) : c.gate === 'scalar' ? rng.uniforms(1, -1, 1) : null,
  };
}
export function dimsOf(x: Data): tref.AttnDims {
  return { N: x.N, H: x.c.H, Hkv: x.c.Hkv, d: x.c.d, K: x.c.K, causal: x.c.causal ?? true };
}
export function inputsOf(x: Data): tref.AttnInputs {
  return { q: x.q, k: x.k, v: x.v, segments: x.seg, pk: x.pk, pv: x.pv, gate: x.gate, perSegment: !!x.c.perSegment };
}
/** The shape of the prompt tensors pk, pv: (K, Hkv, d), or (S, K, Hkv, d) per segment. */
export function promptShape(c: Case): number[] {
  return c.perSegment ? [c.lens.length, c.K, c.Hkv, c.d] : [c.K, c.Hkv, c.d];
}
/** The options argument of gatedAttention / gatedAttentionBackward for the case (undefined: the
 *  defaults, as the existing callers pass nothing). */
export function optionsOf(c: Case): { causal: boolean } | undefined {
  return c.causal === undefined ? undefined : { causal: c.causal };
}
