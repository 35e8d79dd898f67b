// Plain float64 reference implementations of the forward ops (SPEC.md §1), written to be obviously
// correct rather than fast, plus a seeded RNG for test data and comparison helpers. Independent of
// the native code: nothing here mirrors a kernel's loop order or bit tricks.
//
// Layout conventions follow lib/native.ts: every tensor is a flat row-major array.
//   embedding  table (V, C), tokens (T)                    -> (T, C)
//   rmsnorm    x (T, C), w (C)                              -> (T, C)
//   rope       x (T, H, d)                                  -> (T, H, d)   (returns a new array)
//   matmul     x (M, K), w (N, K)                           -> (M, N) = x · wᵀ
//   attention  q (T, H, d), k/v caches (S, Hkv, d), pos0    -> (T, H, d)
//   swiglu     a, b (N)                                     -> silu(a) * b

export type Num = ArrayLike<number>;
export type RopeLayout = 'interleaved' | 'half';

// ---- random test data -------------------------------------------------------------------------

/** mulberry32: a tiny, well-mixed 32-bit PRNG; uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A seeded source of test data (mulberry32 + Box-Muller). */
export class Rng {
  private readonly next: () => number;
  private spare: number | undefined;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  /** uniform in [0, 1) */
  uniform(): number {
    return this.next();
  }
  /** standard normal */
  normal(): number {
    if (this.spare !== undefined) {
      const s = this.spare;
      this.spare = undefined;
      return s;
    }
    let u = 0;
    while (u === 0) u = this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
  /** n values ~ N(mean, std^2) as f32 */
  normals(n: number, std = 1, mean = 0): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = mean + std * this.normal();
    return a;
  }
  /** n values uniform in [lo, hi) as f32 */
  uniforms(n: number, lo = -1, hi = 1): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * this.next();
    return a;
  }
  /** integer uniform in [lo, hi) */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo));
  }
  /** n integers uniform in [lo, hi) */
  ints(n: number, lo: number, hi: number): Int32Array {
    const a = new Int32Array(n);
    for (let i = 0; i < n; i++) a[i] = this.int(lo, hi);
    return a;
  }
}

// ---- bfloat16 ---------------------------------------------------------------------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The bit pattern of Math.fround(x). */
export function f32Bits(x: number): number {
  f32[0] = x;
  return u32[0];
}
/** The f32 with bit pattern `bits`. */
export function f32FromBits(bits: number): number {
  u32[0] = bits >>> 0;
  return f32[0];
}
/** The value of the bf16 with bit pattern `h` (exact). */
export function bf16Value(h: number): number {
  return f32FromBits((h & 0xffff) << 16);
}

/** Is `h` a bf16 NaN bit pattern? */
export function bf16IsNaN(h: number): boolean {
  return (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;
}

/**
 * The bf16 bit pattern nearest to the f32 `x` (round to nearest, ties to even; a NaN gives some NaN;
 * values at or past the overflow midpoint give ±Inf). Done by comparing the distances to the two
 * neighbouring bf16 values in float64, not by the usual integer trick.
 */
export function bf16Bits(x: number): number {
  const v = Math.fround(x);
  const bits = f32Bits(v);
  if (Number.isNaN(v)) return ((bits >>> 16) | 0x40) & 0xffff;
  const lo = bits >>> 16; // truncation: toward zero
  const vLo = bf16Value(lo);
  if (v === vLo) return lo;
  const hi = lo + 1; // next away from zero (same sign)
  // A hi of ±Inf is at ±2^128 for rounding purposes (IEEE: round as if the exponent were unbounded).
  const vHi = (hi & 0x7fff) === 0x7f80 ? Math.sign(v) * 2 ** 128 : bf16Value(hi);
  const dLo = Math.abs(v - vLo);
  const dHi = Math.abs(vHi - v);
  if (dLo < dHi) return lo;
  if (dHi < dLo) return hi & 0xffff;
  return (lo & 1) === 0 ? lo : hi & 0xffff; // tie: even mantissa
}

/** Math.fround(x) rounded to bf16, as a number. */
export function bf16Round(x: number): number {
  return bf16Value(bf16Bits(x));
}

/** A copy of `a` with every element rounded to bf16. */
export function bf16RoundArray(a: Num): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = bf16Round(a[i]);
  return out;
}

// ---- the ops ----------------------------------------------------------------------------------

