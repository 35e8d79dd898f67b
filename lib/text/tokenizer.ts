// The tokenizers of RoBERTa and BERT checkpoints, as the folders ship them, with character offsets
// (SPEC §9: an answer span maps back to the text through them):
//   byte-level BPE (RoBERTa, GPT-2): vocab.json + merges.txt, or tokenizer.json (model.type "BPE")
//   WordPiece (BERT): vocab.txt, or tokenizer.json (model.type "WordPiece"); BERT's basic
//     tokenizer first (clean text, spaces around CJK characters, lower-casing and accent stripping
//     per tokenizer_config.json, splitting on white space and punctuation)
// Offsets are [start, end) in UTF-16 code units of the JS string (what String.slice takes).
import * as fs from 'fs';
import * as nodePath from 'path';
import { readJson } from '../model/hf';
import { BYTE_CHARS, ByteLevelBpe, GPT2_PATTERN } from '../tokenizer/byte-level-bpe';

export interface Encoding {
  ids: number[];
  /** offsets[i] = [start, end) of token i in the text (UTF-16 code units) */
  offsets: [number, number][];
}

export interface TextTokenizer {
  readonly kind: 'bpe' | 'wordpiece';
  readonly vocabSize: number;
  readonly clsId: number;
  readonly sepId: number;
  readonly padId: number;
  /** the tokens of `text` (no special tokens) with their offsets */
  encode(text: string): Encoding;
  /** ids of a pair: BERT [CLS] a [SEP] b [SEP], RoBERTa <s> a </s></s> b </s>; the index of b's
   *  first token; token types (BERT: 0 for the first part, 1 for the second; RoBERTa: all 0) */
  pair(a: number[], b: number[]): { ids: number[]; bStart: number; types: number[] };
  /** how many special tokens pair() adds */
  readonly pairSpecials: number;
}

// ------------------------------------------------------------------------- byte-level BPE --

/** GPT-2's pre-tokenization pattern (the one RoBERTa's ByteLevel pre-tokenizer uses). */
const GPT2_REGEX = new RegExp(GPT2_PATTERN, 'gu');

export class ByteBpeTokenizer implements TextTokenizer {
  readonly kind = 'bpe';
  readonly pairSpecials = 4;
  readonly clsId: number;
  readonly sepId: number;
  readonly padId: number;
  private readonly merges: ByteLevelBpe;

  constructor(private readonly vocab: Map<string, number>, merges: [string, string][], private readonly source: string) {
    this.merges = new ByteLevelBpe(merges);
    const need = (t: string) => {
      const id = vocab.get(t);
      if (id === undefined) throw new Error(`${source}: the vocabulary has no ${t} token (a RoBERTa tokenizer needs <s>, </s>, <pad>)`);
      return id;
    };
    this.clsId = need('<s>');
    this.sepId = need('</s>');
    this.padId = need('<pad>');
  }

  get vocabSize(): number {
    return this.vocab.size;
  }

  encode(text: string): Encoding {
    const ids: number[] = [];
    const offsets: [number, number][] = [];
    const enc = new TextEncoder();
    for (const m of text.matchAll(GPT2_REGEX)) {
      const piece = m[0];
      const base = m.index!;
      // byte b of the piece -> the UTF-16 range of the character it belongs to
      const byteStart: number[] = [];
      const byteEnd: number[] = [];
      let chars = '';
      for (let i = 0; i < piece.length; ) {
        const cp = piece.codePointAt(i)!;
        const w = cp > 0xffff ? 2 : 1;
        for (const byte of enc.encode(piece.slice(i, i + w))) {
          chars += BYTE_CHARS[byte];
          byteStart.push(base + i);
          byteEnd.push(base + i + w);
        }
        i += w;
      }
      let b = 0;
      for (const tok of this.merges.bpe(chars)) {
        const n = Array.from(tok).length; // one byte character per byte
        const id = this.vocab.get(tok);
        if (id === undefined) throw new Error(`${this.source}: BPE token ${JSON.stringify(tok)} is not in the vocabulary`);
        let s = byteStart[b];
        const e = byteEnd[b + n - 1];
        // trim_offsets: the leading space a token carries is not part of its span
        while (s < e && /\s/.test(text[s]) && piece.trim() !== '') s++;
        ids.push(id);
        offsets.push([s, e]);
        b += n;
      }
    }
    return { ids, offsets };
  }

  pair(a: number[], b: number[]): { ids: number[]; bStart: number; types: number[] } {
    const ids = [this.clsId, ...a, this.sepId, this.sepId, ...b, this.sepId];
    return { ids, bStart: a.length + 3, types: ids.map(() => 0) };
  }
}

// ------------------------------------------------------------------------------- WordPiece --

