// GGUF files (llama.cpp's format, versions 2 and 3), llama architecture:
//   u32 magic "GGUF", u32 version, u64 tensor count, u64 metadata count,
//   metadata: { string key, u32 value type, value } (strings are u64 length + UTF-8 bytes; arrays
//     are u32 item type + u64 count + items), tensor infos: { string name, u32 n_dims,
//     u64 ne[n_dims] (ne[0] the row length), u32 ggml type, u64 offset from the data start },
//   then padding to `general.alignment` (default 32) and the tensor data, each tensor's offset a
//   multiple of the alignment.
// Only the header is read with fs, through a cursor that checks every length and count against
// the bytes the file has left before it allocates anything (bounds.ts); the weights are mapped:
// quantized types stay quantized (native dtypes q8_0 .. q6_k), F16 becomes f32 (or bf16).
// Free of the native addon except in loadGguf, so tools can use the reader and writer.
import * as fs from 'fs';
import { LlamaConfig, configProblems, describeConfig } from './config';
import { bytesOf, checkHolds } from './bounds';
import type { FileDType } from '../native';
import type { GgufTokenizerModel, LayerWeights, LoadArena, LoadOptions, LoadedWeights } from './weights';
import type { SentencePieceModel } from '../tokenizer/sentencepiece';
import { PRE_TOKENIZERS, type ByteBpeModel } from '../tokenizer/bpe';

/** A vocabulary read from a GGUF's metadata: SentencePiece (model "llama") or byte-level BPE ("gpt2"). */
export type { GgufTokenizerModel };

export const GGUF_MAGIC = 0x46554747; // "GGUF" little endian
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** Metadata value types. */
export const enum GgufType {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
}
const SCALAR_BYTES: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

/** ggml tensor types this project reads: id -> name, block size (values) and bytes per block. */
export const GGML_TYPES: Record<number, { name: GgmlTypeName; block: number; bytes: number }> = {
  0: { name: 'F32', block: 1, bytes: 4 },
  1: { name: 'F16', block: 1, bytes: 2 },
  2: { name: 'Q4_0', block: 32, bytes: 18 },
  8: { name: 'Q8_0', block: 32, bytes: 34 },
  12: { name: 'Q4_K', block: 256, bytes: 144 },
  13: { name: 'Q5_K', block: 256, bytes: 176 },
  14: { name: 'Q6_K', block: 256, bytes: 210 },
  30: { name: 'BF16', block: 1, bytes: 2 },
};
export type GgmlTypeName = 'F32' | 'F16' | 'BF16' | 'Q8_0' | 'Q4_0' | 'Q4_K' | 'Q5_K' | 'Q6_K';
export const GGML_TYPE_ID: Record<GgmlTypeName, number> = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, Q4_K: 12, Q5_K: 13, Q6_K: 14, BF16: 30 };
/** Names of ggml types we know of but do not read, for the error message. */
const OTHER_GGML_TYPES: Record<number, string> = {
  3: 'Q4_1', 6: 'Q5_0', 7: 'Q5_1', 9: 'Q8_1', 10: 'Q2_K', 11: 'Q3_K', 15: 'Q8_K', 16: 'IQ2_XXS', 17: 'IQ2_XS',
  18: 'IQ3_XXS', 19: 'IQ1_S', 20: 'IQ4_NL', 21: 'IQ3_S', 22: 'IQ2_S', 23: 'IQ4_XS', 24: 'I8', 25: 'I16', 26: 'I32',
  27: 'I64', 28: 'F64', 29: 'IQ1_M', 34: 'TQ1_0', 35: 'TQ2_0', 39: 'MXFP4',
};

export type GgufValue = number | bigint | boolean | string | GgufValue[];

export interface GgufTensorInfo {
  name: string;
  /** ne as stored: ne[0] is the row length */
  ne: number[];
  type: number;
  /** from the data start */
  offset: number;
  /** exact byte size */
  bytes: number;
}

