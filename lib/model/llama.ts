// The LLaMA forward pass (SPEC §1), orchestrated over native ops. Every op is queued on the
// device's executor and returns at once; only reading the logits waits.
//
// Shapes: T new tokens, C = dim, H heads, Hkv kv heads, d = C / H, F hidden, V vocab, S cache length.
import { native, Tensor, Device, ModelHandle, DecoderShape } from '../native';
import { LlamaConfig, headSize } from './config';
import { Checkpoint, LoadOptions } from './weights';
import { loadCheckpoint } from './load';
import { Adapter } from './adapter';
import { ImagePromptStep } from './image-prompts';
import { loadTokenizer, Tokenizer, tokenizerFromModel } from '../tokenizer';

/** An adapted layer's prompt keys/values (K, Hkv, d), computed once when the adapter is attached;
 *  `ownGate` when the gate is a copy on the model's device (the adapter lives elsewhere). */
interface PromptKV {
  pk: Tensor;
  pv: Tensor;
  gate: Tensor;
  ownGate: boolean;
}

/** Keys and values of every layer for positions 0 .. length-1. */
/** (T, n*d) seen as (T, n, d); the flat handle is released (the view keeps the storage). */
function as3d(flat: Tensor, T: number, n: number, d: number): Tensor {
  const t = native.reshape(flat, [T, n, d]);
  flat.dispose();
  return t;
}

export class KVCache {
  readonly k: Tensor[]; // per layer (S, Hkv, d)
  readonly v: Tensor[]; // per layer (S, Hkv, d)
  length = 0;

  constructor(readonly config: LlamaConfig, readonly capacity: number, readonly device: Device = 'cpu') {
    const shape = [capacity, config.nKvHeads, headSize(config)];
    this.k = Array.from({ length: config.nLayers }, () => native.zeros(shape, 'f32', device));
    this.v = Array.from({ length: config.nLayers }, () => native.zeros(shape, 'f32', device));
  }

  dispose(): void {
    for (const t of [...this.k, ...this.v]) t.dispose();
  }
}

export class Llama {
  readonly config: LlamaConfig;
  private adapter?: Adapter;
  private promptKV: (PromptKV | undefined)[] = [];
  /** The weights (and attached prompts) checked once, for the one-op forward. */
  private handle: ModelHandle;

  private constructor(readonly checkpoint: Checkpoint) {
    this.config = checkpoint.config;
    this.handle = this.makeHandle();
  }

  private get shape(): DecoderShape {
    const c = this.config;
    return { heads: c.nHeads, kvHeads: c.nKvHeads, eps: c.normEps, theta: c.ropeTheta, layout: c.ropeLayout };
  }

  private makeHandle(): ModelHandle {
    const w = this.checkpoint.weights;
    return native.model({ ...w, prompts: this.promptKV.map((p) => p ?? null) }, this.shape);
  }

  /** Where the weights live and every forward runs. */
  get device(): Device {
    return this.checkpoint.device;
  }

  /** opts.device: 'cuda' or 'cpu' (default: 'cuda' when available); opts.dtype: 'f32' or 'bf16';
   *  opts.mmap: false reads the weights into memory instead of mapping the file (see LoadOptions). */
  static async load(path: string, opts: LoadOptions = {}): Promise<Llama> {
    return new Llama(await loadCheckpoint(path, opts));
  }

  static fromCheckpoint(checkpoint: Checkpoint): Llama {
    return new Llama(checkpoint);
  }

  /**
   * The tokenizer at `path`, or the one found beside the checkpoint; an error names what is
   * missing or mismatched (a tokenizer whose vocabulary is not the model's).
   */
  loadTokenizer(path?: string): Tokenizer {
    if (!path && this.checkpoint.tokenizerModel) {
      let tokenizer: Tokenizer;
      try {
        tokenizer = tokenizerFromModel(this.checkpoint.tokenizerModel);
      } catch (e) {
        throw new Error(`the tokenizer in ${this.checkpoint.path}'s metadata is not usable: ${(e as Error).message}`);
      }
      if (tokenizer.vocabSize !== this.config.vocabSize)
        throw new Error(`the tokenizer in ${this.checkpoint.path}'s metadata has ${tokenizer.vocabSize} tokens, the model ${this.config.vocabSize}`);
      return tokenizer;
    }
    const file = path ?? this.checkpoint.tokenizerPath;
    if (!file && this.checkpoint.tokenizerProblem) throw new Error(this.checkpoint.tokenizerProblem);
    if (!file) throw new Error(`no tokenizer found beside ${this.checkpoint.path}; pass --tokenizer PATH (tokenizer.model or tokenizer.bin)`);
    const tokenizer = loadTokenizer(file);
    if (tokenizer.vocabSize !== this.config.vocabSize)
      throw new Error(`the tokenizer ${file} has ${tokenizer.vocabSize} tokens, the model ${this.config.vocabSize}`);
    return tokenizer;
  }