const isWhitespace = (c: string) => c === ' ' || c === '\t' || c === '\n' || c === '\r' || /^\p{Zs}$/u.test(c);
const isControl = (c: string) => c !== '\t' && c !== '\n' && c !== '\r' && /^[\p{Cc}\p{Cf}]$/u.test(c);
function isPunctuation(c: string): boolean {
  const cp = c.codePointAt(0)!;
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126)) return true;
  return /^\p{P}$/u.test(c);
}
function isCjk(cp: number): boolean {
  return (
    (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) || (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) || (cp >= 0x2b740 && cp <= 0x2b81f) || (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f)
  );
}

export interface WordPieceOptions {
  lowerCase: boolean;
  /** default: as lowerCase (BERT's strip_accents = None) */
  stripAccents?: boolean;
  unk?: string;
  cls?: string;
  sep?: string;
  pad?: string;
  prefix?: string;
  maxCharsPerWord?: number;
}

export class WordPieceTokenizer implements TextTokenizer {
  readonly kind = 'wordpiece';
  readonly pairSpecials = 3;
  readonly clsId: number;
  readonly sepId: number;
  readonly padId: number;
  readonly unkId: number;
  private readonly strip: boolean;
  private readonly prefix: string;

  constructor(private readonly vocab: Map<string, number>, readonly opts: WordPieceOptions, source: string) {
    const need = (t: string) => {
      const id = vocab.get(t);
      if (id === undefined) throw new Error(`${source}: the vocabulary has no ${t} token`);
      return id;
    };
    this.clsId = need(opts.cls ?? '[CLS]');
    this.sepId = need(opts.sep ?? '[SEP]');
    this.padId = need(opts.pad ?? '[PAD]');
    this.unkId = need(opts.unk ?? '[UNK]');
    this.strip = opts.stripAccents ?? opts.lowerCase;
    this.prefix = opts.prefix ?? '##';
  }

  get vocabSize(): number {
    return this.vocab.size;
  }

  /** BERT's basic tokenizer: words as lists of (normalised character, source range). */
  private words(text: string): { chars: string[]; from: number[]; to: number[] }[] {
    const words: { chars: string[]; from: number[]; to: number[] }[] = [];
    let cur: { chars: string[]; from: number[]; to: number[] } | null = null;
    const end = () => {
      if (cur && cur.chars.length) words.push(cur);
      cur = null;
    };
    for (let i = 0; i < text.length; ) {
      const cp = text.codePointAt(i)!;
      const w = cp > 0xffff ? 2 : 1;
      const c = text.slice(i, i + w);
      const [s, e] = [i, i + w];
      i += w;
      if (cp === 0 || cp === 0xfffd || isControl(c)) continue;
      if (isWhitespace(c)) {
        end();
        continue;
      }
      if (isCjk(cp)) {
        end();
        words.push({ chars: [c], from: [s], to: [e] });
        continue;
      }
      // lower-case, then NFD and drop the combining marks (BERT's order)
      let n = this.opts.lowerCase ? c.toLowerCase() : c;
      if (this.strip) n = n.normalize('NFD').replace(/\p{Mn}/gu, '');
      for (const nc of n) {
        if (isPunctuation(nc)) {
          end();
          words.push({ chars: [nc], from: [s], to: [e] });
        } else {
          cur ??= { chars: [], from: [], to: [] };
          cur.chars.push(nc);
          cur.from.push(s);
          cur.to.push(e);
        }
      }
    }
    end();
    return words;
  }

  encode(text: string): Encoding {
    const ids: number[] = [];
    const offsets: [number, number][] = [];
    const maxChars = this.opts.maxCharsPerWord ?? 100;
    for (const w of this.words(text)) {
      const n = w.chars.length;
      if (n > maxChars) {
        ids.push(this.unkId);
        offsets.push([w.from[0], w.to[n - 1]]);
        continue;
      }
      // greedy longest match first
      const pieces: [number, number, number][] = [];
      let start = 0;
      let bad = false;
      while (start < n) {
        let end = n;
        let found = -1;
        while (start < end) {
          let sub = w.chars.slice(start, end).join('');
          if (start > 0) sub = this.prefix + sub;
          const id = this.vocab.get(sub);
          if (id !== undefined) {
            found = id;
            break;
          }
          end--;
        }
        if (found < 0) {
          bad = true;
          break;
        }
        pieces.push([found, start, end]);
        start = end;
      }
      if (bad) {
        ids.push(this.unkId);
        offsets.push([w.from[0], w.to[n - 1]]);
      } else
        for (const [id, s, e] of pieces) {
          ids.push(id);
          offsets.push([w.from[s], w.to[e - 1]]);
        }
    }
    return { ids, offsets };
  }

  pair(a: number[], b: number[]): { ids: number[]; bStart: number; types: number[] } {
    const ids = [this.clsId, ...a, this.sepId, ...b, this.sepId];
    const types = ids.map((_, i) => (i < a.length + 2 ? 0 : 1));
    return { ids, bStart: a.length + 2, types };
  }
}

// ------------------------------------------------------------------------------- loading --

