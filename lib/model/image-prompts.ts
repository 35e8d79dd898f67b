// The image part of the image-conditioned adapter (SPEC §8) for one optimiser step:
//
//     I_p = fc2 · GELU(fc1 · concat(g_1 .. g_M) + b1) + b2
//
// computed once per image per step (every micro-batch of the step reads the same rows), and its
// backward, once per step, from the gradient that the micro-batches add to dI_p.
//
// Shapes: U distinct images of the step, M·D feature values per image, R projection width, C = dim.
import { native, Tensor, Device } from '../native';
import { ImageProjTensors } from './adapter';

export class ImagePromptStep {
  /** image key -> row of `ip`; text-only segments read row U (zeros) */
  readonly rows: Map<string, number>;
  /** (U+1, C) I_p of each image, then a zero row */
  readonly ip: Tensor;
  /** (U+1, C) the gradient of the step's loss w.r.t. ip (the zero row's is ignored) */
  readonly dIp: Tensor | undefined;
  private readonly saved: Tensor[]; // f (U, M·D), z (U, R), h (U, R)

  /**
   * `features`: the U images' values (U·M·D, row-major, in `keys` order). `withGrad`: keep what the
   * projection's backward needs and a dI_p accumulator.
   */
  constructor(
    readonly proj: ImageProjTensors<Tensor>,
    keys: string[],
    features: Float32Array,
    readonly withGrad: boolean,
  ) {
    const U = keys.length;
    const device: Device = proj.fc1.device;
    const MD = proj.fc1.shape[1];
    const C = proj.fc2.shape[0];
    if (features.length !== U * MD)
      throw new RangeError(`image prompts: ${U} images of ${MD} feature values need ${U * MD} values, got ${features.length}`);
    this.rows = new Map(keys.map((k, i) => [k, i]));
    if (this.rows.size !== U) throw new RangeError('image prompts: the image keys must be distinct');
    this.ip = native.zeros([U + 1, C], 'f32', device);
    this.dIp = withGrad ? native.zeros([U + 1, C], 'f32', device) : undefined;
    this.saved = [];
    if (U === 0) return;
    const f = native.fromArray(features, [U, MD], 'f32', device); // (U, M·D)
    const z = native.matmul(f, proj.fc1); // (U, R)
    native.addBias(z, proj.b1);
    const h = native.gelu(z, 'gelu'); // (U, R)
    const ip = native.matmul(h, proj.fc2); // (U, C)
    native.addBias(ip, proj.b2);
    const first = native.fromArray(Int32Array.from({ length: U }, (_, i) => i), [U]);
    native.scatterAddRows(this.ip, first, ip);
    first.dispose();
    ip.dispose();
    if (withGrad) this.saved.push(f, z, h);
    else [f, z, h].forEach((t) => t.dispose());
  }

  get imageCount(): number {
    return this.rows.size;
  }

  /** (S) the row of `ip` that each segment reads: its image's, or U (zeros) for none. An image
   *  that the step was not built with is an error naming it. */
  rowsOf(images: (string | null | undefined)[]): Int32Array {
    const U = this.rows.size;
    return Int32Array.from(images, (k, s) => {
      if (k === null || k === undefined) return U;
      const r = this.rows.get(k);
      if (r === undefined) throw new Error(`segment ${s}: image "${k}" is not among the step's ${U} images`);
      return r;
    });
  }

  /** Adds the projection's gradients (from dIp) to `grads` (fc1, b1, fc2, b2 accumulators). */
  backward(grads: ImageProjTensors<Tensor>): void {
    if (!this.dIp) throw new Error('image prompts: built without gradients');
    const U = this.rows.size;
    if (U === 0) return;
    const [f, z, h] = this.saved;
    const dIp = native.sliceRows(this.dIp, 0, U); // (U, C)
    const db2 = native.biasGrad(dIp); // (C)
    const dfc2 = native.matmulWeightGrad(dIp, h); // (C, R) = dIpᵀ h
    const dh = native.matmulBackward(dIp, this.proj.fc2); // (U, R)
    const dz = native.geluBackward(dh, z, 'gelu'); // (U, R)
    const db1 = native.biasGrad(dz); // (R)
    const dfc1 = native.matmulWeightGrad(dz, f); // (R, M·D) = dzᵀ f
    native.addInPlace(grads.fc1, dfc1);
    native.addInPlace(grads.b1, db1);
    native.addInPlace(grads.fc2, dfc2);
    native.addInPlace(grads.b2, db2);
    [dIp, db2, dfc2, dh, dz, db1, dfc1].forEach((t) => t.dispose());
  }

  dispose(): void {
    for (const t of [this.ip, this.dIp, ...this.saved]) t?.dispose();
  }
}