export interface GgufHeader {
  path: string;
  version: number;
  fileSize: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
  alignment: number;
  /** absolute byte offset of the tensor data */
  dataStart: number;
}

/** Bounds on the header, far above any real file (a 128k-token vocabulary has 2 arrays of 128k). */
export const GGUF_LIMITS = { tensors: 1 << 20, metadata: 1 << 20, arrayItems: 1 << 26, stringBytes: 1 << 26, dims: 4 };

/** A cursor over the header that reads the file in chunks and checks every size first. */
class HeaderReader {
  private buf = Buffer.alloc(0);
  private bufStart = 0;
  pos = 0;
  constructor(
    private readonly fd: number,
    readonly path: string,
    readonly size: number,
  ) {}

  /** Throws unless `n` more bytes exist; reads them into the buffer. */
  private need(n: number, what: string): void {
    if (this.pos + n > this.size)
      throw new Error(`${this.path} is truncated: ${what} at byte ${this.pos} needs ${n} bytes but the file has ${this.size}`);
    const end = this.pos + n;
    if (end <= this.bufStart + this.buf.length) return;
    const from = this.pos;
    const len = Math.min(this.size - from, Math.max(n, 1 << 20));
    const b = Buffer.alloc(len);
    let got = 0;
    while (got < len) {
      const r = fs.readSync(this.fd, b, got, len - got, from + got);
      if (r === 0) throw new Error(`${this.path}: the file ended early while reading ${what} (at byte ${from + got})`);
      got += r;
    }
    this.buf = b;
    this.bufStart = from;
  }
  private at(n: number, what: string): number {
    this.need(n, what);
    const o = this.pos - this.bufStart;
    this.pos += n;
    return o;
  }
  // (each reads the offset first: `this.buf` may be replaced by the read)
  u32(what: string): number {
    const o = this.at(4, what);
    return this.buf.readUInt32LE(o);
  }
  /** A u64 that must be at most `max` (checked as a BigInt, so 2^60 is an error, not a rounding). */
  u64(what: string, max: number): number {
    const o = this.at(8, what);
    const v = this.buf.readBigUInt64LE(o);
    if (v > BigInt(max)) throw new Error(`${this.path}: ${what} ${v} is above the supported maximum ${max}`);
    return Number(v);
  }
  string(what: string): string {
    const n = this.u64(`${what} length`, GGUF_LIMITS.stringBytes);
    const o = this.at(n, what);
    return this.buf.toString('utf8', o, o + n);
  }
  scalar(type: number, what: string): GgufValue {
    const o = this.at(SCALAR_BYTES[type], what);
    const b = this.buf;
    switch (type) {
      case GgufType.U8: return b.readUInt8(o);
      case GgufType.I8: return b.readInt8(o);
      case GgufType.U16: return b.readUInt16LE(o);
      case GgufType.I16: return b.readInt16LE(o);
      case GgufType.U32: return b.readUInt32LE(o);
      case GgufType.I32: return b.readInt32LE(o);
      case GgufType.F32: return b.readFloatLE(o);
      case GgufType.BOOL: {
        const v = b.readUInt8(o);
        if (v > 1) throw new Error(`${this.path}: ${what} is a bool of value ${v}`);
        return v === 1;
      }
      case GgufType.U64: return b.readBigUInt64LE(o);
      case GgufType.I64: return b.readBigInt64LE(o);
      default: return b.readDoubleLE(o);
    }
  }
  value(type: number, what: string, depth = 0): GgufValue {
    if (type in SCALAR_BYTES) return this.scalar(type, what);
    if (type === GgufType.STRING) return this.string(what);
    if (type !== GgufType.ARRAY) throw new Error(`${this.path}: ${what} has an unknown value type ${type}`);
    if (depth > 0) throw new Error(`${this.path}: ${what} is an array of arrays (not supported)`);
    const itemType = this.u32(`${what} item type`);
    const count = this.u64(`${what} item count`, GGUF_LIMITS.arrayItems);
    // Each item takes at least its scalar size (a string at least its 8-byte length): the file
    // must have that much left before the array is built.
    const least = itemType === GgufType.STRING ? 8 : SCALAR_BYTES[itemType];
    if (least === undefined) throw new Error(`${this.path}: ${what} is an array of unknown type ${itemType}`);
    checkHolds(this.path, `${what}: ${count} items`, bytesOf([count], least), this.size - this.pos, { atLeast: true });
    const out: GgufValue[] = new Array(count);
    for (let i = 0; i < count; i++) out[i] = this.value(itemType, what, depth + 1);
    return out;
  }
}

