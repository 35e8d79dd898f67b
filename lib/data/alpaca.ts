// Training data: Stanford Alpaca records -> prompt template -> token ids with a loss mask ->
// seeded, resumable batches packed without padding (SPEC §3).
//
// Dimension letters: N = tokens in a batch (all its examples back to back), S = examples in a batch.
import * as fs from 'fs';
import { Random } from '../generate/random';
import type { Tokenizer } from '../tokenizer';

/**
 * One instruction record. `input` may be empty or absent; extra keys in the file are dropped.
 * `image` (SPEC §8), when present, is a path relative to an image root or a key of a features
 * file; absent (or null in the file) means a text-only record.
 */
export interface AlpacaRecord {
  instruction: string;
  input?: string;
  output: string;
  image?: string;
}

// ---------------------------------------------------------------------------------------------
// Loading

/** The whole file becomes one string; V8 strings stop a little above this. */
const MAX_FILE_BYTES = 500 * 1024 * 1024;

/** Characters in one record (instruction + input + output), far above any training example
 *  (LLaMA's longest contexts are ~1M characters); a longer record is an error naming it. */
export const MAX_RECORD_CHARS = 16 * 1024 * 1024;

/**
 * Reads Alpaca records from a JSON list (`[{...}, ...]`) or JSONL (one object per non-empty line).
 * The format is told from the content: a first non-space character '[' means a JSON list,
 * anything else means JSONL. Errors name the file and the list index (JSON) or line (JSONL).
 */
export function loadAlpaca(path: string): AlpacaRecord[] {
  const fail = (problem: string): Error => new Error(`data file "${path}": ${problem}`);
  let text: string;
  try {
    const st = fs.statSync(path);
    if (!st.isFile()) throw new Error('not a regular file');
    if (st.size > MAX_FILE_BYTES) throw new Error(`${st.size} bytes is too large to load at once (at most ${MAX_FILE_BYTES})`);
    text = fs.readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`cannot read data file "${path}": ${(e as Error).message}`);
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1); // a UTF-8 byte order mark
  const start = text.search(/\S/);
  if (start < 0) throw fail('no records (the file is empty)');

  const records: AlpacaRecord[] = [];
  if (text[start] === '[') {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      throw fail(`malformed JSON: ${describeJsonError(e as Error, text)}`);
    }
    if (!Array.isArray(parsed)) throw fail('expected a JSON list of records'); // e.g. "[1] x" never parses, so unreachable in practice
    if (parsed.length === 0) throw fail('no records (the JSON list is empty)');
    parsed.forEach((v, i) => records.push(checkRecord(v, `record at index ${i}`, fail)));
    return records;
  }

  // JSONL. Lines are split on \n; a trailing \r (CRLF files) is whitespace to JSON.parse.
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.trim() === '') continue;
    const where = `line ${i + 1}`;
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch (e) {
      let hint = '';
      if (records.length === 0 && text[start] === '{') {
        // A whole-file JSON object (say, pretty-printed) is not JSONL; say so.
        try {
          JSON.parse(text);
          hint = ' (the file holds a single JSON object; expected a JSON list of records or one record per line)';
        } catch {
          /* not that either */
        }
      }
      throw fail(`${where}: malformed JSON: ${describeJsonError(e as Error, line)}${hint}`);
    }
    records.push(checkRecord(parsed, where, fail));
  }
  if (records.length === 0) throw fail('no records'); // unreachable: a non-space character exists
  return records;
}

/** JSON.parse's message, plus line and column when it gives a character position. */
function describeJsonError(e: Error, text: string): string {
  const m = /at position (\d+)/.exec(e.message);
  if (!m || /\bline \d+/.test(e.message)) return e.message; // newer engines give the line themselves
  const pos = Number(m[1]);
  const before = text.slice(0, pos);
  const line = before.split('\n').length;
  const col = pos - before.lastIndexOf('\n');
  return `${e.message} (line ${line}, column ${col})`;
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return `a ${typeof v}`;
}

