// The text encoder's forward pass (BERT / RoBERTa, SPEC §9) on the engine, and the training graph
// of its zero-init gated prompts. Post-norm layers, unlike the image encoder's pre-norm ones:
//
//   x = LN_emb(word[ids] + pos[posOffset + t] + type[types])     t = index within the text
//   per layer:  x = LN1(x + Wo · MHA(x) + bo)        bidirectional within each text (segment); in the
//                                                    top L layers the gated prompt branch of §9
//               x = LN2(x + W2 · gelu(W1 · x + b1) + b2)
//   QA head:    [start, end] logits = x · Wqaᵀ + bqa
//
// Texts of different lengths are packed into one (N, C) batch with segment offsets: attention is
// segment-local (gatedAttention with causal: false), so no padding and no mask are needed.
//
// Shapes: N tokens of the batch, S texts (segments), C hidden, H heads, d = C / H, F intermediate,
// K prompts.
import { native, Device, Tensor } from '../native';
import { resolveDevice } from '../device';
import { LoadArena } from '../model/weights';
import type { EncoderConfig, EncoderLayerWeights } from '../encoder/config';
import {
  AttentionActivations, EncoderPrompts, PromptKV, checkAdaptedLayers, checkPrompts, linear, loadEncoderFolder, promptKV, releaseSaved, selfAttention,
  selfAttentionBackward,
} from '../encoder/encoder';
import { TextEncoderConfig, TextEncoderWeights, loadTextEncoderWeights, mapTextEncoderWeights, textEncoderTensors } from './config';
import { TextTokenizer, loadTextTokenizer } from './tokenizer';

/** The image encoder's prompt helpers read only dim, nHeads and nLayers of the config. */
const promptShape = (c: TextEncoderConfig) => c as unknown as EncoderConfig;

/** A packed batch of token sequences: ids and token types (N), segment offsets 0 .. N (S+1). */
export interface TextBatch {
  ids: Int32Array;
  types: Int32Array;
  offsets: number[];
}

/** The host index tensors of a batch (i32; the ops accept them on any device). */
export class TextBatchIndex {
  readonly N: number;
  readonly ids: Tensor;
  readonly types: Tensor;
  readonly positions: Tensor;
  readonly segments: Tensor;

  constructor(b: TextBatch, c: TextEncoderConfig) {
    const N = b.ids.length;
    const S = b.offsets.length - 1;
    if (S < 1 || b.offsets[0] !== 0 || b.offsets[S] !== N || b.types.length !== N)
      throw new RangeError(`text batch: offsets must run from 0 to the ${N} tokens and types have one per token`);
    const pos = new Int32Array(N);
    for (let s = 0; s < S; s++) {
      const [a, e] = [b.offsets[s], b.offsets[s + 1]];
      if (e < a) throw new RangeError(`text batch: offsets must not fall (segment ${s}: ${a} -> ${e})`);
      if (e - a > c.maxTokens) throw new RangeError(`text batch: segment ${s} has ${e - a} tokens, the encoder takes at most ${c.maxTokens}`);
      for (let i = a; i < e; i++) pos[i] = c.posOffset + i - a;
    }
    for (let i = 0; i < N; i++) {
      if (!(b.ids[i] >= 0 && b.ids[i] < c.vocabSize)) throw new RangeError(`text batch: token ${i} has id ${b.ids[i]}, outside the vocabulary of ${c.vocabSize}`);
      if (!(b.types[i] >= 0 && b.types[i] < c.typeVocabSize)) throw new RangeError(`text batch: token ${i} has type ${b.types[i]}, the encoder has ${c.typeVocabSize}`);
    }
    this.N = N;
    this.ids = native.fromArray(Int32Array.from(b.ids), [N], 'i32');
    this.types = native.fromArray(Int32Array.from(b.types), [N], 'i32');
    this.positions = native.fromArray(pos, [N], 'i32');
    this.segments = native.fromArray(Int32Array.from(b.offsets), [S + 1], 'i32');
  }

  dispose(): void {
    for (const t of [this.ids, this.types, this.positions, this.segments]) t.dispose();
  }
}

/** What the backward of one post-norm layer needs. */
export interface PostNormActivations extends AttentionActivations {
  y1: Tensor; // (N, C) x + attention, before LN1
  h: Tensor; // (N, F) fc1 output, before gelu
  y2: Tensor; // (N, C) x1 + ffn, before LN2
}

/**
 * One post-norm encoder layer: x (N, C) -> a new (N, C) tensor (x is left as it is). With `prompt`,
 * the gated prompt branch (SPEC §9). With `save`, what the backward needs is kept there (the caller
 * owns it; the input is not needed).
 */