/** Reads and checks the header of a GGUF file (nothing of the tensor data). */
export function readGgufHeader(path: string): GgufHeader {
  const fd = fs.openSync(path, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const r = new HeaderReader(fd, path, size);
    if (size < 4 || r.u32('magic') !== GGUF_MAGIC) throw new Error(`${path} is not a GGUF file (no "GGUF" magic)`);
    const version = r.u32('version');
    if (version !== 2 && version !== 3)
      throw new Error(`${path}: GGUF version ${version} is not supported (versions 2 and 3 are)`);
    const nTensors = r.u64('tensor count', GGUF_LIMITS.tensors);
    const nKv = r.u64('metadata count', GGUF_LIMITS.metadata);
    // a key-value pair takes at least 8 + 4 + 1 bytes, a tensor info 8 + 4 + 8 + 4 + 8
    checkHolds(path, `${nKv} metadata entries and ${nTensors} tensor infos`, BigInt(nKv) * 13n + BigInt(nTensors) * 32n, size - r.pos, { atLeast: true });
    const metadata = new Map<string, GgufValue>();
    for (let i = 0; i < nKv; i++) {
      const key = r.string(`metadata key ${i}`);
      if (metadata.has(key)) throw new Error(`${path}: metadata key ${JSON.stringify(key)} appears twice`);
      metadata.set(key, r.value(r.u32(`type of ${key}`), `metadata ${key}`));
    }
    let alignment = GGUF_DEFAULT_ALIGNMENT;
    if (metadata.has('general.alignment')) {
      const a = metadata.get('general.alignment');
      if (typeof a !== 'number' || !Number.isInteger(a) || a <= 0 || a > 1 << 16 || (a & (a - 1)) !== 0)
        throw new Error(`${path}: general.alignment ${String(a)} is not a power of two between 1 and 65536`);
      alignment = a;
    }
    const tensors: GgufTensorInfo[] = [];
    const names = new Set<string>();
    for (let i = 0; i < nTensors; i++) {
      const name = r.string(`tensor info ${i} name`);
      if (names.has(name)) throw new Error(`${path}: tensor ${name} appears twice`);
      names.add(name);
      const nd = r.u32(`tensor ${name} dimension count`);
      if (nd < 1 || nd > GGUF_LIMITS.dims) throw new Error(`${path}: tensor ${name} has ${nd} dimensions (1 to 4 are valid)`);
      const ne: number[] = [];
      for (let d = 0; d < nd; d++) {
        const v = r.u64(`tensor ${name} dimension ${d}`, 2 ** 40);
        if (v === 0) throw new Error(`${path}: tensor ${name} has a dimension of size 0`);
        ne.push(v);
      }
      const type = r.u32(`tensor ${name} type`);
      const t = GGML_TYPES[type];
      if (!t) {
        const known = OTHER_GGML_TYPES[type];
        throw new Error(
          `${path}: tensor ${name} has ggml type ${known ?? `id ${type}`}` +
            `${known ? '' : ' (unknown)'}; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K`,
        );
      }
      if (ne[0] % t.block !== 0)
        throw new Error(`${path}: tensor ${name} (${t.name}) has rows of ${ne[0]} values, not a whole number of ${t.block}-value blocks`);
      const bytes = (bytesOf(ne, 1) / BigInt(t.block)) * BigInt(t.bytes);
      if (bytes > BigInt(size)) throw new Error(`${path}: tensor ${name} ${t.name}[${ne.join(', ')}] needs ${bytes} bytes, more than the whole file (${size})`);
      const offset = r.u64(`tensor ${name} offset`, size);
      if (offset % alignment !== 0) throw new Error(`${path}: tensor ${name} offset ${offset} is not a multiple of the alignment ${alignment}`);
      tensors.push({ name, ne, type, offset, bytes: Number(bytes) });
    }
    const dataStart = Math.ceil(r.pos / alignment) * alignment;
    for (const t of tensors) {
      if (dataStart + t.offset + t.bytes > size)
        throw new Error(
          `${path} is truncated or lies: tensor ${t.name} at data offset ${t.offset} needs ${t.bytes} bytes, ` +
            `but the data (from byte ${dataStart}) ends at byte ${size}`,
        );
    }
    // No two tensors may share bytes.
    const sorted = [...tensors].sort((a, b) => a.offset - b.offset);
    for (let i = 1; i < sorted.length; i++) {
      const p = sorted[i - 1];
      if (p.offset + p.bytes > sorted[i].offset)
        throw new Error(`${path}: tensors ${p.name} and ${sorted[i].name} overlap (offsets ${p.offset} + ${p.bytes} bytes > ${sorted[i].offset})`);
    }
    return { path, version, fileSize: size, metadata, tensors, alignment, dataStart };
  } finally {
    fs.closeSync(fd);
  }
}

