// SentencePiece `tokenizer.model` reader and BPE tokenizer (the LLaMA 1/2 tokenizer).
//
// The model file is a serialized ModelProto. Only the fields that change how text is
// tokenized are read; a small protobuf wire-format reader below does the parsing, so no
// protobuf dependency is needed. Encoding and decoding follow SentencePiece's own BPE model
// and decoder (byte fallback, dummy prefix, leading-space stripping).

/** ModelProto.SentencePiece.Type */
export const enum PieceType {
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
}

/** TrainerSpec.ModelType */
const MODEL_TYPE_NAMES: Record<number, string> = { 1: 'unigram', 2: 'bpe', 3: 'word', 4: 'char' };
const MODEL_TYPE_BPE = 2;

const SPACE = '\u2581'; // '▁', SentencePiece's visible whitespace
const DEFAULT_UNK_SURFACE = ' \u2047 ';

// ---------------------------------------------------------------------------------------------
// Protobuf wire format

/** Thrown for malformed protobuf; the loader adds the file name. */
export class ProtoError extends Error {}

const WIRE_VARINT = 0;
const WIRE_I64 = 1;
const WIRE_LEN = 2;
const WIRE_I32 = 5;

/** One field of a message: `value` is a number for varints, a sub-buffer for LEN, I32, I64. */
interface Field {
  num: number;
  wire: number;
  value: number | Uint8Array;
}

/**
 * Splits one message into its fields. Every length is checked against the bytes left, so a
 * truncated or corrupt buffer fails with a ProtoError instead of reading out of bounds.
 */
export function readFields(buf: Uint8Array, where = 'message'): Field[] {
  const fields: Field[] = [];
  let pos = 0;
  const varint = (): number => {
    // Values above 2^53 lose precision, which is fine: no field we read is that large.
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (pos >= buf.length) throw new ProtoError(`${where}: truncated varint at byte ${pos}`);
      const b = buf[pos++];
      result += (b & 0x7f) * mul;
      if (b < 0x80) return result;
      mul *= 128;
    }
    throw new ProtoError(`${where}: varint longer than 10 bytes at byte ${pos}`);
  };
  const take = (n: number): Uint8Array => {
    if (n > buf.length - pos) {
      throw new ProtoError(`${where}: field needs ${n} bytes at byte ${pos} but only ${buf.length - pos} remain (truncated?)`);
    }
    const v = buf.subarray(pos, pos + n);
    pos += n;
    return v;
  };
  while (pos < buf.length) {
    const start = pos;
    const key = varint();
    const num = Math.floor(key / 8);
    const wire = key % 8;
    if (num === 0) throw new ProtoError(`${where}: field number 0 at byte ${start}`);
    switch (wire) {
      case WIRE_VARINT:
        fields.push({ num, wire, value: varint() });
        break;
      case WIRE_I64:
        fields.push({ num, wire, value: take(8) });
        break;
      case WIRE_LEN:
        fields.push({ num, wire, value: take(varint()) });
        break;
      case WIRE_I32:
        fields.push({ num, wire, value: take(4) });
        break;
      default:
        // Groups (3, 4) are not used by SentencePiece; 6 and 7 do not exist.
        throw new ProtoError(`${where}: unsupported wire type ${wire} at byte ${start}`);
    }
  }
  return fields;
}

function expectWire(f: Field, wire: number, what: string): void {
  if (f.wire !== wire) throw new ProtoError(`${what} (field ${f.num}) has wire type ${f.wire}, expected ${wire}`);
}

function asString(f: Field, what: string): string {
  expectWire(f, WIRE_LEN, what);
  return Buffer.from(f.value as Uint8Array).toString('utf8');
}

function asBytes(f: Field, what: string): Uint8Array {
  expectWire(f, WIRE_LEN, what);
  return f.value as Uint8Array;
}

function asVarint(f: Field, what: string): number {
  expectWire(f, WIRE_VARINT, what);
  return f.value as number;
}

/** int32 fields are sign-extended to 64 bits on the wire: -1 arrives as 2^64 - 1. */
function asInt32(f: Field, what: string): number {
  const v = asVarint(f, what);
  return v >= 2 ** 63 ? v - 2 ** 64 : v;
}

function asFloat(f: Field, what: string): number {
  expectWire(f, WIRE_I32, what);
  const b = f.value as Uint8Array;
  return new DataView(b.buffer, b.byteOffset, 4).getFloat32(0, true);
}

