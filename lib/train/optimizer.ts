// AdamW over the adapter's parameters (SPEC §4): fused native update per tensor, fp32 state,
// optional global-norm clipping, and a refusal to step on a non-finite gradient.
import { native, Tensor } from '../native';

export interface AdamWOptions {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export const paperAdamW: AdamWOptions = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.02 };

export class NonFiniteError extends Error {}

export class AdamW {
  readonly m: Tensor[];
  readonly v: Tensor[];
  /** optimiser steps taken */
  step = 0;

  /** Fresh state (m = v = 0), or the saved moments of a checkpoint. */
  constructor(
    readonly params: Tensor[],
    readonly opts: AdamWOptions = paperAdamW,
    saved?: { moments: { m: Float32Array; v: Float32Array }[]; step: number },
    /** per parameter: whether weight decay applies (default all; SPEC §8 exempts the projection's biases) */
    readonly decay: boolean[] = params.map(() => true),
  ) {
    if (decay.length !== params.length) throw new RangeError(`AdamW: ${decay.length} decay flags for ${params.length} parameters`);
    // the moments live beside their parameter
    const init = (i: number, which: 'm' | 'v') =>
      saved
        ? native.fromArray(saved.moments[i][which], [...params[i].shape], 'f32', params[i].device)
        : native.zeros([...params[i].shape], 'f32', params[i].device);
    this.m = params.map((_, i) => init(i, 'm'));
    this.v = params.map((_, i) => init(i, 'v'));
    this.step = saved?.step ?? 0;
  }

  /** The global L2 norm of the gradients (the sum of squares is accumulated in double). */
  static async gradNorm(grads: Tensor[]): Promise<number> {
    let ss = 0;
    for (const g of grads) {
      const t = native.sumSquares(g);
      ss += (await t.read())[0];
      t.dispose();
    }
    return Math.sqrt(ss);
  }

  /**
   * Clips (like torch.nn.utils.clip_grad_norm_) when `clip` is set, then updates every parameter.
   * Returns the gradient norm before clipping. Throws NonFiniteError, changing nothing, when the
   * gradient is not finite.
   */
  async update(grads: Tensor[], lr: number, clip?: number): Promise<number> {
    const norm = await AdamW.gradNorm(grads);
    if (!Number.isFinite(norm)) throw new NonFiniteError(`the gradient norm is ${norm} at step ${this.step + 1}`);
    if (clip !== undefined && clip > 0) {
      const coef = clip / (norm + 1e-6);
      if (coef < 1) for (const g of grads) native.scaleInPlace(g, coef);
    }
    this.step++;
    const { beta1, beta2, eps, weightDecay } = this.opts;
    this.params.forEach((p, i) =>
      native.adamw(p, grads[i], this.m[i], this.v[i], this.step, lr, beta1, beta2, eps, this.decay[i] ? weightDecay : 0),
    );
    return norm;
  }

  dispose(): void {
    for (const t of [...this.m, ...this.v]) t.dispose();
  }
}