// ---- metadata -> model config ------------------------------------------------------------------

function meta(h: GgufHeader, key: string): GgufValue | undefined {
  return h.metadata.get(key);
}
function num(h: GgufHeader, key: string, fallback?: number): number {
  const v = meta(h, key);
  if (v === undefined) {
    if (fallback !== undefined) return fallback;
    throw new Error(`${h.path}: GGUF metadata ${key} is missing`);
  }
  if (typeof v === 'bigint') return Number(v);
  if (typeof v !== 'number') throw new Error(`${h.path}: GGUF metadata ${key} is not a number`);
  return v;
}

/** The LLaMA config of a llama-architecture GGUF (sizes from metadata, vocabulary from token_embd). */
export function ggufConfig(h: GgufHeader): LlamaConfig {
  const arch = meta(h, 'general.architecture');
  if (arch !== 'llama')
    throw new Error(`${h.path}: GGUF architecture ${JSON.stringify(arch)} is not supported (only "llama")`);
  const embd = h.tensors.find((t) => t.name === 'token_embd.weight');
  if (!embd || embd.ne.length !== 2) throw new Error(`${h.path}: no 2-D token_embd.weight tensor`);
  const nHeads = num(h, 'llama.attention.head_count');
  const config: LlamaConfig = {
    dim: num(h, 'llama.embedding_length'),
    hiddenDim: num(h, 'llama.feed_forward_length'),
    nLayers: num(h, 'llama.block_count'),
    nHeads,
    nKvHeads: num(h, 'llama.attention.head_count_kv', nHeads),
    vocabSize: embd.ne[1],
    maxSeqLen: num(h, 'llama.context_length', 2048),
    normEps: num(h, 'llama.attention.layer_norm_rms_epsilon', 1e-5),
    ropeTheta: num(h, 'llama.rope.freq_base', 10000),
    // llama.cpp rotates pairs (2i, 2i+1) for the llama architecture: its converter permutes the
    // q/k rows of Hugging Face checkpoints back to Meta's layout, so every llama GGUF is interleaved.
    ropeLayout: 'interleaved',
    tiedEmbeddings: !h.tensors.some((t) => t.name === 'output.weight'),
  };
  const problems = configProblems(config);
  const rd = meta(h, 'llama.rope.dimension_count');
  if (rd !== undefined && problems.length === 0 && Number(rd) !== config.dim / config.nHeads)
    problems.push(`llama.rope.dimension_count ${rd} is not the head size ${config.dim / config.nHeads} (partial RoPE is not supported)`);
  if (meta(h, 'llama.rope.scaling.type') !== undefined && meta(h, 'llama.rope.scaling.type') !== 'none')
    problems.push(`RoPE scaling ${JSON.stringify(meta(h, 'llama.rope.scaling.type'))} is not supported`);
  if (h.tensors.some((t) => t.name === 'rope_freqs.weight')) problems.push('rope_freqs.weight (LLaMA 3.1 RoPE scaling) is not supported');
  if (problems.length) throw new Error(`${h.path}: unsupported or invalid GGUF model (${describeConfig(config)}): ${problems.join('; ')}`);
  return config;
}

