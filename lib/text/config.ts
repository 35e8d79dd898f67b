// Text encoders in Hugging Face layout (SPEC §9): the config of a RoBERTa (RobertaModel,
// RobertaForQuestionAnswering) or BERT (BertModel, BertForQuestionAnswering, and the pretraining
// classes whose backbone they share) folder, and its weights as native tensors, every tensor checked
// against config.json. The layers reuse the image encoder's weight record (lib/encoder/config.ts):
// ln1 is the layer's attention.output.LayerNorm, ln2 its output.LayerNorm (post-norm: they are
// applied after each residual, see ./encoder.ts).
//
// Shapes: C hidden, F intermediate, H heads, V vocabulary, P positions, Y token types.
import * as nodePath from 'path';
import type { Tensor } from '../native';
import { LoadArena } from '../model/weights';
import { FolderTensor, HF_CONFIG, hfFolder, readJson } from '../model/hf';
import { MODEL_LIMITS, limitProblems } from '../model/bounds';
import { EncoderLayerWeights, mapLayerWeights } from '../encoder/config';

export type TextFamily = 'roberta' | 'bert';

export interface TextEncoderConfig {
  family: TextFamily;
  architecture: string;
  dim: number; // C
  ffnDim: number; // F
  nHeads: number; // H
  nLayers: number;
  vocabSize: number; // V
  maxPositions: number; // P
  typeVocabSize: number; // Y
  padId: number;
  eps: number;
  /** the first position id (RoBERTa: padding_idx + 1; BERT: 0) */
  posOffset: number;
  /** the most tokens one window may hold: P - posOffset */
  maxTokens: number;
  /** *ForQuestionAnswering: the checkpoint has qa_outputs */
  hasQaHead: boolean;
}

const ROBERTA_ARCHS = ['RobertaModel', 'RobertaForQuestionAnswering', 'RobertaForMaskedLM', 'RobertaForSequenceClassification'];
const BERT_ARCHS = ['BertModel', 'BertForQuestionAnswering', 'BertForPreTraining', 'BertForMaskedLM', 'BertForSequenceClassification'];

// Hugging Face's defaults for keys a saved config may omit (RobertaConfig, BertConfig).
const DEFAULTS: Record<TextFamily, Record<string, unknown>> = {
  bert: { hidden_size: 768, intermediate_size: 3072, num_hidden_layers: 12, num_attention_heads: 12, vocab_size: 30522, max_position_embeddings: 512, type_vocab_size: 2, pad_token_id: 0, layer_norm_eps: 1e-12, hidden_act: 'gelu' },
  roberta: { hidden_size: 768, intermediate_size: 3072, num_hidden_layers: 12, num_attention_heads: 12, vocab_size: 50265, max_position_embeddings: 514, type_vocab_size: 1, pad_token_id: 1, layer_norm_eps: 1e-5, hidden_act: 'gelu' },
};

