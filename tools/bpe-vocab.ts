// A Hugging Face byte-level BPE tokenizer (GPT-2, LLaMA 3: tokenizer.json, or vocab.json +
// merges.txt) as GGUF metadata with tokenizer.ggml.model "gpt2", the way llama.cpp's converter
// writes it: tokens by id (gaps filled with UNUSED "[PAD<id>]"), NORMAL for the BPE vocabulary,
// CONTROL for special added tokens, USER_DEFINED for the other added tokens (their text as is),
// merges as "left right", tokenizer.ggml.pre from the pre-tokenizer, BOS/EOS and add_bos_token
// from tokenizer_config.json (else special_tokens_map.json, else config.json's bos/eos_token_id).
import * as fs from 'fs';
import * as nodePath from 'path';
import { readJson } from '../lib/model/hf';
import { PRE_TOKENIZERS } from '../lib/tokenizer/bpe';
import type { GgufMeta } from './gguf-writer';

/** The pre-tokenizer regex of LLaMA 3's tokenizer.json (tiktoken's cl100k_base pattern). */
export const LLAMA3_HF_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

interface HfAddedToken {
  id: number;
  content: string;
  special?: boolean;
}

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** tokenizer.json's pre_tokenizer -> tokenizer.ggml.pre, or undefined when it is not one we know. */
function preOf(pt: unknown): string | undefined {
  if (!isObject(pt)) return undefined;
  // GPT-2: ByteLevel with its own regex (use_regex defaults to true)
  if (pt.type === 'ByteLevel' && pt.use_regex !== false && pt.add_prefix_space !== true) return 'gpt-2';
  // LLaMA 3: Split on the cl100k pattern, then ByteLevel without a regex
  if (pt.type === 'Sequence' && Array.isArray(pt.pretokenizers) && pt.pretokenizers.length === 2) {
    const [split, byteLevel] = pt.pretokenizers as Json[];
    const pattern = isObject(split?.pattern) ? split.pattern.Regex : undefined;
    if (split?.type === 'Split' && pattern === LLAMA3_HF_PATTERN && byteLevel?.type === 'ByteLevel' && byteLevel.use_regex === false) return 'llama-bpe';
  }
  return undefined;
}

function mergeStrings(list: unknown[], where: string): string[] {
  return list.map((m, i) => {
    if (typeof m === 'string' && m.indexOf(' ', 1) > 0) return m;
    if (Array.isArray(m) && m.length === 2 && typeof m[0] === 'string' && typeof m[1] === 'string') return `${m[0]} ${m[1]}`;
    throw new Error(`${where}: merge ${i} is neither "a b" nor ["a", "b"]`);
  });
}

function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  return undefined;
}

/**
 * The GGUF tokenizer metadata of a byte-level BPE tokenizer: `path` is a folder (tokenizer.json,
 * else vocab.json + merges.txt; tokenizer_config.json read when present) or a tokenizer.json.
 * `pre` names the pre-tokenizer when tokenizer.json's cannot be recognised (vocab.json + merges.txt
 * folders are GPT-2's unless told).
 */