// ---------------------------------------------------------------------------------------------
// Model

export interface SentencePiece {
  piece: string;
  score: number;
  type: PieceType;
}

/** The parts of ModelProto that tokenization depends on. */
export interface SentencePieceModel {
  pieces: SentencePiece[];
  modelType: number;
  byteFallback: boolean;
  unkId: number;
  bosId: number;
  eosId: number;
  unkSurface: string;
  addDummyPrefix: boolean;
  removeExtraWhitespaces: boolean;
  escapeWhitespaces: boolean;
  treatWhitespaceAsSuffix: boolean;
  normalizerName: string;
  hasCharsMap: boolean;
}

/** Parses a serialized ModelProto. Throws ProtoError when the bytes are not one. */
export function parseModelProto(buf: Uint8Array): SentencePieceModel {
  const m: SentencePieceModel = {
    pieces: [],
    modelType: 1, // proto default: UNIGRAM
    byteFallback: false,
    unkId: 0,
    bosId: 1,
    eosId: 2,
    unkSurface: DEFAULT_UNK_SURFACE,
    addDummyPrefix: true,
    removeExtraWhitespaces: true,
    escapeWhitespaces: true,
    treatWhitespaceAsSuffix: false,
    normalizerName: '',
    hasCharsMap: false,
  };
  let sawTrainer = false;
  let sawNormalizer = false;
  for (const f of readFields(buf, 'ModelProto')) {
    if (f.num === 1) {
      const where = `ModelProto.pieces[${m.pieces.length}]`;
      const p: SentencePiece = { piece: '', score: 0, type: PieceType.Normal };
      let hasPiece = false;
      for (const g of readFields(asBytes(f, where), where)) {
        if (g.num === 1) {
          p.piece = asString(g, where + '.piece');
          hasPiece = true;
        } else if (g.num === 2) p.score = asFloat(g, where + '.score');
        else if (g.num === 3) p.type = asVarint(g, where + '.type');
      }
      if (!hasPiece || p.piece === '') throw new ProtoError(`${where} has an empty piece`);
      if (p.type < PieceType.Normal || p.type > PieceType.Byte) throw new ProtoError(`${where} has unknown type ${p.type}`);
      m.pieces.push(p);
    } else if (f.num === 2) {
      sawTrainer = true;
      const where = 'ModelProto.trainer_spec';
      for (const g of readFields(asBytes(f, where), where)) {
        if (g.num === 3) m.modelType = asVarint(g, where + '.model_type');
        else if (g.num === 24) m.treatWhitespaceAsSuffix = asVarint(g, where + '.treat_whitespace_as_suffix') !== 0;
        else if (g.num === 35) m.byteFallback = asVarint(g, where + '.byte_fallback') !== 0;
        else if (g.num === 40) m.unkId = asInt32(g, where + '.unk_id');
        else if (g.num === 41) m.bosId = asInt32(g, where + '.bos_id');
        else if (g.num === 42) m.eosId = asInt32(g, where + '.eos_id');
        else if (g.num === 44) m.unkSurface = asString(g, where + '.unk_surface');
      }
    } else if (f.num === 3) {
      sawNormalizer = true;
      const where = 'ModelProto.normalizer_spec';
      for (const g of readFields(asBytes(f, where), where)) {
        if (g.num === 1) m.normalizerName = asString(g, where + '.name');
        else if (g.num === 2) m.hasCharsMap = asBytes(g, where + '.precompiled_charsmap').length > 0;
        else if (g.num === 3) m.addDummyPrefix = asVarint(g, where + '.add_dummy_prefix') !== 0;
        else if (g.num === 4) m.removeExtraWhitespaces = asVarint(g, where + '.remove_extra_whitespaces') !== 0;
        else if (g.num === 5) m.escapeWhitespaces = asVarint(g, where + '.escape_whitespaces') !== 0;
      }
    }
  }
  if (m.pieces.length === 0) throw new ProtoError('ModelProto has no pieces');
  // The writer puts the specs after all pieces, so their absence means the file was cut short.
  if (!sawTrainer) throw new ProtoError('ModelProto has no trainer_spec (truncated?)');
  if (!sawNormalizer) throw new ProtoError('ModelProto has no normalizer_spec (truncated?)');
  return m;
}

// ---------------------------------------------------------------------------------------------
// Shared helpers (also used by the llama2.c tokenizer)

interface MergeCandidate {
  score: number;
  left: number;
  right: number;
  /** Length of the merged piece; a mismatch later means one side has changed since. */
  size: number;
}

