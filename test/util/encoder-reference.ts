// Plain float64 references of the image-encoder ops (LayerNorm, GELU, bias, the matmul weight
// gradient, patch extraction, a direct Conv2d), written from the formulas (PyTorch's definitions)
// to be obviously correct rather than fast; independent of the native code's loop orders.
//
// Layouts are flat row-major arrays, as lib/native.ts:
//   layerNorm    x (T, C), w (C), b (C)           -> (T, C)
//   gelu         x (any)                          -> same shape
//   weightGrad   dy (M, N), x (M, K)              -> dW (N, K) = dyᵀ x
//   biasGrad     dy (M, N)                        -> (N) column sums
//   patches      images (B, Cin, H, W), P         -> (B * H/P * W/P, Cin * P * P)
//   conv2d       images (B, Cin, H, W), w (D, Cin, P, P), stride P -> (B, H/P * W/P, D)
import type { Num } from './reference';

/** the kinds of native.gelu */
export type GeluKind = 'gelu' | 'quick_gelu';

// ---- erf, the normal CDF ----------------------------------------------------------------------

/** erfc(z) in float64: the Taylor series of erf for |z| < 3 (relative error of erfc below ~1e-9
 *  there), the continued fraction (evaluated from 200 terms down) above; erfc(-z) = 2 - erfc(z). */
export function erfc(z: number): number {
  if (z < 0) return 2 - erfc(-z);
  if (z < 3) {
    // erf(z) = 2/sqrt(pi) * sum_n (-1)^n z^(2n+1) / (n! (2n+1))
    let term = z, sum = z;
    for (let n = 1; n < 200; n++) {
      term *= (-z * z) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    return 1 - (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc(z) = exp(-z²)/sqrt(pi) · 1/(z + (1/2)/(z + 1/(z + (3/2)/(z + 2/(z + ...)))))
  let f = z;
  for (let n = 200; n >= 1; n--) f = z + n / 2 / f;
  return Math.exp(-z * z) / Math.sqrt(Math.PI) / f;
}

/** Φ(x), the standard normal CDF */
export function normalCdf(x: number): number {
  return 0.5 * erfc(-x / Math.SQRT2);
}

/** φ(x), the standard normal density */
export function normalPdf(x: number): number {
  return Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI);
}

function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

/** gelu: x Φ(x); quick_gelu: x sigmoid(1.702 x) */
export function gelu(x: Num, kind: GeluKind): Float64Array {
  return Float64Array.from(x, (v) => (kind === 'gelu' ? v * normalCdf(v) : v * sigmoid(1.702 * v)));
}

/** dx = dy · d/dx gelu(x) */
export function geluBackward(dy: Num, x: Num, kind: GeluKind): Float64Array {
  return Float64Array.from(x, (v, i) => {
    if (kind === 'gelu') return dy[i] * (normalCdf(v) + v * normalPdf(v));
    const s = sigmoid(1.702 * v);
    return dy[i] * (s + 1.702 * v * s * (1 - s));
  });
}

// ---- LayerNorm --------------------------------------------------------------------------------

function moments(x: Num, t: number, C: number): [number, number] {
  let s = 0;
  for (let c = 0; c < C; c++) s += x[t * C + c];
  const mean = s / C;
  let v = 0;
  for (let c = 0; c < C; c++) v += (x[t * C + c] - mean) ** 2;
  return [mean, v / C];
}

export function layerNorm(x: Num, T: number, C: number, w: Num, b: Num, eps: number): Float64Array {
  const out = new Float64Array(T * C);
  for (let t = 0; t < T; t++) {
    const [mean, v] = moments(x, t, C);
    const r = 1 / Math.sqrt(v + eps);
    for (let c = 0; c < C; c++) out[t * C + c] = (x[t * C + c] - mean) * r * w[c] + b[c];
  }
  return out;
}

/** Per element |xhat w| + |b|: the scale the output's rounding error is relative to. */
export function layerNormScale(x: Num, T: number, C: number, w: Num, b: Num, eps: number): Float64Array {
  const absw = Float64Array.from(w, Math.abs), absb = Float64Array.from(b, Math.abs);
  const zero = new Float64Array(C);
  const y = layerNorm(x, T, C, absw, zero, eps);
  return Float64Array.from(y, (v, i) => Math.abs(v) + absb[i % C]);
}

/** The gradients of sum(dy * layerNorm(x, w, b)): dx (T, C), dw (C), db (C). */
export function layerNormBackward(dy: Num, x: Num, T: number, C: number, w: Num, eps: number): { dx: Float64Array; dw: Float64Array; db: Float64Array } {
  const dx = new Float64Array(T * C), dw = new Float64Array(C), db = new Float64Array(C);
  for (let t = 0; t < T; t++) {
    const [mean, v] = moments(x, t, C);
    const r = 1 / Math.sqrt(v + eps);
    const xhat = new Float64Array(C), g = new Float64Array(C);
    let mg = 0, mgx = 0;
    for (let c = 0; c < C; c++) {
      xhat[c] = (x[t * C + c] - mean) * r;
      g[c] = dy[t * C + c] * w[c];
      mg += g[c] / C;
      mgx += (g[c] * xhat[c]) / C;
      dw[c] += dy[t * C + c] * xhat[c];
      db[c] += dy[t * C + c];
    }
    for (let c = 0; c < C; c++) dx[t * C + c] = r * (g[c] - mg - xhat[c] * mgx);
  }
  return { dx, dw, db };
}

// ---- matmul weight gradient, bias -------------------------------------------------------------

export function weightGrad(dy: Num, x: Num, M: number, N: number, K: number): Float64Array {
  const dw = new Float64Array(N * K);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      const g = dy[m * N + n];
      for (let k = 0; k < K; k++) dw[n * K + k] += g * x[m * K + k];
    }
  return dw;
}

export function biasGrad(dy: Num, M: number, N: number): Float64Array {
  const db = new Float64Array(N);
  for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) db[n] += dy[m * N + n];
  return db;
}