export function bpeTokenizerMetadata(path: string, opts: { pre?: string } = {}): [string, GgufMeta][] {
  const dir = fs.statSync(path).isDirectory() ? path : nodePath.dirname(path);
  const file = (f: string) => nodePath.join(dir, f);
  const tokenizerJson = fs.statSync(path).isDirectory() ? file('tokenizer.json') : path;
  const json = (f: string): Json => {
    if (!fs.existsSync(file(f))) return {};
    const j = readJson(file(f));
    return isObject(j) ? j : {};
  };
  // special tokens as tokenizer_config.json names them, else special_tokens_map.json (older folders)
  const config: Json = { ...json('special_tokens_map.json'), ...json('tokenizer_config.json') };
  // the model's config.json has the ids when neither names them (GPT-2: bos/eos_token_id 50256)
  const modelConfig = json('config.json');
  let vocab: Json;
  let merges: string[];
  let added: HfAddedToken[] = [];
  let pre: string | undefined;
  if (fs.existsSync(tokenizerJson)) {
    const j = readJson(tokenizerJson) as Json;
    const model = j.model;
    if (!isObject(model) || model.type !== 'BPE' || !isObject(model.vocab) || !Array.isArray(model.merges))
      throw new Error(`${tokenizerJson}: not a BPE tokenizer (model.type "BPE" with vocab and merges)`);
    vocab = model.vocab;
    merges = mergeStrings(model.merges, `${tokenizerJson} model.merges`);
    if (Array.isArray(j.added_tokens)) added = j.added_tokens as HfAddedToken[];
    pre = preOf(j.pre_tokenizer);
    if (!pre && !opts.pre)
      throw new Error(`${tokenizerJson}: its pre_tokenizer is not GPT-2's nor LLaMA 3's; name one with --pre (${Object.keys(PRE_TOKENIZERS).join(', ')})`);
  } else {
    for (const f of ['vocab.json', 'merges.txt'])
      if (!fs.existsSync(file(f))) throw new Error(`${dir}: no tokenizer.json and no ${f} (a byte-level BPE tokenizer is tokenizer.json or vocab.json + merges.txt)`);
    vocab = readJson(file('vocab.json')) as Json;
    if (!isObject(vocab)) throw new Error(`${file('vocab.json')}: expected an object of token -> id`);
    const lines = fs.readFileSync(file('merges.txt'), 'utf8').split('\n').map((l) => l.replace(/\r$/, ''));
    merges = mergeStrings(lines.filter((l) => l.trim() !== '' && !l.startsWith('#version')), file('merges.txt'));
    pre = 'gpt-2';
  }
  pre = opts.pre ?? pre!;
  if (!PRE_TOKENIZERS[pre]) throw new Error(`unknown pre-tokenizer ${JSON.stringify(pre)} (supported: ${Object.keys(PRE_TOKENIZERS).join(', ')})`);

  // id -> token and type
  const tokens: string[] = [];
  const types: number[] = [];
  const put = (id: unknown, text: string, type: number, where: string) => {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= 1 << 24) throw new Error(`${where}: token ${JSON.stringify(text)} has id ${JSON.stringify(id)}`);
    tokens[id] = text;
    types[id] = type;
  };
  for (const [text, id] of Object.entries(vocab)) put(id, text, 1, 'vocab');
  // special tokens named by tokenizer_config.json are CONTROL even in a vocab.json (GPT-2's <|endoftext|>)
  const named = new Set<string>();
  for (const k of ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token']) {
    const c = tokenContent(config[k]);
    if (c !== undefined) named.add(c);
  }
  for (const a of added) put(a.id, a.content, a.special || named.has(a.content) ? 3 : 4, 'added_tokens');
  tokens.forEach((t, id) => {
    if (types[id] === 1 && named.has(t)) types[id] = 3;
  });
  for (let id = 0; id < tokens.length; id++)
    if (tokens[id] === undefined) {
      tokens[id] = `[PAD${id}]`;
      types[id] = 5;
    }
  const idOf = (key: string): number | undefined => {
    const c = tokenContent(config[key]);
    if (c === undefined) {
      const id = modelConfig[`${key}_id`];
      return typeof id === 'number' && Number.isInteger(id) && id >= 0 && id < tokens.length ? id : undefined;
    }
    const id = tokens.indexOf(c);
    if (id < 0) throw new Error(`${dir}: the ${key} ${JSON.stringify(c)} its config names is not in the vocabulary`);
    return id;
  };
  const bos = idOf('bos_token');
  const eos = idOf('eos_token');
  // BOS and EOS are control tokens even where a vocab.json lists them among the others
  for (const id of [bos, eos]) if (id !== undefined && types[id] === 1) types[id] = 3;
  const meta: [string, GgufMeta][] = [
    ['tokenizer.ggml.model', { type: 'string', value: 'gpt2' }],
    ['tokenizer.ggml.pre', { type: 'string', value: pre }],
    ['tokenizer.ggml.tokens', { type: 'array', itemType: 'string', value: tokens }],
    ['tokenizer.ggml.token_type', { type: 'array', itemType: 'i32', value: types }],
    ['tokenizer.ggml.merges', { type: 'array', itemType: 'string', value: merges }],
  ];
  if (bos !== undefined) meta.push(['tokenizer.ggml.bos_token_id', { type: 'u32', value: bos }]);
  if (eos !== undefined) meta.push(['tokenizer.ggml.eos_token_id', { type: 'u32', value: eos }]);
  if (typeof config.add_bos_token === 'boolean') meta.push(['tokenizer.ggml.add_bos_token', { type: 'bool', value: config.add_bos_token }]);
  return meta;
}

/** Whether `path` is a byte-level BPE tokenizer for bpeTokenizerMetadata (a folder or a .json). */
export function isBpeTokenizerPath(path: string): boolean {
  return fs.statSync(path).isDirectory() || path.endsWith('.json');
}