// ---- metadata -> tokenizer ---------------------------------------------------------------------

function tokenList(h: GgufHeader): string[] {
  const tokens = meta(h, 'tokenizer.ggml.tokens');
  if (!Array.isArray(tokens) || tokens.some((t) => typeof t !== 'string'))
    throw new Error(`${h.path}: tokenizer.ggml.tokens is missing or not an array of strings`);
  return tokens as string[];
}

function tokenTypes(h: GgufHeader, n: number): number[] | undefined {
  const types = meta(h, 'tokenizer.ggml.token_type');
  if (types === undefined) return undefined;
  if (!Array.isArray(types) || types.length !== n) throw new Error(`${h.path}: tokenizer.ggml.token_type must be an array of ${n} numbers`);
  return types.map((t, i) => {
    const v = Number(t);
    // llama.cpp's token types are SentencePiece's piece types (1 normal .. 6 byte)
    if (!(v >= 1 && v <= 6) || !Number.isInteger(v)) throw new Error(`${h.path}: token ${i} has type ${String(t)} (1 to 6 are valid)`);
    return v;
  });
}

function tokenId(h: GgufHeader, key: string, fallback: number, n: number): number {
  const v = num(h, key, fallback);
  if (!Number.isInteger(v) || v < -1 || v >= n) throw new Error(`${h.path}: ${key} ${v} is not a token id (vocabulary of ${n})`);
  return v;
}

function bool(h: GgufHeader, key: string): boolean | undefined {
  const v = meta(h, key);
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw new Error(`${h.path}: GGUF metadata ${key} is not a bool`);
  return v;
}

/** The vocabulary of tokenizer.ggml.* as a SentencePiece model (tokenizer.ggml.model "llama"). */
export function ggufSentencePiece(h: GgufHeader): SentencePieceModel {
  const model = meta(h, 'tokenizer.ggml.model');
  if (model === undefined) throw new Error(`${h.path} has no tokenizer in its metadata (tokenizer.ggml.model); pass --tokenizer`);
  if (model !== 'llama')
    throw new Error(`${h.path}: tokenizer.ggml.model ${JSON.stringify(model)} is not SentencePiece ("llama")`);
  const tokens = tokenList(h);
  const n = tokens.length;
  const scores = meta(h, 'tokenizer.ggml.scores');
  if (scores !== undefined && (!Array.isArray(scores) || scores.length !== n))
    throw new Error(`${h.path}: tokenizer.ggml.scores must be an array of ${n} numbers`);
  const types = tokenTypes(h, n);
  const addSpace = meta(h, 'tokenizer.ggml.add_space_prefix');
  return {
    pieces: tokens.map((piece, i) => ({ piece, score: scores ? Number((scores as GgufValue[])[i]) : 0, type: types ? types[i] : 1 })),
    modelType: 2, // BPE
    byteFallback: true,
    unkId: tokenId(h, 'tokenizer.ggml.unknown_token_id', 0, n),
    bosId: tokenId(h, 'tokenizer.ggml.bos_token_id', 1, n),
    eosId: tokenId(h, 'tokenizer.ggml.eos_token_id', 2, n),
    unkSurface: ' \u2047 ',
    addDummyPrefix: addSpace === undefined ? true : addSpace === true,
    removeExtraWhitespaces: false,
    escapeWhitespaces: true,
    treatWhitespaceAsSuffix: false,
    normalizerName: 'identity',
    hasCharsMap: false,
  };
}

