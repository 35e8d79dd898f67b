// Byte-level BPE on the LLaMA side: the vocabulary of a GGUF whose tokenizer.ggml.model is "gpt2"
// (GPT-2, LLaMA 3 and their relatives), behind the same Tokenizer interface as SentencePiece.
//
// Encoding follows llama.cpp (llama-vocab.cpp):
//   1. Special tokens are split out of the text first, longest first: USER_DEFINED tokens always,
//      CONTROL (and UNKNOWN) tokens only when asked (`special: true`, llama.cpp's parse_special);
//      by default a text such as "<|endoftext|>" is tokenized as the plain characters it is, so
//      data cannot smuggle control tokens in.
//   2. Each remaining fragment is split into words by the pre-tokenizer that tokenizer.ggml.pre
//      names (one or more regexes applied in turn; text between matches stays a word of its own).
//   3. Each word, as UTF-8 byte characters, becomes one token when the vocabulary has it whole and
//      the pre-tokenizer ignores merges (LLaMA 3, as tiktoken does), else the BPE of its merges.
//
// Decoding: NORMAL tokens are byte characters turned back into bytes, and the bytes of consecutive
// tokens into UTF-8 (an invalid sequence becomes one U+FFFD per bad byte); USER_DEFINED tokens are
// their text as stored; CONTROL, UNKNOWN and UNUSED tokens vanish (llama.cpp's token_to_piece
// without `special`). No clean-up of spaces, so decode(encode(s)) === s for any well-formed s.
import { BYTE_CHARS, ByteLevelBpe, GPT2_PATTERN, LLAMA3_PATTERN, pushBytesOf, toByteChars } from './byte-level-bpe';
import { PieceType, checkId, decodeUtf8 } from './sentencepiece';


/** The vocabulary as a GGUF stores it (tokenizer.ggml.*). */
export interface ByteBpeModel {
  kind: 'byte-bpe';
  tokens: string[];
  /** PieceType of each token (llama.cpp's token types are SentencePiece's piece types) */
  types: number[];
  /** "left right", in rank order */
  merges: string[];
  /** tokenizer.ggml.pre */
  pre: string;
  /** -1: the vocabulary has none */
  bosId: number;
  eosId: number;
  /** end of turn / end of message (tokenizer.ggml.eot_token_id, eom_token_id: LLaMA 3 instruct's
   *  <|eot_id|>, <|eom_id|>); -1 or absent: none */
  eotId?: number;
  eomId?: number;
  /** whether a sequence starts with BOS (tokenizer.ggml.add_bos_token, else the pre-tokenizer's default) */
  addBos: boolean;
}

interface PreTokenizer {
  /** applied in turn, each to the words the previous one left */
  patterns: string[];
  /** a word the vocabulary holds whole is one token (tiktoken's rule) */
  ignoreMerges: boolean;
  /** llama.cpp's add_bos when tokenizer.ggml.add_bos_token is absent */
  addBos: boolean;
}

/** tokenizer.ggml.pre values understood here, as llama.cpp defines them. */
export const PRE_TOKENIZERS: Record<string, PreTokenizer> = {
  // llama.cpp's fallback for "default" (and a missing pre): punctuation runs, then GPT-2's pattern,
  // then digit runs, then digits in threes
  default: { patterns: ['[\\p{P}$+<=>^~|]+', GPT2_PATTERN, '\\p{N}+', '[0-9][0-9][0-9]'], ignoreMerges: false, addBos: false },
  'gpt-2': { patterns: [GPT2_PATTERN], ignoreMerges: false, addBos: false },
  'llama-bpe': { patterns: [LLAMA3_PATTERN], ignoreMerges: true, addBos: true },
  llama3: { patterns: [LLAMA3_PATTERN], ignoreMerges: true, addBos: true },
  'llama-v3': { patterns: [LLAMA3_PATTERN], ignoreMerges: true, addBos: true },
};

