// One micro-batch through the frozen model with the adapter: forward, loss on the target tokens,
// and backward to the adapter's prompts and gates (SPEC §2–§3). Every op is native and queued;
// nothing here waits except for the loss read at the end. Float tensors live on the model's device;
// index tensors (tokens, positions, segments, rows, targets) are made on the host, where the ops
// check their values (and a CUDA op uploads them itself).
//
// Shapes: N tokens of the packed micro-batch (S sequences, positions restarting per sequence),
// C = dim, H heads, Hkv kv heads, d head size, F hidden, K prompts, M target tokens, V vocab.
import { native, Tensor } from '../native';
import { Adapter, ImageProjTensors } from '../model/adapter';
import { ImagePromptStep } from '../model/image-prompts';
import { headSize } from '../model/config';
import { Llama } from '../model/llama';
import { LayerWeights } from '../model/weights';

/** A packed micro-batch (see lib/data/alpaca.ts). */
export interface PackedBatch {
  tokens: Int32Array; // (N)
  labels: Int32Array; // (N) the token predicted at each position, -1 for none
  positions: Int32Array; // (N) restarting at 0 per sequence
  segments: Int32Array; // (S+1) offsets
  /** (S) each segment's image key (SPEC §8), null for a text-only example */
  images?: (string | null)[];
}

/** Accumulators of the adapter gradient, one per parameter tensor (same order as parameters()). */
export class AdapterGrads {
  readonly prompts: Tensor[]; // per adapted layer (K, C)
  readonly gates: Tensor[]; // per adapted layer (H) or (1)
  /** the image projection's (fc1, b1, fc2, b2) of an image-conditioned adapter */
  readonly image?: ImageProjTensors<Tensor>;

  /** Zeros on the adapter's device. */
  constructor(adapter: Adapter) {
    const zerosLike = (t: Tensor) => native.zeros([...t.shape], 'f32', adapter.device);
    this.prompts = adapter.prompts.map(zerosLike);
    this.gates = adapter.gates.map(zerosLike);
    if (adapter.image) {
      const p = adapter.image;
      this.image = { fc1: zerosLike(p.fc1), b1: zerosLike(p.b1), fc2: zerosLike(p.fc2), b2: zerosLike(p.b2) };
    }
  }

  /** In the order of Adapter.parameters(). */
  all(): Tensor[] {
    const p = this.image;
    return [...this.prompts, ...this.gates, ...(p ? [p.fc1, p.b1, p.fc2, p.b2] : [])];
  }

  zero(): void {
    for (const g of this.all()) native.scaleInPlace(g, 0);
  }

  dispose(): void {
    for (const g of this.all()) g.dispose();
  }
}

export interface GraphOptions {
  /** Keep only each adapted layer's input and recompute the rest in the backward. */
  checkpointing?: boolean;
  /** Target rows per LM-head chunk (bounds the (rows, V) logits buffer). */
  headChunk?: number;
}

/** An adapted layer's prompt keys/values: (K, Hkv, d) shared by the batch, or (S, K, Hkv, d) per
 *  segment for image-conditioned prompts (then kRows, imageRows map the S·K prompt rows back). */
interface PromptKV {
  pk: Tensor;
  pv: Tensor;
  gate: Tensor;
}

/** Per-segment prompts P_l^v = P_l + I_p(segment) (SPEC §8), laid out as S·K rows. */
interface SegmentPrompts {
  images: ImagePromptStep;
  kRows: Tensor; // (S·K) i32: row k of P_l
  imageRows: Tensor; // (S·K) i32: the segment's row of images.ip
  S: number;
}

/** What the backward of an adapted layer needs from its forward. */
interface Saved {
  xIn: Tensor; // (N, C)
  q: Tensor; // (N, H, d) rotated
  k: Tensor; // (N, Hkv, d) rotated
  v: Tensor; // (N, Hkv, d)
  out: Tensor; // (N, H, d) attention output
  stats: Tensor; // (N, H, 2)
  xMid: Tensor; // (N, C) after the attention residual
  h1: Tensor; // (N, F) gate projection
  h3: Tensor; // (N, F) up projection
}