/** Binary max-heap of merge candidates: best score first, leftmost on ties. */
class MergeQueue {
  private items: MergeCandidate[] = [];

  get size(): number {
    return this.items.length;
  }

  private static before(a: MergeCandidate, b: MergeCandidate): boolean {
    return a.score > b.score || (a.score === b.score && a.left < b.left);
  }

  push(c: MergeCandidate): void {
    const a = this.items;
    a.push(c);
    let i = a.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!MergeQueue.before(a[i], a[parent])) break;
      [a[i], a[parent]] = [a[parent], a[i]];
      i = parent;
    }
  }

  pop(): MergeCandidate {
    const a = this.items;
    const top = a[0];
    const last = a.pop() as MergeCandidate;
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < a.length && MergeQueue.before(a[l], a[best])) best = l;
        if (r < a.length && MergeQueue.before(a[r], a[best])) best = r;
        if (best === i) break;
        [a[i], a[best]] = [a[best], a[i]];
        i = best;
      }
    }
    return top;
  }
}

/**
 * BPE merging as SentencePiece and llama2.c do it: repeatedly merge the adjacent pair whose
 * concatenation has the highest score (leftmost on ties) until no pair is mergeable.
 * `scoreOf(merged, left, right)` returns undefined when `merged` is not a mergeable piece. Symbols marked
 * `frozen` never merge. A heap of candidates over a linked list makes this O(n log n).
 * Returns the final pieces and, for each, the index of the input symbol it starts with.
 */
export function bpeMerge(
  symbols: string[],
  scoreOf: (merged: string, left: string, right: string) => number | undefined,
  frozen?: boolean[],
): { pieces: string[]; starts: number[] } {
  const n = symbols.length;
  const sym = symbols.slice(); // '' marks a symbol merged into its left neighbour
  const prev = new Int32Array(n);
  const next = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  const queue = new MergeQueue();
  const consider = (left: number, right: number): void => {
    if (left < 0 || right < 0) return;
    if (frozen && (frozen[left] || frozen[right])) return;
    const merged = sym[left] + sym[right];
    const score = scoreOf(merged, sym[left], sym[right]);
    if (score === undefined) return;
    queue.push({ score, left, right, size: merged.length });
  };
  for (let i = 0; i + 1 < n; i++) consider(i, i + 1);

  while (queue.size > 0) {
    const c = queue.pop();
    const l = sym[c.left];
    const r = sym[c.right];
    // Stale: a side was merged away or grew since this candidate was queued.
    if (l === '' || r === '' || l.length + r.length !== c.size) continue;
    sym[c.left] = l + r;
    sym[c.right] = '';
    next[c.left] = next[c.right];
    if (next[c.right] >= 0) prev[next[c.right]] = c.left;
    consider(prev[c.left], c.left);
    consider(c.left, next[c.left]);
  }

  const pieces: string[] = [];
  const starts: number[] = [];
  for (let i = n > 0 ? 0 : -1; i >= 0; i = next[i]) {
    pieces.push(sym[i]);
    starts.push(i);
  }
  return { pieces, starts };
}

/**
 * Decodes UTF-8 the way SentencePiece does for byte pieces: each structurally invalid byte
 * becomes one U+FFFD (Node's decoder would fold some invalid runs into a single U+FFFD).
 */
export function decodeUtf8(bytes: ArrayLike<number>): string {
  let out = '';
  let i = 0;
  const n = bytes.length;
  const cont = (k: number): boolean => k < n && (bytes[k] & 0xc0) === 0x80;
  while (i < n) {
    const b = bytes[i];
    let cp = -1;
    let len = 1;
    if (b < 0x80) {
      cp = b;
    } else if ((b & 0xe0) === 0xc0 && cont(i + 1)) {
      const c = ((b & 0x1f) << 6) | (bytes[i + 1] & 0x3f);
      if (c >= 0x80) [cp, len] = [c, 2];
    } else if ((b & 0xf0) === 0xe0 && cont(i + 1) && cont(i + 2)) {
      const c = ((b & 0x0f) << 12) | ((bytes[i + 1] & 0x3f) << 6) | (bytes[i + 2] & 0x3f);
      if (c >= 0x800 && (c < 0xd800 || c > 0xdfff)) [cp, len] = [c, 3];
    } else if ((b & 0xf8) === 0xf0 && cont(i + 1) && cont(i + 2) && cont(i + 3)) {
      const c = ((b & 0x07) << 18) | ((bytes[i + 1] & 0x3f) << 12) | ((bytes[i + 2] & 0x3f) << 6) | (bytes[i + 3] & 0x3f);
      if (c >= 0x10000 && c <= 0x10ffff) [cp, len] = [c, 4];
    }
    out += cp < 0 ? '\ufffd' : String.fromCodePoint(cp);
    i += len;
  }
  return out;
}

