// safetensors: u64 LE header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin,
// end]}, "__metadata__"?: {string: string}}, then the data; offsets are relative to the data start.
// The reader parses only the header (weights are mapped natively); the writer is for small files
// (adapters) and for converters that produce one tensor at a time.
import * as fs from 'fs';
import * as os from 'os';
import { writeAll, writeFileAtomic } from '../output';

/** The element types tensors can be loaded from. */
export type SafetensorsDType = 'F32' | 'F16' | 'BF16';

export interface SafetensorsEntry {
  dtype: SafetensorsDType;
  shape: number[];
  /** absolute offset of the first byte in the file */
  byteOffset: number;
  byteLength: number;
}

export interface SafetensorsHeader {
  path: string;
  fileSize: number;
  metadata: Record<string, string>;
  tensors: Map<string, SafetensorsEntry>;
  /** tensors of a valid dtype that cannot be loaded, with `skipUnsupported` */
  skipped: Map<string, string>;
}

const SUPPORTED: Record<SafetensorsDType, number> = { F32: 4, F16: 2, BF16: 2 };
/** Sizes of the other dtypes of the format, so their offsets can still be checked. */
const OTHER: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  I32: 4,
  U32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
};
const MAX_HEADER = 100 * 1024 * 1024; // as the reference implementation

export function fileDTypeOf(d: SafetensorsDType): 'f32' | 'f16' | 'bf16' {
  return d === 'F32' ? 'f32' : d === 'F16' ? 'f16' : 'bf16';
}

function readExactly(fd: number, buf: Buffer, pos: number): void {
  let got = 0;
  while (got < buf.length) {
    const r = fs.readSync(fd, buf, got, buf.length - got, pos + got);
    if (r === 0) throw new Error('unexpected end of file');
    got += r;
  }
}

/**
 * Parses and validates the header of `path`: every tensor within the file, none overlapping,
 * sizes matching shapes. A tensor of an unsupported dtype is an error naming it, unless
 * `skipUnsupported` (then it is listed in `skipped`; loaders fail only if they need it).
 */
export function readSafetensorsHeader(path: string, opts: { skipUnsupported?: boolean } = {}): SafetensorsHeader {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
  let json: string;
  let fileSize: number;
  let dataStart: number;
  try {
    const st = fs.fstatSync(fd);
    // a folder opens, but reading it fails with a bare EISDIR: name the path instead
    if (!st.isFile()) throw new Error(`${path} is ${st.isDirectory() ? 'a folder' : 'not a regular file'}, not a safetensors file`);
    fileSize = st.size;
    if (fileSize < 8) throw new Error(`${path} is not a safetensors file: ${fileSize} bytes, less than the 8-byte header length`);
    const lenBuf = Buffer.alloc(8);
    readExactly(fd, lenBuf, 0);
    const n = lenBuf.readBigUInt64LE(0);
    if (n > BigInt(fileSize - 8))
      throw new Error(`${path} is truncated or not a safetensors file: header length ${n} but the file has ${fileSize} bytes`);
    if (n > BigInt(MAX_HEADER)) throw new Error(`${path}: safetensors header of ${n} bytes is too large`);
    const hb = Buffer.alloc(Number(n));
    readExactly(fd, hb, 8);
    json = hb.toString('utf8');
    dataStart = 8 + Number(n);
  } finally {
    fs.closeSync(fd);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (e) {
    throw new Error(`${path}: the safetensors header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
    throw new Error(`${path}: the safetensors header is not a JSON object`);

  const dataSize = fileSize - dataStart;
  const tensors = new Map<string, SafetensorsEntry>();
  const skipped = new Map<string, string>();
  const metadata: Record<string, string> = {};
  const spans: { name: string; begin: number; end: number }[] = [];
  for (const [name, raw] of Object.entries(parsed as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
        throw new Error(`${path}: __metadata__ must be an object of strings`);
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== 'string') throw new Error(`${path}: __metadata__.${k} must be a string`);
        metadata[k] = v;
      }
      continue;
    }
    const bad = (why: string) => new Error(`${path}: tensor ${name}: ${why}`);
    if (typeof raw !== 'object' || raw === null) throw bad('entry is not an object');
    const { dtype, shape, data_offsets: offs } = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof dtype !== 'string') throw bad('missing dtype');
    const elem = SUPPORTED[dtype as SafetensorsDType] ?? OTHER[dtype];
    if (elem === undefined) throw bad(`unknown dtype ${JSON.stringify(dtype)}`);
    if (!Array.isArray(shape) || !shape.every((s) => Number.isSafeInteger(s) && s >= 0))
      throw bad(`shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0))
      throw bad(`data_offsets must be two non-negative integers, got ${JSON.stringify(offs)}`);
    const [begin, end] = offs as number[];
    if (end < begin) throw bad(`data_offsets [${begin}, ${end}] end before they begin`);
    if (end > dataSize)
      throw bad(
        `data_offsets [${begin}, ${end}] reach past the end of the file (the data section has ${dataSize} bytes; ` +
          `truncated or corrupt file)`,
      );
    const numel = (shape as number[]).reduce((a, b) => a * b, 1);
    if (end - begin !== numel * elem)
      throw bad(`${dtype}[${shape.join(', ')}] needs ${numel * elem} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`);
    spans.push({ name, begin, end });
    if (!(dtype in SUPPORTED)) {
      if (!opts.skipUnsupported) throw bad(`dtype ${dtype} is not supported (only F32, F16 and BF16)`);
      skipped.set(name, dtype);
      continue;
    }
    tensors.set(name, {
      dtype: dtype as SafetensorsDType,
      shape: shape as number[],
      byteOffset: dataStart + begin,
      byteLength: end - begin,
    });
  }
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let prev: { name: string; begin: number; end: number } | undefined;
  for (const s of spans) {
    if (s.begin === s.end) continue; // empty tensors occupy nothing
    if (prev && s.begin < prev.end)
      throw new Error(
        `${path}: tensors ${prev.name} [${prev.begin}, ${prev.end}) and ${s.name} [${s.begin}, ${s.end}) overlap`,
      );
    prev = s;
  }
  return { path, fileSize, metadata, tensors, skipped };
}

