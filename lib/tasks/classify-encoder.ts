// The frozen image encoder as the classification task uses it (SPEC §7, §9): pixels from image
// files, the frozen layers below the adapted ones, and the adapted top layers with the gated prompt
// branch — forward, and backward to the prompts and gates only (the encoder stays frozen). Every op
// is native and queued; nothing here waits.
//
// Shapes: B images, T = 1 + N tokens per image (N patches), R = B*T rows, D hidden, H heads,
// d = D / H, F MLP size, K prompts, Cin channels, S image size, P patch.
import { native, Device, Tensor } from '../native';
import { decodeImage, preprocessImage, readPreprocessConfig, PreprocessConfig } from '../image';
import { EncoderConfig, EncoderLayerWeights, EncoderWeights, loadEncoderWeights, mapEncoderWeights, tokensPerImage } from '../encoder/config';
import { LoadArena } from '../model/weights';
import { Classifier, EncoderDims } from '../model/classifier';

/** What an adapted layer's backward needs from its forward. */
interface Saved {
  x: Tensor; // (R, D) layer input
  q: Tensor; // (R, H, d)
  k: Tensor;
  v: Tensor;
  pk: Tensor; // (K, H, d)
  pv: Tensor;
  att: Tensor; // (R, H, d)
  stats: Tensor; // (R, H, 2)
  xMid: Tensor; // (R, D) after the attention residual
  a: Tensor; // (R, F) fc1 output, before the activation
}

export interface AdaptedRun {
  /** layernorm(h_last[cls]) (B, D) */
  features: Tensor;
  /** df (B, D) -> += the prompt and gate gradients into grads (per adapted layer: prompts, then
   *  gates, in Classifier.parameters() order) */
  backward?: (df: Tensor, grads: Tensor[]) => void;
  dispose(): void;
}

function disposeAll(ts: Iterable<Tensor | null | undefined>): void {
  for (const t of ts) t?.dispose();
}

export class ClassifyEncoder {
  readonly dims: EncoderDims;
  /** tokens per image T */
  readonly tokens: number;

  private constructor(
    readonly dir: string,
    readonly config: EncoderConfig,
    readonly weights: EncoderWeights,
    readonly preprocess: PreprocessConfig,
    readonly device: Device,
    private readonly arena: LoadArena,
    private readonly owned: Tensor[],
  ) {
    this.dims = {
      family: config.family,
      hidden: config.dim,
      layers: config.nLayers,
      heads: config.nHeads,
      patch: config.patchSize,
      image: config.imageSize,
    };
    this.tokens = tokensPerImage(config);
  }

  /** Loads a HF ViT or CLIP folder (f32) onto `device`. */
  static async load(dir: string, device: Device): Promise<ClassifyEncoder> {
    const arena = new LoadArena();
    try {
      const { config, weights } = loadEncoderWeights(dir, arena);
      const preprocess = readPreprocessConfig(dir, config.family, config.imageSize);
      let w = weights;
      const owned: Tensor[] = [];
      if (device !== 'cpu') {
        const move = (t: Tensor) => {
          const m = native.toDevice(t, device);
          owned.push(m);
          return m;
        };
        w = mapEncoderWeights(weights, move);
      }
      await native.synchronize(); // a NaN/Inf in the file fails here, naming the tensor
      return new ClassifyEncoder(dir, config, w, preprocess, device, arena, owned);
    } catch (err) {
      arena.release();
      throw err;
    }
  }

  /** Decoded and preprocessed images (B, Cin, S, S) on the device; errors name the file. */
  async pixels(files: string[]): Promise<Tensor> {
    const S = this.config.imageSize;
    const Cin = this.config.channels;
    const plane = Cin * S * S;
    const all = new Float32Array(files.length * plane);
    for (let i = 0; i < files.length; i++) {
      const img = await decodeImage(files[i]);
      const { size } = preprocessImage(img, this.preprocess, all.subarray(i * plane, (i + 1) * plane));
      if (size.height !== S || size.width !== S)
        throw new Error(`${files[i]}: preprocessing gives ${size.width}x${size.height} pixels, the encoder takes ${S}x${S} (see preprocessor_config.json)`);
    }
    return native.fromArray(all, [files.length, Cin, S, S], 'f32', this.device);
  }

