// The image-classification adapter (SPEC §9): K prompts and per-head tanh gates in each of the top
// L layers of a frozen image encoder, plus a linear head on the final layernorm(h[cls]); its
// safetensors file; and the head's forward and backward.
//
// Shapes: L adapted layers, K prompts, D hidden size, H heads, C classes, B images.
import * as fs from 'fs';
import { native, Device, Tensor } from '../native';
import { resolveDevice } from '../device';
import { Random } from '../generate/random';
import { readSafetensorsHeader, SafetensorsEntry, SafetensorsTensor, writeSafetensors } from './safetensors';

/** What an adapter must agree on with the encoder it runs on (kept in the file's metadata). */
export interface EncoderDims {
  family: string; // 'vit' | 'clip'
  hidden: number;
  layers: number;
  heads: number;
  patch: number;
  image: number;
}

import type { GateInit } from './adapter';
export type { GateInit };

export interface ClassifierConfig {
  /** adapted top layers; 0 = the head alone (the linear probe) */
  layers: number;
  /** prompts per adapted layer (0 with layers = 0) */
  len: number;
  gateInit: GateInit;
  /** class names in index order */
  labels: string[];
}

/** Host copies: prompts (L*K, D), gates (L, H) row-major, weight (C, D), bias (C). */
export interface ClassifierValues {
  prompts: Float32Array;
  gates: Float32Array;
  weight: Float32Array;
  bias: Float32Array;
}

export function checkClassifierConfig(enc: EncoderDims, c: ClassifierConfig): void {
  if (!Number.isInteger(c.layers) || c.layers < 0 || c.layers > enc.layers)
    throw new RangeError(`adapter layers must be an integer in [0, ${enc.layers}] (the encoder's layers), got ${c.layers}`);
  if (!Number.isInteger(c.len) || c.len < 0 || (c.layers > 0 && c.len < 1))
    throw new RangeError(`adapter length must be a positive integer, got ${c.len}`);
  if (c.gateInit !== 'zero' && c.gateInit !== 'random') throw new RangeError(`gate init must be 'zero' or 'random', got '${c.gateInit}'`);
  if (!Array.isArray(c.labels) || c.labels.length < 1 || !c.labels.every((l) => typeof l === 'string'))
    throw new RangeError('a classifier needs at least one class label');
}

/** N(0, 1) values from `rng` (Box–Muller, as Adapter.init). */
function normals(n: number, rng: Random): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - rng.next()));
    const t = 2 * Math.PI * rng.next();
    a[i] = r * Math.cos(t);
    if (i + 1 < n) a[i + 1] = r * Math.sin(t);
  }
  return a;
}

export class Classifier {
  /** first adapted encoder layer (0-based): layers - L */
  readonly firstLayer: number;

  private constructor(
    readonly encoder: EncoderDims,
    readonly config: ClassifierConfig,
    readonly prompts: Tensor[], // per adapted layer (K, D)
    readonly gates: Tensor[], // per adapted layer (H): the raw g; tanh(g) is applied where used
    readonly weight: Tensor, // (C, D)
    readonly bias: Tensor, // (C)
    readonly device: Device,
  ) {
    this.firstLayer = encoder.layers - config.layers;
  }

  get numClasses(): number {
    return this.config.labels.length;
  }

  /** SPEC §9 initialisation: prompts N(0, 1) from `seed`, gates 0 (or N(0, 1) from the same stream
   *  for the ablation), a zero head. Drawn on the host: the same values on every device. */
  static init(enc: EncoderDims, config: ClassifierConfig, seed = 0, device?: Device): Classifier {
    checkClassifierConfig(enc, config);
    const rng = new Random(seed >>> 0);
    const prompts = normals(config.layers * config.len * enc.hidden, rng);
    const gates = config.gateInit === 'random' ? normals(config.layers * enc.heads, rng) : new Float32Array(config.layers * enc.heads);
    const C = config.labels.length;
    return Classifier.fromValues(enc, config, { prompts, gates, weight: new Float32Array(C * enc.hidden), bias: new Float32Array(C) }, device);
  }

