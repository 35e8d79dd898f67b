// The image encoder's forward pass (SPEC §7, §9) on the engine, and ImageEncoder, its public face:
// load a CLIP/ViT folder, embed images into global features. Every op is queued on the device's
// executor; only reading the features waits.
//
//   x = [cls; patches(img) · Wpatch^T (+ b)] + pos;   CLIP: x = LN(x; pre_layrnorm)
//   per layer:  x += Wo · MHA(LN1(x)) + bo            (bidirectional within each image; in the top L
//                                                      layers the gated prompt branch of §9)
//               x += W2 · act(W1 · LN2(x) + b1) + b2
//   features:   CLIP visual_projection · post_layernorm(h_l[cls]),  ViT layernorm(h_l[cls])
//
// Shapes: B images, Cin channels, S image size, P patch, N = (S/P)^2 patches, T = 1 + N tokens per
// image, C hidden, H heads, d = C / H, F intermediate, K prompts, M feature layers, D feature size.
import * as fs from 'fs';
import * as nodePath from 'path';
import { native, Device, Tensor } from '../native';
import { resolveDevice } from '../device';
import { LoadArena } from '../model/weights';
import { HF_CONFIG } from '../model/hf';
import { decodeImage, checkRgbImage, RgbImage } from '../image/decode';
import { PreprocessConfig, defaultPreprocess, outputSize, preprocessImage, readPreprocessConfig } from '../image/preprocess';
import {
  EncoderConfig, EncoderLayerWeights, EncoderWeights, encoderTensors, featureDim, headSize, loadEncoderWeights,
  mapEncoderWeights, tokensPerImage,
} from './config';

/** An adapted layer's prompt keys/values (K, H, d) and raw per-head gate (H). */
export interface PromptKV {
  pk: Tensor;
  pv: Tensor;
  gate: Tensor;
}

/** Trainable prompts of the top L layers: prompts[l] (K, C), gates[l] (H), l = 0 .. L-1 from the
 *  lowest adapted layer (nLayers - L) up. */
export interface EncoderPrompts {
  prompts: Tensor[];
  gates: Tensor[];
}

/** The index tensors of a batch of B images (host i32, as the ops accept them on any device). */
export class BatchIndex {
  readonly segments: Tensor; // (B+1) offsets 0, T, 2T, ..
  readonly posRows: Tensor; // (B*T) row t of every image -> t
  readonly patchRows: Tensor; // (B*N) patch n of image b -> b*T + 1 + n
  readonly clsRows: Tensor; // (B) b*T

  constructor(readonly B: number, readonly T: number) {
    const N = T - 1;
    this.segments = native.fromArray(Int32Array.from({ length: B + 1 }, (_, b) => b * T), [B + 1], 'i32');
    this.posRows = native.fromArray(Int32Array.from({ length: B * T }, (_, i) => i % T), [B * T], 'i32');
    this.patchRows = native.fromArray(Int32Array.from({ length: B * N }, (_, i) => Math.floor(i / N) * T + 1 + (i % N)), [B * N], 'i32');
    this.clsRows = native.fromArray(Int32Array.from({ length: B }, (_, b) => b * T), [B], 'i32');
  }

  private all?: Tensor;
  /** (B*T) 0 .. B*T-1: gathering with it copies a tensor */
  rowsAll(): Tensor {
    this.all ??= native.fromArray(Int32Array.from({ length: this.B * this.T }, (_, i) => i), [this.B * this.T], 'i32');
    return this.all;
  }

  dispose(): void {
    for (const t of [this.segments, this.posRows, this.patchRows, this.clsRows]) t.dispose();
    this.all?.dispose();
  }
}

/** (rows, n*d) seen as (rows, n, d) or back; the old handle is released (the view keeps the storage). */
function reshapeOwned(t: Tensor, shape: number[]): Tensor {
  const r = native.reshape(t, shape);
  t.dispose();
  return r;
}