function checkRecord(v: unknown, where: string, fail: (p: string) => Error): AlpacaRecord {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw fail(`${where}: expected an object {instruction, input?, output} but found ${typeName(v)}`);
  const o = v as Record<string, unknown>;
  for (const key of ['instruction', 'output'] as const) {
    if (!(key in o)) throw fail(`${where}: missing "${key}"`);
    if (typeof o[key] !== 'string') throw fail(`${where}: "${key}" must be a string but is ${typeName(o[key])}`);
  }
  const r: AlpacaRecord = { instruction: o.instruction as string, output: o.output as string };
  if ('input' in o) {
    if (typeof o.input !== 'string') throw fail(`${where}: "input" must be a string but is ${typeName(o.input)}`);
    r.input = o.input;
  }
  const chars = r.instruction.length + (r.input?.length ?? 0) + r.output.length;
  if (chars > MAX_RECORD_CHARS)
    throw fail(`${where}: ${chars} characters is above the limit of ${MAX_RECORD_CHARS} per record (16 Mi characters)`);
  if ('image' in o && o.image !== null) {
    if (typeof o.image !== 'string') throw fail(`${where}: "image" must be a string (or null) but is ${typeName(o.image)}`);
    if (o.image.trim() === '') throw fail(`${where}: "image" is an empty string (leave it out, or null, for a text-only record)`);
    r.image = o.image;
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Templates (SPEC §3, the Stanford Alpaca prompts, byte for byte)

export const PROMPT_WITH_INPUT =
  'Below is an instruction that describes a task, paired with an input that provides further context. ' +
  'Write a response that appropriately completes the request.\n\n' +
  '### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:';

export const PROMPT_NO_INPUT =
  'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' +
  '### Instruction:\n{instruction}\n\n### Response:';

/**
 * The prompt of a record: the with-input template when `input` is a non-empty string, otherwise
 * the without-input one (as in Stanford Alpaca, only "" or absent counts as no input). The output
 * is appended to it directly, with nothing in between.
 */
export function promptOf(r: AlpacaRecord): string {
  // Plain concatenation, not String.replace: "$&" and the like in the text must stay as they are.
  const [a, rest] = splitOnce(r.input ? PROMPT_WITH_INPUT : PROMPT_NO_INPUT, '{instruction}');
  if (!r.input) return a + r.instruction + rest;
  const [b, c] = splitOnce(rest, '{input}');
  return a + r.instruction + b + r.input + c;
}

function splitOnce(s: string, sep: string): [string, string] {
  const i = s.indexOf(sep);
  return [s.slice(0, i), s.slice(i + sep.length)];
}

// ---------------------------------------------------------------------------------------------
// Tokenization and the loss mask

/**
 * One tokenized record.
 *
 *   ids       = ([BOS] + encode(prompt + output) + [EOS])[0 .. maxSeqLen)
 *   promptLen = min(len([BOS] + encode(prompt)), ids.length)
 *
 * The prompt + output are encoded as ONE string, so at the boundary the joint encoding may differ
 * from encode(prompt); promptLen still follows SPEC §3 literally (the separate encoding's length).
 *
 * Loss mask. The model reads `inputs` (= ids, all of it, the final token included) and position i
 * predicts the token at i + 1. `labels[i]` is that target or -1 (no loss):
 *
 *   labels[i] = ids[i + 1]  if i + 1 >= promptLen and i + 1 < ids.length
 *             = -1          otherwise (the prompt's positions, and the last position, which
 *                           predicts nothing)
 *
 * So the first promptLen - 1 predictions (those of prompt tokens 1 .. promptLen-1) carry no loss,
 * which is SPEC's "the first len(prompt_ids) positions get no loss" in label space (the official
 * code sets labels[:len(prompt)] = -1 and then shifts by one). The predicted tokens are
 * ids[promptLen ..]: the response and the EOS (when not truncated away), and
 * `targets` = ids.length - promptLen of them (0 when the prompt fills the whole window).
 */
export interface Example {
  /** (T) the tokens, [BOS] ... [EOS], truncated to maxSeqLen */
  ids: Int32Array;
  /** (T) what the model reads: the same array as `ids` */
  inputs: Int32Array;
  /** (T) next-token target of each position, -1 where there is no loss */
  labels: Int32Array;
  /** len([BOS] + encode(prompt)), capped at ids.length */
  promptLen: number;
  /** positions with loss: the count of labels[i] != -1 = max(0, ids.length - promptLen) */
  targets: number;
  /** length before truncation, len([BOS] + encode(prompt + output) + [EOS]); for a record so long
   *  that only its head was tokenized, a lower bound (above maxSeqLen) */
  fullLength: number;
  /** fullLength > maxSeqLen */
  truncated: boolean;
  /** the record's image key (SPEC §8); absent for a text-only record */
  image?: string;
}

export function checkMaxSeqLen(maxSeqLen: number): void {
  if (!Number.isInteger(maxSeqLen) || maxSeqLen < 2)
    throw new RangeError(`Expected an integer maxSeqLen >= 2 but received ${maxSeqLen}`);
}

/** Tokens past the cut that encodeHead tokenizes beyond the n it needs: the last few tokens of a
 *  cut text may differ from the whole text's, these are never kept. */
const HEAD_MARGIN = 16;

/**
 * [BOS] + encode(text) (+ [EOS]), or, for a text too long to survive truncation to `n` tokens, only
 * its head: prefixes of doubling length (cut before a space where there is one) are tokenized
 * until one gives more than n + HEAD_MARGIN tokens, so the first n tokens are those of the whole
 * text and the work is bounded by the window, not by the record. `whole` says which.
 */
function encodeHead(tok: Tokenizer, text: string, n: number, eos: boolean): { ids: number[]; whole: boolean } {
  // a text shorter than the first prefix is tokenized whole
  for (let m = 8 * (n + HEAD_MARGIN); m < text.length; m *= 2) {
    const space = text.lastIndexOf(' ', m);
    const ids = tok.encode(text.slice(0, space > m / 2 ? space : m), { bos: true });
    if (ids.length > n + HEAD_MARGIN) return { ids, whole: false };
  }
  return { ids: tok.encode(text, { bos: true, eos }), whole: true };
}

export function tokenizeExample(tok: Tokenizer, r: AlpacaRecord, maxSeqLen: number): Example {
  checkMaxSeqLen(maxSeqLen);
  const prompt = promptOf(r);
  // only what can survive truncation to maxSeqLen is tokenized (a record may be megabytes)
  const promptIds = encodeHead(tok, prompt, maxSeqLen, false).ids;
  const full = encodeHead(tok, prompt + r.output, maxSeqLen, true).ids;
  const ids = Int32Array.from(full.length > maxSeqLen ? full.slice(0, maxSeqLen) : full);
  const promptLen = Math.min(promptIds.length, ids.length);
  const labels = new Int32Array(ids.length).fill(-1);
  for (let i = Math.max(promptLen, 1); i < ids.length; i++) labels[i - 1] = ids[i];
  const ex: Example = {
    ids,
    inputs: ids,
    labels,
    promptLen,
    targets: ids.length - Math.max(promptLen, 1),
    fullLength: full.length,
    truncated: full.length > maxSeqLen,
  };
  if (r.image !== undefined) ex.image = r.image;
  return ex;
}

/**
 * What to do with a record longer than maxSeqLen tokens:
 *  - 'truncate' (default): cut it to maxSeqLen tokens (losing its EOS and maybe some response);
 *  - 'skip': leave it out;
 *  - 'error': throw, naming the record and its length.
 * Whatever the policy, an example left with no target tokens (its prompt alone fills the
 * window) is always left out, counted, and reported through `warn`.
 */
export type OnTooLong = 'truncate' | 'skip' | 'error';

export interface TokenizeOptions {
  maxSeqLen: number;
  onTooLong?: OnTooLong;
  /** named in messages, e.g. the data file */
  source?: string;
  /** receives one summary line when records are skipped or truncated; default console.warn */
  warn?: (message: string) => void;
}

export interface TokenizeResult {
  examples: Example[];
  /** for each example, the index of its record in the input list */
  recordIndices: number[];
  /** records cut to maxSeqLen and kept */
  truncated: number;
  /** records longer than maxSeqLen left out under onTooLong: 'skip' */
  skippedTooLong: number;
  /** records left out because truncation left them no target token */
  skippedNoTargets: number;
  /** record indices of all left-out records */
  skippedRecords: number[];
}

export function tokenizeRecords(tok: Tokenizer, records: AlpacaRecord[], opts: TokenizeOptions): TokenizeResult {
  const { maxSeqLen, onTooLong = 'truncate', source, warn = (m: string) => console.warn(m) } = opts;
  checkMaxSeqLen(maxSeqLen);
  if (onTooLong !== 'truncate' && onTooLong !== 'skip' && onTooLong !== 'error')
    throw new RangeError(`Expected onTooLong 'truncate', 'skip' or 'error' but received ${String(onTooLong)}`);
  const of = source ? ` of "${source}"` : '';
  const res: TokenizeResult = {
    examples: [],
    recordIndices: [],
    truncated: 0,
    skippedTooLong: 0,
    skippedNoTargets: 0,
    skippedRecords: [],
  };
  records.forEach((r, i) => {
    const ex = tokenizeExample(tok, r, maxSeqLen);
    if (ex.truncated && onTooLong === 'error')
      throw new Error(
        `record ${i}${of}: ${ex.fullLength} tokens is longer than maxSeqLen ${maxSeqLen} ` +
          `(onTooLong 'error'; use 'truncate' or 'skip', or raise maxSeqLen)`,
      );
    if (ex.truncated && onTooLong === 'skip') {
      res.skippedTooLong++;
      res.skippedRecords.push(i);
      return;
    }
    if (ex.targets === 0) {
      res.skippedNoTargets++;
      res.skippedRecords.push(i);
      return;
    }
    if (ex.truncated) res.truncated++;
    res.examples.push(ex);
    res.recordIndices.push(i);
  });
  const list = (ix: number[]): string => ix.slice(0, 10).join(', ') + (ix.length > 10 ? ', ...' : '');
  if (res.skippedNoTargets > 0)
    warn(
      `${res.skippedNoTargets} of ${records.length} records${of} have no target tokens: the prompt alone ` +
        `fills maxSeqLen ${maxSeqLen}; skipped (records ${list(res.skippedRecords)})`,
    );
  if (res.skippedTooLong > 0)
    warn(`${res.skippedTooLong} of ${records.length} records${of} are longer than maxSeqLen ${maxSeqLen}; skipped`);
  if (res.truncated > 0)
    warn(`${res.truncated} of ${records.length} records${of} are longer than maxSeqLen ${maxSeqLen}; truncated`);
  if (res.examples.length === 0) throw new Error(`no usable records${of}: all ${records.length} were skipped`);
  return res;
}

// ---------------------------------------------------------------------------------------------
// Validation split

/**
 * Splits off a validation set: a seeded random choice of round(n * valSplit) items (at least 1,
 * leaving at least 1 for training). Both parts keep their original order. Deterministic given
 * the seed. (A separate --val-data file is the caller's: load it like the training file.)
 */
export function splitValidation<T>(items: T[], opts: { valSplit: number; seed: number }): { train: T[]; val: T[] } {
  const { valSplit, seed } = opts;
  if (!(typeof valSplit === 'number' && valSplit > 0 && valSplit < 1))
    throw new RangeError(`Expected valSplit in (0, 1) but received ${valSplit}`);
  const n = items.length;
  if (n < 2) throw new RangeError(`cannot split ${n} example(s) into training and validation sets`);
  const nVal = Math.min(n - 1, Math.max(1, Math.round(n * valSplit)));
  const perm = permutation(n, new Random(seed));
  const isVal = new Uint8Array(n);
  for (let k = 0; k < nVal; k++) isVal[perm[k]] = 1;
  const train: T[] = [];
  const val: T[] = [];
  items.forEach((x, i) => (isVal[i] ? val : train).push(x));
  return { train, val };
}

/** Fisher–Yates over 0 .. n-1 with `rng`: n - 1 draws. */
export function permutation(n: number, rng: Random): Int32Array {
  const p = new Int32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// Batching: packed, without padding

/**
 * A micro-batch of S examples laid end to end (no padding). Attention must stay inside a segment
 * and RoPE uses `positions`; a label never points across a segment boundary (each example's last
 * position is -1).
 */
export interface Batch {
  /** (N) the examples' inputs, concatenated */
  tokens: Int32Array;
  /** (N) next-token targets, -1 = no loss */
  labels: Int32Array;
  /** (N) position within its example, restarting at 0 */
  positions: Int32Array;
  /** (S+1) example k is tokens[segments[k] .. segments[k+1]); segments[0] = 0, segments[S] = N */
  segments: Int32Array;
  /** labels that are not -1: the denominator of the batch's mean loss */
  targetCount: number;
  /** (S) which examples, as indices into the Batcher's list */
  exampleIndices: number[];
  /**
   * (S) each segment's image key (SPEC §8), null for a text-only example. packBatch always fills
   * it; a batch made by hand without it is text-only.
   */
  images?: (string | null)[];
}

/** Packs the given examples (in that order) into one Batch. */
export function packBatch(examples: Example[], indices: ArrayLike<number>): Batch {
  const S = indices.length;
  const segments = new Int32Array(S + 1);
  for (let k = 0; k < S; k++) segments[k + 1] = segments[k] + examples[indices[k]].inputs.length;
  const N = segments[S];
  const tokens = new Int32Array(N);
  const labels = new Int32Array(N);
  const positions = new Int32Array(N);
  let targetCount = 0;
  const exampleIndices: number[] = [];
  const images: (string | null)[] = [];
  for (let k = 0; k < S; k++) {
    const ex = examples[indices[k]];
    const off = segments[k];
    tokens.set(ex.inputs, off);
    labels.set(ex.labels, off);
    for (let t = 0; t < ex.inputs.length; t++) positions[off + t] = t;
    targetCount += ex.targets;
    exampleIndices.push(indices[k]);
    images.push(ex.image ?? null);
  }
  return { tokens, labels, positions, segments, targetCount, exampleIndices, images };
}

/** A Batcher's position, JSON-serialisable, for checkpoints. */
export interface BatcherState {
  /** epochs completed before the current one (0-based index of the current epoch) */
  epoch: number;
  /** the next batch's index within the current epoch */
  index: number;
  /** the PRNG state from which the current epoch's order was drawn */
  rng: number[];
  /** checked on restore: the same data and settings must be in use */
  examples: number;
  batchSize: number;
  shuffle: boolean;
}

export interface BatcherOptions {
  /** examples per micro-batch */
  batchSize: number;
  seed: number;
  /** a fresh seeded order every epoch; false keeps the list's order */
  shuffle: boolean;
}

/**
 * Endless epochs of micro-batches. Each epoch is a Fisher–Yates shuffle (with `Random`, one
 * stream across epochs, so every epoch differs) of the example indices — or the list order when
 * shuffle is false — cut into consecutive batches of batchSize; the last, partial batch is kept.
 * After the last batch of an epoch the Batcher moves on to the next epoch at once, so `epoch`
 * counts completed epochs. state()/restore() give the exact same batch sequence after a resume.
 * IndexBatcher yields the indices (any kind of example); Batcher packs token examples.
 */
export class IndexBatcher {
  readonly batchSize: number;
  readonly shuffle: boolean;
  readonly batchesPerEpoch: number;
  /** how many items the batches are drawn from */
  readonly count: number;
  private rng: Random;
  /** state the current epoch's order was drawn from */
  private epochRngState: number[];
  private order: Int32Array = new Int32Array(0);
  private epochNo = 0;
  private indexNo = 0;

  constructor(count: number, opts: BatcherOptions) {
    const { batchSize, seed, shuffle } = opts;
    if (!Number.isInteger(count) || count < 1) throw new RangeError('Batcher needs at least one example');
    if (!Number.isInteger(batchSize) || batchSize < 1)
      throw new RangeError(`Expected positive integer for batchSize but received ${batchSize}`);
    if (typeof shuffle !== 'boolean') throw new TypeError(`Expected boolean for shuffle but received ${String(shuffle)}`);
    this.count = count;
    this.batchSize = batchSize;
    this.shuffle = shuffle;
    this.batchesPerEpoch = Math.ceil(count / batchSize);
    this.rng = new Random(seed); // validates the seed
    this.epochRngState = u32(this.rng.state());
    this.drawOrder();
  }

  /** the current epoch (= epochs completed) */
  get epoch(): number {
    return this.epochNo;
  }

  /** the next batch's index within the current epoch */
  get index(): number {
    return this.indexNo;
  }

  /** this epoch's example order (a copy) */
  epochOrder(): number[] {
    return Array.from(this.order);
  }

  /** The next batch's item indices (advancing to the next epoch after its last batch). */
  nextIndices(): Int32Array {
    const start = this.indexNo * this.batchSize;
    const idx = this.order.slice(start, Math.min(start + this.batchSize, this.order.length));
    this.indexNo++;
    if (this.indexNo === this.batchesPerEpoch) {
      this.epochNo++;
      this.indexNo = 0;
      this.epochRngState = u32(this.rng.state());
      this.drawOrder();
    }
    return idx;
  }

  state(): BatcherState {
    return {
      epoch: this.epochNo,
      index: this.indexNo,
      rng: this.epochRngState.slice(),
      examples: this.count,
      batchSize: this.batchSize,
      shuffle: this.shuffle,
    };
  }

  restore(s: BatcherState): void {
    const bad = (why: string): Error => new Error(`cannot restore the data position: ${why}`);
    if (typeof s !== 'object' || s === null) throw bad('not a state object');
    if (s.examples !== this.count)
      throw bad(`it was saved for ${s.examples} examples, this run has ${this.count}`);
    if (s.batchSize !== this.batchSize) throw bad(`it was saved with batchSize ${s.batchSize}, this run uses ${this.batchSize}`);
    if (s.shuffle !== this.shuffle) throw bad(`it was saved with shuffle ${s.shuffle}, this run uses ${this.shuffle}`);
    if (!Number.isInteger(s.epoch) || s.epoch < 0) throw bad(`invalid epoch ${s.epoch}`);
    if (!Number.isInteger(s.index) || s.index < 0 || s.index >= this.batchesPerEpoch)
      throw bad(`batch index ${s.index} is outside 0..${this.batchesPerEpoch - 1}`);
    // Random.state() words may come as signed int32s; both forms are accepted.
    if (!Array.isArray(s.rng) || s.rng.length !== 4 || !s.rng.every((v) => Number.isInteger(v) && v >= -0x80000000 && v <= 0xffffffff))
      throw bad('invalid PRNG state');
    this.rng = Random.fromState(s.rng);
    this.epochRngState = u32(this.rng.state());
    this.drawOrder();
    this.epochNo = s.epoch;
    this.indexNo = s.index;
  }

  /** Draws the current epoch's order from `rng` (advancing it), or the list order. */
  private drawOrder(): void {
    const n = this.count;
    if (this.shuffle) this.order = permutation(n, this.rng);
    else {
      this.order = new Int32Array(n);
      for (let i = 0; i < n; i++) this.order[i] = i;
    }
  }
}

/** Packed micro-batches of token examples, in IndexBatcher's order. */
export class Batcher extends IndexBatcher {
  constructor(
    private readonly examples: Example[],
    opts: BatcherOptions,
  ) {
    super(Array.isArray(examples) ? examples.length : 0, opts);
  }

  next(): Batch {
    return packBatch(this.examples, this.nextIndices());
  }
}

/** PRNG state words as unsigned 32-bit integers. */
function u32(state: number[]): number[] {
  return state.map((v) => v >>> 0);
}

/** Token counts of packed batches against padded (S, longest example) layouts of the same batches. */
export interface PackStats {
  batches: number;
  examples: number;
  /** tokens in the packed batches (what packing computes on) */
  tokens: number;
  /** tokens with loss */
  targets: number;
  /** sum over batches of S * (longest example in the batch) */
  paddedTokens: number;
  /** share of paddedTokens that would have been padding: 1 - tokens / paddedTokens */
  paddingShare: number;
  /** with opts.padTo: the same against a fixed (S, padTo) layout */
  fixedPaddedTokens?: number;
  fixedPaddingShare?: number;
}

export function packStats(batches: Batch[], opts: { padTo?: number } = {}): PackStats {
  let examples = 0;
  let tokens = 0;
  let targets = 0;
  let paddedTokens = 0;
  for (const b of batches) {
    const S = b.segments.length - 1;
    let longest = 0;
    for (let k = 0; k < S; k++) longest = Math.max(longest, b.segments[k + 1] - b.segments[k]);
    examples += S;
    tokens += b.tokens.length;
    targets += b.targetCount;
    paddedTokens += S * longest;
  }
  const st: PackStats = {
    batches: batches.length,
    examples,
    tokens,
    targets,
    paddedTokens,
    paddingShare: paddedTokens > 0 ? 1 - tokens / paddedTokens : 0,
  };
  if (opts.padTo !== undefined) {
    st.fixedPaddedTokens = examples * opts.padTo;
    st.fixedPaddingShare = st.fixedPaddedTokens > 0 ? 1 - tokens / st.fixedPaddedTokens : 0;
  }
  return st;
}