/** '<0x41>' -> 0x41; anything else -> -1. */
export function parseBytePiece(piece: string): number {
  const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
  return m ? parseInt(m[1], 16) : -1;
}

export function checkId(id: number, vocabSize: number): void {
  if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
    throw new RangeError(`token id ${id} is out of range [0, ${vocabSize})`);
  }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

export class SentencePieceTokenizer {
  readonly vocabSize: number;
  readonly bos: number;
  readonly eos: number;
  readonly stopIds: readonly number[];
  readonly unk: number;
  private readonly model: SentencePieceModel;
  /** NORMAL, USER_DEFINED and UNUSED pieces: the ones merges may produce. */
  private readonly mergeable = new Map<string, number>();
  /** UNKNOWN, CONTROL and BYTE pieces: looked up by PieceToId, but never merged into. */
  private readonly reserved = new Map<string, number>();
  /** Byte value of each BYTE piece id, -1 for other ids. */
  private readonly byteOf: Int16Array;
  /** Id of the <0xNN> piece for each byte value, -1 where the model lacks it. */
  private readonly byteId = new Int32Array(256).fill(-1);
  /** User-defined pieces, longest first: they are matched whole before splitting. */
  private readonly userDefined: string[];

  constructor(model: SentencePieceModel) {
    if (model.modelType !== MODEL_TYPE_BPE) {
      const name = MODEL_TYPE_NAMES[model.modelType] ?? String(model.modelType);
      throw new Error(`unsupported SentencePiece model_type ${name} (only bpe is implemented)`);
    }
    // A precompiled charsmap means NFKC-like rewriting that this tokenizer does not do.
    if (model.hasCharsMap && model.normalizerName !== 'identity') {
      throw new Error(`unsupported SentencePiece normalizer "${model.normalizerName}" (only identity is implemented)`);
    }
    if (model.treatWhitespaceAsSuffix) throw new Error('unsupported SentencePiece option treat_whitespace_as_suffix');
    this.model = model;
    this.vocabSize = model.pieces.length;
    this.byteOf = new Int16Array(this.vocabSize).fill(-1);
    const user: string[] = [];
    model.pieces.forEach((p, id) => {
      const normal = p.type === PieceType.Normal || p.type === PieceType.UserDefined || p.type === PieceType.Unused;
      const map = normal ? this.mergeable : this.reserved;
      if (map.has(p.piece)) throw new Error(`SentencePiece piece ${JSON.stringify(p.piece)} appears twice (ids ${map.get(p.piece)} and ${id})`);
      map.set(p.piece, id);
      if (p.type === PieceType.UserDefined) user.push(p.piece);
      if (p.type === PieceType.Byte) {
        const b = parseBytePiece(p.piece);
        if (b < 0) throw new Error(`SentencePiece byte piece ${id} is ${JSON.stringify(p.piece)}, not <0xNN>`);
        this.byteOf[id] = b;
        this.byteId[b] = id;
      }
    });
    this.userDefined = user.sort((a, b) => b.length - a.length);
    const check = (id: number, what: string): number => {
      if (id >= this.vocabSize) throw new Error(`SentencePiece ${what} id ${id} is outside the vocabulary of ${this.vocabSize}`);
      return id;
    };
    this.unk = check(model.unkId, 'unk');
    this.bos = check(model.bosId, 'bos');
    this.eos = check(model.eosId, 'eos');
    this.stopIds = [this.eos, this.bos].filter((i) => i >= 0);
    if (this.unk < 0 || model.pieces[this.unk].type !== PieceType.Unknown) {
      throw new Error(`SentencePiece unk id ${this.unk} is not an UNKNOWN piece`);
    }
  }

  piece(id: number): string {
    checkId(id, this.vocabSize);
    return this.model.pieces[id].piece;
  }

  /** Whitespace handling of SentencePiece's normalizer (the identity rules change nothing else). */
  private normalize(text: string): string {
    let s = text;
    if (this.model.removeExtraWhitespaces) s = s.replace(/ +/g, ' ').replace(/^ | $/g, '');
    if (s === '') return '';
    if (this.model.escapeWhitespaces) s = s.replace(/ /g, SPACE);
    if (this.model.addDummyPrefix) s = (this.model.escapeWhitespaces ? SPACE : ' ') + s;
    return s;
  }

