// Image encoders in Hugging Face layout (SPEC §7): the config of a CLIP vision tower (CLIPModel,
// CLIPVisionModel, CLIPVisionModelWithProjection) or a ViT (ViTModel, ViTForImageClassification),
// and their weights loaded as native tensors, every tensor checked against config.json.
//
// Shapes: C = hidden size, F = intermediate size, H heads, d = C / H, P patch, Cin channels,
// S = image size, N = (S / P)^2 patches, T = 1 + N tokens, Dp projection dim, Y labels.
import * as nodePath from 'path';
import type { Tensor } from '../native';
import { LoadArena } from '../model/weights';
import { FolderTensor, HF_CONFIG, hfFolder, readJson } from '../model/hf';

export type EncoderFamily = 'clip' | 'vit';
export type Activation = 'gelu' | 'quick_gelu';

export interface EncoderConfig {
  family: EncoderFamily;
  /** config.json's architectures[0], or the family's base class when it has none */
  architecture: string;
  dim: number; // C
  ffnDim: number; // F
  nHeads: number; // H
  nLayers: number;
  imageSize: number; // S
  patchSize: number; // P
  channels: number; // Cin
  eps: number;
  act: Activation;
  /** CLIP with visual_projection: its output size Dp */
  projectionDim?: number;
  /** ViTForImageClassification: the classifier's outputs Y and their names (id2label; after a
   *  load, "LABEL_i" where config.json has none) */
  numLabels?: number;
  labels?: string[];
}

export const headSize = (c: EncoderConfig) => c.dim / c.nHeads;
export const numPatches = (c: EncoderConfig) => (c.imageSize / c.patchSize) ** 2;
/** tokens per image: [cls; patches] */
export const tokensPerImage = (c: EncoderConfig) => 1 + numPatches(c);
/** the size of one feature vector: Dp with a projection, else C */
export const featureDim = (c: EncoderConfig) => c.projectionDim ?? c.dim;

const CLIP_ARCHS = ['CLIPModel', 'CLIPVisionModel', 'CLIPVisionModelWithProjection'];
const VIT_ARCHS = ['ViTModel', 'ViTForImageClassification'];

// Hugging Face's defaults for keys a saved config may omit (CLIPVisionConfig, ViTConfig).
const CLIP_DEFAULTS = { hidden_size: 768, intermediate_size: 3072, num_hidden_layers: 12, num_attention_heads: 12, num_channels: 3, image_size: 224, patch_size: 32, hidden_act: 'quick_gelu', layer_norm_eps: 1e-5 };
const VIT_DEFAULTS = { hidden_size: 768, intermediate_size: 3072, num_hidden_layers: 12, num_attention_heads: 12, num_channels: 3, image_size: 224, patch_size: 16, hidden_act: 'gelu', layer_norm_eps: 1e-12 };