/** The text encoder config of an HF folder, validated; errors name config.json and the key. */
export function readTextEncoderConfig(dir: string): TextEncoderConfig {
  const file = nodePath.join(dir, HF_CONFIG);
  const j = readJson(file);
  if (typeof j !== 'object' || j === null || Array.isArray(j)) throw new Error(`${file} is not a JSON object`);
  const o = j as Record<string, unknown>;
  const archs = Array.isArray(o.architectures) ? (o.architectures as unknown[]).filter((a): a is string => typeof a === 'string') : [];
  let family: TextFamily;
  let architecture = archs.find((a) => ROBERTA_ARCHS.includes(a) || BERT_ARCHS.includes(a));
  if (architecture) family = ROBERTA_ARCHS.includes(architecture) ? 'roberta' : 'bert';
  else if (o.model_type === 'roberta' || o.model_type === 'bert') {
    family = o.model_type;
    architecture = family === 'roberta' ? 'RobertaModel' : 'BertModel';
  } else
    throw new Error(
      `${file}: not a text encoder this project loads (architectures ${JSON.stringify(o.architectures ?? null)}, model_type ` +
        `${JSON.stringify(o.model_type ?? null)}); expected one of ${[...ROBERTA_ARCHS, ...BERT_ARCHS].join(', ')}`,
    );
  const val = (k: string) => (o[k] !== undefined && o[k] !== null ? o[k] : DEFAULTS[family][k]);
  const bad = (k: string, want: string) => new Error(`${file}: key "${k}" must be ${want}, got ${JSON.stringify(val(k))}`);
  const int = (k: string, min: number): number => {
    const v = val(k);
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw bad(k, min > 0 ? 'a positive integer' : 'an integer >= 0');
    return v;
  };
  const eps = val('layer_norm_eps');
  if (typeof eps !== 'number' || !Number.isFinite(eps) || eps <= 0) throw bad('layer_norm_eps', 'a positive number');
  const c: TextEncoderConfig = {
    family,
    architecture,
    dim: int('hidden_size', 1),
    ffnDim: int('intermediate_size', 1),
    nHeads: int('num_attention_heads', 1),
    nLayers: int('num_hidden_layers', 1),
    vocabSize: int('vocab_size', 1),
    maxPositions: int('max_position_embeddings', 1),
    typeVocabSize: int('type_vocab_size', 1),
    padId: int('pad_token_id', 0),
    eps,
    posOffset: 0,
    maxTokens: 0,
    hasQaHead: architecture.endsWith('ForQuestionAnswering'),
  };
  const over = limitProblems([
    ['num_hidden_layers', c.nLayers, MODEL_LIMITS.layers],
    ['hidden_size', c.dim, MODEL_LIMITS.dim],
    ['intermediate_size', c.ffnDim, MODEL_LIMITS.hiddenDim],
    ['num_attention_heads', c.nHeads, MODEL_LIMITS.heads],
    ['vocab_size', c.vocabSize, MODEL_LIMITS.vocab],
    ['max_position_embeddings', c.maxPositions, MODEL_LIMITS.seqLen],
    ['type_vocab_size', c.typeVocabSize, MODEL_LIMITS.vocab],
  ]);
  if (over.length) throw new Error(`${file}: ${over.join('; ')}`);
  if (val('hidden_act') !== 'gelu') throw new Error(`${file}: hidden_act ${JSON.stringify(val('hidden_act'))} is not supported (BERT and RoBERTa use "gelu")`);
  const pet = o.position_embedding_type;
  if (pet !== undefined && pet !== null && pet !== 'absolute') throw new Error(`${file}: position_embedding_type ${JSON.stringify(pet)} is not supported (only "absolute")`);
  if (o.is_decoder === true || o.add_cross_attention === true) throw new Error(`${file}: decoder configurations are not supported (an encoder is expected)`);
  if (c.dim % c.nHeads) throw new Error(`${file}: hidden_size ${c.dim} is not a multiple of num_attention_heads ${c.nHeads}`);
  if (c.padId >= c.vocabSize) throw new Error(`${file}: pad_token_id ${c.padId} is outside the vocabulary (${c.vocabSize})`);
  // RoBERTa numbers positions from padding_idx + 1 (create_position_ids_from_input_ids)
  c.posOffset = family === 'roberta' ? c.padId + 1 : 0;
  c.maxTokens = c.maxPositions - c.posOffset;
  if (c.maxTokens < 4) throw new Error(`${file}: max_position_embeddings ${c.maxPositions} leaves ${c.maxTokens} positions, too few for a question and a context`);
  return c;
}

export interface TextEncoderWeights {
  word: Tensor; // (V, C) f32
  pos: Tensor; // (P, C) f32
  type: Tensor; // (Y, C) f32
  embNorm: { w: Tensor; b: Tensor }; // (C) f32
  layers: EncoderLayerWeights[];
  /** *ForQuestionAnswering: qa_outputs w (2, C) f32, b (2) f32: start and end logits */
  qa?: { w: Tensor; b: Tensor };
}

export function textEncoderTensors(w: TextEncoderWeights): Tensor[] {
  const out = [w.word, w.pos, w.type, w.embNorm.w, w.embNorm.b];
  if (w.qa) out.push(w.qa.w, w.qa.b);
  for (const l of w.layers) out.push(...(Object.values(l) as Tensor[]));
  return out;
}

