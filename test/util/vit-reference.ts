// A float64 reference of image classification with zero-init gated prompts (SPEC §7, §9), written
// from the formulas, independent of the engine: a pre-norm HF ViT forward from preprocessed pixels,
// the gated prompt branch in the top L layers (prompt keys/values through the layer's own key/value
// projections with their biases, a separate softmax over the prompts, tanh(gate) per head), the final
// layernorm on the class token, a linear head and the mean cross-entropy. Finite differences of
// `classifyLoss` are the reference gradients of the task's tests.
//
// Shapes: B images, T = 1 + P tokens, D hidden, H heads, d = D / H, F MLP size, K prompts, C classes.

export interface RefViT {
  D: number;
  H: number;
  F: number;
  patch: number;
  image: number;
  channels: number;
  eps: number;
  w: Map<string, Float64Array>; // HF ViT names (no `vit.` prefix)
}

export interface RefAdapter {
  first: number; // first adapted layer
  K: number;
  prompts: Float64Array[]; // per adapted layer (K, D)
  gates: Float64Array[]; // per adapted layer (H)
  weight: Float64Array; // (C, D)
  bias: Float64Array; // (C)
}

function get(m: RefViT, name: string): Float64Array {
  const v = m.w.get(name);
  if (!v) throw new Error(`reference: no tensor ${name}`);
  return v;
}

/** x (T, D) -> (T, D) */
function layerNorm(x: Float64Array, T: number, D: number, w: Float64Array, b: Float64Array, eps: number): Float64Array {
  const y = new Float64Array(T * D);
  for (let t = 0; t < T; t++) {
    let mean = 0;
    for (let c = 0; c < D; c++) mean += x[t * D + c];
    mean /= D;
    let v = 0;
    for (let c = 0; c < D; c++) v += (x[t * D + c] - mean) ** 2;
    const r = 1 / Math.sqrt(v / D + eps);
    for (let c = 0; c < D; c++) y[t * D + c] = (x[t * D + c] - mean) * r * w[c] + b[c];
  }
  return y;
}

/** x (M, Kin) · wᵀ (N, Kin) + b -> (M, N) */
function linear(x: Float64Array, M: number, Kin: number, w: Float64Array, b: Float64Array | undefined, N: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let i = 0; i < M; i++)
    for (let n = 0; n < N; n++) {
      let s = b ? b[n] : 0;
      for (let k = 0; k < Kin; k++) s += x[i * Kin + k] * w[n * Kin + k];
      y[i * N + n] = s;
    }
  return y;
}