/** y = x · Wᵀ + b (the frozen linear layers). */
export function linear(x: Tensor, w: Tensor, b: Tensor): Tensor {
  const y = native.matmul(x, w);
  native.addBias(y, b);
  return y;
}

/** What the backward of one encoder layer needs (lib/encoder/train.ts). */
export interface LayerActivations extends AttentionActivations {
  xIn: Tensor; // (B*T, C) the layer's input
  xMid: Tensor; // (B*T, C) after the attention residual
  h: Tensor; // (B*T, F) fc1 output, before the activation
}

/** The attention tensors a layer's backward needs (both encoders' saved activations hold them). */
export interface AttentionActivations {
  q: Tensor; // (N, H, d)
  k: Tensor;
  v: Tensor;
  out: Tensor; // (N, H, d) attention output
  stats: Tensor; // (N, H, 2)
}

/** What of a config the attention block reads (the image and the text encoders' configs). */
interface AttentionShape {
  dim: number;
  nHeads: number;
}

/**
 * The bidirectional attention block both encoders share, without its norm and residual (pre-norm
 * ViT/CLIP apply LN1 before it, post-norm BERT/RoBERTa after): attn (N, C) = Wo · MHA(a) + bo over
 * a (N, C), each text or image its own segment, with the gated prompt branch when `prompt` is set
 * (SPEC §9). The caller owns q, k, v, out and stats (keeps them for the backward or frees them).
 */
export function selfAttention(a: Tensor, lw: EncoderLayerWeights, c: AttentionShape, segments: Tensor, prompt: PromptKV | null): { attn: Tensor } & AttentionActivations {
  const N = a.shape[0];
  const H = c.nHeads;
  const d = c.dim / H;
  const q = reshapeOwned(linear(a, lw.wq, lw.bq), [N, H, d]);
  const k = reshapeOwned(linear(a, lw.wk, lw.bk), [N, H, d]);
  const v = reshapeOwned(linear(a, lw.wv, lw.bv), [N, H, d]);
  const [out, stats] = native.gatedAttention(q, k, v, segments, prompt?.pk ?? null, prompt?.pv ?? null, prompt?.gate ?? null, { causal: false });
  const o = native.reshape(out, [N, c.dim]);
  const attn = linear(o, lw.wo, lw.bo); // (N, C)
  o.dispose();
  return { attn, q, k, v, out, stats };
}

/**
 * Backward of selfAttention given dAttn (N, C): adds the prompt's and gate's gradients to `gPrompt`
 * (K, C) and `gGate` (H) and returns d(a) (N, C) through the frozen q/k/v projections, or null with
 * `noInput` (the lowest adapted layer: nothing trainable below it). dAttn stays the caller's.
 */
export function selfAttentionBackward(
  dAttn: Tensor, act: AttentionActivations, lw: EncoderLayerWeights, c: AttentionShape, segments: Tensor, kv: PromptKV,
  gPrompt: Tensor, gGate: Tensor, noInput: boolean,
): Tensor | null {
  const N = dAttn.shape[0];
  const H = c.nHeads;
  const d = c.dim / H;
  const dO = native.matmulBackward(dAttn, lw.wo); // (N, C)
  const dO3 = native.reshape(dO, [N, H, d]);
  dO.dispose();
  const [dq, dk, dv, dpk, dpv, dgate] = native.gatedAttentionBackward(
    dO3, act.q, act.k, act.v, segments, kv.pk, kv.pv, kv.gate, act.out, act.stats, { causal: false },
  );
  dO3.dispose();
  native.addInPlace(gGate, dgate!);
  // the prompt: pk = P Wkᵀ + bk, pv = P Wvᵀ + bv
  const K = kv.pk.shape[0];
  const flat = (t: Tensor, n: number) => native.reshape(t, [n, c.dim]);
  const dpk2 = flat(dpk!, K);
  const dpv2 = flat(dpv!, K);
  const dP = native.matmulBackward(dpk2, lw.wk); // (K, C)
  const dPv = native.matmulBackward(dpv2, lw.wv);
  native.addInPlace(dP, dPv);
  native.addInPlace(gPrompt, dP);
  [dgate!, dpk!, dpv!, dpk2, dpv2, dP, dPv].forEach((t) => t.dispose());
  if (noInput) {
    [dq, dk, dv].forEach((t) => t.dispose());
    return null;
  }
  // a feeds q, k and v
  const [q2, k2, v2] = [flat(dq, N), flat(dk, N), flat(dv, N)];
  const da = native.matmulBackward(q2, lw.wq); // (N, C)
  const dak = native.matmulBackward(k2, lw.wk);
  const dav = native.matmulBackward(v2, lw.wv);
  native.addInPlace(da, dak);
  native.addInPlace(da, dav);
  [dq, dk, dv, q2, k2, v2, dak, dav].forEach((t) => t.dispose());
  return da;
}