/** The encoder config of an HF folder, validated; errors name config.json and the key. */
export function readEncoderConfig(dir: string): EncoderConfig {
  const file = nodePath.join(dir, HF_CONFIG);
  const j = readJson(file);
  if (typeof j !== 'object' || j === null || Array.isArray(j)) throw new Error(`${file} is not a JSON object`);
  const top = j as Record<string, unknown>;
  const archs = Array.isArray(top.architectures) ? (top.architectures as unknown[]).filter((a): a is string => typeof a === 'string') : [];
  const modelType = top.model_type;
  let family: EncoderFamily;
  let architecture: string;
  const known = archs.find((a) => CLIP_ARCHS.includes(a) || VIT_ARCHS.includes(a));
  if (known) {
    architecture = known;
    family = CLIP_ARCHS.includes(known) ? 'clip' : 'vit';
  } else if (modelType === 'clip' || modelType === 'clip_vision_model') {
    family = 'clip';
    architecture = modelType === 'clip' ? 'CLIPModel' : 'CLIPVisionModel';
  } else if (modelType === 'vit') {
    family = 'vit';
    architecture = 'ViTModel';
  } else
    throw new Error(
      `${file}: not an image encoder this project loads (architectures ${JSON.stringify(top.architectures ?? null)}, ` +
        `model_type ${JSON.stringify(modelType ?? null)}); expected one of ${[...CLIP_ARCHS, ...VIT_ARCHS].join(', ')}`,
    );

  // CLIPModel keeps the vision tower's settings in vision_config; the others at the top level.
  let o = top;
  let where = '';
  if (architecture === 'CLIPModel') {
    const vc = top.vision_config;
    if (vc !== undefined && (typeof vc !== 'object' || vc === null || Array.isArray(vc)))
      throw new Error(`${file}: "vision_config" must be an object`);
    o = (vc as Record<string, unknown>) ?? {};
    where = 'vision_config.';
  }
  const defaults: Record<string, unknown> = family === 'clip' ? CLIP_DEFAULTS : VIT_DEFAULTS;
  const val = (k: string) => (o[k] !== undefined && o[k] !== null ? o[k] : defaults[k]);
  const bad = (k: string, want: string, v = val(k)) => new Error(`${file}: key "${where}${k}" must be ${want}, got ${JSON.stringify(v)}`);
  const posInt = (k: string, v = val(k)): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw bad(k, 'a positive integer', v);
    return v;
  };
  const posNum = (k: string): number => {
    const v = val(k);
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw bad(k, 'a positive number');
    return v;
  };
  const c: EncoderConfig = {
    family,
    architecture,
    dim: posInt('hidden_size'),
    ffnDim: posInt('intermediate_size'),
    nHeads: posInt('num_attention_heads'),
    nLayers: posInt('num_hidden_layers'),
    imageSize: posInt('image_size'),
    patchSize: posInt('patch_size'),
    channels: posInt('num_channels'),
    eps: posNum('layer_norm_eps'),
    act: 'gelu',
  };
  const act = val('hidden_act');
  if (act !== 'gelu' && act !== 'quick_gelu')
    throw new Error(`${file}: ${where}hidden_act ${JSON.stringify(act)} is not supported (CLIP uses "quick_gelu", ViT "gelu")`);
  c.act = act;
  if (c.dim % c.nHeads) throw new Error(`${file}: ${where}hidden_size ${c.dim} is not a multiple of num_attention_heads ${c.nHeads}`);
  if (c.imageSize % c.patchSize)
    throw new Error(`${file}: ${where}image_size ${c.imageSize} is not a multiple of patch_size ${c.patchSize}`);
  if (family === 'vit') {
    if (o.qkv_bias === false) throw new Error(`${file}: qkv_bias = false is not supported (SPEC §7: q, k, v with biases)`);
    if (o.encoder_stride !== undefined && typeof o.encoder_stride !== 'number') throw bad('encoder_stride', 'a number');
  }
  if (architecture === 'CLIPModel' || architecture === 'CLIPVisionModelWithProjection')
    c.projectionDim = posInt('projection_dim', top.projection_dim ?? 512);
  if (architecture === 'ViTForImageClassification') {
    const { n, names } = labelsOf(top, file);
    c.numLabels = n;
    c.labels = names;
  }
  return c;
}

/** num_labels and the id2label names (checked against each other); names are listed only when
 *  config.json has them (a bare num_labels is bounded by the classifier tensor first). */
function labelsOf(o: Record<string, unknown>, file: string): { n: number; names?: string[] } {
  const id2label = o.id2label;
  if (id2label !== undefined && (typeof id2label !== 'object' || id2label === null || Array.isArray(id2label)))
    throw new Error(`${file}: "id2label" must be an object`);
  const ids = id2label ? Object.keys(id2label) : [];
  const n = o.num_labels ?? (ids.length || 2);
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n <= 0) throw new Error(`${file}: "num_labels" must be a positive integer`);
  if (!id2label) return { n };
  if (ids.length !== n) throw new Error(`${file}: id2label has ${ids.length} labels but num_labels is ${n}`);
  const names: string[] = [];
  for (let i = 0; i < n; i++) {
    const v = (id2label as Record<string, unknown>)[String(i)];
    if (typeof v !== 'string') throw new Error(`${file}: id2label["${i}"] must be a string`);
    names.push(v);
  }
  return { n, names };
}