/**
 * The vocabulary of tokenizer.ggml.* as byte-level BPE (tokenizer.ggml.model "gpt2"): tokens,
 * merges, token types, the pre-tokenizer (tokenizer.ggml.pre; absent means llama.cpp's "default"),
 * BOS/EOS (absent: none) and whether sequences start with BOS (tokenizer.ggml.add_bos_token, else
 * the pre-tokenizer's default as in llama.cpp: yes for LLaMA 3, no for GPT-2).
 */
export function ggufByteBpe(h: GgufHeader): ByteBpeModel {
  const model = meta(h, 'tokenizer.ggml.model');
  if (model !== 'gpt2') throw new Error(`${h.path}: tokenizer.ggml.model ${JSON.stringify(model)} is not byte-level BPE ("gpt2")`);
  const tokens = tokenList(h);
  const n = tokens.length;
  const merges = meta(h, 'tokenizer.ggml.merges');
  if (!Array.isArray(merges) || merges.some((m) => typeof m !== 'string'))
    throw new Error(`${h.path}: tokenizer.ggml.merges is missing or not an array of strings (a "gpt2" vocabulary needs its merges)`);
  const pre = meta(h, 'tokenizer.ggml.pre') ?? 'default';
  if (typeof pre !== 'string') throw new Error(`${h.path}: tokenizer.ggml.pre is not a string`);
  const known = PRE_TOKENIZERS[pre];
  if (!known)
    throw new Error(
      `${h.path}: the pre-tokenizer tokenizer.ggml.pre = ${JSON.stringify(pre)} is not supported ` +
        `(supported: ${Object.keys(PRE_TOKENIZERS).map((k) => JSON.stringify(k)).join(', ')}); pass --tokenizer`,
    );
  return {
    kind: 'byte-bpe',
    tokens,
    types: tokenTypes(h, n) ?? tokens.map(() => 1),
    merges: merges as string[],
    pre,
    bosId: tokenId(h, 'tokenizer.ggml.bos_token_id', -1, n),
    eosId: tokenId(h, 'tokenizer.ggml.eos_token_id', -1, n),
    eotId: tokenId(h, 'tokenizer.ggml.eot_token_id', -1, n),
    eomId: tokenId(h, 'tokenizer.ggml.eom_token_id', -1, n),
    addBos: bool(h, 'tokenizer.ggml.add_bos_token') ?? known.addBos,
  };
}

/** The vocabulary in a GGUF's metadata; an error says why it cannot be used (absent, or an unsupported kind). */
export function ggufTokenizerModel(h: GgufHeader): GgufTokenizerModel {
  const model = meta(h, 'tokenizer.ggml.model');
  if (model === undefined) throw new Error(`${h.path} has no tokenizer in its metadata (tokenizer.ggml.model); pass --tokenizer`);
  if (model === 'llama') return ggufSentencePiece(h);
  if (model === 'gpt2') return ggufByteBpe(h);
  throw new Error(
    `${h.path}: tokenizer.ggml.model ${JSON.stringify(model)} is not supported (only "llama", SentencePiece, and "gpt2", byte-level BPE); pass --tokenizer`,
  );
}

// ---- tensors -----------------------------------------------------------------------------------

const FILE_DTYPE: Record<GgmlTypeName, FileDType> = {
  F32: 'f32', F16: 'f16', BF16: 'bf16', Q8_0: 'q8_0', Q4_0: 'q4_0', Q4_K: 'q4_k', Q5_K: 'q5_k', Q6_K: 'q6_k',
};

/** llama.cpp's tensor names of each layer weight. */
export const GGUF_LAYER_NAMES: Record<keyof LayerWeights, string> = {
  attnNorm: 'attn_norm',
  wq: 'attn_q',
  wk: 'attn_k',
  wv: 'attn_v',
  wo: 'attn_output',
  ffnNorm: 'ffn_norm',
  w1: 'ffn_gate',
  w2: 'ffn_down',
  w3: 'ffn_up',
};