/**
 * One encoder layer in place on x (B*T, C). With `prompt`, the gated prompt branch (SPEC §9). With
 * `save`, x is not modified: the layer's output is returned as a new tensor and what the backward
 * needs is kept in `save` (the caller owns it); otherwise x itself is returned.
 */
export function encoderLayer(
  x: Tensor, lw: EncoderLayerWeights, c: EncoderConfig, idx: BatchIndex, prompt: PromptKV | null, save?: Partial<LayerActivations>,
): Tensor {
  const a = native.layerNorm(x, lw.ln1w, lw.ln1b, c.eps); // (B*T, C)
  const { attn, q, k, v, out, stats } = selfAttention(a, lw, c, idx.segments, prompt); // attn (B*T, C)
  a.dispose();
  let xMid = x;
  if (save) {
    // keep the input: the residual goes into a copy
    xMid = native.gatherRows(x, idx.rowsAll());
    Object.assign(save, { xIn: x, q, k, v, out, stats });
  } else [q, k, v, out, stats].forEach((t) => t.dispose());
  native.addInPlace(xMid, attn);
  attn.dispose();
  const f = native.layerNorm(xMid, lw.ln2w, lw.ln2b, c.eps);
  const h = linear(f, lw.w1, lw.b1); // (B*T, F)
  f.dispose();
  const g = native.gelu(h, c.act);
  const y = linear(g, lw.w2, lw.b2); // (B*T, C)
  g.dispose();
  let xOut = xMid;
  if (save) {
    xOut = native.gatherRows(xMid, idx.rowsAll());
    Object.assign(save, { xMid, h });
  } else h.dispose();
  native.addInPlace(xOut, y);
  y.dispose();
  return xOut;
}

/** The prompt keys/values of one adapted layer through its own frozen k/v projections (with biases,
 *  no position embedding): (K, C) -> (K, H, d). */
export function promptKV(prompt: Tensor, gate: Tensor, lw: EncoderLayerWeights, c: EncoderConfig): PromptKV {
  const K = prompt.shape[0];
  return {
    pk: reshapeOwned(linear(prompt, lw.wk, lw.bk), [K, c.nHeads, headSize(c)]),
    pv: reshapeOwned(linear(prompt, lw.wv, lw.bv), [K, c.nHeads, headSize(c)]),
    gate,
  };
}

/** Checks the number `L` of top layers a training graph adapts (1 .. nLayers); `what` names it. */
export function checkAdaptedLayers(what: string, L: number, nLayers: number): void {
  if (!Number.isInteger(L) || L < 1 || L > nLayers) throw new RangeError(`${what}: adapted layers must be 1..${nLayers}, got ${L}`);
}

/** Frees what a training graph saved per adapted layer: its activations and prompt keys/values
 *  (the gates are the caller's). */
