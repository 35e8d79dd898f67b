// Plain float64 references of the training ops (SPEC.md §2 and §4), written to be obviously
// correct rather than fast, independent of the native kernels: the gated attention forms every
// probability explicitly and differentiates it directly (no log-sum-exp or rowsum(dout * out)
// tricks). Layouts follow lib/native.ts (flat row-major arrays); segments are (S+1) offsets.
//
//   ropeAt          x (N, H, d), positions (N)                      -> (N, H, d)
//   gatedAttention  q (N, H, d), k, v (N, Hkv, d), pk, pv (K, Hkv, d) or per segment (S, K, Hkv, d),
//                   gate (H) | (1) | null; causal within each segment, or bidirectional
//   rmsnormBackward dy, x (T, C), w (C)                              -> dx (T, C)
//   swigluBackward  dout, a, b (n)                                   -> da, db
//   matmulBackward  dy (M, N), w (N, K)                              -> dx (M, K)
//   crossEntropy    logits (M, V), targets (M)                       -> loss, dlogits (M, V)
//   adamw           torch.optim.AdamW's formula in float64
import { Num, ropeFreq, ropePair, RopeLayout } from './reference';

/** x (N, H, d) rotated by per-token positions (by -angle when inverse); returns a new array. */
export function ropeAt(
  x: Num,
  N: number,
  H: number,
  d: number,
  positions: Num,
  theta: number,
  layout: RopeLayout,
  inverse = false,
): Float64Array {
  const out = Float64Array.from(x);
  for (let t = 0; t < N; t++)
    for (let h = 0; h < H; h++) {
      const base = (t * H + h) * d;
      for (let i = 0; i < d / 2; i++) {
        const angle = (inverse ? -1 : 1) * positions[t] * ropeFreq(i, d, theta);
        const [ia, ib] = ropePair(i, d, layout);
        const x0 = x[base + ia];
        const x1 = x[base + ib];
        out[base + ia] = x0 * Math.cos(angle) - x1 * Math.sin(angle);
        out[base + ib] = x0 * Math.sin(angle) + x1 * Math.cos(angle);
      }
    }
  return out;
}

export interface AttnDims {
  N: number;
  H: number;
  Hkv: number;
  d: number;
  /** prompt length (ignored without a prompt) */
  K: number;
  /** true (default): query t sees keys seg[s] .. t; false: the whole segment seg[s] .. seg[s+1]-1 */
  causal?: boolean;
}

export interface AttnInputs {
  q: Num;
  k: Num;
  v: Num;
  segments: Num;
  /** prompt keys/values (K, Hkv, d), or (S, K, Hkv, d) with perSegment, and raw gate (H) or (1);
   *  all null for plain attention */
  pk: Num | null;
  pv: Num | null;
  gate: Num | null;
  /** pk, pv hold one prompt per segment: segment s reads pk[s], pv[s] */
  perSegment?: boolean;
}

function softmax(s: number[]): number[] {
  const mx = Math.max(...s);
  const e = s.map((x) => Math.exp(x - mx));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / z);
}
function logSumExp(s: number[]): number {
  if (s.length === 0) return -Infinity;
  const mx = Math.max(...s);
  return mx + Math.log(s.reduce((a, x) => a + Math.exp(x - mx), 0));
}

/** Walks every (segment, head, query): the word and prompt scores and probabilities. `p0` is the
 *  prompt row of the query's segment: prompt key p of kv head kvh is row p0 + p * Hkv + kvh. */
function eachQuery(
  dims: AttnDims,
  x: AttnInputs,
  fn: (t: number, h: number, kvh: number, s0: number, aw: number[], ap: number[], sw: number[], sp: number[], p0: number) => void,
): void {
  const { H, Hkv, d } = dims;
  const K = x.pk ? dims.K : 0;
  const group = H / Hkv;
  const scale = 1 / Math.sqrt(d);
  const S = x.segments.length - 1;
  for (let s = 0; s < S; s++) {
    const s0 = x.segments[s];
    const s1 = x.segments[s + 1];
    const p0 = x.perSegment ? s * K * Hkv : 0;
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / group);
      for (let t = s0; t < s1; t++) {
        const qo = (t * H + h) * d;
        const sw: number[] = [];
        const last = dims.causal === false ? s1 - 1 : t;
        for (let j = s0; j <= last; j++) {
          let dot = 0;
          for (let c = 0; c < d; c++) dot += x.q[qo + c] * x.k[(j * Hkv + kvh) * d + c];
          sw.push(dot * scale);
        }
        const sp: number[] = [];
        for (let p = 0; p < K; p++) {
          let dot = 0;
          for (let c = 0; c < d; c++) dot += x.q[qo + c] * x.pk![(p0 + p * Hkv + kvh) * d + c];
          sp.push(dot * scale);
        }
        fn(t, h, kvh, s0, softmax(sw), K ? softmax(sp) : [], sw, sp, p0);
      }
    }
  }
}

