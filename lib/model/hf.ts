// Hugging Face LlamaForCausalLM folders: config.json + model.safetensors, or shards listed by
// model.safetensors.index.json. q_proj/k_proj rows are stored permuted per head for the
// rotate-half RoPE; they are kept as they are and the rope op runs with layout 'half'.
import * as fs from 'fs';
import * as nodePath from 'path';
import type { FileMapping, Tensor } from '../native';
import { HF_FIELD_NAMES, LlamaConfig, configProblems, headSize } from './config';
import { bytesOf, checkHolds, sumOf } from './bounds';
import type { LayerWeights, LoadArena, LoadOptions, LoadedWeights } from './weights';
import { SafetensorsHeader, fileDTypeOf, readSafetensorsHeader } from './safetensors';

export const HF_CONFIG = 'config.json';
export const HF_SINGLE = 'model.safetensors';
export const HF_INDEX = 'model.safetensors.index.json';

export function readJson(file: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`cannot read ${file}: ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`${file} is not valid JSON (${(e as Error).message})`);
  }
}

/** The model config of an HF folder, validated; errors name config.json and the key. */
export function readHfConfig(dir: string): LlamaConfig {
  const file = nodePath.join(dir, HF_CONFIG);
  const j = readJson(file);
  if (typeof j !== 'object' || j === null || Array.isArray(j)) throw new Error(`${file} is not a JSON object`);
  const o = j as Record<string, unknown>;
  const has = (k: string) => o[k] !== undefined && o[k] !== null;
  const bad = (k: string, want: string) =>
    new Error(`${file}: ${has(k) ? `key "${k}" must be ${want}, got ${JSON.stringify(o[k])}` : `missing key "${k}" (${want})`}`);
  const posInt = (k: string, dflt?: number): number => {
    if (!has(k) && dflt !== undefined) return dflt;
    const v = o[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw bad(k, 'a positive integer');
    return v;
  };
  const posNum = (k: string, dflt?: number): number => {
    if (!has(k) && dflt !== undefined) return dflt;
    const v = o[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw bad(k, 'a positive number');
    return v;
  };
  const dim = posInt('hidden_size');
  const hiddenDim = posInt('intermediate_size');
  const nHeads = posInt('num_attention_heads');
  const nKvHeads = posInt('num_key_value_heads', nHeads);
  const nLayers = posInt('num_hidden_layers');
  const vocabSize = posInt('vocab_size');
  const maxSeqLen = posInt('max_position_embeddings');
  const normEps = posNum('rms_norm_eps');
  const ropeTheta = posNum('rope_theta', 10000);
  let tied = false;
  if (has('tie_word_embeddings')) {
    if (typeof o.tie_word_embeddings !== 'boolean') throw bad('tie_word_embeddings', 'true or false');
    tied = o.tie_word_embeddings;
  }
  // Variants this loader would silently get wrong are refused by name.
  if (has('head_dim') && o.head_dim !== dim / nHeads)
    throw new Error(`${file}: head_dim ${JSON.stringify(o.head_dim)} must equal hidden_size / num_attention_heads = ${dim / nHeads}`);
  if (has('hidden_act') && o.hidden_act !== 'silu')
    throw new Error(`${file}: hidden_act ${JSON.stringify(o.hidden_act)} is not supported (LLaMA uses "silu")`);
  if (has('rope_scaling')) throw new Error(`${file}: rope_scaling ${JSON.stringify(o.rope_scaling)} is not supported`);
  for (const k of ['attention_bias', 'mlp_bias'])
    if (o[k] === true) throw new Error(`${file}: ${k} = true is not supported (LLaMA has no biases)`);
  const config: LlamaConfig = {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize,
    maxSeqLen,
    normEps,
    ropeTheta,
    ropeLayout: 'half',
    tiedEmbeddings: tied,
  };
  const problems = configProblems(config, HF_FIELD_NAMES);
  if (problems.length) throw new Error(`${file}: impossible model config: ${problems.join('; ')}`);
  return config;
}

/** name -> shard file name, for a sharded folder; undefined for a single file. */
export function readIndex(dir: string): Map<string, string> | undefined {
  const file = nodePath.join(dir, HF_INDEX);
  if (!fs.existsSync(file)) return undefined;
  const j = readJson(file) as { weight_map?: unknown } | null;
  const wm = j && typeof j === 'object' ? j.weight_map : undefined;
  if (typeof wm !== 'object' || wm === null || Array.isArray(wm)) throw new Error(`${file}: missing "weight_map" object`);
  const out = new Map<string, string>();
  for (const [name, shard] of Object.entries(wm as Record<string, unknown>)) {
    // Shards are files of this folder; anything else is refused rather than followed.
    if (typeof shard !== 'string' || shard === '' || nodePath.basename(shard) !== shard || shard === '.' || shard === '..')
      throw new Error(`${file}: weight_map["${name}"] must be a file name in the folder, got ${JSON.stringify(shard)}`);
    out.set(name, shard);
  }
  return out;
}

interface Expected {
  name: string;
  shape: number[];
  norm: boolean;
  /** how config.json implies the shape, for error messages */
  why: string;
}

/** How many tensors, and at least how many bytes (at 2 bytes per element), config.json implies:
 *  exact arithmetic from its fields, so a folder is checked before the per-layer list is built. */
export function hfImplied(c: LlamaConfig): { tensors: bigint; minBytes: bigint } {
  const C = c.dim;
  const F = c.hiddenDim;
  const q = c.dim; // num_attention_heads * head_dim
  const kv = c.nKvHeads * headSize(c);
  const perLayer = sumOf([bytesOf([C], 2), bytesOf([q, C], 2), bytesOf([kv, C], 2), bytesOf([kv, C], 2), bytesOf([C, q], 2), bytesOf([C], 2), bytesOf([F, C], 2), bytesOf([F, C], 2), bytesOf([C, F], 2)]);
  const tables = c.tiedEmbeddings ? 1n : 2n;
  return {
    tensors: 9n * BigInt(c.nLayers) + 1n + tables,
    minBytes: BigInt(c.nLayers) * perLayer + bytesOf([C], 2) + tables * bytesOf([c.vocabSize, C], 2),
  };
}

/** Every tensor the config implies, in file-name terms. */
export function hfTensorNames(c: LlamaConfig): Expected[] {
  const C = c.dim;
  const F = c.hiddenDim;
  const d = headSize(c);
  const q = c.nHeads * d;
  const kv = c.nKvHeads * d;
  const out: Expected[] = [{ name: 'model.embed_tokens.weight', shape: [c.vocabSize, C], norm: false, why: 'vocab_size, hidden_size' }];
  for (let l = 0; l < c.nLayers; l++) {
    const p = `model.layers.${l}.`;
    out.push(
      { name: p + 'input_layernorm.weight', shape: [C], norm: true, why: 'hidden_size' },
      { name: p + 'self_attn.q_proj.weight', shape: [q, C], norm: false, why: 'num_attention_heads * head_dim, hidden_size' },
      { name: p + 'self_attn.k_proj.weight', shape: [kv, C], norm: false, why: 'num_key_value_heads * head_dim, hidden_size' },
      { name: p + 'self_attn.v_proj.weight', shape: [kv, C], norm: false, why: 'num_key_value_heads * head_dim, hidden_size' },
      { name: p + 'self_attn.o_proj.weight', shape: [C, q], norm: false, why: 'hidden_size, num_attention_heads * head_dim' },
      { name: p + 'post_attention_layernorm.weight', shape: [C], norm: true, why: 'hidden_size' },
      { name: p + 'mlp.gate_proj.weight', shape: [F, C], norm: false, why: 'intermediate_size, hidden_size' },
      { name: p + 'mlp.up_proj.weight', shape: [F, C], norm: false, why: 'intermediate_size, hidden_size' },
      { name: p + 'mlp.down_proj.weight', shape: [C, F], norm: false, why: 'hidden_size, intermediate_size' },
    );
  }
  out.push({ name: 'model.norm.weight', shape: [C], norm: true, why: 'hidden_size' });
  if (!c.tiedEmbeddings) out.push({ name: 'lm_head.weight', shape: [c.vocabSize, C], norm: false, why: 'vocab_size, hidden_size' });
  return out;
}

const LAYER_KEYS: Record<string, keyof LayerWeights> = {
  'input_layernorm.weight': 'attnNorm',
  'self_attn.q_proj.weight': 'wq',
  'self_attn.k_proj.weight': 'wk',
  'self_attn.v_proj.weight': 'wv',
  'self_attn.o_proj.weight': 'wo',
  'post_attention_layernorm.weight': 'ffnNorm',
  'mlp.gate_proj.weight': 'w1',
  'mlp.down_proj.weight': 'w2',
  'mlp.up_proj.weight': 'w3',
};

const shapeStr = (s: readonly number[]) => `[${s.join(', ')}]`;

/** One tensor of an HF folder as its file names it, the shape config.json implies (and why, for
 *  the error), and its storage: a big matrix is stored as the load's dtype, anything else f32. */
export interface FolderTensor {
  name: string;
  shape: number[];
  /** the shape it is created with (same elements), e.g. a conv kernel as a matrix; default `shape` */
  as?: number[];
  matrix: boolean;
  why: string;
}

/**
 * The safetensors weights of an HF folder (model.safetensors, or shards listed by
 * model.safetensors.index.json), shared by the LLaMA, image-encoder and text-encoder loaders:
 * `load` checks a tensor's dtype and shape before it creates it in `arena`; each shard's header is
 * read and its file mapped once, when a tensor first needs it. `otherFormats` matches weight files
 * of formats this loader refuses, named in the error when the folder has no safetensors.
 */
export function hfFolder(dir: string, arena: LoadArena, dtype: 'f32' | 'bf16', otherFormats: RegExp) {
  const index = readIndex(dir);
  if (!index && !fs.existsSync(nodePath.join(dir, HF_SINGLE))) {
    const others = fs.readdirSync(dir).filter((f) => otherFormats.test(f));
    throw new Error(
      `${dir} has neither ${HF_SINGLE} nor ${HF_INDEX}` +
        (others.length ? ` (found ${others.join(', ')}: only safetensors weights are supported)` : ''),
    );
  }
  const shards = new Map<string, { header: SafetensorsHeader; map: FileMapping }>();
  const open = (file: string, forTensor: string) => {
    let s = shards.get(file);
    if (s) return s;
    const full = nodePath.join(dir, file);
    if (!fs.existsSync(full))
      throw new Error(index ? `${dir}: missing shard file ${file} (${HF_INDEX} puts ${forTensor} there)` : `${dir}: missing ${file}`);
    const header = readSafetensorsHeader(full, { skipUnsupported: true });
    s = { header, map: arena.map(full) };
    shards.set(file, s);
    return s;
  };
  const fileOf = (name: string) => (index ? index.get(name) : HF_SINGLE);
  /** whether the folder names the tensor: the index lists it, or the single file's header holds it */
  const has = (name: string) => {
    const f = fileOf(name);
    if (f === undefined) return false;
    if (index) return true;
    const { header } = open(f, name);
    return header.tensors.has(name) || header.skipped.has(name);
  };
  const load = (e: FolderTensor): Tensor => {
    const file = fileOf(e.name);
    if (file === undefined) throw new Error(`${dir}: missing tensor ${e.name} (not in ${HF_INDEX})`);
    const { header, map } = open(file, e.name);
    const entry = header.tensors.get(e.name);
    if (!entry) {
      const other = header.skipped.get(e.name);
      if (other) throw new Error(`${header.path}: tensor ${e.name} has dtype ${other}; only F32, F16 and BF16 are supported`);
      throw new Error(`${header.path}: missing tensor ${e.name}`);
    }
    if (entry.shape.length !== e.shape.length || entry.shape.some((s, i) => s !== e.shape[i]))
      throw new Error(`${header.path}: tensor ${e.name} has shape ${shapeStr(entry.shape)} but config.json implies ${shapeStr(e.shape)} (${e.why})`);
    return arena.tensor(map, entry.byteOffset, e.as ?? e.shape, fileDTypeOf(entry.dtype), e.matrix ? dtype : 'f32', e.name);
  };
  return { index, has, load };
}

/** Reads config.json and the safetensors headers, maps the files and creates tensors in `arena`. */
export function loadHf(dir: string, arena: LoadArena, opts: LoadOptions = {}): LoadedWeights {
  const config = readHfConfig(dir);
  const dtype = opts.dtype ?? 'f32';
  const { index, load } = hfFolder(dir, arena, dtype, /\.(bin|pth|pt|gguf)$/);

  // Before any per-layer list: do the files hold as many tensors and bytes as config.json implies?
  const configFile = nodePath.join(dir, HF_CONFIG);
  const implied = hfImplied(config);
  const what = `${configFile} (num_hidden_layers ${config.nLayers}, hidden_size ${config.dim}, vocab_size ${config.vocabSize})`;
  const files = index ? [...new Set(index.values())] : [HF_SINGLE];
  const present = files.map((f) => nodePath.join(dir, f)).filter((f) => fs.existsSync(f));
  const bytes = present.reduce((sum, f) => sum + fs.statSync(f).size, 0);
  const listing = index ? nodePath.join(dir, HF_INDEX) : nodePath.join(dir, HF_SINGLE);
  const held = index ?? (() => {
    const h = readSafetensorsHeader(listing, { skipUnsupported: true });
    return new Set([...h.tensors.keys(), ...h.skipped.keys()]);
  })();
  if (BigInt(held.size) < implied.tensors) {
    const missing = hfTensorNames(config).find((e) => !held.has(e.name))!; // layers are bounded (MODEL_LIMITS)
    throw new Error(
      `${listing}: missing tensor ${missing.name}: ${what} implies ${implied.tensors} tensors but it holds ${held.size}`,
    );
  }
  if (present.length === files.length) checkHolds(index ? `${dir} (its shards)` : nodePath.join(dir, HF_SINGLE), `${what}, at 2 bytes a weight,`, implied.minBytes, bytes, { atLeast: true });

  const byName = new Map<string, Tensor>();
  for (const e of hfTensorNames(config)) byName.set(e.name, load({ name: e.name, shape: e.shape, matrix: !e.norm, why: e.why }));

  const get = (n: string) => byName.get(n)!;
  const layers: LayerWeights[] = [];
  for (let l = 0; l < config.nLayers; l++) {
    const lw: Partial<LayerWeights> = {};
    for (const [suffix, key] of Object.entries(LAYER_KEYS)) lw[key] = get(`model.layers.${l}.${suffix}`);
    layers.push(lw as LayerWeights);
  }
  const embedding = get('model.embed_tokens.weight');
  return {
    config,
    format: 'hf',
    weights: {
      embedding,
      layers,
      finalNorm: get('model.norm.weight'),
      classifier: config.tiedEmbeddings ? embedding : get('lm_head.weight'),
    },
  };
}