export function releaseSaved(saved: readonly { act: object; kv: PromptKV }[]): void {
  for (const { act, kv } of saved) {
    (Object.values(act) as Tensor[]).forEach((t) => t.dispose());
    kv.pk.dispose();
    kv.pv.dispose();
  }
}

/** Checks prompts for `c` (L <= nLayers; (K, C) f32 prompts; (H) gates) and returns L. */
export function checkPrompts(p: EncoderPrompts, c: EncoderConfig, device: Device): number {
  const L = p.prompts.length;
  if (p.gates.length !== L) throw new RangeError(`encoder prompts: ${L} prompt tensors but ${p.gates.length} gates`);
  if (L < 1 || L > c.nLayers) throw new RangeError(`encoder prompts: ${L} adapted layers, the encoder has ${c.nLayers}`);
  p.prompts.forEach((t, l) => {
    if (t.shape.length !== 2 || t.shape[1] !== c.dim || t.shape[0] < 1 || t.dtype !== 'f32' || t.device !== device)
      throw new RangeError(`encoder prompts: prompts[${l}] must be (K, ${c.dim}) f32 on ${device}, got (${t.shape.join(', ')}) ${t.dtype} on ${t.device}`);
    if (t.shape[0] !== p.prompts[0].shape[0]) throw new RangeError('encoder prompts: every layer must have the same K');
  });
  p.gates.forEach((t, l) => {
    if (t.shape.length !== 1 || t.shape[0] !== c.nHeads || t.dtype !== 'f32' || t.device !== device)
      throw new RangeError(`encoder prompts: gates[${l}] must be (${c.nHeads}) f32 on ${device}, got (${t.shape.join(', ')}) ${t.dtype} on ${t.device}`);
  });
  return L;
}

/** Patch embedding + [cls; ..] + pos (+ CLIP's pre_layrnorm): pixels (B, Cin, S, S) -> x (B*T, C). */
export function embedPatches(w: EncoderWeights, posCls: Tensor, c: EncoderConfig, pixels: Tensor, idx: BatchIndex): Tensor {
  const pt = native.patches(pixels, c.patchSize); // (B*N, Cin*P*P)
  const pe = native.matmul(pt, w.patchW); // (B*N, C)
  pt.dispose();
  if (w.patchB) native.addBias(pe, w.patchB);
  let x = native.gatherRows(posCls, idx.posRows); // (B*T, C): pos, with cls in row 0 of each image
  native.scatterAddRows(x, idx.patchRows, pe); // patch rows: pos + patch
  pe.dispose();
  if (w.preNorm) {
    const n = native.layerNorm(x, w.preNorm.w, w.preNorm.b, c.eps);
    x.dispose();
    x = n;
  }
  return x;
}

/** Feature layer numbers as given (1-based, negative from the end) -> 0-based layer indices. */
export function resolveFeatureLayers(layers: readonly number[], nLayers: number): number[] {
  if (!Array.isArray(layers) || layers.length === 0) throw new RangeError('feature layers: expected at least one layer');
  return layers.map((l) => {
    if (!Number.isInteger(l) || l === 0 || l > nLayers || l < -nLayers)
      throw new RangeError(`feature layer ${l} is outside 1..${nLayers} (or -${nLayers}..-1 from the end)`);
    return l > 0 ? l - 1 : nLayers + l;
  });
}

export interface ImageEncoderOptions {
  /** 'cuda' or 'cpu' (default: 'cuda' when available) */
  device?: Device;
  /** storage of the big matrices: 'f32' (default) or 'bf16' */
  dtype?: 'f32' | 'bf16';
}

export interface EmbedOptions {
  /** encoder layers whose [cls] gives a feature (1-based; negative from the end); default [-1] */
  featureLayers?: number[];
  /** images per forward pass (default 32) */
  batchSize?: number;
  /** called after each batch with the images done so far and the total */
  onProgress?: (done: number, total: number) => void;
}

