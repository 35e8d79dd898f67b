// Image features files (SPEC §7): safetensors, one F32 tensor per image, named by the image's key
// (the record's "image" string), shape [M, D] or [D] (M = 1). M = feature layers, D = feature size.
//
// Reading parses the header only (lib/model/safetensors.ts) and checks every tensor's dtype and
// shape up front; each image's values are read from disk when asked for (a file for 50K images is
// hundreds of MB) and checked to be finite then. Writing streams one image at a time to a
// temporary file that is renamed into place only when complete (no half-written file).
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as nodePath from 'path';
import { readSafetensorsHeader, SafetensorsEntry } from '../model/safetensors';

export interface FeaturesInfo {
  /** feature vectors per image (encoder layers) */
  M: number;
  /** size of one feature vector */
  D: number;
  /** image keys in file order */
  keys: string[];
  metadata: Record<string, string>;
}

/** An open features file: header checked, values read per image on demand. */
export class FeaturesFile implements FeaturesInfo {
  readonly M: number;
  readonly D: number;
  readonly keys: string[];
  readonly metadata: Record<string, string>;
  private readonly entries: Map<string, SafetensorsEntry>;
  private fd: number | undefined;

  private constructor(
    readonly path: string,
    info: FeaturesInfo,
    entries: Map<string, SafetensorsEntry>,
    fd: number,
  ) {
    this.M = info.M;
    this.D = info.D;
    this.keys = info.keys;
    this.metadata = info.metadata;
    this.entries = entries;
    this.fd = fd;
  }

  /**
   * Opens `path` and checks every tensor: dtype F32, shape [M, D] or [D] with the same M and D
   * throughout, M and D positive, at least one tensor. Errors name the file and the key.
   */
  static open(path: string): FeaturesFile {
    if (typeof path !== 'string' || path === '') throw new TypeError(`Expected a features file path but received ${String(path)}`);
    const fail = (why: string): Error => new Error(`features file "${path}": ${why}`);
    let header;
    try {
      header = readSafetensorsHeader(path, { skipUnsupported: true });
    } catch (e) {
      throw fail((e as Error).message);
    }
    for (const [key, dtype] of header.skipped) throw fail(`image "${key}": dtype ${dtype}, expected F32`);
    let M = 0;
    let D = 0;
    let first = '';
    for (const [key, t] of header.tensors) {
      if (t.dtype !== 'F32') throw fail(`image "${key}": dtype ${t.dtype}, expected F32`);
      if (t.shape.length !== 1 && t.shape.length !== 2)
        throw fail(`image "${key}": shape [${t.shape.join(', ')}], expected [M, D] or [D]`);
      const m = t.shape.length === 2 ? t.shape[0] : 1;
      const d = t.shape[t.shape.length - 1];
      if (m < 1 || d < 1) throw fail(`image "${key}": shape [${t.shape.join(', ')}] is empty`);
      if (!first) {
        [M, D, first] = [m, d, key];
      } else if (m !== M || d !== D) {
        throw fail(`image "${key}": shape [${t.shape.join(', ')}] (M = ${m}, D = ${d}) differs from image "${first}" (M = ${M}, D = ${D})`);
      }
    }
    if (!first) throw fail('holds no image features (no tensors)');
    if (os.endianness() !== 'LE') throw fail('a big-endian host would need byte swapping');
    const fd = fs.openSync(path, 'r');
    return new FeaturesFile(path, { M, D, keys: [...header.tensors.keys()], metadata: header.metadata }, header.tensors, fd);
  }

  /** Number of images. */
  get size(): number {
    return this.keys.length;
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  /** (M, D) row-major: the features of image `key`, read from disk now and checked to be finite. */
  get(key: string): Float32Array {
    const e = this.entries.get(key);
    if (!e) throw new Error(`features file "${this.path}": no image "${key}" (it holds ${this.size} images${this.examples()})`);
    if (this.fd === undefined) throw new Error(`features file "${this.path}" is closed`);
    const out = new Float32Array(this.M * this.D);
    const buf = Buffer.from(out.buffer, out.byteOffset, out.byteLength);
    let got = 0;
    while (got < buf.length) {
      const r = fs.readSync(this.fd, buf, got, buf.length - got, e.byteOffset + got);
      if (r === 0) throw new Error(`features file "${this.path}": image "${key}": unexpected end of file`);
      got += r;
    }
    for (let i = 0; i < out.length; i++)
      if (!Number.isFinite(out[i]))
        throw new Error(
          `features file "${this.path}": image "${key}": value ${out[i]} at [${Math.floor(i / this.D)}, ${i % this.D}] is not finite`,
        );
    return out;
  }

  /** Reads every image once (checking all values); `onProgress(done, total)` now and then. */
  checkAll(onProgress?: (done: number, total: number) => void): void {
    this.keys.forEach((k, i) => {
      this.get(k);
      if (onProgress && ((i + 1) % 1000 === 0 || i + 1 === this.keys.length)) onProgress(i + 1, this.keys.length);
    });
  }

  /** Releases the file descriptor; idempotent. */
  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }

  private examples(): string {
    const ks = this.keys.slice(0, 3).map((k) => `"${k}"`);
    return ks.length ? `, e.g. ${ks.join(', ')}` : '';
  }
}

/** Shorthand for FeaturesFile.open. */
export function openFeatures(path: string): FeaturesFile {
  return FeaturesFile.open(path);
}

export interface FeaturesWriterOptions {
  /** feature vectors per image; M = 1 writes shape [D] unless `matrix` */
  M: number;
  D: number;
  /** write [1, D] rather than [D] when M = 1 */
  matrix?: boolean;
  metadata?: Record<string, string>;
}