/** erf to ~1e-12: the Taylor series below 4, the asymptotic series of erfc above. */
export function erf(x: number): number {
  const a = Math.abs(x);
  if (a < 4) {
    let term = x;
    let sum = x;
    for (let n = 1; n < 200; n++) {
      term *= (-x * x) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    return (2 / Math.sqrt(Math.PI)) * sum;
  }
  const x2 = a * a;
  const erfc = (Math.exp(-x2) / (a * Math.sqrt(Math.PI))) * (1 - 1 / (2 * x2) + 3 / (4 * x2 * x2) - 15 / (8 * x2 * x2 * x2));
  return Math.sign(x) * (1 - erfc);
}

const gelu = (v: number) => 0.5 * v * (1 + erf(v / Math.SQRT2));

/** Hidden states (T, D) of one image's pixels (channels, image, image) after every layer. */
export function vitForward(m: RefViT, pixels: ArrayLike<number>, adapter?: RefAdapter, layers = Infinity): Float64Array {
  const { D, H, F, patch: P, image: S, channels: Cin } = m;
  const G = S / P;
  const T = 1 + G * G;
  const d = D / H;
  const pw = get(m, 'embeddings.patch_embeddings.projection.weight'); // (D, Cin, P, P)
  const pb = get(m, 'embeddings.patch_embeddings.projection.bias');
  const cls = get(m, 'embeddings.cls_token');
  const pos = get(m, 'embeddings.position_embeddings');
  let x = new Float64Array(T * D);
  for (let c = 0; c < D; c++) x[c] = cls[c] + pos[c];
  for (let gy = 0; gy < G; gy++)
    for (let gx = 0; gx < G; gx++) {
      const t = 1 + gy * G + gx;
      for (let o = 0; o < D; o++) {
        let s = pb[o];
        for (let ci = 0; ci < Cin; ci++)
          for (let ky = 0; ky < P; ky++)
            for (let kx = 0; kx < P; kx++) s += pw[((o * Cin + ci) * P + ky) * P + kx] * pixels[(ci * S + gy * P + ky) * S + gx * P + kx];
        x[t * D + o] = s + pos[t * D + o];
      }
    }
  let n = 0;
  for (; m.w.has(`encoder.layer.${n}.layernorm_before.weight`) && n < layers; n++) {
    const l = `encoder.layer.${n}`;
    const h = layerNorm(x, T, D, get(m, `${l}.layernorm_before.weight`), get(m, `${l}.layernorm_before.bias`), m.eps);
    const proj = (what: string, inp: Float64Array, rows: number) =>
      linear(inp, rows, D, get(m, `${l}.attention.attention.${what}.weight`), get(m, `${l}.attention.attention.${what}.bias`), D);
    const q = proj('query', h, T);
    const k = proj('key', h, T);
    const v = proj('value', h, T);
    const adapted = adapter && n >= adapter.first ? n - adapter.first : -1;
    const K = adapter?.K ?? 0;
    const pk = adapted >= 0 ? proj('key', adapter!.prompts[adapted], K) : undefined;
    const pv = adapted >= 0 ? proj('value', adapter!.prompts[adapted], K) : undefined;
    const att = new Float64Array(T * D);
    const scale = 1 / Math.sqrt(d);
    for (let hh = 0; hh < H; hh++)
      for (let t = 0; t < T; t++) {
        const branch = (keys: Float64Array, vals: Float64Array, count: number, mult: number) => {
          const s = new Float64Array(count);
          let max = -Infinity;
          for (let j = 0; j < count; j++) {
            let dot = 0;
            for (let e = 0; e < d; e++) dot += q[t * D + hh * d + e] * keys[j * D + hh * d + e];
            s[j] = dot * scale;
            max = Math.max(max, s[j]);
          }
          let z = 0;
          for (let j = 0; j < count; j++) z += (s[j] = Math.exp(s[j] - max));
          for (let j = 0; j < count; j++) for (let e = 0; e < d; e++) att[t * D + hh * d + e] += (mult * s[j] * vals[j * D + hh * d + e]) / z;
        };
        branch(k, v, T, 1);
        if (pk) branch(pk, pv!, K, Math.tanh(adapter!.gates[adapted][hh]));
      }
    const o = linear(att, T, D, get(m, `${l}.attention.output.dense.weight`), get(m, `${l}.attention.output.dense.bias`), D);
    x = x.map((xv, i) => xv + o[i]);
    const h2 = layerNorm(x, T, D, get(m, `${l}.layernorm_after.weight`), get(m, `${l}.layernorm_after.bias`), m.eps);
    const a = linear(h2, T, D, get(m, `${l}.intermediate.dense.weight`), get(m, `${l}.intermediate.dense.bias`), F).map(gelu);
    const y = linear(a, T, F, get(m, `${l}.output.dense.weight`), get(m, `${l}.output.dense.bias`), D);
    x = x.map((xv, i) => xv + y[i]);
  }
  return x;
}

/** Features layernorm(h_last[cls]) (D) of one image. */
export function vitFeatures(m: RefViT, pixels: ArrayLike<number>, adapter?: RefAdapter): Float64Array {
  const x = vitForward(m, pixels, adapter);
  return layerNorm(x.subarray(0, m.D), 1, m.D, get(m, 'layernorm.weight'), get(m, 'layernorm.bias'), m.eps);
}

/** Mean cross-entropy of the head on the images' features. */
export function classifyLoss(m: RefViT, images: ArrayLike<number>[], labels: number[], a: RefAdapter): number {
  const C = a.bias.length;
  let sum = 0;
  images.forEach((px, i) => {
    const f = vitFeatures(m, px, a);
    const logits = linear(f, 1, m.D, a.weight, a.bias, C);
    const max = Math.max(...logits);
    const lse = max + Math.log(logits.reduce((s, v) => s + Math.exp(v - max), 0));
    sum += lse - logits[labels[i]];
  });
  return sum / images.length;
}

/** Central differences of f at every element of `x` (changed in place and restored). */
export function finiteDiff(f: () => number, x: Float64Array, h = 1e-5): Float64Array {
  const g = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    x[i] = v + h;
    const up = f();
    x[i] = v - h;
    const down = f();
    x[i] = v;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}
