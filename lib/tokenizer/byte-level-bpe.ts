// The byte-level BPE core shared by every GPT-2-style tokenizer in the project: RoBERTa's
// (lib/text/tokenizer.ts, with character offsets) and the LLaMA-side one of GGUF files whose
// tokenizer.ggml.model is "gpt2" (GPT-2, LLaMA 3; lib/tokenizer/bpe.ts).
//
// Byte-level BPE works on UTF-8 bytes written as printable characters (GPT-2's bytes_to_unicode:
// the 188 printable Latin-1 bytes stand for themselves, the other 68 are shifted to U+0100..U+0143),
// so every vocabulary entry and merge is a string of those characters and no text is ever unknown.
// Merging follows GPT-2's ranks: repeatedly merge the adjacent pair with the lowest merge rank,
// leftmost on ties (what llama.cpp, Hugging Face tokenizers and tiktoken do); bpeMerge's heap makes
// it O(n log n) in the length of a word, and whole words are cached.
import { bpeMerge } from './sentencepiece';

/** BYTE_CHARS[b]: the character that stands for byte b (GPT-2's bytes_to_unicode). */
export const BYTE_CHARS: readonly string[] = (() => {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const out = new Array<string>(256);
  let shifted = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCharCode(printable(b) ? b : 256 + shifted++);
  return out;
})();

// Pre-tokenizer patterns (flags 'gu'). Whitespace is Unicode's White_Space, as in llama.cpp's
// tables, tiktoken's Rust regex and Hugging Face's Oniguruma \s: JavaScript's own \s would add
// U+FEFF and miss U+0085.
const WS = '\\p{White_Space}';
const NOT_WS = '\\P{White_Space}';
const CONTRACTIONS_CASED = "'s|'t|'re|'ve|'m|'ll|'d";
const CONTRACTIONS_ANY_CASE = "'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])";

/** GPT-2's pattern (encoder.py; tiktoken's gpt2 / r50k_base; RoBERTa's ByteLevel pre-tokenizer). */
export const GPT2_PATTERN = `${CONTRACTIONS_CASED}| ?\\p{L}+| ?\\p{N}+| ?[^${WS}\\p{L}\\p{N}]+|${WS}+(?!${NOT_WS})|${WS}+`;
/** LLaMA 3's pattern (tiktoken's cl100k_base; its case-insensitive contractions spelled out). */
export const LLAMA3_PATTERN =
  `${CONTRACTIONS_ANY_CASE}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^${WS}\\p{L}\\p{N}]+[\\r\\n]*|` +
  `${WS}*[\\r\\n]+|${WS}+(?!${NOT_WS})|${WS}+`;

/** Byte value of each byte character's code unit, -1 for any other code unit (all below 0x144). */
const BYTE_OF_CHAR: Int16Array = (() => {
  const t = new Int16Array(0x144).fill(-1);
  BYTE_CHARS.forEach((c, b) => (t[c.charCodeAt(0)] = b));
  return t;
})();

const utf8 = new TextEncoder();

/** The UTF-8 bytes of `text` as byte characters. Lone surrogates become U+FFFD, as TextEncoder writes them. */
export function toByteChars(text: string): string {
  let out = '';
  for (const b of utf8.encode(text)) out += BYTE_CHARS[b];
  return out;
}

/**
 * Appends the bytes a string of byte characters stands for to `bytes`. A character outside the
 * byte alphabet (only a malformed vocabulary has one) contributes its own UTF-8 bytes.
 */
export function pushBytesOf(chars: string, bytes: number[]): void {
  for (let i = 0; i < chars.length; i++) {
    const c = chars.charCodeAt(i);
    const b = c < BYTE_OF_CHAR.length ? BYTE_OF_CHAR[c] : -1;
    if (b >= 0) bytes.push(b);
    else {
      const cp = chars.codePointAt(i) as number;
      if (cp > 0xffff) i++;
      for (const x of utf8.encode(String.fromCodePoint(cp))) bytes.push(x);
    }
  }
}

/** Most words a tokenizer remembers; past it, new words are merged each time they occur. */
const CACHE_LIMIT = 200_000;

/** Ranked merges over byte characters: the BPE of one pre-tokenized word. */
export class ByteLevelBpe {
  /** "left right" -> rank (the merge's position in the list; the first of duplicates wins) */
  private readonly ranks = new Map<string, number>();
  private readonly cache = new Map<string, string[]>();

  /** `merges` in rank order, as pairs of byte-character strings. */
  constructor(merges: Iterable<readonly [string, string]>) {
    let rank = 0;
    for (const [a, b] of merges) {
      const key = a + ' ' + b;
      if (!this.ranks.has(key)) this.ranks.set(key, rank);
      rank++;
    }
  }

  get mergeCount(): number {
    return this.ranks.size;
  }

  /** The pieces `word` (byte characters) merges into, in order; they concatenate to `word`. */
  bpe(word: string): string[] {
    const hit = this.cache.get(word);
    if (hit) return hit;
    let pieces: string[];
    if (word.length <= 1) pieces = [word];
    else {
      // bpeMerge takes the highest score: the negated rank makes the lowest rank win
      const score = (_merged: string, left: string, right: string): number | undefined => {
        const r = this.ranks.get(left + ' ' + right);
        return r === undefined ? undefined : -r;
      };
      pieces = bpeMerge(Array.from(word), score).pieces;
    }
    if (this.cache.size < CACHE_LIMIT) this.cache.set(word, pieces);
    return pieces;
  }
}