function disposeAll(ts: Iterable<Tensor | null | undefined>): void {
  for (const t of ts) t?.dispose();
}

/** Sum of the cross-entropy over the batch's targets, and the gradient ∂(scale · sum)/∂(adapter). */
export class AdapterGraph {
  private readonly d: number;
  /** Bytes of activations kept for the backward by the last run (the adapted layers' saved tensors). */
  activationBytes = 0;

  constructor(
    readonly model: Llama,
    /** undefined: the frozen model alone (loss only; no gradients to form) */
    readonly adapter: Adapter | undefined,
    readonly opts: GraphOptions = {},
  ) {
    this.d = headSize(model.config);
    if (adapter && adapter.device !== model.device)
      throw new Error(`AdapterGraph: the adapter is on ${adapter.device} but the model on ${model.device}; create the adapter on the model's device`);
  }

  /**
   * Forward and backward of one micro-batch. Adds scale · ∂(loss sum)/∂θ to `grads` (when given)
   * and resolves to the loss sum (nats) and the number of target tokens. `images`: the step's
   * image prompts, for a batch with images (batch.images) and an image-conditioned adapter; the
   * gradient w.r.t. I_p is added to images.dIp (ImagePromptStep.backward then takes it to the
   * projection, once per step).
   */
  async run(batch: PackedBatch, scale: number, grads?: AdapterGrads, images?: ImagePromptStep): Promise<{ lossSum: number; targets: number }> {
    const c = this.model.config;
    const w = this.model.checkpoint.weights;
    const device = this.model.device;
    const N = batch.tokens.length;
    const targetIdx: number[] = [];
    const targetIds: number[] = [];
    for (let i = 0; i < N; i++)
      if (batch.labels[i] >= 0) {
        targetIdx.push(i);
        targetIds.push(batch.labels[i]);
      }
    const M = targetIdx.length;
    if (M === 0) return { lossSum: 0, targets: 0 };

    const tokens = native.fromArray(batch.tokens, [N]);
    const positions = native.fromArray(batch.positions, [N]);
    const segments = native.fromArray(batch.segments, [batch.segments.length]);
    if (grads && images && !images.dIp)
      throw new Error('AdapterGraph: gradients asked for, but the image prompts were built without them (withGrad false)');
    const seg = this.segmentPrompts(batch, images);
    const promptKV = this.promptKeysValues(seg);
    const saved: Saved[] = [];
    const live: Tensor[] = [tokens, positions, segments, ...promptKV.flatMap((p) => [p.pk, p.pv])];
    if (seg) live.push(seg.kRows, seg.imageRows);
    try {
      // --- forward ---------------------------------------------------------------------------
      let x = native.embedding(w.embedding, tokens); // (N, C)
      const first = this.adapter?.firstLayer ?? c.nLayers; // no adapter: no adapted layer
      for (let l = 0; l < c.nLayers; l++) {
        const adapted = l >= first;
        const keep = adapted && !!grads && !this.opts.checkpointing;
        const s = this.layerForward(l, x, positions, segments, adapted ? promptKV[l - first] : undefined);
        if (adapted && grads) {
          saved.push(keep ? s.saved : ({ xIn: x } as Saved));
          this.activationBytes = (l === first ? 0 : this.activationBytes) + savedBytes(saved[saved.length - 1]);
          if (!keep) disposeAll(Object.values(s.saved).filter((t) => t !== x));
        } else {
          disposeAll(Object.values(s.saved));
        }
        x = s.xOut;
      }
      // --- loss at the target positions only ---------------------------------------------------
      const idx = native.fromArray(Int32Array.from(targetIdx), [M]);
      live.push(idx, x);
      const hSel = native.gatherRows(x, idx); // (M, C)
      const hNorm = native.rmsnorm(hSel, w.finalNorm, c.normEps); // (M, C)
      const dNorm = grads ? native.zeros([M, c.dim], 'f32', device) : undefined; // (M, C)
      live.push(hSel, hNorm);
      if (dNorm) live.push(dNorm);
      const losses: Tensor[] = [];
      const chunk = this.opts.headChunk ?? Math.max(1, Math.floor((16 << 20) / c.vocabSize));
      for (let r0 = 0; r0 < M; r0 += chunk) {
        const rows = Math.min(chunk, M - r0);
        const hc = native.sliceRows(hNorm, r0, rows);
        // made from JS rather than sliced by a host op that the device op would have to wait for
        const tc = native.fromArray(Int32Array.from(targetIds.slice(r0, r0 + rows)), [rows]);
        const logits = native.matmul(hc, w.classifier); // (rows, V)
        const [loss, dLogits] = native.crossEntropy(logits, tc, scale);
        losses.push(loss);
        if (dNorm) {
          const dh = native.matmulBackward(dLogits, w.classifier); // (rows, C)
          const at = native.fromArray(Int32Array.from({ length: rows }, (_, i) => r0 + i), [rows]);
          native.scatterAddRows(dNorm, at, dh);
          disposeAll([dh, at]);
        }
        disposeAll([hc, tc, logits, dLogits]);
      }

      // --- backward ----------------------------------------------------------------------------
      if (grads && dNorm) {
        const dSel = native.rmsnormBackward(dNorm, hSel, w.finalNorm, c.normEps); // (M, C)
        let dx = native.zeros([N, c.dim], 'f32', device); // (N, C)
        native.scatterAddRows(dx, idx, dSel);
        dSel.dispose();
        for (let l = c.nLayers - 1; l >= first; l--) {
          const li = l - first;
          let s = saved[li];
          if (this.opts.checkpointing) {
            const re = this.layerForward(l, s.xIn, positions, segments, promptKV[li]);
            re.xOut.dispose();
            s = re.saved;
          }
          const dxIn = this.layerBackward(l, dx, s, positions, segments, promptKV[li], grads, l > first, seg);
          disposeAll(Object.values(s));
          saved[li] = undefined as unknown as Saved;
          dx.dispose();
          if (!dxIn) break;
          dx = dxIn;
        }
      }
      let lossSum = 0;
      for (const t of losses) {
        lossSum += (await t.read())[0];
        t.dispose();
      }
      return { lossSum, targets: M };
    } finally {
      disposeAll(live);
      for (const s of saved) if (s) disposeAll(Object.values(s));
    }
  }