export function postNormLayer(
  x: Tensor, lw: EncoderLayerWeights, c: TextEncoderConfig, segments: Tensor, prompt: PromptKV | null, save?: Partial<PostNormActivations>,
): Tensor {
  const { attn: y1, q, k, v, out, stats } = selfAttention(x, lw, c, segments, prompt); // y1 (N, C)
  native.addInPlace(y1, x);
  const x1 = native.layerNorm(y1, lw.ln1w, lw.ln1b, c.eps);
  const h = linear(x1, lw.w1, lw.b1); // (N, F)
  const g = native.gelu(h, 'gelu');
  const y2 = linear(g, lw.w2, lw.b2); // (N, C)
  g.dispose();
  native.addInPlace(y2, x1);
  x1.dispose();
  const x2 = native.layerNorm(y2, lw.ln2w, lw.ln2b, c.eps);
  if (save) Object.assign(save, { q, k, v, out, stats, y1, h, y2 });
  else [q, k, v, out, stats, y1, h, y2].forEach((t) => t.dispose());
  return x2;
}

/**
 * Backward of postNormLayer given dx2 (N, C): adds the prompt's and gate's gradients to `gPrompt`
 * (K, C) and `gGate` (H) and returns dx (N, C) of the layer's input, or null with `noInput` (the
 * lowest adapted layer: nothing trainable below it).
 */
export function postNormLayerBackward(
  dx2: Tensor, act: PostNormActivations, lw: EncoderLayerWeights, c: TextEncoderConfig, segments: Tensor, kv: PromptKV,
  gPrompt: Tensor, gGate: Tensor, noInput: boolean,
): Tensor | null {
  const lnBack = (dy: Tensor, x: Tensor, w: Tensor) => {
    const [dx, dw, db] = native.layerNormBackward(dy, x, w, c.eps);
    dw.dispose();
    db.dispose();
    return dx;
  };
  // feed-forward block: x2 = LN2(x1 + W2 gelu(W1 x1 + b1) + b2)
  const dy2 = lnBack(dx2, act.y2, lw.ln2w); // (N, C)
  const dg = native.matmulBackward(dy2, lw.w2); // (N, F)
  const dh = native.geluBackward(dg, act.h, 'gelu');
  dg.dispose();
  const dx1 = native.matmulBackward(dh, lw.w1); // (N, C)
  dh.dispose();
  native.addInPlace(dx1, dy2);
  dy2.dispose();
  // attention block: x1 = LN1(x + Wo attn(x) + bo)
  const dy1 = lnBack(dx1, act.y1, lw.ln1w);
  dx1.dispose();
  const dx = selfAttentionBackward(dy1, act, lw, c, segments, kv, gPrompt, gGate, noInput);
  if (dx) native.addInPlace(dx, dy1); // x also feeds the residual
  dy1.dispose();
  return dx;
}

export interface TextEncoderOptions {
  device?: Device;
  /** storage of the big matrices: 'f32' (default) or 'bf16' */
  dtype?: 'f32' | 'bf16';
  /** load the folder's tokenizer too (default true) */
  tokenizer?: boolean;
}

export class TextEncoderModel {
  private disposed = false;

  private constructor(
    readonly dir: string,
    readonly config: TextEncoderConfig,
    readonly weights: TextEncoderWeights,
    readonly tokenizer: TextTokenizer | null,
    readonly device: Device,
    private readonly arena: LoadArena,
  ) {}

  /** Loads a Hugging Face RoBERTa or BERT folder (config.json + safetensors, and its tokenizer). */
  static async load(dir: string, opts: TextEncoderOptions = {}): Promise<TextEncoderModel> {
    if (opts.dtype !== undefined && opts.dtype !== 'f32' && opts.dtype !== 'bf16')
      throw new RangeError(`TextEncoderModel.load: dtype must be 'f32' or 'bf16', got ${JSON.stringify(opts.dtype)}`);
    const device = resolveDevice(opts.device, 'TextEncoderModel.load: device');
    const { config, weights, tokenizer, arena } = await loadEncoderFolder(dir, device, mapTextEncoderWeights, (arena) => {
      const { config, weights } = loadTextEncoderWeights(dir, arena, { dtype: opts.dtype });
      let tokenizer: TextTokenizer | null = null;
      if (opts.tokenizer !== false) {
        tokenizer = loadTextTokenizer(dir, config.family);
        if (tokenizer.vocabSize > config.vocabSize)
          throw new Error(`${dir}: the tokenizer has ${tokenizer.vocabSize} tokens but config.json's vocab_size is ${config.vocabSize}`);
      }
      return { config, weights, tokenizer };
    });
    return new TextEncoderModel(dir, config, weights, tokenizer, device, arena);
  }

  private check(): void {
    if (this.disposed) throw new Error('TextEncoderModel: used after dispose()');
  }

