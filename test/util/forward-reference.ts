// The op-by-op forward of cached inference (each op queued on its own), the reference that the
// fused decoderLayer and the one-op modelForward must equal bit for bit.
import { native, Tensor } from '../../lib/native';
import { LayerWeights, LlamaWeights } from '../../lib/model/weights';
import { headSize, LlamaConfig } from '../../lib/model/config';

export interface Prompt {
  pk: Tensor;
  pv: Tensor;
  gate: Tensor;
}

// The forward of one layer op by op, as lib/model/llama.ts ran it before the fused op.
export function layerOpByOp(x: Tensor, lw: LayerWeights, c: LlamaConfig, k: Tensor, v: Tensor, pos0: number, p?: Prompt): void {
  const T = x.shape[0];
  const d = headSize(c);
  const a = native.rmsnorm(x, lw.attnNorm, c.normEps);
  const q = native.reshape(native.matmul(a, lw.wq), [T, c.nHeads, d]);
  const kk = native.reshape(native.matmul(a, lw.wk), [T, c.nKvHeads, d]);
  const vv = native.reshape(native.matmul(a, lw.wv), [T, c.nKvHeads, d]);
  native.rope(q, pos0, c.ropeTheta, c.ropeLayout);
  native.rope(kk, pos0, c.ropeTheta, c.ropeLayout);
  native.kvWrite(k, kk, pos0);
  native.kvWrite(v, vv, pos0);
  const o = p ? native.attention(q, k, v, pos0, p.pk, p.pv, p.gate) : native.attention(q, k, v, pos0);
  native.addInPlace(x, native.matmul(native.reshape(o, [T, c.nHeads * d]), lw.wo));
  const f = native.rmsnorm(x, lw.ffnNorm, c.normEps);
  const h = native.swiglu(native.matmul(f, lw.w1), native.matmul(f, lw.w3));
  native.addInPlace(x, native.matmul(h, lw.w2));
}

export function randomArray(n: number, seed: number, scale: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32 - 0.5) * 2 * scale;
  });
}

/** Logits (T or 1, V) of `tokens` at pos0.., op by op; the caches (per layer) are written. */
export function modelOpByOp(
  w: LlamaWeights, c: LlamaConfig, tokens: number[], k: Tensor[], v: Tensor[], pos0: number, allLogits: boolean,
  prompts: (Prompt | undefined)[] = [],
): Tensor {
  const T = tokens.length;
  const x = native.embedding(w.embedding, native.fromArray(Int32Array.from(tokens), [T]));
  for (let l = 0; l < c.nLayers; l++) layerOpByOp(x, w.layers[l], c, k[l], v[l], pos0, prompts[l]);
  const last = allLogits ? x : native.sliceRows(x, T - 1, 1);
  return native.matmul(native.rmsnorm(last, w.finalNorm, c.normEps), w.classifier);
}