  /** The per-segment prompt layout when the batch has an image and the adapter reads images. */
  private segmentPrompts(batch: PackedBatch, images?: ImagePromptStep): SegmentPrompts | undefined {
    const keys = batch.images;
    if (!keys || keys.every((k) => k === null || k === undefined)) return undefined; // text only: shared prompts
    if (!this.adapter?.image) return undefined; // a text-only adapter (or none) does not see images
    if (!images) throw new Error('AdapterGraph: the batch has images; pass the step\'s image prompts (ImagePromptStep)');
    const S = batch.segments.length - 1;
    if (keys.length !== S) throw new RangeError(`AdapterGraph: ${keys.length} image keys for ${S} segments`);
    const K = this.adapter.config.len;
    const rowOfSegment = images.rowsOf(keys); // (S)
    const kRows = new Int32Array(S * K);
    const imageRows = new Int32Array(S * K);
    for (let s = 0; s < S; s++)
      for (let k = 0; k < K; k++) {
        kRows[s * K + k] = k;
        imageRows[s * K + k] = rowOfSegment[s];
      }
    return { images, kRows: native.fromArray(kRows, [S * K]), imageRows: native.fromArray(imageRows, [S * K]), S };
  }

  /** Prompt keys and values of every adapted layer, computed once per micro-batch: (K, Hkv, d) each,
   *  or (S, K, Hkv, d) from P_l^v = P_l + I_p of each segment's image (SPEC §8). */
  private promptKeysValues(seg?: SegmentPrompts): PromptKV[] {
    const c = this.model.config;
    const w = this.model.checkpoint.weights;
    const adapter = this.adapter;
    if (!adapter) return [];
    return adapter.prompts.map((p, l) => {
      const lw = w.layers[adapter.firstLayer + l];
      const K = p.shape[0];
      let rows = p; // (K, C) or (S·K, C)
      if (seg) {
        rows = native.gatherRows(p, seg.kRows); // (S·K, C): P_l per segment
        const ip = native.gatherRows(seg.images.ip, seg.imageRows); // (S·K, C): I_p per segment (0: no image)
        native.addInPlace(rows, ip);
        ip.dispose();
      }
      const shape = seg ? [seg.S, K, c.nKvHeads, this.d] : [K, c.nKvHeads, this.d];
      const kv = {
        pk: reshapeOwned(native.matmul(rows, lw.wk), shape), // no norm, no RoPE
        pv: reshapeOwned(native.matmul(rows, lw.wv), shape),
        gate: adapter.gates[l],
      };
      if (seg) rows.dispose();
      return kv;
    });
  }