export interface EncoderLayerWeights {
  ln1w: Tensor; // (C) f32
  ln1b: Tensor; // (C) f32
  wq: Tensor; // (C, C)
  bq: Tensor; // (C) f32
  wk: Tensor; // (C, C)
  bk: Tensor; // (C) f32
  wv: Tensor; // (C, C)
  bv: Tensor; // (C) f32
  wo: Tensor; // (C, C)
  bo: Tensor; // (C) f32
  ln2w: Tensor; // (C) f32
  ln2b: Tensor; // (C) f32
  w1: Tensor; // (F, C)
  b1: Tensor; // (F) f32
  w2: Tensor; // (C, F)
  b2: Tensor; // (C) f32
}

export interface EncoderWeights {
  /** the Conv2d weight (C, Cin, P, P) seen as (C, Cin*P*P) */
  patchW: Tensor;
  /** ViT's patch bias (C) f32; CLIP has none */
  patchB?: Tensor;
  cls: Tensor; // (C) f32
  pos: Tensor; // (T, C) f32
  /** CLIP's pre_layrnorm (C) f32 */
  preNorm?: { w: Tensor; b: Tensor };
  layers: EncoderLayerWeights[];
  /** CLIP post_layernorm / ViT layernorm (C) f32 */
  postNorm: { w: Tensor; b: Tensor };
  /** CLIP visual_projection (Dp, C) */
  projection?: Tensor;
  /** ViTForImageClassification's classifier: w (Y, C) f32, b (Y) f32 */
  classifier?: { w: Tensor; b: Tensor };
}

/** Every tensor of `w` once. */
export function encoderTensors(w: EncoderWeights): Tensor[] {
  const out: Tensor[] = [w.patchW, w.cls, w.pos, w.postNorm.w, w.postNorm.b];
  if (w.patchB) out.push(w.patchB);
  if (w.preNorm) out.push(w.preNorm.w, w.preNorm.b);
  if (w.projection) out.push(w.projection);
  if (w.classifier) out.push(w.classifier.w, w.classifier.b);
  for (const l of w.layers) out.push(...(Object.values(l) as Tensor[]));
  return out;
}

/** Maps every tensor of one encoder layer through `f` (the image and the text encoders' layers). */
export function mapLayerWeights(l: EncoderLayerWeights, f: (t: Tensor) => Tensor): EncoderLayerWeights {
  const o = {} as EncoderLayerWeights;
  for (const k of Object.keys(l) as (keyof EncoderLayerWeights)[]) o[k] = f(l[k]);
  return o;
}

/** Maps every tensor of `w` through `f` (e.g. a copy to another device). */
export function mapEncoderWeights(w: EncoderWeights, f: (t: Tensor) => Tensor): EncoderWeights {
  const pair = (p?: { w: Tensor; b: Tensor }) => p && { w: f(p.w), b: f(p.b) };
  return {
    patchW: f(w.patchW),
    patchB: w.patchB && f(w.patchB),
    cls: f(w.cls),
    pos: f(w.pos),
    preNorm: pair(w.preNorm),
    layers: w.layers.map((l) => mapLayerWeights(l, f)),
    postNorm: pair(w.postNorm)!,
    projection: w.projection && f(w.projection),
    classifier: pair(w.classifier),
  };
}

/** One tensor the config implies (lib/model/hf.ts): its file name and shape, the shape it is loaded
 *  as, and whether it is a big matrix (stored as the requested dtype) or kept f32. */
type Expected = FolderTensor;

