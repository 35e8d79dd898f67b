// llama2.c `tokenizer.bin` reader and tokenizer, behaving like llama2.c's run.c.
//
// File layout (little-endian): u32 max_token_length, then one record per token until the end
// of the file: f32 score, i32 length, `length` bytes of the piece. SentencePiece's '▁' is
// already replaced by ' ', and BOS/EOS are stored as "\n<s>\n" / "\n</s>\n".
//
// Pieces are kept as "byte strings" (one char per byte, latin1) because run.c works on bytes:
// that keeps lookups and merges byte-exact whatever the pieces contain.
import { bpeMerge, checkId, decodeUtf8, parseBytePiece } from './sentencepiece';

const BOS = 1;
const EOS = 2;
/** run.c maps a byte b that has no token of its own to id b + 3 (after <unk>, <s>, </s>). */
const BYTE_OFFSET = 3;
/** Sanity limit for the header: real files have 7 (tok512) to 27 (LLaMA). */
export const MAX_TOKEN_LENGTH_LIMIT = 1024;

export interface Llama2cVocab {
  maxTokenLength: number;
  scores: Float32Array;
  /** Raw piece bytes as latin1 strings. */
  pieces: string[];
}

/** Parses a `tokenizer.bin`. Throws an Error describing the problem (the loader adds the file). */
export function parseLlama2cVocab(buf: Uint8Array): Llama2cVocab {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (buf.length < 4) throw new Error(`llama2.c tokenizer is only ${buf.length} bytes, too short for its header`);
  const maxTokenLength = view.getUint32(0, true);
  if (maxTokenLength < 1 || maxTokenLength > MAX_TOKEN_LENGTH_LIMIT) {
    throw new Error(`llama2.c tokenizer header max_token_length ${maxTokenLength} is not plausible`);
  }
  const scores: number[] = [];
  const pieces: string[] = [];
  let pos = 4;
  while (pos < buf.length) {
    const i = pieces.length;
    if (buf.length - pos < 8) throw new Error(`llama2.c tokenizer record ${i} at byte ${pos} is cut short (truncated?)`);
    const score = view.getFloat32(pos, true);
    const len = view.getInt32(pos + 4, true);
    if (Number.isNaN(score)) throw new Error(`llama2.c tokenizer record ${i} at byte ${pos} has a NaN score`);
    if (len < 0 || len > maxTokenLength) {
      throw new Error(`llama2.c tokenizer record ${i} at byte ${pos} has length ${len}, outside [0, ${maxTokenLength}]`);
    }
    if (buf.length - pos - 8 < len) throw new Error(`llama2.c tokenizer record ${i} at byte ${pos} runs past the end of the file (truncated?)`);
    scores.push(score);
    pieces.push(Buffer.from(buf.buffer, buf.byteOffset + pos + 8, len).toString('latin1'));
    pos += 8 + len;
  }
  // run.c relies on <unk>, <s>, </s> and then the 256 byte tokens.
  if (pieces.length < BYTE_OFFSET + 256) {
    throw new Error(`llama2.c tokenizer has ${pieces.length} tokens, fewer than the 259 special and byte tokens (truncated?)`);
  }
  for (let b = 0; b < 256; b++) {
    if (parseBytePiece(pieces[BYTE_OFFSET + b]) !== b) {
      throw new Error(`llama2.c tokenizer token ${BYTE_OFFSET + b} is ${JSON.stringify(pieces[BYTE_OFFSET + b])}, expected the byte token for 0x${b.toString(16)}`);
    }
  }
  return { maxTokenLength, scores: Float32Array.from(scores), pieces };
}

export class Llama2cTokenizer {
  readonly vocabSize: number;
  readonly bos = BOS;
  readonly eos = EOS;
  readonly stopIds: readonly number[] = [EOS, BOS];
  private readonly vocab: Llama2cVocab;
  /** Piece -> id; on duplicates the first id wins. */
  private readonly ids = new Map<string, number>();
  /** Byte value of each "<0xNN>" token, -1 for other ids. */
  private readonly byteOf: Int16Array;

  constructor(vocab: Llama2cVocab) {
    this.vocab = vocab;
    this.vocabSize = vocab.pieces.length;
    this.byteOf = new Int16Array(this.vocabSize).fill(-1);
    vocab.pieces.forEach((p, id) => {
      if (!this.ids.has(p)) this.ids.set(p, id);
      this.byteOf[id] = parseBytePiece(p);
    });
  }

  /** The stored piece as text (' ' for SentencePiece's '▁'; BOS is "\n<s>\n"). */
  piece(id: number): string {
    checkId(id, this.vocabSize);
    return Buffer.from(this.vocab.pieces[id], 'latin1').toString('utf8');
  }

  encode(text: string, opts: { bos?: boolean; eos?: boolean } = {}): number[] {
    const ids: number[] = [];
    if (opts.bos) ids.push(BOS);
    const bytes = Buffer.from(text, 'utf8');
    // run.c's add_dummy_prefix: a leading " " token, but only for non-empty text.
    const symbols: string[] = [];
    const isByte: boolean[] = [];
    if (bytes.length > 0) {
      symbols.push(' ');
      isByte.push(!this.ids.has(' '));
    }
    // Group bytes into codepoints as run.c does: a lead byte plus up to 3 continuation bytes.
    // A codepoint without a token becomes its bytes, as byte tokens that never merge.
    for (let i = 0; i < bytes.length; ) {
      let j = i + 1;
      while (j < bytes.length && (bytes[j] & 0xc0) === 0x80 && j - i < 4) j++;
      const cp = bytes.toString('latin1', i, j);
      if (this.ids.has(cp)) {
        symbols.push(cp);
        isByte.push(false);
      } else {
        for (let k = i; k < j; k++) {
          symbols.push(String.fromCharCode(bytes[k]));
          isByte.push(true);
        }
      }
      i = j;
    }
    const scoreOf = (merged: string): number | undefined => {
      const id = this.ids.get(merged);
      return id === undefined ? undefined : this.vocab.scores[id];
    };
    const { pieces, starts } = bpeMerge(symbols, scoreOf, isByte);
    pieces.forEach((p, k) => {
      ids.push(isByte[starts[k]] ? p.charCodeAt(0) + BYTE_OFFSET : (this.ids.get(p) as number));
    });
    if (opts.eos) ids.push(EOS);
    return ids;
  }

  decode(ids: number[]): string {
    const bytes: number[] = [];
    let prev = -1;
    for (const id of ids) {
      checkId(id, this.vocabSize);
      const after = prev;
      prev = id;
      // run.c never prints BOS/EOS: they delimit sequences.
      if (id === BOS || id === EOS) continue;
      let piece = this.vocab.pieces[id];
      // After BOS, SentencePiece's decoder drops the leading space (run.c does the same).
      if (after === BOS && piece.startsWith(' ')) piece = piece.slice(1);
      const b = this.byteOf[id];
      if (b >= 0) {
        bytes.push(b);
        continue;
      }
      for (let k = 0; k < piece.length; k++) bytes.push(piece.charCodeAt(k));
    }
    return decodeUtf8(bytes);
  }
}

export function llama2cFromBuffer(buf: Uint8Array): Llama2cTokenizer {
  return new Llama2cTokenizer(parseLlama2cVocab(buf));
}
