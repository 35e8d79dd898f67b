// The zip container of PyTorch checkpoints (torch.save since 1.6): only what a reader needs — the
// end-of-central-directory record (and its ZIP64 form, for files over 4 GiB), the central
// directory, and each entry's local header to find where its bytes start. torch.save stores every
// entry uncompressed, so tensors can be mapped where they lie; a deflated entry is inflated only
// when it is small (the pickle). Every offset and size is checked against the file before use.
// (Free of the native addon so tools can use it.)
import * as fs from 'fs';
import * as zlib from 'zlib';

export interface ZipEntry {
  name: string;
  /** 0 stored, 8 deflated (others are refused when read) */
  method: number;
  crc32: number;
  compressedSize: number;
  size: number;
  /** absolute offset of the entry's first data byte */
  dataOffset: number;
}

export interface ZipArchive {
  path: string;
  fileSize: number;
  entries: Map<string, ZipEntry>;
}

const EOCD_SIG = 0x06054b50;
const ZIP64_LOCATOR_SIG = 0x07064b50;
const ZIP64_EOCD_SIG = 0x06064b50;
const CENTRAL_SIG = 0x02014b50;
const LOCAL_SIG = 0x04034b50;
/** At most this many entries (a 70B checkpoint has ~730 storages per shard). */
export const ZIP_MAX_ENTRIES = 1 << 20;
/** The central directory is read whole: bounded. */
const MAX_CENTRAL_BYTES = 256 * 1024 * 1024;
/** A deflated entry is inflated only up to this size (the pickle of a checkpoint is a few MB). */
export const ZIP_MAX_INFLATE = 256 * 1024 * 1024;

export function readAt(fd: number, pos: number, len: number): Buffer {
  const buf = Buffer.alloc(len);
  let got = 0;
  while (got < len) {
    const r = fs.readSync(fd, buf, got, len - got, pos + got);
    if (r === 0) break;
    got += r;
  }
  return buf.subarray(0, got);
}

/** True when the file starts with a zip local header ("PK\3\4"). */
export function looksLikeZip(path: string): boolean {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch {
    return false;
  }
  try {
    const b = readAt(fd, 0, 4);
    return b.length === 4 && b.readUInt32LE(0) === LOCAL_SIG;
  } catch {
    return false; // a folder (EISDIR) or unreadable: the caller's own reader names the problem
  } finally {
    fs.closeSync(fd);
  }
}