export function embedding(table: Num, V: number, C: number, tokens: Num): Float64Array {
  const T = tokens.length;
  const out = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    const id = tokens[t];
    if (!(id >= 0 && id < V)) throw new Error(`reference embedding: token ${id} outside [0, ${V})`);
    for (let c = 0; c < C; c++) out[t * C + c] = table[id * C + c];
  }
  return out;
}

export function rmsnorm(x: Num, T: number, C: number, w: Num, eps: number): Float64Array {
  const out = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[t * C + c] * x[t * C + c];
    const inv = 1 / Math.sqrt(ss / C + eps);
    for (let c = 0; c < C; c++) out[t * C + c] = x[t * C + c] * inv * w[c];
  }
  return out;
}

/** The RoPE frequency of pair i for head size d: theta^(-2i/d). */
export function ropeFreq(i: number, d: number, theta: number): number {
  return Math.pow(theta, (-2 * i) / d);
}

/** The two element indices (within a head) that pair i rotates. */
export function ropePair(i: number, d: number, layout: RopeLayout): [number, number] {
  return layout === 'interleaved' ? [2 * i, 2 * i + 1] : [i, i + d / 2];
}

/** x (T, H, d) rotated by positions pos0 + t; returns a new array. */
export function rope(
  x: Num,
  T: number,
  H: number,
  d: number,
  pos0: number,
  theta: number,
  layout: RopeLayout,
): Float64Array {
  if (d % 2 !== 0) throw new Error('reference rope: odd head size');
  const out = Float64Array.from(x);
  for (let t = 0; t < T; t++) {
    const p = pos0 + t;
    for (let h = 0; h < H; h++) {
      const base = (t * H + h) * d;
      for (let i = 0; i < d / 2; i++) {
        const angle = p * ropeFreq(i, d, theta);
        const c = Math.cos(angle);
        const s = Math.sin(angle);
        const [ia, ib] = ropePair(i, d, layout);
        const x0 = x[base + ia];
        const x1 = x[base + ib];
        out[base + ia] = x0 * c - x1 * s;
        out[base + ib] = x0 * s + x1 * c;
      }
    }
  }
  return out;
}

/**
 * The per-head permutation that turns the Meta (interleaved) layout into the Hugging Face (half)
 * layout: element j of a head in half layout is element perm[j] of that head in interleaved layout
 * (first the even elements 0, 2, 4, .., then the odd ones 1, 3, 5, ..).
 */
export function interleavedToHalfPerm(d: number): number[] {
  const perm: number[] = [];
  for (let j = 0; j < d / 2; j++) perm.push(2 * j);
  for (let j = 0; j < d / 2; j++) perm.push(2 * j + 1);
  return perm;
}

/** Applies interleavedToHalfPerm to every head of x (rows, d), i.e. (T, H, d) with rows = T*H. */
export function permuteHeads(x: Num, rows: number, d: number): Float32Array {
  const perm = interleavedToHalfPerm(d);
  const out = new Float32Array(rows * d);
  for (let r = 0; r < rows; r++) for (let j = 0; j < d; j++) out[r * d + j] = x[r * d + perm[j]];
  return out;
}

/** y (M, N) = x (M, K) · wᵀ with w (N, K). */
export function matmul(x: Num, M: number, K: number, w: Num, N: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * w[n * K + k];
      y[m * N + n] = s;
    }
  return y;
}

/** abs (M, N) = |x| · |w|ᵀ: the scale of each dot product's rounding error. */
export function matmulAbs(x: Num, M: number, K: number, w: Num, N: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += Math.abs(x[m * K + k] * w[n * K + k]);
      y[m * N + n] = s;
    }
  return y;
}

/**
 * Causal grouped-query attention against a cache: query t (absolute position pos0 + t) of head h
 * attends to keys 0 .. pos0 + t of kv head floor(h / (H / Hkv)), scores scaled by 1/sqrt(d).
 * Cache rows past pos0 + T - 1 are never read.
 */
export function attention(
  q: Num,
  T: number,
  H: number,
  d: number,
  k: Num,
  v: Num,
  Hkv: number,
  pos0: number,
): Float64Array {
  if (H % Hkv !== 0) throw new Error('reference attention: H must be a multiple of Hkv');
  const group = H / Hkv;
  const scale = 1 / Math.sqrt(d);
  const out = new Float64Array(T * H * d);
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / group);
      const keys = pos0 + t + 1;
      const qo = (t * H + h) * d;
      const scores = new Float64Array(keys);
      let mx = -Infinity;
      for (let s = 0; s < keys; s++) {
        const ko = (s * Hkv + kvh) * d;
        let dot = 0;
        for (let j = 0; j < d; j++) dot += q[qo + j] * k[ko + j];
        scores[s] = dot * scale;
        mx = Math.max(mx, scores[s]);
      }
      let sum = 0;
      for (let s = 0; s < keys; s++) sum += (scores[s] = Math.exp(scores[s] - mx));
      for (let s = 0; s < keys; s++) {
        const p = scores[s] / sum;
        const vo = (s * Hkv + kvh) * d;
        for (let j = 0; j < d; j++) out[qo + j] += p * v[vo + j];
      }
    }
  return out;
}

