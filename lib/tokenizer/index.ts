// Tokenizers: SentencePiece `tokenizer.model`, llama2.c `tokenizer.bin` and the vocabulary in a
// GGUF's metadata (SentencePiece or byte-level BPE), behind one interface.
import * as fs from 'fs';
import { MAX_TOKEN_LENGTH_LIMIT, llama2cFromBuffer } from './llama2c';
import { SentencePieceTokenizer, sentencePieceFromBuffer } from './sentencepiece';
import { BpeTokenizer } from './bpe';
import { GgufTokenizerModel, ggufTokenizerModel, isGguf, readGgufHeader } from '../model/gguf';

export { Llama2cTokenizer } from './llama2c';
export { SentencePieceTokenizer } from './sentencepiece';
export { BpeTokenizer } from './bpe';

/** Real tokenizer files are at most a few MiB; anything this big is not one. */
const MAX_FILE_BYTES = 256 * 1024 * 1024;

export interface Tokenizer {
  readonly vocabSize: number;
  readonly bos: number;
  readonly eos: number;
  /** The ids that end generation: EOS, and BOS for SentencePiece / llama2.c vocabularies (llama2.c
   *  models start the next story with it); a GGUF's end-of-turn and end-of-message tokens. */
  readonly stopIds: readonly number[];
  /**
   * Token ids for `text`; BOS/EOS are added only when asked for. `bos: true` marks the start of a
   * sequence: SentencePiece always adds BOS then, byte-level BPE when its vocabulary says so
   * (tokenizer.ggml.add_bos_token: LLaMA 3 yes, GPT-2 no).
   */
  encode(text: string, opts?: { bos?: boolean; eos?: boolean }): number[];
  /** Text of a whole sequence (control tokens vanish; byte tokens are reassembled into UTF-8). */
  decode(ids: number[]): string;
  /** The vocabulary entry of one id, as stored (e.g. "▁Hello" or "<0xE6>"; byte-level BPE: "ĠHello"). */
  piece(id: number): string;
}

/**
 * Turns a stream of token ids into text as it becomes complete, e.g. while generating.
 *
 * Everything pushed, followed by flush(), concatenates to exactly `tokenizer.decode(ids)`.
 * It works through `decode` alone: it decodes a short window of recent ids and emits what the
 * newest id added. Text that still ends in U+FFFD is held back, because that is how decode
 * shows an incomplete UTF-8 character (byte tokens like <0xE6> waiting for the rest).
 */
export class StreamDecoder {
  private ids: number[] = [];
  /** ids[prefix, read) were already emitted; they give the window its context. */
  private prefix = 0;
  private read = 0;

  constructor(private readonly tokenizer: Tokenizer) {}

  push(id: number): string {
    this.tokenizer.piece(id); // validates the id now rather than at some later push
    this.ids.push(id);
    const text = this.pending();
    if (text === '' || text.endsWith('\ufffd')) return '';
    this.advance();
    return text;
  }

  /** Emits whatever is held back (an incomplete character becomes U+FFFD) and starts over. */
  flush(): string {
    const text = this.pending();
    this.ids = [];
    this.prefix = 0;
    this.read = 0;
    return text;
  }

  /** The text the ids after `read` add to the window. */
  private pending(): string {
    // Until the first text is emitted the window starts at id 0, so decode's start-of-text
    // rule (dropping the dummy-prefix space) applies just as it does to the whole sequence.
    const before = this.tokenizer.decode(this.ids.slice(this.prefix, this.read));
    const after = this.tokenizer.decode(this.ids.slice(this.prefix));
    return after.length > before.length ? after.slice(before.length) : '';
  }

  private advance(): void {
    this.prefix = this.read;
    this.read = this.ids.length;
    // Ids before the window are never needed again.
    if (this.prefix > 1024) {
      this.ids = this.ids.slice(this.prefix);
      this.read -= this.prefix;
      this.prefix = 0;
    }
  }
}

/** The tokenizer of a vocabulary read from a GGUF's metadata. */
export function tokenizerFromModel(model: GgufTokenizerModel): Tokenizer {
  return 'kind' in model ? new BpeTokenizer(model) : new SentencePieceTokenizer(model);
}

/**
 * Loads a tokenizer, telling the format from the content: a GGUF file (its metadata's vocabulary;
 * only the header is read) starts with "GGUF", a llama2.c `tokenizer.bin` starts
 * with a small u32 (the longest piece's length), a SentencePiece `tokenizer.model` is a
 * protobuf message whose first field is a piece (byte 0x0A).
 */
export function loadTokenizer(path: string): Tokenizer {
  const fail = (problem: string): Error => new Error(`tokenizer file "${path}": ${problem}`);
  const unreadable = (e: unknown): Error => new Error(`cannot read tokenizer file "${path}": ${(e as Error).message}`);
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch (e) {
    throw unreadable(e);
  }
  // Checked before reading: a FIFO or a device like /dev/zero would block or never end.
  if (!st.isFile()) throw fail('not a regular file');
  if (isGguf(path)) {
    // readGgufHeader and ggufTokenizerModel name the file in their errors
    const model = ggufTokenizerModel(readGgufHeader(path));
    try {
      return tokenizerFromModel(model);
    } catch (e) {
      throw fail(`the vocabulary in the metadata is not usable: ${(e as Error).message}`);
    }
  }
  if (st.size > MAX_FILE_BYTES) throw fail(`${st.size} bytes is far too large for a tokenizer`);
  let buf: Buffer;
  try {
    buf = fs.readFileSync(path);
  } catch (e) {
    throw unreadable(e);
  }
  if (buf.length === 0) throw fail('the file is empty');
  if (buf.length < 4) throw fail(`the file is only ${buf.length} bytes, too short to be a tokenizer`);
  const head = buf.readUInt32LE(0);
  if (head >= 1 && head <= MAX_TOKEN_LENGTH_LIMIT) {
    try {
      return llama2cFromBuffer(buf);
    } catch (e) {
      throw fail(`not a valid llama2.c tokenizer.bin: ${(e as Error).message}`);
    }
  }
  if (buf[0] === 0x0a) {
    try {
      return sentencePieceFromBuffer(buf);
    } catch (e) {
      throw fail(`not a valid SentencePiece tokenizer.model: ${(e as Error).message}`);
    }
  }
  throw fail(
    'unrecognised format: neither a SentencePiece tokenizer.model (protobuf), a llama2.c tokenizer.bin nor a GGUF file ' +
      `(first bytes ${buf.subarray(0, 8).toString('hex')})`,
  );
}