/** Splits `text` into words: each pattern's matches, and the text between them, become words. */
export function preTokenize(text: string, patterns: RegExp[]): string[] {
  let words = [text];
  for (const re of patterns) {
    const next: string[] = [];
    for (const w of words) {
      let at = 0;
      for (const m of w.matchAll(re)) {
        if (m.index! > at) next.push(w.slice(at, m.index));
        if (m[0].length > 0) next.push(m[0]);
        at = m.index! + m[0].length;
      }
      if (at < w.length) next.push(w.slice(at));
    }
    words = next;
  }
  return words;
}

/** Most words whose ids are remembered. */
const WORD_CACHE_LIMIT = 200_000;

export class BpeTokenizer {
  readonly vocabSize: number;
  readonly bos: number;
  readonly eos: number;
  /** EOS, end of turn and end of message: the ids that end generation */
  readonly stopIds: readonly number[];
  /** whether `encode(text, { bos: true })` starts the ids with BOS */
  readonly addBos: boolean;
  readonly pre: string;
  private readonly tokens: string[];
  private readonly types: Uint8Array;
  private readonly ids = new Map<string, number>();
  private readonly merges: ByteLevelBpe;
  private readonly patterns: RegExp[];
  private readonly ignoreMerges: boolean;
  /** USER_DEFINED tokens, longest first (always split out of the text) */
  private readonly userDefined: number[];
  /** CONTROL, UNKNOWN and USER_DEFINED tokens, longest first (split out with `special`) */
  private readonly allSpecial: number[];
  /** word (as text) -> its ids */
  private readonly wordIds = new Map<string, number[]>();

