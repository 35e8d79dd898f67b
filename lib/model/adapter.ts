// The LLaMA-Adapter parameters (SPEC §2) and their files (SPEC §6): K learnable prompts per
// adapted layer and a zero-initialised gate, per head or one per layer. Small and always f32.
//
// Shapes: L adapted layers (the top L of N), K prompts, C = dim, H heads.
import * as fs from 'fs';
import * as path from 'path';
import { native, Tensor, Device } from '../native';
import { resolveDevice } from '../device';
import { Random } from '../generate/random';
import { LlamaConfig } from './config';
import { ADAPTER_MAX_LEN } from './bounds';
import { makeOutputDir, removeEmptyDirs } from '../output';
import { readSafetensorsHeader, writeSafetensors } from './safetensors';
import { looksLikeZip, readAt } from './pth/zip';
import { readTorchCheckpoint } from './pth/torch';
import { f16ToF32 } from './pth/half';
import { PthTensor, writeTorchStateDict } from './pth/write';

export type GateMode = 'per-head' | 'scalar';
/** SPEC §8: gates start at 0 (zero-init attention) or ~ N(0, 1) (the paper's ablation). */
export type GateInit = 'zero' | 'random';

/** The image projection of SPEC §8: I_p = fc2 · GELU(fc1 · concat(g_1 .. g_M) + b1) + b2. */
export interface ImageProjConfig {
  /** encoder layers the features come from (1-based, negative from the end), one per feature vector */
  featureLayers: number[];
  /** D: the size of one feature vector; the projection reads M·D values, M = featureLayers.length */
  featureSize: number;
  /** R: the projection's hidden width (default 128) */
  width: number;
}

export interface AdapterConfig {
  /** adapted layers: the top `layers` of the model */
  layers: number;
  /** prompts per adapted layer */
  len: number;
  gate: GateMode;
  /** present: an image-conditioned adapter (SPEC §8) */
  image?: ImageProjConfig;
}

export function defaultAdapterConfig(model: LlamaConfig): AdapterConfig {
  // the paper adapts 30 of LLaMA-7B's 32 layers: N - 2, at least 1
  return { layers: Math.max(1, model.nLayers - 2), len: 10, gate: 'per-head' };
}

export function checkAdapterConfig(model: LlamaConfig, a: AdapterConfig): void {
  if (!Number.isInteger(a.layers) || a.layers < 1 || a.layers > model.nLayers)
    throw new RangeError(`adapter layers must be an integer in [1, ${model.nLayers}] (the model's layers), got ${a.layers}`);
  if (!Number.isInteger(a.len) || a.len < 1 || a.len > ADAPTER_MAX_LEN)
    throw new RangeError(`adapter length must be an integer in [1, ${ADAPTER_MAX_LEN}], got ${a.len}`);
  if (a.gate !== 'per-head' && a.gate !== 'scalar') throw new RangeError(`gate must be 'per-head' or 'scalar', got '${a.gate}'`);
  if (a.image) {
    const { featureLayers: fl, featureSize: D, width: R } = a.image;
    if (!Array.isArray(fl) || fl.length < 1 || fl.some((n) => !Number.isInteger(n) || n === 0))
      throw new RangeError(`feature layers must be one or more nonzero integers (1-based, negative from the end), got [${fl}]`);
    if (!Number.isInteger(D) || D < 1) throw new RangeError(`feature size must be a positive integer, got ${D}`);
    if (!Number.isInteger(R) || R < 1) throw new RangeError(`projection width must be a positive integer, got ${R}`);
  }
}

/** M·D: the values the projection reads per image. */
export function projInputSize(p: ImageProjConfig): number {
  return p.featureLayers.length * p.featureSize;
}

/** The image projection's tensors, in the adapter file's order (SPEC §8). */
export interface ImageProjTensors<T> {
  fc1: T; // (R, M*D)
  b1: T; // (R)
  fc2: T; // (C, R)
  b2: T; // (C)
}

const PROJ_KEYS = ['fc1', 'b1', 'fc2', 'b2'] as const;
const PROJ_FILE_NAMES: Record<(typeof PROJ_KEYS)[number], string> = {
  fc1: 'image_proj.fc1.weight',
  b1: 'image_proj.fc1.bias',
  fc2: 'image_proj.fc2.weight',
  b2: 'image_proj.fc2.bias',
};