// ---- patches, Conv2d --------------------------------------------------------------------------

export function patches(img: Num, B: number, Cin: number, H: number, W: number, P: number): Float64Array {
  const GH = H / P, GW = W / P, row = Cin * P * P;
  const out = new Float64Array(B * GH * GW * row);
  for (let b = 0; b < B; b++)
    for (let gy = 0; gy < GH; gy++)
      for (let gx = 0; gx < GW; gx++)
        for (let c = 0; c < Cin; c++)
          for (let ky = 0; ky < P; ky++)
            for (let kx = 0; kx < P; kx++)
              out[((b * GH + gy) * GW + gx) * row + (c * P + ky) * P + kx] = img[((b * Cin + c) * H + gy * P + ky) * W + gx * P + kx];
  return out;
}

/** torch.nn.Conv2d(Cin, D, kernel_size=P, stride=P) without bias, output flattened to (B, positions, D). */
export function conv2d(img: Num, B: number, Cin: number, H: number, W: number, w: Num, D: number, P: number): Float64Array {
  const GH = H / P, GW = W / P;
  const out = new Float64Array(B * GH * GW * D);
  for (let b = 0; b < B; b++)
    for (let oy = 0; oy < GH; oy++)
      for (let ox = 0; ox < GW; ox++)
        for (let d = 0; d < D; d++) {
          let s = 0;
          for (let c = 0; c < Cin; c++)
            for (let i = 0; i < P; i++)
              for (let j = 0; j < P; j++) s += w[((d * Cin + c) * P + i) * P + j] * img[((b * Cin + c) * H + oy * P + i) * W + ox * P + j];
          out[((b * GH + oy) * GW + ox) * D + d] = s;
        }
  return out;
}