function gammaOf(gate: Num | null, h: number): number {
  if (!gate) return 0;
  return Math.tanh(gate.length === 1 ? gate[0] : gate[h]);
}

/** out (N, H, d) and stats (N, H, 2) = [log-sum-exp of the scaled word scores, of the prompt ones]. */
export function gatedAttention(dims: AttnDims, x: AttnInputs): { out: Float64Array; stats: Float64Array } {
  const { N, H, Hkv, d } = dims;
  const out = new Float64Array(N * H * d);
  const stats = new Float64Array(N * H * 2);
  eachQuery(dims, x, (t, h, kvh, s0, aw, ap, sw, sp, p0) => {
    const o = (t * H + h) * d;
    const g = gammaOf(x.gate, h);
    for (let c = 0; c < d; c++) {
      let y = 0;
      aw.forEach((a, i) => (y += a * x.v[((s0 + i) * Hkv + kvh) * d + c]));
      let yp = 0;
      ap.forEach((a, p) => (yp += a * x.pv![(p0 + p * Hkv + kvh) * d + c]));
      out[o + c] = y + g * yp;
    }
    stats[(t * H + h) * 2] = logSumExp(sw);
    stats[(t * H + h) * 2 + 1] = logSumExp(sp);
  });
  return { out, stats };
}

export interface AttnGrads {
  dq: Float64Array;
  dk: Float64Array;
  dv: Float64Array;
  dpk: Float64Array | null;
  dpv: Float64Array | null;
  dgate: Float64Array | null;
}

/** The gradients of sum(dout * out) by direct differentiation of the probabilities. */
export function gatedAttentionBackward(dims: AttnDims, x: AttnInputs, dout: Num): AttnGrads {
  const { N, H, Hkv, d } = dims;
  const K = x.pk ? dims.K : 0;
  const scale = 1 / Math.sqrt(d);
  const dq = new Float64Array(N * H * d);
  const dk = new Float64Array(N * Hkv * d);
  const dv = new Float64Array(N * Hkv * d);
  const dpk = x.pk ? new Float64Array(x.pk.length) : null; // the shape of pk (shared or per segment)
  const dpv = x.pk ? new Float64Array(x.pk.length) : null;
  const dgate = x.gate ? new Float64Array(x.gate.length) : null;
  eachQuery(dims, x, (t, h, kvh, s0, aw, ap, _sw, _sp, p0) => {
    const o = (t * H + h) * d;
    const g = gammaOf(x.gate, h);
    const dotDo = (arr: Num, row: number) => {
      let s = 0;
      for (let c = 0; c < d; c++) s += dout[o + c] * arr[row * d + c];
      return s;
    };
    // word branch: out += sum_j a_j v_j
    const da = aw.map((_, i) => dotDo(x.v, (s0 + i) * Hkv + kvh));
    const sumAda = aw.reduce((acc, a, i) => acc + a * da[i], 0);
    aw.forEach((a, i) => {
      const j = s0 + i;
      const ds = a * (da[i] - sumAda) * scale;
      for (let c = 0; c < d; c++) {
        dv[(j * Hkv + kvh) * d + c] += a * dout[o + c];
        dq[o + c] += ds * x.k[(j * Hkv + kvh) * d + c];
        dk[(j * Hkv + kvh) * d + c] += ds * x.q[o + c];
      }
    });
    if (!K) return;
    // prompt branch: out += g * sum_p b_p pv_p
    const db = ap.map((_, p) => g * dotDo(x.pv!, p0 + p * Hkv + kvh));
    const sumBdb = ap.reduce((acc, b, p) => acc + b * db[p], 0);
    let dotYp = 0;
    ap.forEach((b, p) => {
      const ds = b * (db[p] - sumBdb) * scale;
      dotYp += b * dotDo(x.pv!, p0 + p * Hkv + kvh);
      for (let c = 0; c < d; c++) {
        dpv![(p0 + p * Hkv + kvh) * d + c] += g * b * dout[o + c];
        dq[o + c] += ds * x.pk![(p0 + p * Hkv + kvh) * d + c];
        dpk![(p0 + p * Hkv + kvh) * d + c] += ds * x.q[o + c];
      }
    });
    dgate![x.gate!.length === 1 ? 0 : h] += (1 - g * g) * dotYp;
  });
  return { dq, dk, dv, dpk, dpv, dgate };
}