/** Loads a llama GGUF: quantized weights stay quantized (mapped), the others as opts.dtype; norms f32. */
export function loadGguf(path: string, arena: LoadArena, opts: LoadOptions): LoadedWeights {
  const h = readGgufHeader(path);
  const config = ggufConfig(h);
  const { dim: C, hiddenDim: F, nLayers: L, vocabSize: V } = config;
  const d = C / config.nHeads;
  const byName = new Map(h.tensors.map((t) => [t.name, t]));
  const used = new Set<string>();
  const map = arena.map(path);
  const want = (name: string, shape: number[], norm = false) => {
    const t = byName.get(name);
    if (!t) throw new Error(`${path}: tensor ${name} is missing`);
    used.add(name);
    // ggml's ne lists the row length first; our shapes list rows first
    const got = [...t.ne].reverse();
    if (got.length !== shape.length || got.some((s, i) => s !== shape[i]))
      throw new Error(`${path}: tensor ${name} has shape [${got.join(', ')}] but the config implies [${shape.join(', ')}]`);
    const type = GGML_TYPES[t.type];
    const fileDtype = FILE_DTYPE[type.name];
    if (norm && type.block > 1) throw new Error(`${path}: norm ${name} is ${type.name}; norms must be F32, F16 or BF16`);
    const dtype = type.block > 1 ? fileDtype : norm ? 'f32' : (opts.dtype ?? 'f32');
    return arena.tensor(map, h.dataStart + t.offset, shape, fileDtype, dtype as 'f32', name);
  };
  const embedding = want('token_embd.weight', [V, C]);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < L; l++) {
    const n = (k: keyof LayerWeights) => `blk.${l}.${GGUF_LAYER_NAMES[k]}.weight`;
    layers.push({
      attnNorm: want(n('attnNorm'), [C], true),
      wq: want(n('wq'), [config.nHeads * d, C]),
      wk: want(n('wk'), [config.nKvHeads * d, C]),
      wv: want(n('wv'), [config.nKvHeads * d, C]),
      wo: want(n('wo'), [C, config.nHeads * d]),
      ffnNorm: want(n('ffnNorm'), [C], true),
      w1: want(n('w1'), [F, C]),
      w2: want(n('w2'), [C, F]),
      w3: want(n('w3'), [F, C]),
    });
  }
  const finalNorm = want('output_norm.weight', [C], true);
  const classifier = config.tiedEmbeddings ? embedding : want('output.weight', [V, C]);
  const extra = h.tensors.filter((t) => !used.has(t.name)).map((t) => t.name);
  if (extra.length) throw new Error(`${path}: unexpected tensors for a llama model: ${extra.slice(0, 5).join(', ')}${extra.length > 5 ? ', ...' : ''}`);
  // A vocabulary that cannot be used does not stop the weights from loading (--tokenizer may
  // replace it): its problem is kept for loadTokenizer() to report.
  let tokenizerModel: GgufTokenizerModel | undefined;
  let tokenizerProblem: string | undefined;
  if (h.metadata.has('tokenizer.ggml.model')) {
    try {
      tokenizerModel = ggufTokenizerModel(h);
    } catch (e) {
      tokenizerProblem = (e as Error).message;
    }
  }
  return { config, weights: { embedding, layers, finalNorm, classifier }, format: 'gguf', tokenizerModel, tokenizerProblem };
}

/** Whether `path` starts with the GGUF magic. */
export function isGguf(path: string): boolean {
  const fd = fs.openSync(path, 'r');
  try {
    const b = Buffer.alloc(4);
    return fs.readSync(fd, b, 0, 4, 0) === 4 && b.readUInt32LE(0) === GGUF_MAGIC;
  } finally {
    fs.closeSync(fd);
  }
}