function vocabFromObject(o: unknown, where: string): Map<string, number> {
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new Error(`${where}: expected an object of token -> id`);
  const m = new Map<string, number>();
  for (const [k, v] of Object.entries(o)) {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new Error(`${where}: token ${JSON.stringify(k)} has id ${JSON.stringify(v)}`);
    m.set(k, v);
  }
  return m;
}

function mergesFrom(list: unknown[], where: string): [string, string][] {
  return list.map((x, i) => {
    if (typeof x === 'string') {
      const p = x.split(' ');
      if (p.length !== 2) throw new Error(`${where}: merge ${i} ${JSON.stringify(x)} is not two tokens`);
      return [p[0], p[1]];
    }
    if (Array.isArray(x) && x.length === 2 && typeof x[0] === 'string' && typeof x[1] === 'string') return [x[0], x[1]];
    throw new Error(`${where}: merge ${i} is neither "a b" nor ["a", "b"]`);
  });
}

/**
 * The tokenizer of a RoBERTa or BERT folder: tokenizer.json when present, else vocab.json +
 * merges.txt (BPE) or vocab.txt (WordPiece). `family` says which one the model expects.
 */
export function loadTextTokenizer(dir: string, family: 'roberta' | 'bert'): TextTokenizer {
  const p = (f: string) => nodePath.join(dir, f);
  let tcfg: Record<string, unknown> = {};
  if (fs.existsSync(p('tokenizer_config.json'))) {
    const j = readJson(p('tokenizer_config.json'));
    if (typeof j === 'object' && j !== null && !Array.isArray(j)) tcfg = j as Record<string, unknown>;
  }
  if (fs.existsSync(p('tokenizer.json'))) {
    const file = p('tokenizer.json');
    const j = readJson(file) as { pre_tokenizer?: { add_prefix_space?: boolean } | null; model?: { type?: string; vocab?: unknown; merges?: unknown; unk_token?: string; continuing_subword_prefix?: string; max_input_chars_per_word?: number }; normalizer?: { lowercase?: boolean; strip_accents?: boolean | null } | null };
    const model = j?.model;
    if (!model || typeof model !== 'object') throw new Error(`${file}: no "model" object`);
    const vocab = vocabFromObject(model.vocab, `${file} model.vocab`);
    if (family === 'roberta') {
      if (model.type !== 'BPE' || !Array.isArray(model.merges)) throw new Error(`${file}: expected a BPE model with merges for a RoBERTa folder, got ${JSON.stringify(model.type)}`);
      if (j.pre_tokenizer?.add_prefix_space === true || tcfg.add_prefix_space === true)
        throw new Error(`${file}: add_prefix_space = true is not supported (RoBERTa's own tokenizers have it false)`);
      return new ByteBpeTokenizer(vocab, mergesFrom(model.merges, `${file} model.merges`), file);
    }
    if (model.type !== 'WordPiece') throw new Error(`${file}: expected a WordPiece model for a BERT folder, got ${JSON.stringify(model.type)}`);
    const norm = j.normalizer ?? {};
    const lower = typeof norm.lowercase === 'boolean' ? norm.lowercase : tcfg.do_lower_case !== false;
    return new WordPieceTokenizer(vocab, {
      lowerCase: lower,
      stripAccents: typeof norm.strip_accents === 'boolean' ? norm.strip_accents : undefined,
      unk: model.unk_token,
      prefix: model.continuing_subword_prefix,
      maxCharsPerWord: model.max_input_chars_per_word,
    }, file);
  }
  if (family === 'roberta') {
    for (const f of ['vocab.json', 'merges.txt'])
      if (!fs.existsSync(p(f))) throw new Error(`${dir}: no tokenizer.json and no ${f} (a RoBERTa folder ships vocab.json + merges.txt or tokenizer.json)`);
    if (tcfg.add_prefix_space === true) throw new Error(`${p('tokenizer_config.json')}: add_prefix_space = true is not supported (RoBERTa's own tokenizers have it false)`);
    const vocab = vocabFromObject(readJson(p('vocab.json')), p('vocab.json'));
    const lines = fs.readFileSync(p('merges.txt'), 'utf8').split('\n').filter((l) => l.trim() !== '' && !l.startsWith('#version'));
    return new ByteBpeTokenizer(vocab, mergesFrom(lines.map((l) => l.replace(/\r$/, '')), p('merges.txt')), p('vocab.json'));
  }
  if (!fs.existsSync(p('vocab.txt'))) throw new Error(`${dir}: no tokenizer.json and no vocab.txt (a BERT folder ships one of them)`);
  const vocab = new Map<string, number>();
  fs.readFileSync(p('vocab.txt'), 'utf8').split('\n').forEach((l, i, all) => {
    const t = l.replace(/\r$/, '');
    if (t === '' && i === all.length - 1) return;
    if (!vocab.has(t)) vocab.set(t, i);
  });
  const lower = tcfg.do_lower_case !== false;
  const sa = tcfg.strip_accents;
  return new WordPieceTokenizer(vocab, { lowerCase: lower, stripAccents: typeof sa === 'boolean' ? sa : undefined }, p('vocab.txt'));
}