/** The tensors of layer i, in file-name terms, with where they go. */
function layerTensors(c: EncoderConfig, p: string, i: number): [keyof EncoderLayerWeights, Expected][] {
  const C = c.dim;
  const F = c.ffnDim;
  const m = (name: string, shape: number[], why: string): Expected => ({ name, shape, matrix: true, why });
  const v = (name: string, n: number, why: string): Expected => ({ name, shape: [n], matrix: false, why });
  if (c.family === 'clip') {
    const l = `${p}encoder.layers.${i}.`;
    return [
      ['ln1w', v(l + 'layer_norm1.weight', C, 'hidden_size')],
      ['ln1b', v(l + 'layer_norm1.bias', C, 'hidden_size')],
      ['wq', m(l + 'self_attn.q_proj.weight', [C, C], 'hidden_size, hidden_size')],
      ['bq', v(l + 'self_attn.q_proj.bias', C, 'hidden_size')],
      ['wk', m(l + 'self_attn.k_proj.weight', [C, C], 'hidden_size, hidden_size')],
      ['bk', v(l + 'self_attn.k_proj.bias', C, 'hidden_size')],
      ['wv', m(l + 'self_attn.v_proj.weight', [C, C], 'hidden_size, hidden_size')],
      ['bv', v(l + 'self_attn.v_proj.bias', C, 'hidden_size')],
      ['wo', m(l + 'self_attn.out_proj.weight', [C, C], 'hidden_size, hidden_size')],
      ['bo', v(l + 'self_attn.out_proj.bias', C, 'hidden_size')],
      ['ln2w', v(l + 'layer_norm2.weight', C, 'hidden_size')],
      ['ln2b', v(l + 'layer_norm2.bias', C, 'hidden_size')],
      ['w1', m(l + 'mlp.fc1.weight', [F, C], 'intermediate_size, hidden_size')],
      ['b1', v(l + 'mlp.fc1.bias', F, 'intermediate_size')],
      ['w2', m(l + 'mlp.fc2.weight', [C, F], 'hidden_size, intermediate_size')],
      ['b2', v(l + 'mlp.fc2.bias', C, 'hidden_size')],
    ];
  }
  const l = `${p}encoder.layer.${i}.`;
  return [
    ['ln1w', v(l + 'layernorm_before.weight', C, 'hidden_size')],
    ['ln1b', v(l + 'layernorm_before.bias', C, 'hidden_size')],
    ['wq', m(l + 'attention.attention.query.weight', [C, C], 'hidden_size, hidden_size')],
    ['bq', v(l + 'attention.attention.query.bias', C, 'hidden_size')],
    ['wk', m(l + 'attention.attention.key.weight', [C, C], 'hidden_size, hidden_size')],
    ['bk', v(l + 'attention.attention.key.bias', C, 'hidden_size')],
    ['wv', m(l + 'attention.attention.value.weight', [C, C], 'hidden_size, hidden_size')],
    ['bv', v(l + 'attention.attention.value.bias', C, 'hidden_size')],
    ['wo', m(l + 'attention.output.dense.weight', [C, C], 'hidden_size, hidden_size')],
    ['bo', v(l + 'attention.output.dense.bias', C, 'hidden_size')],
    ['ln2w', v(l + 'layernorm_after.weight', C, 'hidden_size')],
    ['ln2b', v(l + 'layernorm_after.bias', C, 'hidden_size')],
    ['w1', m(l + 'intermediate.dense.weight', [F, C], 'intermediate_size, hidden_size')],
    ['b1', v(l + 'intermediate.dense.bias', F, 'intermediate_size')],
    ['w2', m(l + 'output.dense.weight', [C, F], 'hidden_size, intermediate_size')],
    ['b2', v(l + 'output.dense.bias', C, 'hidden_size')],
  ];
}

export interface EncoderLoadOptions {
  /** storage of the big matrices (patch, q/k/v/o, fc1/fc2, projection); the rest is f32. Default f32. */
  dtype?: 'f32' | 'bf16';
}

/**
 * Reads config.json and the safetensors headers, maps the files and creates the tensors in `arena`
 * (on the CPU; the caller moves them). F16 and BF16 files are widened (or kept bf16) on load.
 */