function projShapes(p: ImageProjConfig, C: number): ImageProjTensors<number[]> {
  return { fc1: [p.width, projInputSize(p)], b1: [p.width], fc2: [C, p.width], b2: [C] };
}

/** Standard normals (Box–Muller) from `rng`, times `scale`. */
function normals(rng: Random, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = 1 - rng.next();
    const r = Math.sqrt(-2 * Math.log(u));
    const t = 2 * Math.PI * rng.next();
    out[i] = r * Math.cos(t) * scale;
    if (i + 1 < n) out[i + 1] = r * Math.sin(t) * scale;
  }
  return out;
}

/** Host copies of the parameters: prompts (L*K, C) row-major, gates (L, H or 1) row-major, and
 *  the image projection of an image-conditioned adapter. */
export interface AdapterValues {
  prompts: Float32Array;
  gates: Float32Array;
  image?: ImageProjTensors<Float32Array>;
}

export class Adapter {
  /** first adapted layer: N - L */
  readonly firstLayer: number;
  readonly gateSize: number;

  private constructor(
    readonly model: LlamaConfig,
    readonly config: AdapterConfig,
    readonly prompts: Tensor[], // per adapted layer (K, C)
    readonly gates: Tensor[], // per adapted layer (H) or (1): the raw g; tanh(g) is applied where used
    readonly device: Device, // where the prompts and gates live
    /** the image projection (SPEC §8), when config.image is set */
    readonly image?: ImageProjTensors<Tensor>,
  ) {
    this.firstLayer = model.nLayers - config.layers;
    this.gateSize = config.gate === 'per-head' ? model.nHeads : 1;
  }

  /** SPEC §2/§8 initialisation from `seed`, drawn on the host (the same values on every device):
   *  P ~ N(0, 1); fc1, fc2 ~ N(0, 1/fan_in), biases 0; g = 0 (the output equals the frozen model's,
   *  for any image) or, with gateInit 'random', g ~ N(0, 1). The draws come in that order, so the
   *  prompts (and projection) do not depend on the gate init. `device`: as in fromValues. */
  static init(model: LlamaConfig, config: AdapterConfig, seed = 0, device?: Device, gateInit: GateInit = 'zero'): Adapter {
    checkAdapterConfig(model, config);
    if (gateInit !== 'zero' && gateInit !== 'random') throw new RangeError(`gate init must be 'zero' or 'random', got '${gateInit}'`);
    const rng = new Random(seed >>> 0);
    const prompts = normals(rng, config.layers * config.len * model.dim);
    let image: ImageProjTensors<Float32Array> | undefined;
    if (config.image) {
      const p = config.image;
      const MD = projInputSize(p);
      const fc1 = normals(rng, p.width * MD, 1 / Math.sqrt(MD));
      const fc2 = normals(rng, model.dim * p.width, 1 / Math.sqrt(p.width));
      image = { fc1, b1: new Float32Array(p.width), fc2, b2: new Float32Array(model.dim) };
    }
    const nGates = config.layers * (config.gate === 'per-head' ? model.nHeads : 1);
    const gates = gateInit === 'random' ? normals(rng, nGates) : new Float32Array(nGates);
    return Adapter.fromValues(model, config, { prompts, gates, image }, device);
  }

  /** `device`: where the tensors live (default: 'cuda' when available, else 'cpu'); use the model's. */
  static fromValues(model: LlamaConfig, config: AdapterConfig, values: AdapterValues, device?: Device): Adapter {
    checkAdapterConfig(model, config);
    const dev = resolveDevice(device, 'adapter device');
    const { layers: L, len: K } = config;
    const G = config.gate === 'per-head' ? model.nHeads : 1;
    if (values.prompts.length !== L * K * model.dim)
      throw new RangeError(`adapter prompts need ${L}*${K}*${model.dim} values, got ${values.prompts.length}`);
    if (values.gates.length !== L * G) throw new RangeError(`adapter gates need ${L}*${G} values, got ${values.gates.length}`);
    for (const [name, arr] of [['prompts', values.prompts], ['gates', values.gates]] as const) {
      const i = arr.findIndex((v) => !Number.isFinite(v));
      if (i >= 0) throw new RangeError(`adapter ${name} must be finite, but value ${i} is ${arr[i]}`);
    }
    if (!!config.image !== !!values.image)
      throw new RangeError(config.image ? 'an image-conditioned adapter needs the image projection values' : 'image projection values given for a text-only adapter config');
    let image: ImageProjTensors<Tensor> | undefined;
    if (config.image) {
      const shapes = projShapes(config.image, model.dim);
      for (const k of PROJ_KEYS) {
        const n = shapes[k].reduce((a, b) => a * b, 1);
        if (values.image![k].length !== n) throw new RangeError(`${PROJ_FILE_NAMES[k]} needs [${shapes[k]}] = ${n} values, got ${values.image![k].length}`);
      }
      image = {} as ImageProjTensors<Tensor>;
      for (const k of PROJ_KEYS) image[k] = native.fromArray(values.image![k].slice(), shapes[k], 'f32', dev);
    }
    const prompts = [];
    const gates = [];
    for (let l = 0; l < L; l++) {
      prompts.push(native.fromArray(values.prompts.slice(l * K * model.dim, (l + 1) * K * model.dim), [K, model.dim], 'f32', dev));
      gates.push(native.fromArray(values.gates.slice(l * G, (l + 1) * G), [G], 'f32', dev));
    }
    return new Adapter(model, config, prompts, gates, dev, image);
  }