  /** The embeddings (N, C) of a batch: LN(word + position + token type). */
  embed(idx: TextBatchIndex): Tensor {
    this.check();
    const w = this.weights;
    const x = native.gatherRows(w.word, idx.ids); // (N, C)
    const p = native.gatherRows(w.pos, idx.positions);
    const t = native.gatherRows(w.type, idx.types);
    native.addInPlace(x, p);
    native.addInPlace(x, t);
    p.dispose();
    t.dispose();
    const n = native.layerNorm(x, w.embNorm.w, w.embNorm.b, this.config.eps);
    x.dispose();
    return n;
  }

  /** Checks prompts (top L layers) and returns L (0 without). */
  promptLayers(p?: EncoderPrompts): number {
    return p ? checkPrompts(p, promptShape(this.config), this.device) : 0;
  }

  /** The prompt keys/values of adapted layer `a` (0 = the lowest adapted one). */
  promptKV(p: EncoderPrompts, a: number, layer: number): PromptKV {
    return promptKV(p.prompts[a], p.gates[a], this.weights.layers[layer], promptShape(this.config));
  }

  /** The last hidden states (N, C) of a batch; with `prompts`, the gated branch in the top L layers
   *  (at gates 0 equal to the frozen encoder's bit for bit). */
  forward(idx: TextBatchIndex, prompts?: EncoderPrompts): Tensor {
    const c = this.config;
    const L = this.promptLayers(prompts);
    let x = this.embed(idx);
    for (let i = 0; i < c.nLayers; i++) {
      const a = i - (c.nLayers - L);
      const kv = a >= 0 ? this.promptKV(prompts!, a, i) : null;
      const y = postNormLayer(x, this.weights.layers[i], c, idx.segments, kv);
      if (kv) [kv.pk, kv.pv].forEach((t) => t.dispose());
      x.dispose();
      x = y;
    }
    return x;
  }

  /** Frees the weights (idempotent). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const t of textEncoderTensors(this.weights)) t.dispose();
    this.arena.release();
  }
}

/** [start, end] logits (N, 2) of hidden states (N, C) through a span head w (2, C), b (2). */
export function spanLogits(hidden: Tensor, head: { w: Tensor; b: Tensor }): Tensor {
  return linear(hidden, head.w, head.b);
}

/**
 * The training graph of the prompts: forward keeps the top L layers' activations, backward from
 * d(hidden) (N, C) of the last layer to the prompts and gates. The encoder stays frozen.
 */
export class TextEncoderGraph {
  private saved: { act: PostNormActivations; kv: PromptKV }[] = [];
  private idx?: TextBatchIndex;

  constructor(readonly encoder: TextEncoderModel, readonly L: number) {
    checkAdaptedLayers('TextEncoderGraph', L, encoder.config.nLayers);
  }

  /** The last hidden states (N, C); the caller keeps `idx` alive until backward(). */
  forward(idx: TextBatchIndex, p: EncoderPrompts): Tensor {
    const enc = this.encoder;
    const c = enc.config;
    if (enc.promptLayers(p) !== this.L) throw new RangeError(`TextEncoderGraph.forward: ${p.prompts.length} prompt layers, the graph adapts ${this.L}`);
    this.release();
    this.idx = idx;
    let x = enc.embed(idx);
    const first = c.nLayers - this.L;
    for (let i = 0; i < c.nLayers; i++) {
      const lw = enc.weights.layers[i];
      if (i < first) {
        const y = postNormLayer(x, lw, c, idx.segments, null);
        x.dispose();
        x = y;
        continue;
      }
      const kv = enc.promptKV(p, i - first, i);
      const act: Partial<PostNormActivations> = {};
      const y = postNormLayer(x, lw, c, idx.segments, kv, act);
      x.dispose();
      x = y;
      this.saved.push({ act: act as PostNormActivations, kv });
    }
    return x;
  }

  /** Adds dLoss/dprompts and dLoss/dgates to `grads` given dHidden (N, C); releases the saved state. */
  backward(dHidden: Tensor, grads: EncoderPrompts): void {
    const enc = this.encoder;
    const c = enc.config;
    if (!this.idx || this.saved.length !== this.L) throw new Error('TextEncoderGraph.backward: call forward() first (once per backward)');
    enc.promptLayers(grads);
    const first = c.nLayers - this.L;
    let dx: Tensor = dHidden;
    for (let l = this.L - 1; l >= 0; l--) {
      const { act, kv } = this.saved[l];
      const next = postNormLayerBackward(dx, act, enc.weights.layers[first + l], c, this.idx.segments, kv, grads.prompts[l], grads.gates[l], l === 0);
      if (dx !== dHidden) dx.dispose();
      dx = next!;
    }
    this.release();
  }

  release(): void {
    releaseSaved(this.saved);
    this.saved = [];
    this.idx = undefined;
  }
}