  private layerForward(
    l: number,
    xIn: Tensor,
    positions: Tensor,
    segments: Tensor,
    prompt?: PromptKV,
  ): { xOut: Tensor; saved: Saved } {
    const c = this.model.config;
    const lw: LayerWeights = this.model.checkpoint.weights.layers[l];
    const N = xIn.shape[0];
    const a = native.rmsnorm(xIn, lw.attnNorm, c.normEps); // (N, C)
    const q = reshapeOwned(native.matmul(a, lw.wq), [N, c.nHeads, this.d]); // (N, H, d)
    const k = reshapeOwned(native.matmul(a, lw.wk), [N, c.nKvHeads, this.d]); // (N, Hkv, d)
    const v = reshapeOwned(native.matmul(a, lw.wv), [N, c.nKvHeads, this.d]); // (N, Hkv, d)
    a.dispose();
    native.ropeAt(q, positions, c.ropeTheta, c.ropeLayout, false);
    native.ropeAt(k, positions, c.ropeTheta, c.ropeLayout, false);
    const [out, stats] = native.gatedAttention(q, k, v, segments, prompt?.pk ?? null, prompt?.pv ?? null, prompt?.gate ?? null);
    const o2 = native.reshape(out, [N, c.nHeads * this.d]);
    const xMid = native.matmul(o2, lw.wo); // (N, C)
    o2.dispose();
    native.addInPlace(xMid, xIn);
    const f = native.rmsnorm(xMid, lw.ffnNorm, c.normEps); // (N, C)
    const h1 = native.matmul(f, lw.w1); // (N, F)
    const h3 = native.matmul(f, lw.w3); // (N, F)
    f.dispose();
    const h = native.swiglu(h1, h3); // (N, F)
    const xOut = native.matmul(h, lw.w2); // (N, C)
    h.dispose();
    native.addInPlace(xOut, xMid);
    return { xOut, saved: { xIn, q, k, v, out, stats, xMid, h1, h3 } };
  }