  /** The adapter's prompt and gate of model layer `n`, or undefined below the adapted layers. */
  layer(n: number): { prompt: Tensor; gate: Tensor } | undefined {
    const l = n - this.firstLayer;
    return l >= 0 ? { prompt: this.prompts[l], gate: this.gates[l] } : undefined;
  }

  /** Every trainable tensor, prompts then gates, then fc1, b1, fc2, b2 (the optimiser's order). */
  parameters(): Tensor[] {
    return [...this.prompts, ...this.gates, ...(this.image ? PROJ_KEYS.map((k) => this.image![k]) : [])];
  }

  /** Per parameter (parameters() order): whether weight decay applies. SPEC §4/§8: prompts, gates,
   *  fc1 and fc2; not the projection's biases. */
  decayMask(): boolean[] {
    return [...this.prompts.map(() => true), ...this.gates.map(() => true), ...(this.image ? [true, false, true, false] : [])];
  }

  get parameterCount(): number {
    const p = this.config.image;
    const proj = p ? p.width * projInputSize(p) + p.width + this.model.dim * p.width + this.model.dim : 0;
    return this.config.layers * (this.config.len * this.model.dim + this.gateSize) + proj;
  }

  async values(): Promise<AdapterValues> {
    const { layers: L, len: K } = this.config;
    const prompts = new Float32Array(L * K * this.model.dim);
    const gates = new Float32Array(L * this.gateSize);
    for (let l = 0; l < L; l++) {
      prompts.set((await this.prompts[l].read()) as Float32Array, l * K * this.model.dim);
      gates.set((await this.gates[l].read()) as Float32Array, l * this.gateSize);
    }
    if (!this.image) return { prompts, gates };
    const image = {} as ImageProjTensors<Float32Array>;
    for (const k of PROJ_KEYS) image[k] = ((await this.image[k].read()) as Float32Array).slice();
    return { prompts, gates, image };
  }

  /** Writes the adapter file of SPEC §6 atomically (temporary file, then rename). */
  async save(file: string, extraMetadata: Record<string, string> = {}): Promise<void> {
    const { prompts, gates, image } = await this.values();
    const { layers: L, len: K } = this.config;
    const C = this.model.dim;
    const H = this.model.nHeads;
    const imageMeta: Record<string, string> = {};
    const tensors = [{ name: 'adapter_query.weight', dtype: 'F32' as const, shape: [L * K, C], data: prompts }];
    for (let l = 0; l < L; l++) {
      // the official layout is [1, H, 1, 1]; a scalar gate is stored as [1, 1, 1, 1]
      const g = gates.slice(l * this.gateSize, (l + 1) * this.gateSize);
      tensors.push({ name: `layers.${this.firstLayer + l}.attention.gate`, dtype: 'F32', shape: [1, g.length, 1, 1], data: g });
    }
    if (image) {
      const p = this.config.image!;
      const shapes = projShapes(p, C);
      for (const k of PROJ_KEYS) tensors.push({ name: PROJ_FILE_NAMES[k], dtype: 'F32', shape: shapes[k], data: image[k] });
      imageMeta.feature_layers = p.featureLayers.join(',');
      imageMeta.feature_size = String(p.featureSize);
      imageMeta.proj_width = String(p.width);
    }
    writeSafetensors(file, tensors, {
      format: 'llama-adapter',
      adapter_len: String(K),
      adapter_layers: String(L),
      gate: this.config.gate,
      dim: String(C),
      n_layers: String(this.model.nLayers),
      n_heads: String(H),
      n_kv_heads: String(this.model.nKvHeads),
      vocab_size: String(this.model.vocabSize),
      ...imageMeta,
      ...extraMetadata,
    });
  }

