// What one adapter training step and one decoded token cost, counted from the model's shape alone
// (no native addon: the GPU check's report and the unit test use these too).
//
// Letters: Nl layers, L adapted layers (the top L), K prompts per adapted layer, C = dim, F hidden,
// H heads, Hkv kv heads, d = C / H, Ckv = Hkv d, V vocab; a packed micro-batch of N tokens in
// sequences of lengths n_s, P = Σ n_s (n_s + 1) / 2 causal (query, key) pairs, M target tokens.

import type { LlamaConfig } from '../lib/model/config';

/** The shape fields the counts need (a LlamaConfig has them all). */
export type ModelShape = Pick<LlamaConfig, 'dim' | 'hiddenDim' | 'nLayers' | 'nHeads' | 'nKvHeads' | 'vocabSize'>;

/** LLaMA-7B (and Llama-2-7B): the shape of the GPU check's benchmark. */
export const LLAMA_7B: ModelShape = { dim: 4096, hiddenDim: 11008, nLayers: 32, nHeads: 32, nKvHeads: 32, vocabSize: 32000 };

export interface AdapterStepFlops {
  /** frozen matmuls of the forward, all Nl layers, + the prompts' keys and values */
  forwardMatmul: number;
  /** input-gradient matmuls of the top L layers (the lowest skips wq/wk/wv) + dP */
  backwardMatmul: number;
  /** attention products over the causal pairs and the prompt branch, forward and backward */
  attention: number;
  /** the LM head at the M target rows only: logits and their input gradient */
  head: number;
  total: number;
}

/** The formula of adapterStepFlops, printed beside the figures that use it. */
export const ADAPTER_STEP_FLOPS_FORMULA =
  'FLOPs/step = forward matmuls Nl·2N(2C² + 2C·Ckv + 3CF) + L·4K·C·Ckv (prompt keys/values) ' +
  '+ backward input-gradient matmuls of the top L layers only: L·2N(C² + 3CF) + (L−1)·2N(C² + 2C·Ckv) + L·4K·Ckv·C (dP) ' +
  '+ attention Nl·4C·P + L·4C·K·N forward, L·(10C·P + 12C·K·N) backward (P = Σ n(n+1)/2 causal pairs per sequence) ' +
  '+ LM head 4·M·C·V at the M target rows only; elementwise work (norms, RoPE, SwiGLU, softmax, AdamW) is not counted';

/**
 * Multiply-adds × 2 of one optimiser step of LLaMA-Adapter on a packed micro-batch with sequences
 * of lengths `seqLens` and `targets` target tokens (ADAPTER_STEP_FLOPS_FORMULA):
 *
 *   forward matmuls   Nl · 2N (C·C + 2 C·Ckv + C·C + 3 C·F)          wq, wk, wv, wo, w1, w3, w2: every layer
 *                     + L · 2K·C·2Ckv                               Kp = P Wkᵀ, Vp = P Wvᵀ
 *   backward matmuls  L · 2N (C·C + 3 C·F)                          dx through wo, w2, w1, w3: the top L layers
 *                     + (L − 1) · 2N (C·C + 2 C·Ckv)                dx through wq, wk, wv: not needed in the lowest
 *                                                                   adapted layer (nothing below takes a gradient)
 *                     + L · 2·2K·Ckv·C                              dP = dKp Wk + dVp Wv
 *   attention         Nl · H · 4d·P                                 QKᵀ and PV over the causal pairs, every layer
 *                     + L · H · 4d·K·N                              the prompt branch, adapted layers
 *                     + L · H · (10d·P + 12d·K·N)                   backward (scores recomputed), adapted layers
 *   LM head           2 M·C·V + 2 M·C·V                             logits and dh at the M target rows only
 *
 * The layers below the adapted ones run forward only; no gradient of a frozen weight is formed.
 * train-step.ts's stepFlops (the CPU table) is this count for a packed Batch;
 * test/gpu-check.test.ts checks it against a hand count.
 */
export function adapterStepFlops(s: ModelShape, L: number, K: number, seqLens: readonly number[], targets: number): AdapterStepFlops {
  const C = s.dim;
  const F = s.hiddenDim;
  const H = s.nHeads;
  const d = C / H;
  const Ckv = s.nKvHeads * d;
  const V = s.vocabSize;
  let N = 0;
  let P = 0;
  for (const n of seqLens) {
    N += n;
    P += (n * (n + 1)) / 2;
  }
  const qkv = C * C + 2 * C * Ckv;
  const rest = C * C + 3 * C * F;
  const forwardMatmul = s.nLayers * 2 * N * (qkv + rest) + L * 2 * K * C * 2 * Ckv;
  const backwardMatmul = L * 2 * N * rest + Math.max(0, L - 1) * 2 * N * qkv + L * 2 * 2 * K * Ckv * C;
  const attention = s.nLayers * H * 4 * d * P + L * H * 4 * d * K * N + L * H * (10 * d * P + 12 * d * K * N);
  const head = 4 * targets * C * V;
  return { forwardMatmul, backwardMatmul, attention, head, total: forwardMatmul + backwardMatmul + attention + head };
}

/**
 * Bytes of weights one decoded token reads (batch 1): every layer's matrices (wq, wk, wv, wo, w1,
 * w2, w3) in `bytesPerWeight`, its two f32 norms, the final f32 norm, the whole classifier (V, C)
 * and one embedding row. The KV cache and the adapter's prompt keys/values are left out (at 7B
 * and 100 positions the cache is under 1% of this), so a bound made from it is slightly optimistic.
 */
export function decodeWeightBytes(s: ModelShape, bytesPerWeight: number): number {
  const C = s.dim;
  const Ckv = (s.nKvHeads * C) / s.nHeads;
  const layer = bytesPerWeight * (2 * C * C + 2 * Ckv * C + 3 * s.hiddenDim * C) + 4 * 2 * C;
  return s.nLayers * layer + 4 * C + bytesPerWeight * s.vocabSize * C + bytesPerWeight * C;
}