/** An image: a file path (PNG, JPEG, WebP) or decoded 8-bit RGB. */
export type ImageInput = string | RgbImage;

/**
 * The loading both encoders (image: ./config.ts, text: ../text/config.ts) share: `dir` must be a
 * Hugging Face model folder; `read` creates the weights in a fresh arena (and reads what else the
 * encoder needs); the conversions and the NaN/Inf check of the weights run on the executor and fail
 * here, naming the tensor; then the weights move to `device` with `mapWeights`. On any failure
 * nothing loaded is left behind.
 */
export async function loadEncoderFolder<W, R extends { weights: W }>(
  dir: string,
  device: Device,
  mapWeights: (w: W, f: (t: Tensor) => Tensor) => W,
  read: (arena: LoadArena) => R,
): Promise<R & { arena: LoadArena }> {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch {
    throw new Error(`encoder not found: ${dir} does not exist`);
  }
  if (!st.isDirectory() || !fs.existsSync(nodePath.join(dir, HF_CONFIG)))
    throw new Error(`${dir}: expected a Hugging Face model folder (config.json + model.safetensors)`);
  const arena = new LoadArena();
  let loaded: R;
  try {
    loaded = read(arena);
    await native.synchronize();
  } catch (e) {
    arena.release();
    throw e;
  }
  let weights = loaded.weights;
  if (device !== 'cpu') {
    const made: Tensor[] = [];
    try {
      weights = mapWeights(weights, (t) => {
        const m = native.toDevice(t, device);
        made.push(m);
        t.dispose();
        return m;
      });
      arena.closeMappings();
      await native.synchronize();
    } catch (e) {
      for (const t of made) t.dispose();
      arena.release();
      throw new Error(`failed to load ${dir} onto ${device}: ${(e as Error).message}`);
    }
  } else arena.closeMappings();
  return { ...loaded, weights, arena };
}

export class ImageEncoder {
  /** pos (T, C) with the class embedding added to row 0 */
  private posCls: Tensor;
  private disposed = false;

  private constructor(
    readonly dir: string,
    readonly config: EncoderConfig,
    readonly weights: EncoderWeights,
    readonly preprocess: PreprocessConfig,
    readonly device: Device,
    private readonly arena: LoadArena,
  ) {
    const { pos, cls } = weights;
    const T = pos.shape[0];
    const all = native.fromArray(Int32Array.from({ length: T }, (_, i) => i), [T], 'i32');
    this.posCls = native.gatherRows(pos, all);
    all.dispose();
    const zero = native.fromArray(new Int32Array(1), [1], 'i32');
    const clsRow = native.reshape(cls, [1, config.dim]);
    native.scatterAddRows(this.posCls, zero, clsRow);
    zero.dispose();
    clsRow.dispose();
  }

  /** Loads a Hugging Face CLIP or ViT folder (config.json + safetensors, optional
   *  preprocessor_config.json). Errors name the file, tensor or key. */
  static async load(dir: string, opts: ImageEncoderOptions = {}): Promise<ImageEncoder> {
    if (opts.dtype !== undefined && opts.dtype !== 'f32' && opts.dtype !== 'bf16')
      throw new RangeError(`ImageEncoder.load: dtype must be 'f32' or 'bf16', got ${JSON.stringify(opts.dtype)}`);
    const device = resolveDevice(opts.device, 'ImageEncoder.load: device');
    const { config, weights, preprocess, arena } = await loadEncoderFolder(dir, device, mapEncoderWeights, (arena) => {
      const { config, weights } = loadEncoderWeights(dir, arena, { dtype: opts.dtype });
      const preprocess = readPreprocessConfig(dir, config.family, config.imageSize);
      const out = outputSize(preprocess);
      if (out && (out.height !== config.imageSize || out.width !== config.imageSize))
        throw new Error(`${dir}: preprocessor_config.json makes ${out.width}x${out.height} images but the encoder takes ${config.imageSize}x${config.imageSize}`);
      return { config, weights, preprocess };
    });
    return new ImageEncoder(dir, config, weights, preprocess, device, arena);
  }