export function silu(a: number): number {
  return a / (1 + Math.exp(-a));
}

export function swiglu(a: Num, b: Num): Float64Array {
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = silu(a[i]) * b[i];
  return out;
}

// ---- comparison -------------------------------------------------------------------------------

export interface Mismatch {
  index: number;
  actual: number;
  expected: number;
  err: number;
  allowed: number;
}

/**
 * Elementwise check |actual - expected| <= rtol * |expected| + atol (atol may be per element).
 * NaN matches only NaN. Returns the worst offender (largest err/allowed), or undefined if all pass.
 */
export function firstMismatch(
  actual: Num,
  expected: Num,
  rtol: number,
  atol: number | Num = 0,
): Mismatch | undefined {
  if (actual.length !== expected.length)
    return { index: -1, actual: actual.length, expected: expected.length, err: Infinity, allowed: 0 };
  let worst: Mismatch | undefined;
  let worstRatio = 1;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (Number.isNaN(e) || Number.isNaN(a)) {
      if (Number.isNaN(e) && Number.isNaN(a)) continue;
      return { index: i, actual: a, expected: e, err: NaN, allowed: 0 };
    }
    if (a === e) continue; // also equal infinities
    const allowed = rtol * Math.abs(e) + (typeof atol === 'number' ? atol : atol[i]);
    const err = Math.abs(a - e);
    const ratio = allowed > 0 ? err / allowed : Infinity;
    if (!(ratio <= worstRatio)) {
      worstRatio = ratio;
      worst = { index: i, actual: a, expected: e, err, allowed };
    }
  }
  return worst;
}

/** Throws a descriptive Error unless every element is within rtol/atol (see firstMismatch). */
export function assertClose(actual: Num, expected: Num, rtol: number, atol: number | Num = 0, what = 'values'): void {
  const m = firstMismatch(actual, expected, rtol, atol);
  if (!m) return;
  if (m.index < 0) throw new Error(`${what}: length ${m.actual} != expected ${m.expected}`);
  throw new Error(
    `${what}: element ${m.index} is ${m.actual}, expected ${m.expected} ` +
      `(|diff| ${m.err.toExponential(3)} > allowed ${m.allowed.toExponential(3)})`,
  );
}

/** Euclidean norm of a[off .. off+n). */
export function norm(a: Num, off = 0, n = a.length - off): number {
  let s = 0;
  for (let i = off; i < off + n; i++) s += a[i] * a[i];
  return Math.sqrt(s);
}

/**
 * Relative-to-norm check for reductions, row by row: ||actual_r - expected_r|| <= tol * ||expected_r||
 * for every row r of length `rowLen` (a zero expected row must be matched exactly up to tol * 1e-30).
 */
export function assertCloseNorm(actual: Num, expected: Num, rowLen: number, tol: number, what = 'values'): void {
  if (actual.length !== expected.length) throw new Error(`${what}: length ${actual.length} != expected ${expected.length}`);
  for (let off = 0; off < expected.length; off += rowLen) {
    let d = 0;
    for (let i = off; i < off + rowLen; i++) {
      const diff = actual[i] - expected[i];
      d += diff * diff;
    }
    const diffNorm = Math.sqrt(d);
    const ref = norm(expected, off, rowLen);
    if (!(diffNorm <= tol * ref + 1e-30))
      throw new Error(
        `${what}: row ${off / rowLen} differs by ${diffNorm.toExponential(3)} (relative ` +
          `${(diffNorm / ref).toExponential(3)} > ${tol}); expected norm ${ref.toExponential(3)}`,
      );
  }
}

/** Throws unless the two arrays are identical element by element (NaN equals NaN, -0 equals 0). */
export function assertEqual(actual: Num, expected: Num, what = 'values'): void {
  if (actual.length !== expected.length) throw new Error(`${what}: length ${actual.length} != expected ${expected.length}`);
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (a === e || (Number.isNaN(a) && Number.isNaN(e))) continue;
    throw new Error(`${what}: element ${i} is ${a}, expected ${e}`);
  }
}