  /** Reads an adapter file — ours (safetensors, SPEC §6) or an official release's `.pth`
   *  (torch.save zip: `adapter_query.weight` + `layers.N.attention.gate`, F16 or F32, converted to
   *  f32) — and checks that it fits `model`; errors name the file and the problem.
   *  `device`: as in fromValues. */
  static load(file: string, model: LlamaConfig, device?: Device): Adapter {
    if (!fs.existsSync(file)) throw new Error(`adapter file ${file} does not exist`);
    const { tensors, metadata } = looksLikeZip(file) ? readOfficialTensors(file) : readSafetensorsTensors(file);
    const query = tensors.get('adapter_query.weight');
    if (!query) throw new Error(`${file} is not an adapter file: it has no adapter_query.weight tensor`);
    if (query.shape.length !== 2 || query.shape[1] !== model.dim)
      throw new Error(
        `${file} does not fit the model: adapter_query.weight is [${query.shape}] but the model's dim is ${model.dim} (expected [L*K, ${model.dim}])`,
      );
    const gateNames = [...tensors.keys()]
      .map((n) => /^layers\.(\d+)\.attention\.gate$/.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
    const L = gateNames.length;
    if (L < 1) throw new Error(`${file} is not an adapter file: it has no layers.N.attention.gate tensors`);
    const first = model.nLayers - L;
    if (first < 0 || gateNames.some((n, i) => n !== first + i))
      throw new Error(
        `${file} does not fit the model: it adapts layers ${gateNames.join(', ')} but a model of ${model.nLayers} layers adapts its top ${L} (${first}..${model.nLayers - 1})`,
      );
    if (query.shape[0] % L !== 0)
      throw new Error(`${file}: adapter_query.weight has ${query.shape[0]} rows, not a multiple of its ${L} adapted layers`);
    const K = query.shape[0] / L;
    const declaredLen = metadata.adapter_len;
    if (declaredLen !== undefined && Number(declaredLen) !== K)
      throw new Error(`${file}: metadata adapter_len ${declaredLen} contradicts adapter_query.weight rows ${query.shape[0]} / ${L} layers`);
    let G = 0;
    const gateValues: Float32Array[] = [];
    for (const n of gateNames) {
      const e = tensors.get(`layers.${n}.attention.gate`)!;
      const size = e.shape.reduce((a, b) => a * b, 1);
      if (size !== model.nHeads && size !== 1)
        throw new Error(`${file} does not fit the model: layers.${n}.attention.gate has ${size} values, the model has ${model.nHeads} heads (or 1 for a scalar gate)`);
      if (G && size !== G) throw new Error(`${file}: the gates of different layers have different sizes`);
      G = size;
      gateValues.push(e.read());
    }
    // one value per layer is a scalar gate (with one head, the metadata tells the two apart)
    const gate: GateMode = G === 1 && (model.nHeads > 1 || metadata.gate === 'scalar') ? 'scalar' : 'per-head';
    const prompts = query.read();
    const gates = new Float32Array(L * G);
    gateValues.forEach((g, l) => gates.set(g, l * G));
    for (const [name, arr] of [['adapter_query.weight', prompts], ['gates', gates]] as const)
      if (arr.some((v) => !Number.isFinite(v))) throw new Error(`${file}: ${name} has a non-finite value (NaN or Inf)`);
    const proj = readImageProj(file, { tensors, metadata }, model.dim);
    try {
      return Adapter.fromValues(model, { layers: L, len: K, gate, ...(proj ? { image: proj.config } : {}) }, { prompts, gates, image: proj?.values }, device);
    } catch (err) {
      throw new Error(`${file}: ${(err as Error).message}`); // e.g. more prompts than the bound
    }
  }

  /**
   * The official LLaMA-Adapter layout as a torch.save `.pth` (what the official scripts'
   * torch.load + load_state_dict(strict=False) read): `adapter_query.weight` (L*K, C) f32 and
   * `layers.N.attention.gate` (1, H, 1, 1) f32 — raw g, as the official model applies tanh
   * itself; a scalar gate is (1, 1, 1, 1).
   */
  async exportOfficial(file: string): Promise<void> {
    const { prompts, gates } = await this.values();
    const { layers: L, len: K } = this.config;
    const tensors: PthTensor[] = [{ name: 'adapter_query.weight', shape: [L * K, this.model.dim], data: prompts }];
    for (let l = 0; l < L; l++)
      tensors.push({
        name: `layers.${this.firstLayer + l}.attention.gate`,
        shape: [1, this.gateSize, 1, 1],
        data: gates.slice(l * this.gateSize, (l + 1) * this.gateSize),
      });
    writeTorchStateDict(file, tensors);
  }

  /**
   * PEFT's AdaptionPrompt format (SPEC §6). PEFT applies one raw gate per layer, so only the scalar
   * gate mode exports exactly; per-head gates are refused.
   */
  async exportPeft(outDir: string): Promise<void> {
    if (this.config.gate !== 'scalar')
      throw new Error(
        'this adapter has per-head gates, but PEFT applies one gate per layer: the export would change the model. ' +
          'Train with --gate scalar to export to PEFT.',
      );
    const { prompts, gates } = await this.values();
    const { layers: L, len: K } = this.config;
    const C = this.model.dim;
    const made = makeOutputDir(outDir, 'the PEFT output folder');
    try {
      const tensors = [];
      for (let l = 0; l < L; l++) {
        const n = this.firstLayer + l;
        tensors.push({
          name: `base_model.model.model.layers.${n}.self_attn.adaption_prompt`,
          dtype: 'F32' as const,
          shape: [1, K, C],
          data: prompts.slice(l * K * C, (l + 1) * K * C),
        });
        // PEFT multiplies by the gate as stored: store tanh(g)
        tensors.push({
          name: `base_model.model.model.layers.${n}.self_attn.adaption_gate`,
          dtype: 'F32' as const,
          shape: [1],
          data: Float32Array.of(Math.tanh(gates[l])),
        });
      }
      writeSafetensors(path.join(outDir, 'adapter_model.safetensors'), tensors, { format: 'pt' });
      const config = {
        peft_type: 'ADAPTION_PROMPT',
        task_type: 'CAUSAL_LM',
        adapter_len: K,
        adapter_layers: L,
        target_modules: 'self_attn',
      };
      const tmp = path.join(outDir, `.adapter_config.json.${process.pid}.tmp`);
      fs.writeFileSync(tmp, JSON.stringify(config, null, 2) + '\n');
      fs.renameSync(tmp, path.join(outDir, 'adapter_config.json'));
    } catch (err) {
      removeEmptyDirs(made); // a folder this call created, if still empty
      throw err;
    }
  }

  /** True once dispose() ran: the adapter can no longer be used. */
  get disposed(): boolean {
    return this.parameters().some((t) => t.disposed);
  }

  dispose(): void {
    for (const t of this.parameters()) t.dispose();
  }
}

/** An adapter file's tensors, read on demand as f32. */
interface AdapterTensors {
  tensors: Map<string, { shape: number[]; read(): Float32Array }>;
  metadata: Record<string, string>;
}

/** Reads `byteLength` bytes at `byteOffset` of `file` (the tensors of adapter files are small). */
function readBytes(file: string, byteOffset: number, byteLength: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const b = readAt(fd, byteOffset, byteLength);
    if (b.length !== byteLength) throw new Error(`${file} is truncated`);
    return b;
  } finally {
    fs.closeSync(fd);
  }
}