export interface SafetensorsTensor {
  name: string;
  dtype: 'F32';
  shape: number[];
  /** the values, or a function giving them when their turn comes (so a converter holds one at a time) */
  data: Float32Array | (() => Float32Array);
}

/**
 * Writes a safetensors file to a temporary name beside `path` and renames it into place, so a
 * failure leaves nothing half-written. Tensors are laid out in the given order.
 */
export function writeSafetensors(path: string, tensors: SafetensorsTensor[], metadata?: Record<string, string>): void {
  if (os.endianness() !== 'LE') throw new Error('writeSafetensors: a big-endian host would need byte swapping');
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) {
    for (const [k, v] of Object.entries(metadata))
      if (typeof v !== 'string') throw new Error(`writeSafetensors: metadata ${k} must be a string`);
    header.__metadata__ = metadata;
  }
  let off = 0;
  const sizes: number[] = [];
  for (const t of tensors) {
    if (t.name === '__metadata__' || t.name in header) throw new Error(`writeSafetensors: duplicate or reserved name ${t.name}`);
    if (t.dtype !== 'F32') throw new Error(`writeSafetensors: ${t.name}: only F32 is written, got ${t.dtype}`);
    if (!t.shape.every((s) => Number.isSafeInteger(s) && s >= 0))
      throw new Error(`writeSafetensors: ${t.name}: invalid shape [${t.shape.join(', ')}]`);
    const bytes = 4 * t.shape.reduce((a, b) => a * b, 1);
    header[t.name] = { dtype: 'F32', shape: t.shape, data_offsets: [off, off + bytes] };
    sizes.push(bytes);
    off += bytes;
  }
  // Pad the header with spaces to a multiple of 8 so the data is aligned (as the reference writer).
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));

  writeFileAtomic(path, (fd) => {
    writeAll(fd, len);
    writeAll(fd, json);
    tensors.forEach((t, i) => {
      const data = typeof t.data === 'function' ? t.data() : t.data;
      if (!(data instanceof Float32Array) || data.byteLength !== sizes[i])
        throw new Error(
          `writeSafetensors: ${t.name}: shape [${t.shape.join(', ')}] needs ${sizes[i] / 4} floats, got ` +
            (data instanceof Float32Array ? data.length : typeof data),
        );
      writeAll(fd, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    });
  });
}

