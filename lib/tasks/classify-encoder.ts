// The frozen image encoder as the classification task uses it (SPEC §7, §9), over lib/encoder's
// ImageEncoder (forward, optionally with prompts) and EncoderGraph (the training graph to prompts and
// gates): pixels of image files, the frozen features layernorm(h_last[cls]), and the adapted forward
// with its backward. For CLIP the head sits on post_layernorm(h[cls]), before the projection.
//
// Shapes: B images, D hidden, Cin channels, S image size.
import { native, Device, Tensor } from '../native';
import { ImageEncoder } from '../encoder/encoder';
import { EncoderGraph } from '../encoder/train';
import { Classifier, EncoderDims } from '../model/classifier';

export interface AdaptedRun {
  /** layernorm(h_last[cls]) (B, D) */
  features: Tensor;
  /** df (B, D) -> += the prompt and gate gradients into grads (prompts of each adapted layer, then
   *  gates, in Classifier.parameters() order) */
  backward?: (df: Tensor, grads: Tensor[]) => void;
  dispose(): void;
}

export class ClassifyEncoder {
  readonly dims: EncoderDims;

  private constructor(readonly encoder: ImageEncoder) {
    const c = encoder.config;
    this.dims = { family: c.family, hidden: c.dim, layers: c.nLayers, heads: c.nHeads, patch: c.patchSize, image: c.imageSize };
  }

  get device(): Device {
    return this.encoder.device;
  }

  /** Floats of one preprocessed image (Cin * S * S). */
  get pixelSize(): number {
    const c = this.encoder.config;
    return c.channels * c.imageSize * c.imageSize;
  }

  /** Loads a HF ViT or CLIP folder (f32) onto `device`. */
  static async load(dir: string, device: Device): Promise<ClassifyEncoder> {
    return new ClassifyEncoder(await ImageEncoder.load(dir, { device }));
  }

  /** Decoded and preprocessed images (B, Cin, S, S) on the device; errors name the file. */
  async pixels(files: string[]): Promise<Tensor> {
    const c = this.encoder.config;
    return native.fromArray(await this.encoder.pixelsOf(files), [files.length, c.channels, c.imageSize, c.imageSize], 'f32', this.device);
  }

  /** The frozen encoder's features layernorm(h_last[cls]) (B, D). */
  features(pixels: Tensor): Tensor {
    return this.encoder.forward(pixels, { project: false })[0];
  }

  /**
   * Features (B, D) with the classifier's prompts and gates in the top layers. With `withBackward`,
   * the top layers' activations are kept and `backward` forms the prompt and gate gradients.
   */
  adaptedForward(pixels: Tensor, classifier: Classifier, withBackward: boolean): AdaptedRun {
    const prompts = { prompts: classifier.prompts, gates: classifier.gates };
    if (!withBackward) {
      const features = this.encoder.forward(pixels, { prompts, project: false })[0];
      return { features, dispose: () => features.dispose() };
    }
    const L = classifier.config.layers;
    const graph = new EncoderGraph(this.encoder, L);
    const features = graph.forward(pixels, prompts);
    return {
      features,
      backward: (df, grads) => graph.backward(df, { prompts: grads.slice(0, L), gates: grads.slice(L, 2 * L) }),
      dispose: () => {
        graph.release();
        features.dispose();
      },
    };
  }

  dispose(): void {
    this.encoder.dispose();
  }
}