/** Our adapter files: safetensors, F32 only. */
function readSafetensorsTensors(file: string): AdapterTensors {
  const header = readSafetensorsHeader(file);
  const tensors: AdapterTensors['tensors'] = new Map();
  for (const [name, e] of header.tensors)
    tensors.set(name, {
      shape: e.shape,
      read: () => {
        if (e.dtype !== 'F32') throw new Error(`${file}: ${name} must be F32, got ${e.dtype}`);
        const b = readBytes(file, e.byteOffset, e.byteLength);
        return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
      },
    });
  return { tensors, metadata: header.metadata };
}

/** Keys of the official releases this loader does not convert, by what they belong to. */
function unsupportedOfficialKey(name: string): string | undefined {
  if (name === 'adapter_query.weight' || /^layers\.\d+\.attention\.gate$/.test(name)) return undefined;
  if (/^(clip|visual_|visual\.|image_)/.test(name)) return 'the multimodal release (LLaMA-Adapter V2 multimodal / image encoder)';
  if (/^llama\.|\.bias$|norm\.weight$|^prefix_query/.test(name)) return 'LLaMA-Adapter V2 (bias/norm tuning, prefix queries)';
  return 'not part of the LLaMA-Adapter V1 text layout';
}

/** The official releases' `.pth` (torch.save zip): F16 or F32 tensors, converted to f32. */
function readOfficialTensors(file: string): AdapterTensors {
  const ckpt = readTorchCheckpoint(file, 'an official LLaMA-Adapter .pth file (torch.save zip)');
  const unsupported = [...ckpt.tensors.keys()].filter((n) => unsupportedOfficialKey(n) !== undefined);
  if (unsupported.length)
    throw new Error(
      `${file}: keys ${unsupported.slice(0, 6).join(', ')}${unsupported.length > 6 ? ` and ${unsupported.length - 6} more` : ''} ` +
        `belong to ${unsupportedOfficialKey(unsupported[0])}, which is not supported; only the V1 text adapter ` +
        `(adapter_query.weight + layers.N.attention.gate) is`,
    );
  const tensors: AdapterTensors['tensors'] = new Map();
  for (const [name, t] of ckpt.tensors)
    tensors.set(name, {
      shape: t.shape,
      read: () => {
        const b = readBytes(file, t.byteOffset, t.byteLength);
        const copy = b.buffer.slice(b.byteOffset, b.byteOffset + b.length);
        if (t.dtype === 'F32') return new Float32Array(copy);
        if (t.dtype === 'F16') return f16ToF32(new Uint16Array(copy));
        const h = new Uint16Array(copy);
        const u = new Uint32Array(h.length);
        for (let i = 0; i < h.length; i++) u[i] = h[i] << 16;
        return new Float32Array(u.buffer);
      },
    });
  return { tensors, metadata: {} };
}