  constructor(model: ByteBpeModel) {
    const pre = PRE_TOKENIZERS[model.pre];
    if (!pre)
      throw new Error(
        `unsupported pre-tokenizer tokenizer.ggml.pre = ${JSON.stringify(model.pre)} (supported: ${Object.keys(PRE_TOKENIZERS).map((k) => `"${k}"`).join(', ')})`,
      );
    const n = model.tokens.length;
    if (n === 0) throw new Error('the vocabulary is empty');
    if (model.types.length !== n) throw new Error(`${model.types.length} token types for ${n} tokens`);
    this.vocabSize = n;
    // as llama.cpp: an empty token becomes "[EMPTY_<id>]" rather than failing the file
    this.tokens = model.tokens.some((t) => t === '') ? model.tokens.map((t, i) => (t === '' ? `[EMPTY_${i}]` : t)) : model.tokens;
    this.types = new Uint8Array(n);
    model.types.forEach((t, i) => {
      if (!Number.isInteger(t) || t < PieceType.Normal || t > PieceType.Byte) throw new Error(`token ${i} has type ${t} (1 to 6 are valid)`);
      this.types[i] = t;
    });
    // as llama.cpp's token_to_id: a later duplicate replaces an earlier one
    this.tokens.forEach((t, i) => this.ids.set(t, i));
    for (let b = 0; b < 256; b++) {
      const c = BYTE_CHARS[b];
      if (!this.ids.has(c)) throw new Error(`the vocabulary has no token for the byte 0x${b.toString(16).padStart(2, '0')} (${JSON.stringify(c)}); a byte-level BPE vocabulary has all 256`);
    }
    const pairs = model.merges.map((m, i): [string, string] => {
      // llama.cpp splits at the first space after the first character
      const at = m.indexOf(' ', 1);
      if (at < 0) throw new Error(`merge ${i} ${JSON.stringify(m)} is not two tokens separated by a space`);
      return [m.slice(0, at), m.slice(at + 1)];
    });
    this.merges = new ByteLevelBpe(pairs);
    const id = (v: number, what: string): number => {
      if (!Number.isInteger(v) || v < -1 || v >= n) throw new Error(`${what} id ${v} is not a token id (vocabulary of ${n})`);
      return v;
    };
    this.bos = id(model.bosId, 'bos');
    this.eos = id(model.eosId, 'eos');
    const ends = [this.eos, id(model.eotId ?? -1, 'eot'), id(model.eomId ?? -1, 'eom')];
    this.stopIds = [...new Set(ends.filter((i) => i >= 0))];
    this.addBos = model.addBos;
    this.pre = model.pre;
    this.patterns = pre.patterns.map((p) => new RegExp(p, 'gu'));
    this.ignoreMerges = pre.ignoreMerges;
    // longest (in UTF-8 bytes, as llama.cpp sorts them) first
    const bytes = (id: number) => Buffer.byteLength(this.tokens[id], 'utf8');
    const byLength = (list: number[]) => list.sort((a, b) => bytes(b) - bytes(a) || a - b);
    const user: number[] = [];
    const special: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = this.types[i];
      if (t === PieceType.UserDefined) user.push(i);
      if (t === PieceType.UserDefined || t === PieceType.Control || t === PieceType.Unknown) special.push(i);
    }
    this.userDefined = byLength(user);
    this.allSpecial = byLength(special);
  }

  piece(id: number): string {
    checkId(id, this.vocabSize);
    return this.tokens[id];
  }

  /**
   * Token ids of `text`. `bos: true` marks the start of a sequence: BOS is added when the
   * vocabulary's convention adds one (addBos: LLaMA 3 yes, GPT-2 no). `eos: true` always appends
   * EOS. `special: true` turns CONTROL token strings in the text into those tokens.
   */
  encode(text: string, opts: { bos?: boolean; eos?: boolean; special?: boolean } = {}): number[] {
    const ids: number[] = [];
    if (opts.bos && this.addBos) ids.push(this.need(this.bos, 'BOS'));
    for (const part of this.splitSpecial(text, opts.special ? this.allSpecial : this.userDefined)) {
      if (typeof part === 'number') ids.push(part);
      else for (const word of preTokenize(part, this.patterns)) for (const t of this.wordToIds(word)) ids.push(t);
    }
    if (opts.eos) ids.push(this.need(this.eos, 'EOS'));
    return ids;
  }

  private need(id: number, what: string): number {
    if (id < 0) throw new Error(`this vocabulary has no ${what} token`);
    return id;
  }

  /** llama.cpp's partition: for each special token, longest first, split every text fragment at it. */
  private splitSpecial(text: string, specials: number[]): (string | number)[] {
    let parts: (string | number)[] = text === '' ? [] : [text];
    for (const id of specials) {
      const s = this.tokens[id];
      if (!parts.some((p) => typeof p === 'string' && p.includes(s))) continue;
      const next: (string | number)[] = [];
      for (const p of parts) {
        if (typeof p !== 'string') {
          next.push(p);
          continue;
        }
        let at = 0;
        for (let k = p.indexOf(s); k >= 0; k = p.indexOf(s, at)) {
          if (k > at) next.push(p.slice(at, k));
          next.push(id);
          at = k + s.length;
        }
        if (at < p.length) next.push(p.slice(at));
      }
      parts = next;
    }
    return parts;
  }

  private wordToIds(word: string): number[] {
    const hit = this.wordIds.get(word);
    if (hit) return hit;
    const chars = toByteChars(word);
    const out: number[] = [];
    const whole = this.ignoreMerges ? this.ids.get(chars) : undefined;
    if (whole !== undefined) out.push(whole);
    else
      for (const piece of this.merges.bpe(chars)) {
        const id = this.ids.get(piece);
        if (id !== undefined) out.push(id);
        // a merge whose result is not a token (a malformed vocabulary): its bytes one by one
        else for (const c of piece) out.push(this.ids.get(c) as number);
      }
    if (this.wordIds.size < WORD_CACHE_LIMIT) this.wordIds.set(word, out);
    return out;
  }

  decode(ids: number[]): string {
    let text = '';
    let bytes: number[] = [];
    const flush = () => {
      if (bytes.length > 0) text += decodeUtf8(bytes);
      bytes = [];
    };
    for (const id of ids) {
      checkId(id, this.vocabSize);
      const type = this.types[id];
      if (type === PieceType.Normal) pushBytesOf(this.tokens[id], bytes);
      else if (type === PieceType.UserDefined) {
        flush();
        text += this.tokens[id];
      } else if (type === PieceType.Byte) {
        // a byte token of a byte-level vocabulary is one byte character
        pushBytesOf(this.tokens[id], bytes);
      }
      // CONTROL, UNKNOWN, UNUSED: nothing
    }
    flush();
    return text;
  }
}