  static fromValues(enc: EncoderDims, config: ClassifierConfig, v: ClassifierValues, device?: Device): Classifier {
    checkClassifierConfig(enc, config);
    const dev = resolveDevice(device, 'classifier device');
    const { layers: L, len: K } = config;
    const D = enc.hidden;
    const H = enc.heads;
    const C = config.labels.length;
    const need: [string, Float32Array, number][] = [
      ['prompts', v.prompts, L * K * D],
      ['gates', v.gates, L * H],
      ['head weight', v.weight, C * D],
      ['head bias', v.bias, C],
    ];
    for (const [name, arr, n] of need) if (arr.length !== n) throw new RangeError(`classifier ${name} need ${n} values, got ${arr.length}`);
    const prompts: Tensor[] = [];
    const gates: Tensor[] = [];
    for (let l = 0; l < L; l++) {
      prompts.push(native.fromArray(v.prompts.slice(l * K * D, (l + 1) * K * D), [K, D], 'f32', dev));
      gates.push(native.fromArray(v.gates.slice(l * H, (l + 1) * H), [H], 'f32', dev));
    }
    const weight = native.fromArray(v.weight.slice(), [C, D], 'f32', dev);
    const bias = native.fromArray(v.bias.slice(), [C], 'f32', dev);
    return new Classifier(enc, config, prompts, gates, weight, bias, dev);
  }

  /** The prompt and gate of encoder layer `n` (0-based), or undefined below the adapted layers. */
  layer(n: number): { prompt: Tensor; gate: Tensor } | undefined {
    const l = n - this.firstLayer;
    return l >= 0 && l < this.config.layers ? { prompt: this.prompts[l], gate: this.gates[l] } : undefined;
  }

  /** Every trainable tensor, in the optimiser's order: prompts, gates, head weight, head bias. */
  parameters(): Tensor[] {
    return [...this.prompts, ...this.gates, this.weight, this.bias];
  }

  get parameterCount(): number {
    const { layers: L, len: K } = this.config;
    return L * (K * this.encoder.hidden + this.encoder.heads) + this.numClasses * (this.encoder.hidden + 1);
  }

  async values(): Promise<ClassifierValues> {
    const { layers: L, len: K } = this.config;
    const D = this.encoder.hidden;
    const H = this.encoder.heads;
    const prompts = new Float32Array(L * K * D);
    const gates = new Float32Array(L * H);
    for (let l = 0; l < L; l++) {
      prompts.set((await this.prompts[l].read()) as Float32Array, l * K * D);
      gates.set((await this.gates[l].read()) as Float32Array, l * H);
    }
    return { prompts, gates, weight: (await this.weight.read()) as Float32Array, bias: (await this.bias.read()) as Float32Array };
  }

  /** Writes the adapter file atomically: `adapter_query.weight` (L*K, D) and
   *  `layers.N.attention.gate` (1, H, 1, 1) as the LLaMA-Adapter file (SPEC §6), `head.weight`
   *  (C, D), `head.bias` (C), and the encoder's dims, the adapter's shape and the labels in
   *  `__metadata__`. */
  async save(file: string, extraMetadata: Record<string, string> = {}): Promise<void> {
    const v = await this.values();
    const { layers: L, len: K } = this.config;
    const { hidden: D, heads: H } = this.encoder;
    const C = this.numClasses;
    const tensors: SafetensorsTensor[] = [];
    if (L > 0) {
      tensors.push({ name: 'adapter_query.weight', dtype: 'F32', shape: [L * K, D], data: v.prompts });
      for (let l = 0; l < L; l++)
        tensors.push({ name: `layers.${this.firstLayer + l}.attention.gate`, dtype: 'F32', shape: [1, H, 1, 1], data: v.gates.slice(l * H, (l + 1) * H) });
    }
    tensors.push({ name: 'head.weight', dtype: 'F32', shape: [C, D], data: v.weight });
    tensors.push({ name: 'head.bias', dtype: 'F32', shape: [C], data: v.bias });
    writeSafetensors(file, tensors, {
      format: 'llama-adapter',
      task: 'classify',
      encoder_family: this.encoder.family,
      hidden_size: String(D),
      num_hidden_layers: String(this.encoder.layers),
      num_attention_heads: String(H),
      patch_size: String(this.encoder.patch),
      image_size: String(this.encoder.image),
      adapter_layers: String(L),
      adapter_len: String(K),
      gate_init: this.config.gateInit,
      labels: JSON.stringify(this.config.labels),
      ...extraMetadata,
    });
  }