export function loadEncoderWeights(dir: string, arena: LoadArena, opts: EncoderLoadOptions = {}): { config: EncoderConfig; weights: EncoderWeights } {
  const config = readEncoderConfig(dir);
  const dtype = opts.dtype ?? 'f32';
  const { has, load } = hfFolder(dir, arena, dtype, /\.(bin|pth|pt|msgpack|h5|ckpt)$/);

  const c = config;
  const C = c.dim;
  const T = tokensPerImage(c);
  const patchShape = [C, c.channels, c.patchSize, c.patchSize];
  const patchAs = [C, c.channels * c.patchSize * c.patchSize];
  const vec = (name: string, n: number, why: string): Expected => ({ name, shape: [n], matrix: false, why });
  const pair = (prefix: string) => ({ w: load(vec(prefix + '.weight', C, 'hidden_size')), b: load(vec(prefix + '.bias', C, 'hidden_size')) });
  // Tensors load one by one, in file order of importance: a missing or mis-shaped one fails the
  // load before anything the config implies beyond it is made (layers are checked as they come).
  let weights: EncoderWeights;
  if (c.family === 'clip') {
    const p = 'vision_model.';
    weights = {
      patchW: load({ name: p + 'embeddings.patch_embedding.weight', shape: patchShape, as: patchAs, matrix: true, why: 'hidden_size, num_channels, patch_size, patch_size' }),
      cls: load(vec(p + 'embeddings.class_embedding', C, 'hidden_size')),
      pos: load({ name: p + 'embeddings.position_embedding.weight', shape: [T, C], matrix: false, why: '1 + (image_size / patch_size)^2, hidden_size' }),
      preNorm: pair(p + 'pre_layrnorm'),
      layers: [],
      postNorm: { w: undefined as unknown as Tensor, b: undefined as unknown as Tensor },
    };
    for (let i = 0; i < c.nLayers; i++) weights.layers.push(layerOf(layerTensors(c, p, i), load));
    weights.postNorm = pair(p + 'post_layernorm');
    if (c.projectionDim !== undefined)
      weights.projection = load({ name: 'visual_projection.weight', shape: [c.projectionDim, C], matrix: true, why: 'projection_dim, hidden_size' });
  } else {
    // ViTForImageClassification saves the backbone under "vit."; a bare ViTModel does not.
    const p = has('vit.embeddings.cls_token') ? 'vit.' : '';
    weights = {
      patchW: load({ name: p + 'embeddings.patch_embeddings.projection.weight', shape: patchShape, as: patchAs, matrix: true, why: 'hidden_size, num_channels, patch_size, patch_size' }),
      patchB: load(vec(p + 'embeddings.patch_embeddings.projection.bias', C, 'hidden_size')),
      cls: load({ name: p + 'embeddings.cls_token', shape: [1, 1, C], as: [C], matrix: false, why: 'hidden_size' }),
      pos: load({ name: p + 'embeddings.position_embeddings', shape: [1, T, C], as: [T, C], matrix: false, why: '1 + (image_size / patch_size)^2, hidden_size' }),
      layers: [],
      postNorm: { w: undefined as unknown as Tensor, b: undefined as unknown as Tensor },
    };
    for (let i = 0; i < c.nLayers; i++) weights.layers.push(layerOf(layerTensors(c, p, i), load));
    weights.postNorm = pair(p + 'layernorm');
    if (c.numLabels !== undefined) {
      const Y = c.numLabels;
      weights.classifier = {
        w: load({ name: 'classifier.weight', shape: [Y, C], matrix: false, why: 'num_labels, hidden_size' }),
        b: load(vec('classifier.bias', Y, 'num_labels')),
      };
      c.labels ??= Array.from({ length: Y }, (_, i) => `LABEL_${i}`);
    }
  }
  return { config, weights };
}

function layerOf(list: [keyof EncoderLayerWeights, Expected][], load: (e: Expected) => Tensor): EncoderLayerWeights {
  const l = {} as EncoderLayerWeights;
  for (const [k, e] of list) l[k] = load(e);
  return l;
}
