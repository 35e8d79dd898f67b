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
import { readSafetensorsHeader, writeSafetensors } from './safetensors';

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
  if (!Number.isInteger(a.len) || a.len < 1) throw new RangeError(`adapter length must be a positive integer, got ${a.len}`);
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

  /** Reads an adapter file and checks that it fits `model`; errors name the file and the problem.
   *  `device`: as in fromValues. */
  static load(file: string, model: LlamaConfig, device?: Device): Adapter {
    if (!fs.existsSync(file)) throw new Error(`adapter file ${file} does not exist`);
    const header = readSafetensorsHeader(file);
    const query = header.tensors.get('adapter_query.weight');
    if (!query) throw new Error(`${file} is not an adapter file: it has no adapter_query.weight tensor`);
    if (query.dtype !== 'F32') throw new Error(`${file}: adapter_query.weight must be F32, got ${query.dtype}`);
    if (query.shape.length !== 2 || query.shape[1] !== model.dim)
      throw new Error(
        `${file} does not fit the model: adapter_query.weight is [${query.shape}] but the model's dim is ${model.dim} (expected [L*K, ${model.dim}])`,
      );
    const gateNames = [...header.tensors.keys()]
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
    const declaredLen = header.metadata.adapter_len;
    if (declaredLen !== undefined && Number(declaredLen) !== K)
      throw new Error(`${file}: metadata adapter_len ${declaredLen} contradicts adapter_query.weight rows ${query.shape[0]} / ${L} layers`);
    const fd = fs.openSync(file, 'r');
    try {
      const readF32 = (e: { byteOffset: number; byteLength: number }) => {
        const buf = Buffer.alloc(e.byteLength);
        fs.readSync(fd, buf, 0, e.byteLength, e.byteOffset);
        return new Float32Array(buf.buffer, buf.byteOffset, e.byteLength / 4).slice();
      };
      let G = 0;
      const gateValues: Float32Array[] = [];
      for (const n of gateNames) {
        const e = header.tensors.get(`layers.${n}.attention.gate`)!;
        const size = e.shape.reduce((a, b) => a * b, 1);
        if (e.dtype !== 'F32') throw new Error(`${file}: layers.${n}.attention.gate must be F32, got ${e.dtype}`);
        if (size !== model.nHeads && size !== 1)
          throw new Error(`${file} does not fit the model: layers.${n}.attention.gate has ${size} values, the model has ${model.nHeads} heads (or 1 for a scalar gate)`);
        if (G && size !== G) throw new Error(`${file}: the gates of different layers have different sizes`);
        G = size;
        gateValues.push(readF32(e));
      }
      // one value per layer is a scalar gate (with one head, the metadata tells the two apart)
      const gate: GateMode = G === 1 && (model.nHeads > 1 || header.metadata.gate === 'scalar') ? 'scalar' : 'per-head';
      const prompts = readF32(query);
      const gates = new Float32Array(L * G);
      gateValues.forEach((g, l) => gates.set(g, l * G));
      for (const [name, arr] of [['adapter_query.weight', prompts], ['gates', gates]] as const)
        if (arr.some((v) => !Number.isFinite(v))) throw new Error(`${file}: ${name} has a non-finite value (NaN or Inf)`);
      const proj = readImageProj(file, header, model.dim, readF32);
      return Adapter.fromValues(model, { layers: L, len: K, gate, ...(proj ? { image: proj.config } : {}) }, { prompts, gates, image: proj?.values }, device);
    } finally {
      fs.closeSync(fd);
    }
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
    fs.mkdirSync(outDir, { recursive: true });
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
  }

  dispose(): void {
    for (const t of this.parameters()) t.dispose();
  }
}

/** The image_proj.* tensors of an adapter file (SPEC §8), or undefined when it has none. */
function readImageProj(
  file: string,
  header: ReturnType<typeof readSafetensorsHeader>,
  C: number,
  readF32: (e: { byteOffset: number; byteLength: number }) => Float32Array,
): { config: ImageProjConfig; values: ImageProjTensors<Float32Array> } | undefined {
  const present = PROJ_KEYS.filter((k) => header.tensors.has(PROJ_FILE_NAMES[k]));
  if (present.length === 0) return undefined;
  if (present.length < PROJ_KEYS.length)
    throw new Error(`${file}: an image-conditioned adapter needs all of ${Object.values(PROJ_FILE_NAMES).join(', ')}; it has only ${present.map((k) => PROJ_FILE_NAMES[k]).join(', ')}`);
  const e = Object.fromEntries(PROJ_KEYS.map((k) => [k, header.tensors.get(PROJ_FILE_NAMES[k])!])) as unknown as ImageProjTensors<{ dtype: string; shape: number[]; byteOffset: number; byteLength: number }>;
  for (const k of PROJ_KEYS) if (e[k].dtype !== 'F32') throw new Error(`${file}: ${PROJ_FILE_NAMES[k]} must be F32, got ${e[k].dtype}`);
  if (e.fc1.shape.length !== 2 || e.fc2.shape.length !== 2) throw new Error(`${file}: image_proj.fc1.weight and image_proj.fc2.weight must be 2-D, got [${e.fc1.shape}] and [${e.fc2.shape}]`);
  const [R, MD] = e.fc1.shape;
  const meta = header.metadata;
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
    values[k] = readF32(e[k]);
    if (values[k].some((v) => !Number.isFinite(v))) throw new Error(`${file}: ${PROJ_FILE_NAMES[k]} has a non-finite value (NaN or Inf)`);
  }
  return { config, values };
}