/** The image_proj.* tensors of an adapter file (SPEC §8), or undefined when it has none. */
function readImageProj(
  file: string,
  { tensors, metadata: meta }: AdapterTensors,
  C: number,
): { config: ImageProjConfig; values: ImageProjTensors<Float32Array> } | undefined {
  const present = PROJ_KEYS.filter((k) => tensors.has(PROJ_FILE_NAMES[k]));
  if (present.length === 0) return undefined;
  if (present.length < PROJ_KEYS.length)
    throw new Error(`${file}: an image-conditioned adapter needs all of ${Object.values(PROJ_FILE_NAMES).join(', ')}; it has only ${present.map((k) => PROJ_FILE_NAMES[k]).join(', ')}`);
  const e = Object.fromEntries(PROJ_KEYS.map((k) => [k, tensors.get(PROJ_FILE_NAMES[k])!])) as unknown as ImageProjTensors<{ shape: number[]; read(): Float32Array }>;
  if (e.fc1.shape.length !== 2 || e.fc2.shape.length !== 2) throw new Error(`${file}: image_proj.fc1.weight and image_proj.fc2.weight must be 2-D, got [${e.fc1.shape}] and [${e.fc2.shape}]`);
  const [R, MD] = e.fc1.shape;
  const D = meta.feature_size !== undefined ? Number(meta.feature_size) : MD;
  const layers = meta.feature_layers !== undefined ? meta.feature_layers.split(',').map(Number) : [-1];
  if (!Number.isInteger(D) || D < 1 || layers.some((n) => !Number.isInteger(n) || n === 0))
    throw new Error(`${file}: metadata feature_size '${meta.feature_size}' / feature_layers '${meta.feature_layers}' are not valid`);
  const config: ImageProjConfig = { featureLayers: layers, featureSize: D, width: R };
  const want = projShapes(config, C);
  for (const k of PROJ_KEYS)
    if (e[k].shape.join(',') !== want[k].join(','))
      throw new Error(
        `${file}: ${PROJ_FILE_NAMES[k]} is [${e[k].shape}] but ${layers.length} feature layer(s) of size ${D}, width ${R} and the model's dim ${C} need [${want[k]}]`,
      );
  const values = {} as ImageProjTensors<Float32Array>;
  for (const k of PROJ_KEYS) {
    values[k] = e[k].read();
    if (values[k].some((v) => !Number.isFinite(v))) throw new Error(`${file}: ${PROJ_FILE_NAMES[k]} has a non-finite value (NaN or Inf)`);
  }
  return { config, values };
}