  /**
   * Runs every later forward with `adapter`'s gated prompts (SPEC §2); undefined detaches it. An
   * adapter on another device is read through copies on the model's device (made here).
   * `opts.imageFeatures` (M·D values): an image-conditioned adapter's prompts for that one image,
   * P_l + I_p (SPEC §8), computed once here; without it such an adapter uses P_l (no image).
   */
  setAdapter(adapter: Adapter | undefined, opts: { imageFeatures?: Float32Array } = {}): void {
    const c = this.config;
    if (adapter && adapter.disposed) throw new Error('setAdapter: the adapter was disposed; load or create it again');
    if (adapter && (adapter.model.dim !== c.dim || adapter.model.nLayers !== c.nLayers || adapter.model.nHeads !== c.nHeads))
      throw new Error('setAdapter: the adapter was made for a model of another shape');
    if (opts.imageFeatures && !adapter?.image) throw new Error('setAdapter: image features given for a text-only adapter (it has no image projection)');
    this.releasePrompts();
    this.adapter = adapter;
    if (adapter) this.promptKV = this.promptsOf(adapter, opts.imageFeatures);
    this.handle.dispose();
    this.handle = this.makeHandle();
  }

  private releasePrompts(): void {
    for (const p of this.promptKV) if (p) [p.pk, p.pv, ...(p.ownGate ? [p.gate] : [])].forEach((t) => t.dispose());
    this.promptKV = [];
  }

  /** Each adapted layer's prompt keys/values on the model's device (from P_l + I_p with an image). */
  private promptsOf(adapter: Adapter, imageFeatures?: Float32Array): (PromptKV | undefined)[] {
    const c = this.config;
    const d = headSize(c);
    // I_p (C) of the one image, on the adapter's device
    const image = imageFeatures ? new ImagePromptStep(adapter.image!, ['image'], imageFeatures, false) : undefined;
    const ip = image ? native.sliceRows(image.ip, 0, 1) : undefined; // (1, C)
    const ipRow = ip ? native.reshape(ip, [c.dim]) : undefined; // (C)
    const kv = this.checkpoint.weights.layers.map((lw, n) => {
      const a = adapter.layer(n);
      if (!a) return undefined;
      const K = a.prompt.shape[0];
      const here = adapter.device === this.device;
      let prompt = a.prompt; // (K, C)
      if (ipRow) {
        // P_l^v = P_l + I_p on every prompt row (a copy: the adapter's prompts stay as they are)
        const rows = native.fromArray(Int32Array.from({ length: K }, (_, k) => k), [K]);
        prompt = native.gatherRows(a.prompt, rows); // (K, C)
        rows.dispose();
        native.addBias(prompt, ipRow);
      }
      const own = prompt !== a.prompt || !here;
      if (!here) {
        const moved = native.toDevice(prompt, this.device);
        if (prompt !== a.prompt) prompt.dispose();
        prompt = moved;
      }
      // the prompts' keys and values do not depend on the tokens: once per attach
      const kv = {
        pk: as3d(native.matmul(prompt, lw.wk), K, c.nKvHeads, d),
        pv: as3d(native.matmul(prompt, lw.wv), K, c.nKvHeads, d),
        gate: here ? a.gate : native.toDevice(a.gate, this.device),
        ownGate: !here,
      };
      if (own) prompt.dispose();
      return kv;
    });
    [ipRow, ip, image].forEach((t) => t?.dispose());
    return kv;
  }

  get attachedAdapter(): Adapter | undefined {
    return this.adapter;
  }

  newCache(capacity = this.config.maxSeqLen): KVCache {
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new RangeError(`Expected a positive integer for the cache capacity but received ${capacity}`);
    return new KVCache(this.config, capacity, this.device);
  }

  /**
   * Runs `tokens` at positions cache.length .. and appends their keys/values to the cache.
   * Returns the logits (1, V) of the last token, or (T, V) of all tokens with `allLogits`.
   */
  forward(tokens: ArrayLike<number>, cache: KVCache, opts: { allLogits?: boolean } = {}): Tensor {
    const c = this.config;
    const T = tokens.length;
    const pos0 = cache.length;
    if (T < 1) throw new RangeError('forward: expected at least one token');
    if (pos0 + T > cache.capacity)
      throw new RangeError(`forward: positions ${pos0}..${pos0 + T} exceed the context length ${cache.capacity}`);
    for (let i = 0; i < T; i++) {
      const id = tokens[i];
      if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize)
        throw new RangeError(`forward: token ${id} at index ${i} is outside the vocabulary [0, ${c.vocabSize})`);
    }
    // The whole pass is one native op (embedding, every layer, final norm, classifier): at decode
    // a small model's per-op cost would outweigh its work.
    const logits = native.modelForward(this.handle, Int32Array.from(tokens), cache.k, cache.v, pos0, opts.allLogits ?? false);
    cache.length = pos0 + T;
    return logits; // (T or 1, V)
  }

  dispose(): void {
    this.releasePrompts();
    this.adapter = undefined;
    this.handle.dispose();
    this.checkpoint.dispose();
  }
}
