// One micro-batch through the frozen model with the adapter: forward, loss on the target tokens,
// and backward to the adapter's prompts and gates (SPEC §2–§3). Every op is native and queued;
// nothing here waits except for the loss read at the end. Float tensors live on the model's device;
// index tensors (tokens, positions, segments, rows, targets) are made on the host, where the ops
// check their values (and a CUDA op uploads them itself).
//
// Shapes: N tokens of the packed micro-batch (S sequences, positions restarting per sequence),
// C = dim, H heads, Hkv kv heads, d head size, F hidden, K prompts, M target tokens, V vocab.
import { native, Tensor } from '../native';
import { Adapter } from '../model/adapter';
import { headSize } from '../model/config';
import { Llama } from '../model/llama';
import { LayerWeights } from '../model/weights';

/** A packed micro-batch (see lib/data/alpaca.ts). */
export interface PackedBatch {
  tokens: Int32Array; // (N)
  labels: Int32Array; // (N) the token predicted at each position, -1 for none
  positions: Int32Array; // (N) restarting at 0 per sequence
  segments: Int32Array; // (S+1) offsets
}

/** Accumulators of the adapter gradient, one per parameter tensor (same order as parameters()). */
export class AdapterGrads {
  readonly prompts: Tensor[]; // per adapted layer (K, C)
  readonly gates: Tensor[]; // per adapted layer (H) or (1)

  /** Zeros on the adapter's device. */
  constructor(adapter: Adapter) {
    this.prompts = adapter.prompts.map((p) => native.zeros([...p.shape], 'f32', adapter.device));
    this.gates = adapter.gates.map((g) => native.zeros([...g.shape], 'f32', adapter.device));
  }

  all(): Tensor[] {
    return [...this.prompts, ...this.gates];
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
   * and resolves to the loss sum (nats) and the number of target tokens.
   */
  async run(batch: PackedBatch, scale: number, grads?: AdapterGrads): Promise<{ lossSum: number; targets: number }> {
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
    const promptKV = this.promptKeysValues();
    const saved: Saved[] = [];
    const live: Tensor[] = [tokens, positions, segments, ...promptKV.flatMap((p) => [p.pk, p.pv])];
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
          const dxIn = this.layerBackward(l, dx, s, positions, segments, promptKV[li], grads, l > first);
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

  /** Prompt keys and values of every adapted layer, computed once per step: (K, Hkv, d) each. */
  private promptKeysValues(): { pk: Tensor; pv: Tensor; gate: Tensor }[] {
    const c = this.model.config;
    const w = this.model.checkpoint.weights;
    const adapter = this.adapter;
    if (!adapter) return [];
    return adapter.prompts.map((p, l) => {
      const lw = w.layers[adapter.firstLayer + l];
      const K = p.shape[0];
      return {
        pk: reshapeOwned(native.matmul(p, lw.wk), [K, c.nKvHeads, this.d]), // no norm, no RoPE
        pv: reshapeOwned(native.matmul(p, lw.wv), [K, c.nKvHeads, this.d]),
        gate: adapter.gates[l],
      };
    });
  }

  private layerForward(
    l: number,
    xIn: Tensor,
    positions: Tensor,
    segments: Tensor,
    prompt?: { pk: Tensor; pv: Tensor; gate: Tensor },
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
    prompt: { pk: Tensor; pv: Tensor; gate: Tensor },
    grads: AdapterGrads,
    needInput: boolean,
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
    // prompts: Kp = P Wkᵀ, Vp = P Wvᵀ  =>  dP = dKp Wk + dVp Wv
    const K = prompt.pk.shape[0];
    const dpk2 = native.reshape(dpk!, [K, c.nKvHeads * this.d]);
    const dpv2 = native.reshape(dpv!, [K, c.nKvHeads * this.d]);
    const dP = native.matmulBackward(dpk2, lw.wk); // (K, C)
    const dPv = native.matmulBackward(dpv2, lw.wv);
    native.addInPlace(grads.prompts[li], dP);
    native.addInPlace(grads.prompts[li], dPv);
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