export function mapTextEncoderWeights(w: TextEncoderWeights, f: (t: Tensor) => Tensor): TextEncoderWeights {
  const pair = (p: { w: Tensor; b: Tensor }) => ({ w: f(p.w), b: f(p.b) });
  return {
    word: f(w.word),
    pos: f(w.pos),
    type: f(w.type),
    embNorm: pair(w.embNorm),
    layers: w.layers.map((l) => mapLayerWeights(l, f)),
    qa: w.qa && pair(w.qa),
  };
}

/** One tensor as named in the file, the shape config.json implies and why, and its storage. */
type Expected = FolderTensor;

/**
 * Reads config.json and the safetensors headers, maps the files and creates the tensors in `arena`
 * (on the CPU). F16/BF16 files are widened (the big matrices kept bf16 with dtype 'bf16').
 */
export function loadTextEncoderWeights(dir: string, arena: LoadArena, opts: { dtype?: 'f32' | 'bf16' } = {}): { config: TextEncoderConfig; weights: TextEncoderWeights } {
  const c = readTextEncoderConfig(dir);
  const { has, load } = hfFolder(dir, arena, opts.dtype ?? 'f32', /\.(bin|pth|pt|msgpack|h5|ckpt)$/);
  const C = c.dim;
  const F = c.ffnDim;
  // the *For* classes keep the backbone under "roberta." / "bert."; a bare *Model has no prefix
  const p = has(`${c.family}.embeddings.word_embeddings.weight`) ? `${c.family}.` : '';
  const vec = (name: string, n = C, why = 'hidden_size'): Expected => ({ name, shape: [n], matrix: false, why });
  const mat = (name: string, shape: number[], why: string): Expected => ({ name, shape, matrix: true, why });
  const pair = (prefix: string) => ({ w: load(vec(prefix + '.weight')), b: load(vec(prefix + '.bias')) });
  const e = `${p}embeddings.`;
  const weights: TextEncoderWeights = {
    word: load({ name: e + 'word_embeddings.weight', shape: [c.vocabSize, C], matrix: false, why: 'vocab_size, hidden_size' }),
    pos: load({ name: e + 'position_embeddings.weight', shape: [c.maxPositions, C], matrix: false, why: 'max_position_embeddings, hidden_size' }),
    type: load({ name: e + 'token_type_embeddings.weight', shape: [c.typeVocabSize, C], matrix: false, why: 'type_vocab_size, hidden_size' }),
    embNorm: pair(e + 'LayerNorm'),
    layers: [],
  };
  for (let i = 0; i < c.nLayers; i++) {
    const l = `${p}encoder.layer.${i}.`;
    const CC = [C, C];
    weights.layers.push({
      wq: load(mat(l + 'attention.self.query.weight', CC, 'hidden_size, hidden_size')),
      bq: load(vec(l + 'attention.self.query.bias')),
      wk: load(mat(l + 'attention.self.key.weight', CC, 'hidden_size, hidden_size')),
      bk: load(vec(l + 'attention.self.key.bias')),
      wv: load(mat(l + 'attention.self.value.weight', CC, 'hidden_size, hidden_size')),
      bv: load(vec(l + 'attention.self.value.bias')),
      wo: load(mat(l + 'attention.output.dense.weight', CC, 'hidden_size, hidden_size')),
      bo: load(vec(l + 'attention.output.dense.bias')),
      ln1w: load(vec(l + 'attention.output.LayerNorm.weight')),
      ln1b: load(vec(l + 'attention.output.LayerNorm.bias')),
      w1: load(mat(l + 'intermediate.dense.weight', [F, C], 'intermediate_size, hidden_size')),
      b1: load(vec(l + 'intermediate.dense.bias', F, 'intermediate_size')),
      w2: load(mat(l + 'output.dense.weight', [C, F], 'hidden_size, intermediate_size')),
      b2: load(vec(l + 'output.dense.bias')),
      ln2w: load(vec(l + 'output.LayerNorm.weight')),
      ln2b: load(vec(l + 'output.LayerNorm.bias')),
    });
  }
  if (c.hasQaHead || has('qa_outputs.weight')) {
    c.hasQaHead = true;
    weights.qa = {
      w: load({ name: 'qa_outputs.weight', shape: [2, C], matrix: false, why: '2 (start, end), hidden_size' }),
      b: load(vec('qa_outputs.bias', 2, '2 (start, end)')),
    };
  }
  return { config: c, weights };
}