  /** An encoder over weights already on `device` (e.g. random ones made there by a benchmark, no
   *  file): it owns them from now on and dispose() releases them. The family's default
   *  preprocessing; `name` stands for the folder in messages. */
  static fromWeights(config: EncoderConfig, weights: EncoderWeights, device: Device, name = '(weights in memory)'): ImageEncoder {
    for (const t of encoderTensors(weights))
      if (t.device !== device) throw new RangeError(`ImageEncoder.fromWeights: every weight must be on ${device}, got one (${t.shape.join(', ')}) on ${t.device}`);
    return new ImageEncoder(name, config, weights, defaultPreprocess(config.family, config.imageSize), device, new LoadArena());
  }

  /** The size D of one feature vector. */
  get featureDim(): number {
    return featureDim(this.config);
  }

  private check(): void {
    if (this.disposed) throw new Error('ImageEncoder: used after dispose()');
  }

  /** The hidden states (B*T, C) after the embeddings, and the index tensors of a batch of pixels. */
  embedTokens(pixels: Tensor): { x: Tensor; idx: BatchIndex } {
    this.check();
    const c = this.config;
    const S = c.imageSize;
    if (pixels.shape.length !== 4 || pixels.shape[1] !== c.channels || pixels.shape[2] !== S || pixels.shape[3] !== S || pixels.shape[0] < 1)
      throw new RangeError(`ImageEncoder: pixels must be (B, ${c.channels}, ${S}, ${S}), got (${pixels.shape.join(', ')})`);
    if (pixels.dtype !== 'f32' || pixels.device !== this.device)
      throw new RangeError(`ImageEncoder: pixels must be f32 on ${this.device}, got ${pixels.dtype} on ${pixels.device}`);
    const idx = new BatchIndex(pixels.shape[0], tokensPerImage(c));
    return { x: embedPatches(this.weights, this.posCls, c, pixels, idx), idx };
  }

  /** (B, C) post_layernorm / layernorm of rows `cls` of x; then the projection when `project`. */
  pool(x: Tensor, idx: BatchIndex, project: boolean): Tensor {
    const { postNorm, projection } = this.weights;
    const cls = native.gatherRows(x, idx.clsRows); // (B, C)
    const n = native.layerNorm(cls, postNorm.w, postNorm.b, this.config.eps);
    cls.dispose();
    if (!project || !projection) return n;
    const f = native.matmul(n, projection); // (B, Dp)
    n.dispose();
    return f;
  }

  /**
   * The features of a batch of preprocessed pixels (B, Cin, S, S) on the encoder's device: one
   * (B, D) tensor per feature layer. With `prompts`, the top L layers run the gated prompt branch
   * (SPEC §9); at gates 0 the result equals the frozen encoder's bit for bit.
   */
  forward(pixels: Tensor, opts: { featureLayers?: number[]; prompts?: EncoderPrompts; project?: boolean } = {}): Tensor[] {
    const c = this.config;
    const want = resolveFeatureLayers(opts.featureLayers ?? [-1], c.nLayers);
    const L = opts.prompts ? checkPrompts(opts.prompts, c, this.device) : 0;
    let { x, idx } = this.embedTokens(pixels);
    const out = new Map<number, Tensor>();
    try {
      const last = Math.max(...want);
      for (let i = 0; i <= last; i++) {
        const lw = this.weights.layers[i];
        const a = i - (c.nLayers - L);
        const kv = a >= 0 ? promptKV(opts.prompts!.prompts[a], opts.prompts!.gates[a], lw, c) : null;
        x = encoderLayer(x, lw, c, idx, kv);
        if (kv) [kv.pk, kv.pv].forEach((t) => t.dispose());
        if (want.includes(i)) out.set(i, this.pool(x, idx, opts.project ?? true));
      }
      return want.map((i) => out.get(i)!);
    } finally {
      x.dispose();
      idx.dispose();
    }
  }

