// The encoder's training graph for zero-init gated prompts (SPEC §9): a forward with prompts and
// per-head tanh gates in the top L layers that keeps what the backward needs for those layers only,
// and the backward from d(pooled) — pooled = post_layernorm / layernorm of the last layer's [cls],
// the input of a classification head — to the prompts and gates. The encoder is frozen: only input
// gradients flow through its weights (matmulBackward, layerNormBackward, geluBackward,
// gatedAttentionBackward); no gradient of a frozen weight is formed.
//
// Shapes: B images, T tokens per image, C hidden, H heads, d = C / H, F intermediate, K prompts.
import { native, Tensor } from '../native';
import {
  BatchIndex, EncoderPrompts, ImageEncoder, LayerActivations, PromptKV, checkAdaptedLayers, checkPrompts, encoderLayer, promptKV, releaseSaved,
  selfAttentionBackward,
} from './encoder';

interface SavedLayer {
  act: LayerActivations;
  kv: PromptKV;
}

export class EncoderGraph {
  private saved: SavedLayer[] = [];
  private idx?: BatchIndex;
  private clsIn?: Tensor; // (B, C) the last layer's [cls] rows, before the final norm

  /** `L` adapted layers at the top of `encoder` (its weights stay frozen). */
  constructor(readonly encoder: ImageEncoder, readonly L: number) {
    checkAdaptedLayers('EncoderGraph', L, encoder.config.nLayers);
  }

  /**
   * pixels (B, Cin, S, S) -> pooled (B, C) = norm(h_last[cls]) with the prompts' gated branch in the
   * top L layers; keeps those layers' activations until backward() or release().
   */
  forward(pixels: Tensor, p: EncoderPrompts): Tensor {
    const enc = this.encoder;
    const c = enc.config;
    if (checkPrompts(p, c, enc.device) !== this.L)
      throw new RangeError(`EncoderGraph.forward: ${p.prompts.length} prompt layers, the graph adapts ${this.L}`);
    this.release();
    const { x: x0, idx } = enc.embedTokens(pixels);
    this.idx = idx;
    let x = x0;
    const first = c.nLayers - this.L;
    for (let i = 0; i < c.nLayers; i++) {
      const lw = enc.weights.layers[i];
      if (i < first) {
        x = encoderLayer(x, lw, c, idx, null); // in place, nothing kept
        continue;
      }
      const kv = promptKV(p.prompts[i - first], p.gates[i - first], lw, c);
      const act: Partial<LayerActivations> = {};
      x = encoderLayer(x, lw, c, idx, kv, act); // x (the input) is kept in act.xIn
      this.saved.push({ act: act as LayerActivations, kv });
    }
    const { postNorm } = enc.weights;
    this.clsIn = native.gatherRows(x, idx.clsRows); // (B, C)
    x.dispose();
    return native.layerNorm(this.clsIn, postNorm.w, postNorm.b, c.eps);
  }

  /**
   * Given dPooled (B, C) = dLoss/dpooled of the last forward(), adds dLoss/dprompts (K, C) and
   * dLoss/dgates (H) of each adapted layer to `grads` (same layout as the prompts), then releases
   * the saved activations.
   */
  backward(dPooled: Tensor, grads: EncoderPrompts): void {
    const enc = this.encoder;
    const c = enc.config;
    const idx = this.idx;
    if (!idx || !this.clsIn) throw new Error('EncoderGraph.backward: call forward() first (once per backward)');
    checkPrompts(grads, c, enc.device);
    const rows = idx.B * idx.T;
    const own = (ts: Tensor[]) => ts.slice(1).forEach((t) => t.dispose()); // keep [0], free the rest
    const ln = (dy: Tensor, x: Tensor, w: Tensor) => {
      const r = native.layerNormBackward(dy, x, w, c.eps);
      own(r);
      return r[0];
    };

    const dCls = ln(dPooled, this.clsIn, enc.weights.postNorm.w); // (B, C)
    let dx = native.zeros([rows, c.dim], 'f32', enc.device); // (B*T, C)
    native.scatterAddRows(dx, idx.clsRows, dCls);
    dCls.dispose();
    const first = c.nLayers - this.L;
    for (let l = this.L - 1; l >= 0; l--) {
      const lw = enc.weights.layers[first + l];
      const { act, kv } = this.saved[l];
      // feed-forward block: x_out = x_mid + W2 act(W1 LN2(x_mid) + b1) + b2
      const dg = native.matmulBackward(dx, lw.w2); // (B*T, F)
      const dh = native.geluBackward(dg, act.h, c.act);
      dg.dispose();
      const df = native.matmulBackward(dh, lw.w1); // (B*T, C)
      dh.dispose();
      const dMid = ln(df, act.xMid, lw.ln2w);
      df.dispose();
      native.addInPlace(dMid, dx);
      dx.dispose();
      // attention block: x_mid = x_in + Wo attn(LN1(x_in)) + bo
      const da = selfAttentionBackward(dMid, act, lw, c, idx.segments, kv, grads.prompts[l], grads.gates[l], l === 0); // (B*T, C)
      if (!da) {
        // nothing trainable below the lowest adapted layer
        dMid.dispose();
        dx = undefined as unknown as Tensor;
        break;
      }
      dx = ln(da, act.xIn, lw.ln1w);
      da.dispose();
      native.addInPlace(dx, dMid);
      dMid.dispose();
    }
    this.release();
  }

  /** Frees the saved activations (idempotent). */
  release(): void {
    releaseSaved(this.saved);
    this.saved = [];
    this.idx?.dispose();
    this.idx = undefined;
    this.clsIn?.dispose();
    this.clsIn = undefined;
  }
}