  /** Token embeddings (B*T, D): [cls; patches · Wpatchᵀ (+ b)] + pos (CLIP: then pre_layrnorm). */
  private embed(pixels: Tensor): Tensor {
    const B = pixels.shape[0];
    const T = this.tokens;
    const w = this.weights;
    const p = native.patches(pixels, this.config.patchSize); // (B*N, Cin*P*P)
    const e = native.matmul(p, w.patchW); // (B*N, D)
    p.dispose();
    if (w.patchB) native.addBias(e, w.patchB);
    const x = native.zeros([B * T, this.config.dim], 'f32', this.device);
    const patchRows = Int32Array.from({ length: B * (T - 1) }, (_, i) => Math.floor(i / (T - 1)) * T + 1 + (i % (T - 1)));
    native.scatterAddRows(x, native.fromArray(patchRows, [patchRows.length], 'i32'), e);
    e.dispose();
    const cls = native.reshape(w.cls, [1, this.config.dim]);
    const clsRows = Int32Array.from({ length: B }, (_, b) => b * T);
    const clsTiled = native.gatherRows(cls, native.fromArray(new Int32Array(B), [B], 'i32'));
    native.scatterAddRows(x, native.fromArray(clsRows, [B], 'i32'), clsTiled);
    clsTiled.dispose();
    const posTiled = native.gatherRows(w.pos, native.fromArray(Int32Array.from({ length: B * T }, (_, i) => i % T), [B * T], 'i32'));
    native.addInPlace(x, posTiled);
    posTiled.dispose();
    if (!w.preNorm) return x;
    const y = native.layerNorm(x, w.preNorm.w, w.preNorm.b, this.config.eps);
    x.dispose();
    return y;
  }

  private segments(B: number): Tensor {
    return native.fromArray(Int32Array.from({ length: B + 1 }, (_, b) => b * this.tokens), [B + 1], 'i32');
  }

  /** q, k or v (rows, H, d) of x (rows, D) through a frozen projection with its bias. */
  private project(x: Tensor, w: Tensor, b: Tensor): Tensor {
    const y = native.matmul(x, w);
    native.addBias(y, b);
    return native.reshape(y, [x.shape[0], this.config.nHeads, this.config.dim / this.config.nHeads]);
  }

  /**
   * One encoder layer on x (R, D), returning the new x (x itself is kept): pre-norm attention
   * with the gated prompt branch when `prompt` is given, then the MLP. `save` keeps what the
   * backward needs.
   */
  private layer(x: Tensor, lw: EncoderLayerWeights, segments: Tensor, prompt?: { prompt: Tensor; gate: Tensor }, save?: Partial<Saved>): Tensor {
    const { eps, dim: D } = this.config;
    const R = x.shape[0];
    const h = native.layerNorm(x, lw.ln1w, lw.ln1b, eps); // (R, D)
    const q = this.project(h, lw.wq, lw.bq);
    const k = this.project(h, lw.wk, lw.bk);
    const v = this.project(h, lw.wv, lw.bv);
    h.dispose();
    // prompts go through the layer's own key/value projections, with their biases (SPEC §9)
    const pk = prompt ? this.project(prompt.prompt, lw.wk, lw.bk) : null; // (K, H, d)
    const pv = prompt ? this.project(prompt.prompt, lw.wv, lw.bv) : null;
    const [att, stats] = native.gatedAttention(q, k, v, segments, pk, pv, prompt?.gate ?? null, { causal: false });
    const o = native.matmul(native.reshape(att, [R, D]), lw.wo);
    native.addBias(o, lw.bo);
    const xMid = native.zeros([R, D], 'f32', this.device);
    native.addInPlace(xMid, x);
    native.addInPlace(xMid, o);
    o.dispose();
    const h2 = native.layerNorm(xMid, lw.ln2w, lw.ln2b, eps);
    const a = native.matmul(h2, lw.w1); // (R, F)
    h2.dispose();
    native.addBias(a, lw.b1);
    const g = native.gelu(a, this.config.act);
    const y = native.matmul(g, lw.w2); // (R, D)
    g.dispose();
    native.addBias(y, lw.b2);
    native.addInPlace(y, xMid); // y = xMid + mlp: the layer's output
    if (save) Object.assign(save, { x, q, k, v, pk, pv, att, stats, xMid, a });
    else disposeAll([q, k, v, pk, pv, att, stats, xMid, a]);
    return y;
  }

  /** Hidden states (B*T, D) entering layer `n` (0-based): the embeddings through layers 0..n-1. */
  hiddenBefore(pixels: Tensor, n: number): Tensor {
    const B = pixels.shape[0];
    const seg = this.segments(B);
    let x = this.embed(pixels);
    for (let l = 0; l < n; l++) {
      const y = this.layer(x, this.weights.layers[l], seg);
      x.dispose();
      x = y;
    }
    seg.dispose();
    return x;
  }

  /** layernorm(x[cls]) (B, D) of hidden states x (B*T, D), and the cls rows (kept for the backward). */
  private final(x: Tensor, B: number): { f: Tensor; cls: Tensor; rows: Tensor } {
    const rows = native.fromArray(Int32Array.from({ length: B }, (_, b) => b * this.tokens), [B], 'i32');
    const cls = native.gatherRows(x, rows);
    const f = native.layerNorm(cls, this.weights.postNorm.w, this.weights.postNorm.b, this.config.eps);
    return { f, cls, rows };
  }