/** dx of out = x * w / sqrt(mean(x^2) + eps), row by row. */
export function rmsnormBackward(dy: Num, x: Num, T: number, C: number, w: Num, eps: number): Float64Array {
  const dx = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[t * C + c] ** 2;
    const ms = ss / C + eps;
    const r = 1 / Math.sqrt(ms);
    // out_c = x_c w_c r;  d out_c / d x_i = w_c (delta_ci r - x_c x_i r^3 / C)
    let gx = 0;
    for (let c = 0; c < C; c++) gx += dy[t * C + c] * w[c] * x[t * C + c];
    for (let i = 0; i < C; i++) dx[t * C + i] = dy[t * C + i] * w[i] * r - (x[t * C + i] * r ** 3 * gx) / C;
  }
  return dx;
}

/** [da, db] of out = silu(a) * b. */
export function swigluBackward(dout: Num, a: Num, b: Num): [Float64Array, Float64Array] {
  const da = new Float64Array(a.length);
  const db = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) {
    const s = 1 / (1 + Math.exp(-a[i]));
    da[i] = dout[i] * b[i] * (s + a[i] * s * (1 - s));
    db[i] = dout[i] * a[i] * s;
  }
  return [da, db];
}

/** dx (M, K) = dy (M, N) · w (N, K). */
export function matmulBackward(dy: Num, M: number, N: number, w: Num, K: number): Float64Array {
  const dx = new Float64Array(M * K);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      const g = dy[m * N + n];
      for (let k = 0; k < K; k++) dx[m * K + k] += g * w[n * K + k];
    }
  return dx;
}

/** loss = sum over rows of -log softmax(logits)[target]; dlogits = scale * (softmax - onehot). */
export function crossEntropy(logits: Num, M: number, V: number, targets: Num, scale: number): { loss: number; dlogits: Float64Array } {
  let loss = 0;
  const dlogits = new Float64Array(M * V);
  for (let m = 0; m < M; m++) {
    const row = Array.from({ length: V }, (_, j) => logits[m * V + j]);
    const lse = logSumExp(row);
    loss += lse - row[targets[m]];
    for (let j = 0; j < V; j++) dlogits[m * V + j] = scale * (Math.exp(row[j] - lse) - (j === targets[m] ? 1 : 0));
  }
  return { loss, dlogits };
}

/** One torch.optim.AdamW step (decoupled decay) in float64; returns the new param, m and v. */
export function adamw(
  p: Num,
  g: Num,
  m: Num,
  v: Num,
  step: number,
  lr: number,
  beta1: number,
  beta2: number,
  eps: number,
  wd: number,
): { p: Float64Array; m: Float64Array; v: Float64Array } {
  const n = p.length;
  const P = new Float64Array(n);
  const Mo = new Float64Array(n);
  const Vo = new Float64Array(n);
  const bc1 = 1 - beta1 ** step;
  const bc2 = 1 - beta2 ** step;
  for (let i = 0; i < n; i++) {
    Mo[i] = beta1 * m[i] + (1 - beta1) * g[i];
    Vo[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
    const denom = Math.sqrt(Vo[i]) / Math.sqrt(bc2) + eps;
    P[i] = p[i] * (1 - lr * wd) - (lr / bc1) * (Mo[i] / denom);
  }
  return { p: P, m: Mo, v: Vo };
}

export function sumSquares(x: Num): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return s;
}