  /** Decodes and preprocesses `images` into one (B, Cin, S, S) array. */
  async pixelsOf(images: readonly ImageInput[]): Promise<Float32Array> {
    const c = this.config;
    const S = c.imageSize;
    const plane = 3 * S * S;
    const buf = new Float32Array(images.length * plane);
    const decoded = await Promise.all(images.map((im, i) => (typeof im === 'string' ? decodeImage(im) : checkRgbImage(im, `images[${i}]`))));
    decoded.forEach((img, i) => {
      const { size } = preprocessImage(img, this.preprocess, buf.subarray(i * plane, (i + 1) * plane));
      if (size.height !== S || size.width !== S)
        throw new Error(`${typeof images[i] === 'string' ? images[i] : `images[${i}]`}: preprocessed to ${size.width}x${size.height}, the encoder takes ${S}x${S}`);
    });
    return buf;
  }

  /**
   * Global features (SPEC §7) of each image: a Float32Array (M, D) row-major per image, M = the
   * number of feature layers, D = featureDim. Images are decoded, preprocessed and encoded in
   * batches; the next batch is prepared while the current one computes.
   */
  async embed(images: readonly ImageInput[], opts: EmbedOptions = {}): Promise<Float32Array[]> {
    const result: Float32Array[] = [];
    for await (const { features } of this.embedBatches(images, opts)) result.push(...features);
    return result;
  }

  /** embed() one batch at a time (for outputs written as they come): the index of the batch's
   *  first image and its images' (M, D) features. */
  async *embedBatches(images: readonly ImageInput[], opts: EmbedOptions = {}): AsyncGenerator<{ start: number; features: Float32Array[] }> {
    this.check();
    const c = this.config;
    const featureLayers = opts.featureLayers ?? [-1];
    resolveFeatureLayers(featureLayers, c.nLayers);
    const bs = opts.batchSize ?? 32;
    if (!Number.isSafeInteger(bs) || bs < 1) throw new RangeError(`Expected a positive integer for batchSize but received ${bs}`);
    if (!Array.isArray(images)) throw new TypeError('embed: expected an array of image paths or decoded images');
    const M = featureLayers.length;
    const D = this.featureDim;
    const S = c.imageSize;
    let next: Promise<Float32Array> | undefined = images.length ? this.pixelsOf(images.slice(0, bs)) : undefined;
    try {
      for (let b0 = 0; b0 < images.length; b0 += bs) {
        const B = Math.min(bs, images.length - b0);
        const host = await next!;
        next = undefined;
        const pixels = native.fromArray(host, [B, c.channels, S, S], 'f32', this.device);
        const feats = this.forward(pixels, { featureLayers });
        pixels.dispose();
        // prepare the next batch while this one runs
        if (b0 + bs < images.length) {
          next = this.pixelsOf(images.slice(b0 + bs, b0 + 2 * bs));
          next.catch(() => undefined); // surfaced when awaited
        }
        let values: Float32Array[];
        try {
          values = (await Promise.all(feats.map((f) => f.read()))) as Float32Array[];
        } finally {
          feats.forEach((f) => f.dispose());
        }
        const features: Float32Array[] = [];
        for (let b = 0; b < B; b++) {
          const one = new Float32Array(M * D);
          for (let m = 0; m < M; m++) one.set(values[m].subarray(b * D, (b + 1) * D), m * D);
          features.push(one);
        }
        opts.onProgress?.(b0 + B, images.length);
        yield { start: b0, features };
      }
    } finally {
      await next?.catch(() => undefined); // no decode left running behind an early exit
    }
  }

  /** Frees the weights (idempotent). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.posCls.dispose();
    for (const t of encoderTensors(this.weights)) t.dispose();
    this.arena.release();
  }
}