  /** The frozen encoder's features layernorm(h_last[cls]) (B, D). */
  features(pixels: Tensor): Tensor {
    const x = this.hiddenBefore(pixels, this.config.nLayers);
    const { f, cls, rows } = this.final(x, pixels.shape[0]);
    disposeAll([x, cls, rows]);
    return f;
  }

  /**
   * The adapted top layers on hidden states x (B*T, D) entering classifier.firstLayer (x is not
   * changed), then the final layernorm on the class tokens. With `withBackward`, the activations are
   * kept and `backward` forms the prompt and gate gradients from df (B, D).
   */
  adaptedForward(x0: Tensor, B: number, classifier: Classifier, withBackward: boolean): AdaptedRun {
    const first = classifier.firstLayer;
    const seg = this.segments(B);
    const saved: Partial<Saved>[] = [];
    let x = x0;
    for (let l = first; l < this.config.nLayers; l++) {
      const s: Partial<Saved> | undefined = withBackward ? {} : undefined;
      const y = this.layer(x, this.weights.layers[l], seg, classifier.layer(l), s);
      if (s) saved.push(s);
      else if (x !== x0) x.dispose();
      x = y;
    }
    const { f, cls, rows } = this.final(x, B);
    const last = x;
    const dispose = () => {
      for (const s of saved) disposeAll([s.q, s.k, s.v, s.pk, s.pv, s.att, s.stats, s.xMid, s.a, s.x === x0 ? null : s.x]);
      disposeAll([f, cls, rows, seg, last === x0 ? null : last]);
    };
    if (!withBackward) return { features: f, dispose };
    const backward = (df: Tensor, grads: Tensor[]) => {
      const { eps, dim: D, nLayers } = this.config;
      const L = classifier.config.layers;
      const R = B * this.tokens;
      const [dcls, dw, db] = native.layerNormBackward(df, cls, this.weights.postNorm.w, eps);
      disposeAll([dw, db]);
      let dx = native.zeros([R, D], 'f32', this.device);
      native.scatterAddRows(dx, rows, dcls);
      dcls.dispose();
      for (let l = nLayers - 1; l >= first; l--) {
        const s = saved[l - first] as Saved;
        const lw = this.weights.layers[l];
        const p = classifier.layer(l)!;
        // MLP: y = xMid + W2 act(W1 LN2(xMid) + b1) + b2
        const dg = native.matmulBackward(dx, lw.w2); // (R, F)
        const da = native.geluBackward(dg, s.a, this.config.act);
        dg.dispose();
        const dh2 = native.matmulBackward(da, lw.w1); // (R, D)
        da.dispose();
        const [dMid, dw2, db2] = native.layerNormBackward(dh2, s.xMid, lw.ln2w, eps);
        disposeAll([dh2, dw2, db2]);
        native.addInPlace(dMid, dx); // the residual
        dx.dispose();
        // attention: xMid = x + Wo att + bo
        const datt = native.reshape(native.matmulBackward(dMid, lw.wo), [R, this.config.nHeads, D / this.config.nHeads]);
        const [dq, dk, dv, dpk, dpv, dgate] = native.gatedAttentionBackward(datt, s.q, s.k, s.v, seg, s.pk, s.pv, p.gate, s.att, s.stats, { causal: false });
        datt.dispose();
        const li = l - first;
        // prompts: pk = P Wkᵀ + bk, pv = P Wvᵀ + bv
        const K = classifier.config.len;
        const dpP = native.matmulBackward(native.reshape(dpk!, [K, D]), lw.wk);
        const dvP = native.matmulBackward(native.reshape(dpv!, [K, D]), lw.wv);
        native.addInPlace(grads[li], dpP);
        native.addInPlace(grads[li], dvP);
        native.addInPlace(grads[L + li], dgate!);
        disposeAll([dpP, dvP, dpk, dpv, dgate]);
        if (l === first) {
          // nothing below the adapted layers is trained
          disposeAll([dq, dk, dv, dMid]);
          dx = undefined as unknown as Tensor;
          break;
        }
        const dh = native.matmulBackward(native.reshape(dq, [R, D]), lw.wq); // (R, D)
        for (const [d, w] of [[dk, lw.wk], [dv, lw.wv]] as const) {
          const t = native.matmulBackward(native.reshape(d, [R, D]), w);
          native.addInPlace(dh, t);
          t.dispose();
        }
        disposeAll([dq, dk, dv]);
        const [dxLn, dw1, db1] = native.layerNormBackward(dh, s.x, lw.ln1w, eps);
        disposeAll([dh, dw1, db1]);
        native.addInPlace(dxLn, dMid);
        dMid.dispose();
        dx = dxLn;
      }
    };
    return { features: f, backward, dispose };
  }

  dispose(): void {
    disposeAll(this.owned);
    this.arena.release();
  }
}