  /** Splits into Unicode characters, keeping user-defined pieces whole (and frozen). */
  private split(s: string): { symbols: string[]; frozen: boolean[] } {
    const symbols: string[] = [];
    const frozen: boolean[] = [];
    if (this.userDefined.length === 0) {
      for (const ch of s) {
        symbols.push(ch);
        frozen.push(false);
      }
      return { symbols, frozen };
    }
    let i = 0;
    while (i < s.length) {
      const user = this.userDefined.find((u) => s.startsWith(u, i));
      const sym = user ?? String.fromCodePoint(s.codePointAt(i) as number);
      symbols.push(sym);
      frozen.push(user !== undefined);
      i += sym.length;
    }
    return { symbols, frozen };
  }

  encode(text: string, opts: { bos?: boolean; eos?: boolean } = {}): number[] {
    const ids: number[] = [];
    if (opts.bos) ids.push(this.special(this.bos, 'bos'));
    const { symbols, frozen } = this.split(this.normalize(text));
    // An UNUSED piece may be formed by a merge but is never emitted; like SentencePiece,
    // remember the two halves it was formed from so it can be split back afterwards.
    const halves = new Map<string, [string, string]>();
    const scoreOf = (merged: string, left: string, right: string): number | undefined => {
      const id = this.mergeable.get(merged);
      if (id === undefined) return undefined;
      if (this.model.pieces[id].type === PieceType.Unused) halves.set(merged, [left, right]);
      return this.model.pieces[id].score;
    };
    let prevUnk = false;
    const emit = (w: string): void => {
      const id = this.reserved.get(w) ?? this.mergeable.get(w) ?? this.unk;
      const split = halves.get(w);
      if (split && this.model.pieces[id].type === PieceType.Unused) {
        emit(split[0]);
        emit(split[1]);
      } else if (id !== this.unk) {
        ids.push(id);
        prevUnk = false;
      } else if (this.model.byteFallback) {
        for (const b of Buffer.from(w, 'utf8')) ids.push(this.byteId[b] >= 0 ? this.byteId[b] : this.unk);
        prevUnk = false;
      } else if (!prevUnk) {
        // Without byte fallback, a run of unknown symbols becomes a single <unk>.
        ids.push(this.unk);
        prevUnk = true;
      }
    };
    for (const w of bpeMerge(symbols, scoreOf, frozen).pieces) emit(w);
    if (opts.eos) ids.push(this.special(this.eos, 'eos'));
    return ids;
  }

  /** A model may disable BOS or EOS (id -1); asking for it then is an error, not a bad id. */
  private special(id: number, what: string): number {
    if (id < 0) throw new Error(`this SentencePiece model has no ${what} token`);
    return id;
  }

  decode(ids: number[]): string {
    let text = '';
    let bytes: number[] = [];
    let isBosWs = true; // still at the start, where one leading '▁' is consumed
    let bosWsSeen = false;
    for (const id of ids) {
      checkId(id, this.vocabSize);
      const b = this.byteOf[id];
      if (b >= 0) {
        bytes.push(b);
        continue;
      }
      if (bytes.length > 0) {
        text += decodeUtf8(bytes);
        bytes = [];
      }
      if (bosWsSeen || text !== '') isBosWs = false;
      bosWsSeen = false;
      const p = this.model.pieces[id];
      if (p.type === PieceType.Control) continue;
      if (p.type === PieceType.Unknown) {
        text += this.model.unkSurface;
        continue;
      }
      let piece = p.piece;
      if (isBosWs && (this.model.addDummyPrefix || this.model.removeExtraWhitespaces) && piece.startsWith(SPACE)) {
        piece = piece.slice(SPACE.length);
        // With remove_extra_whitespaces every leading space goes, so keep consuming.
        bosWsSeen = !this.model.removeExtraWhitespaces;
      }
      text += piece.split(SPACE).join(' ');
    }
    if (bytes.length > 0) text += decodeUtf8(bytes);
    return text;
  }
}

/** Parses and validates a `tokenizer.model`. Errors do not name the file; the loader adds it. */
export function sentencePieceFromBuffer(buf: Uint8Array): SentencePieceTokenizer {
  return new SentencePieceTokenizer(parseModelProto(buf));
}