  /**
   * Backward of adapted layer l given dxOut (N, C): adds the prompt and gate gradients to `grads`
   * and returns dxIn, or undefined when `needInput` is false (the lowest adapted layer).
   */
  private layerBackward(
    l: number,
    dxOut: Tensor,
    s: Saved,
    positions: Tensor,
    segments: Tensor,
    prompt: PromptKV,
    grads: AdapterGrads,
    needInput: boolean,
    seg?: SegmentPrompts,
  ): Tensor | undefined {
    const c = this.model.config;
    const lw = this.model.checkpoint.weights.layers[l];
    const li = l - this.adapter!.firstLayer;
    const N = dxOut.shape[0];
    // feed-forward block: xOut = xMid + W2 (silu(W1 f) * W3 f), f = RMSNorm(xMid)
    const dh = native.matmulBackward(dxOut, lw.w2); // (N, F)
    const [dh1, dh3] = native.swigluBackward(dh, s.h1, s.h3);
    const df = native.matmulBackward(dh1, lw.w1); // (N, C)
    const df3 = native.matmulBackward(dh3, lw.w3);
    native.addInPlace(df, df3);
    const dMid = native.rmsnormBackward(df, s.xMid, lw.ffnNorm, c.normEps);
    native.addInPlace(dMid, dxOut); // dxMid (N, C)
    disposeAll([dh, dh1, dh3, df, df3]);
    // attention block: xMid = xIn + Wo · attn
    const dOut2 = native.matmulBackward(dMid, lw.wo); // (N, H*d)
    const dOut = native.reshape(dOut2, [N, c.nHeads, this.d]);
    dOut2.dispose();
    const [dq, dk, dv, dpk, dpv, dgate] = native.gatedAttentionBackward(
      dOut, s.q, s.k, s.v, segments, prompt.pk, prompt.pv, prompt.gate, s.out, s.stats,
    );
    dOut.dispose();
    // prompts: Kp = P Wkᵀ, Vp = P Wvᵀ  =>  dP = dKp Wk + dVp Wv   (rows: K, or S·K per segment)
    const rows = seg ? seg.S * this.adapter!.config.len : prompt.pk.shape[0];
    const dpk2 = native.reshape(dpk!, [rows, c.nKvHeads * this.d]);
    const dpv2 = native.reshape(dpv!, [rows, c.nKvHeads * this.d]);
    const dP = native.matmulBackward(dpk2, lw.wk); // (rows, C)
    const dPv = native.matmulBackward(dpv2, lw.wv);
    native.addInPlace(dP, dPv);
    if (seg) {
      // P_l^v = P_l + I_p: the same gradient goes to the prompt row k and to the segment's image
      native.scatterAddRows(grads.prompts[li], seg.kRows, dP);
      native.scatterAddRows(seg.images.dIp!, seg.imageRows, dP);
    } else {
      native.addInPlace(grads.prompts[li], dP);
    }
    native.addInPlace(grads.gates[li], dgate!);
    disposeAll([dpk, dpv, dpk2, dpv2, dP, dPv, dgate]);
    if (!needInput) {
      disposeAll([dq, dk, dv, dMid]);
      return undefined;
    }
    native.ropeAt(dq, positions, c.ropeTheta, c.ropeLayout, true);
    native.ropeAt(dk, positions, c.ropeTheta, c.ropeLayout, true);
    const flat = (t: Tensor, n: number) => native.reshape(t, [N, n * this.d]);
    const dqf = flat(dq, c.nHeads);
    const dkf = flat(dk, c.nKvHeads);
    const dvf = flat(dv, c.nKvHeads);
    const da = native.matmulBackward(dqf, lw.wq); // (N, C)
    const dak = native.matmulBackward(dkf, lw.wk);
    const dav = native.matmulBackward(dvf, lw.wv);
    native.addInPlace(da, dak);
    native.addInPlace(da, dav);
    const dIn = native.rmsnormBackward(da, s.xIn, lw.attnNorm, c.normEps);
    native.addInPlace(dIn, dMid); // dxIn = dxMid + RMSNorm'ᵀ da
    disposeAll([dq, dk, dv, dqf, dkf, dvf, da, dak, dav, dMid]);
    return dIn;
  }
}

function savedBytes(s: Saved): number {
  return Object.values(s).reduce((n, t) => n + (t as Tensor).bytes, 0);
}

/** `t` seen with `shape`; the original handle is released (the view keeps the storage). */
function reshapeOwned(t: Tensor, shape: number[]): Tensor {
  const r = native.reshape(t, shape);
  t.dispose();
  return r;
}