  /** Reads a classification adapter and checks it against the encoder; every error names the file
   *  and, for a mismatch, the dimension and both values. */
  static load(file: string, enc: EncoderDims, device?: Device): Classifier {
    if (!fs.existsSync(file)) throw new Error(`adapter file ${file} does not exist`);
    const header = readSafetensorsHeader(file);
    const m = header.metadata;
    if (m.task !== 'classify')
      throw new Error(`${file} is not an image-classification adapter (its metadata has task ${m.task === undefined ? '(none)' : `'${m.task}'`}; train one with --task classify)`);
    const dims: [string, keyof EncoderDims][] = [
      ['encoder_family', 'family'],
      ['hidden_size', 'hidden'],
      ['num_hidden_layers', 'layers'],
      ['num_attention_heads', 'heads'],
      ['patch_size', 'patch'],
      ['image_size', 'image'],
    ];
    const mismatches = dims.filter(([k, d]) => m[k] !== String(enc[d])).map(([k, d]) => `${k} ${m[k] ?? '(missing)'} in the adapter, ${enc[d]} in the encoder`);
    if (mismatches.length) throw new Error(`${file} was trained for another encoder: ${mismatches.join('; ')}`);
    let labels: unknown;
    try {
      labels = JSON.parse(m.labels ?? '');
    } catch {
      labels = undefined;
    }
    if (!Array.isArray(labels) || labels.length < 1 || !labels.every((l) => typeof l === 'string'))
      throw new Error(`${file}: metadata "labels" must be a JSON list of class names`);
    const L = Number(m.adapter_layers);
    const K = Number(m.adapter_len);
    const gateInit = m.gate_init as GateInit;
    const config: ClassifierConfig = { layers: L, len: K, gateInit, labels: labels as string[] };
    try {
      checkClassifierConfig(enc, config);
    } catch (err) {
      throw new Error(`${file}: ${(err as Error).message}`);
    }
    const { hidden: D, heads: H } = enc;
    const C = config.labels.length;
    const first = enc.layers - L;
    const want = new Map<string, number[]>([
      ['head.weight', [C, D]],
      ['head.bias', [C]],
    ]);
    if (L > 0) want.set('adapter_query.weight', [L * K, D]);
    for (let l = 0; l < L; l++) want.set(`layers.${first + l}.attention.gate`, [1, H, 1, 1]);
    for (const name of header.tensors.keys()) if (!want.has(name)) throw new Error(`${file}: unexpected tensor ${name} (it adapts the top ${L} of ${enc.layers} layers)`);
    const fd = fs.openSync(file, 'r');
    try {
      const read = (name: string): Float32Array => {
        const e = header.tensors.get(name);
        const shape = want.get(name)!;
        if (!e) throw new Error(`${file}: tensor ${name} is missing`);
        if (e.dtype !== 'F32') throw new Error(`${file}: ${name} must be F32, got ${e.dtype}`);
        if (e.shape.join(',') !== shape.join(',')) throw new Error(`${file}: ${name} is [${e.shape}], expected [${shape}]`);
        const a = readF32(fd, e);
        if (a.some((x) => !Number.isFinite(x))) throw new Error(`${file}: ${name} has a non-finite value (NaN or Inf)`);
        return a;
      };
      const gates = new Float32Array(L * H);
      for (let l = 0; l < L; l++) gates.set(read(`layers.${first + l}.attention.gate`), l * H);
      const values: ClassifierValues = {
        prompts: L > 0 ? read('adapter_query.weight') : new Float32Array(0),
        gates,
        weight: read('head.weight'),
        bias: read('head.bias'),
      };
      return Classifier.fromValues(enc, config, values, device);
    } finally {
      fs.closeSync(fd);
    }
  }

  dispose(): void {
    for (const t of this.parameters()) t.dispose();
  }
}

function readF32(fd: number, e: SafetensorsEntry): Float32Array {
  const buf = Buffer.alloc(e.byteLength);
  fs.readSync(fd, buf, 0, e.byteLength, e.byteOffset);
  return new Float32Array(buf.buffer, buf.byteOffset, e.byteLength / 4).slice();
}

// ---------------------------------------------------------------------------------------------
// The linear head: logits = f · Wᵀ + b on the features f = layernorm(h[cls])

/** logits (B, C) of features f (B, D) under weight (C, D) and bias (C). */
export function headForward(f: Tensor, weight: Tensor, bias: Tensor): Tensor {
  const logits = native.matmul(f, weight); // (B, C)
  native.addBias(logits, bias);
  return logits;
}

/** The head's gradients given dlogits (B, C): dW (C, D) = dlogitsᵀ f, db (C) = column sums,
 *  and df (B, D) = dlogits · W when the features need it (the prompt path). */
export function headBackward(dlogits: Tensor, f: Tensor, weight: Tensor, wantDf: boolean): { dW: Tensor; db: Tensor; df?: Tensor } {
  return {
    dW: native.matmulWeightGrad(dlogits, f),
    db: native.biasGrad(dlogits),
    df: wantDf ? native.matmulBackward(dlogits, weight) : undefined,
  };
}