/**
 * Writes a features file one image at a time (the keys are fixed up front, as the header comes
 * first): `add(key, features)` in the order of `keys`, then `finish()`; `abort()` (or any error)
 * removes the temporary file. The file appears at `path` only when finish() completes.
 */
export class FeaturesWriter {
  private readonly tmp: string;
  private fd: number | undefined;
  private next = 0;
  private readonly shape: number[];

  constructor(
    readonly path: string,
    readonly keys: string[],
    readonly opts: FeaturesWriterOptions,
  ) {
    const { M, D, metadata } = opts;
    const fail = (why: string): Error => new Error(`writing features file "${path}": ${why}`);
    if (!Number.isInteger(M) || M < 1) throw fail(`Expected a positive integer M but received ${M}`);
    if (!Number.isInteger(D) || D < 1) throw fail(`Expected a positive integer D but received ${D}`);
    if (!Array.isArray(keys) || keys.length === 0) throw fail('no images to write');
    const seen = new Set<string>();
    for (const k of keys) {
      if (typeof k !== 'string' || k === '') throw fail(`image keys must be non-empty strings, got ${JSON.stringify(k)}`);
      if (k === '__metadata__') throw fail('"__metadata__" is reserved and cannot name an image');
      if (seen.has(k)) throw fail(`image "${k}" is listed twice`);
      seen.add(k);
    }
    if (os.endianness() !== 'LE') throw fail('a big-endian host would need byte swapping');
    this.shape = M === 1 && !opts.matrix ? [D] : [M, D];

    const header: Record<string, unknown> = {};
    if (metadata && Object.keys(metadata).length) {
      for (const [k, v] of Object.entries(metadata)) if (typeof v !== 'string') throw fail(`metadata ${k} must be a string`);
      header.__metadata__ = metadata;
    }
    const bytes = 4 * M * D;
    keys.forEach((k, i) => (header[k] = { dtype: 'F32', shape: this.shape, data_offsets: [i * bytes, (i + 1) * bytes] }));
    // The header is padded with spaces to a multiple of 8 so the data is aligned (as the reference writer).
    let json = Buffer.from(JSON.stringify(header), 'utf8');
    const pad = (8 - (json.length % 8)) % 8;
    if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));

    const dir = nodePath.dirname(path);
    this.tmp = nodePath.join(dir, `.${nodePath.basename(path)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`);
    try {
      this.fd = fs.openSync(this.tmp, 'wx');
    } catch (e) {
      throw fail((e as Error).message);
    }
    try {
      writeAll(this.fd, len);
      writeAll(this.fd, json);
    } catch (e) {
      this.abort();
      throw fail((e as Error).message);
    }
  }

  /** Images written so far. */
  get written(): number {
    return this.next;
  }

  /** Writes the next image: `key` must be keys[written]; `features` (M, D) row-major, finite. */
  add(key: string, features: Float32Array): void {
    const fail = (why: string): Error => new Error(`writing features file "${this.path}": image "${key}": ${why}`);
    if (this.fd === undefined) throw fail('the writer is finished or aborted');
    if (this.next >= this.keys.length) throw fail(`all ${this.keys.length} images are already written`);
    if (key !== this.keys[this.next]) throw fail(`expected image "${this.keys[this.next]}" next (keys are written in order)`);
    const n = this.opts.M * this.opts.D;
    if (!(features instanceof Float32Array) || features.length !== n)
      throw fail(`expected a Float32Array of M·D = ${n} values, got ${features instanceof Float32Array ? features.length + ' values' : typeof features}`);
    for (let i = 0; i < n; i++) if (!Number.isFinite(features[i])) throw fail(`value ${features[i]} at ${i} is not finite`);
    try {
      writeAll(this.fd, Buffer.from(features.buffer, features.byteOffset, features.byteLength));
    } catch (e) {
      this.abort();
      throw fail((e as Error).message);
    }
    this.next++;
  }

  /** Flushes and renames the file into place; every key must have been written. */
  finish(): void {
    if (this.fd === undefined) throw new Error(`writing features file "${this.path}": the writer is finished or aborted`);
    if (this.next !== this.keys.length) {
      const missing = this.keys[this.next];
      this.abort();
      throw new Error(`writing features file "${this.path}": only ${this.next} of ${this.keys.length} images written (next: "${missing}"); nothing written`);
    }
    try {
      fs.fsyncSync(this.fd);
      fs.closeSync(this.fd);
      this.fd = undefined;
      fs.renameSync(this.tmp, this.path);
    } catch (e) {
      this.abort();
      throw new Error(`writing features file "${this.path}": ${(e as Error).message}`);
    }
  }

  /** Drops the temporary file; idempotent. */
  abort(): void {
    if (this.fd !== undefined) {
      try {
        fs.closeSync(this.fd);
      } catch {
        /* already failing */
      }
      this.fd = undefined;
    }
    fs.rmSync(this.tmp, { force: true });
  }
}

/**
 * Writes a whole features file at once: `features` maps each image key to its (M, D) values
 * (written in the map's order). M and D are taken from opts.
 */
export function writeFeatures(path: string, features: Map<string, Float32Array>, opts: FeaturesWriterOptions): void {
  const w = new FeaturesWriter(path, [...features.keys()], opts);
  try {
    for (const [k, v] of features) w.add(k, v);
    w.finish();
  } catch (e) {
    w.abort();
    throw e;
  }
}

function writeAll(fd: number, buf: Buffer): void {
  let done = 0;
  while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done);
}