/** A JS number from a little-endian u64, refusing what a double cannot hold exactly. */
function u64(b: Buffer, off: number, path: string, what: string): number {
  const v = b.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${path}: zip ${what} ${v} is impossibly large (corrupt file)`);
  return Number(v);
}

/** Reads and checks the central directory of `path`; `what` names the file's role in errors. */
export function readZip(path: string, what = 'a PyTorch checkpoint'): ZipArchive {
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (e) {
    throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new Error(`${path} is not a regular file`);
    const fileSize = st.size;
    const notZip = (why: string) =>
      new Error(`${path} is not ${what} (a zip archive as torch.save writes): ${why}`);
    if (fileSize < 22) throw notZip(`${fileSize} bytes, less than a zip end record`);

    // The end record is the last 22 bytes plus a comment of up to 65535 bytes: search backwards.
    const tailLen = Math.min(fileSize, 22 + 65535);
    const tail = readAt(fd, fileSize - tailLen, tailLen);
    let e = -1;
    for (let i = tail.length - 22; i >= 0; i--) {
      if (tail.readUInt32LE(i) === EOCD_SIG && i + 22 + tail.readUInt16LE(i + 20) === tail.length) {
        e = i;
        break;
      }
    }
    if (e < 0) throw notZip('no end-of-central-directory record (truncated, or not a zip file)');
    const eocdPos = fileSize - tailLen + e;
    let count = tail.readUInt16LE(e + 10);
    let cdSize = tail.readUInt32LE(e + 12);
    let cdOffset = tail.readUInt32LE(e + 16);
    if (tail.readUInt16LE(e + 4) !== 0 || tail.readUInt16LE(e + 6) !== 0) throw notZip('a multi-disk (spanned) archive');
    let cdEnd = eocdPos; // where the central directory must end
    if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
      // ZIP64: a locator just before the end record points at the ZIP64 end record.
      if (eocdPos < 20) throw notZip('ZIP64 fields without a ZIP64 locator');
      const loc = readAt(fd, eocdPos - 20, 20);
      if (loc.readUInt32LE(0) !== ZIP64_LOCATOR_SIG) throw notZip('ZIP64 fields without a ZIP64 locator');
      const z64Pos = u64(loc, 8, path, 'ZIP64 end record offset');
      if (z64Pos + 56 > eocdPos - 20) throw notZip(`the ZIP64 end record offset ${z64Pos} lies outside the file`);
      const z = readAt(fd, z64Pos, 56);
      if (z.readUInt32LE(0) !== ZIP64_EOCD_SIG) throw notZip(`no ZIP64 end record at offset ${z64Pos}`);
      count = u64(z, 32, path, 'entry count');
      cdSize = u64(z, 40, path, 'central directory size');
      cdOffset = u64(z, 48, path, 'central directory offset');
      cdEnd = z64Pos;
    }
    if (count > ZIP_MAX_ENTRIES) throw notZip(`${count} entries, above the supported maximum ${ZIP_MAX_ENTRIES}`);
    if (cdSize > MAX_CENTRAL_BYTES) throw notZip(`a central directory of ${cdSize} bytes is too large`);
    if (cdOffset + cdSize > cdEnd)
      throw notZip(`the central directory [${cdOffset}, ${cdOffset + cdSize}) reaches past its end record at ${cdEnd} (truncated or corrupt)`);
    if (cdSize < 46 * count) throw notZip(`${count} entries cannot fit in a central directory of ${cdSize} bytes`);

    const cd = readAt(fd, cdOffset, cdSize);
    const entries = new Map<string, ZipEntry>();
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (p + 46 > cd.length || cd.readUInt32LE(p) !== CENTRAL_SIG) throw notZip(`central directory entry ${i} is malformed`);
      const flags = cd.readUInt16LE(p + 8);
      const method = cd.readUInt16LE(p + 10);
      const crc32 = cd.readUInt32LE(p + 16);
      let compressedSize = cd.readUInt32LE(p + 20);
      let size = cd.readUInt32LE(p + 24);
      const nameLen = cd.readUInt16LE(p + 28);
      const extraLen = cd.readUInt16LE(p + 30);
      const commentLen = cd.readUInt16LE(p + 32);
      let localOffset = cd.readUInt32LE(p + 42);
      const next = p + 46 + nameLen + extraLen + commentLen;
      if (next > cd.length) throw notZip(`central directory entry ${i} runs past the directory`);
      const name = cd.toString('utf8', p + 46, p + 46 + nameLen);
      if (flags & 1) throw new Error(`${path}: zip entry ${name} is encrypted`);
      // ZIP64 extended information: the 64-bit values of the fields set to 0xffffffff, in order.
      let x = p + 46 + nameLen;
      const xEnd = x + extraLen;
      while (x + 4 <= xEnd) {
        const id = cd.readUInt16LE(x);
        const len = cd.readUInt16LE(x + 2);
        if (x + 4 + len > xEnd) throw notZip(`entry ${name}: an extra field runs past its entry`);
        if (id === 0x0001) {
          let q = x + 4;
          const take = (field: string): number => {
            if (q + 8 > x + 4 + len) throw notZip(`entry ${name}: its ZIP64 field lacks the ${field}`);
            const v = u64(cd, q, path, `entry ${name} ${field}`);
            q += 8;
            return v;
          };
          if (size === 0xffffffff) size = take('size');
          if (compressedSize === 0xffffffff) compressedSize = take('compressed size');
          if (localOffset === 0xffffffff) localOffset = take('local header offset');
        }
        x += 4 + len;
      }
      if (entries.has(name)) throw new Error(`${path}: zip entry ${name} appears twice`);
      // the local header repeats the name and may have its own extra field (torch pads there)
      if (localOffset + 30 > cdOffset) throw notZip(`entry ${name}: its local header offset ${localOffset} lies past the entries`);
      const lh = readAt(fd, localOffset, 30);
      if (lh.length < 30 || lh.readUInt32LE(0) !== LOCAL_SIG) throw notZip(`entry ${name}: no local header at offset ${localOffset}`);
      const dataOffset = localOffset + 30 + lh.readUInt16LE(26) + lh.readUInt16LE(28);
      const localName = readAt(fd, localOffset + 30, lh.readUInt16LE(26)).toString('utf8');
      if (localName !== name) throw notZip(`entry ${name}: its local header names ${JSON.stringify(localName)}`);
      if (method === 0 && compressedSize !== size)
        throw new Error(`${path}: zip entry ${name} is stored uncompressed but its sizes differ (${compressedSize} vs ${size}): corrupt file`);
      if (dataOffset + compressedSize > cdOffset)
        throw new Error(
          `${path}: zip entry ${name} claims ${compressedSize} bytes at offset ${dataOffset}, past the end of the entries at ${cdOffset} (truncated or lying sizes)`,
        );
      entries.set(name, { name, method, crc32, compressedSize, size, dataOffset });
      p = next;
    }
    return { path, fileSize, entries };
  } finally {
    fs.closeSync(fd);
  }
}

/** The whole content of a (small) entry: inflated if deflated, its CRC-32 checked. */
export function readEntry(zip: ZipArchive, e: ZipEntry, maxBytes = ZIP_MAX_INFLATE): Buffer {
  if (e.size > maxBytes) throw new Error(`${zip.path}: zip entry ${e.name} of ${e.size} bytes is larger than the ${maxBytes} read whole`);
  const fd = fs.openSync(zip.path, 'r');
  let raw: Buffer;
  try {
    raw = readAt(fd, e.dataOffset, e.compressedSize);
  } finally {
    fs.closeSync(fd);
  }
  if (raw.length !== e.compressedSize) throw new Error(`${zip.path}: zip entry ${e.name} is truncated`);
  let data: Buffer;
  if (e.method === 0) data = raw;
  else if (e.method === 8) {
    try {
      data = zlib.inflateRawSync(raw, { maxOutputLength: Math.max(1, e.size) });
    } catch (err) {
      throw new Error(`${zip.path}: zip entry ${e.name} does not inflate to its ${e.size} bytes (${(err as Error).message})`);
    }
  } else throw new Error(`${zip.path}: zip entry ${e.name} uses compression method ${e.method}; only stored and deflated entries are supported`);
  if (data.length !== e.size) throw new Error(`${zip.path}: zip entry ${e.name} holds ${data.length} bytes but its header says ${e.size}`);
  if (zlib.crc32(data) >>> 0 !== e.crc32 >>> 0) throw new Error(`${zip.path}: zip entry ${e.name} fails its CRC-32 check (corrupt file)`);
  return data;
}
