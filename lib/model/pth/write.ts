// A minimal torch.save writer for state dicts of F32/F16/BF16 tensors (the official adapter layout,
// and test checkpoints):
// the same zip layout as PyTorch's own writer (`<name>/data.pkl`, `<name>/data/<key>`,
// `<name>/version`; entries stored, data aligned to 64 bytes) and a protocol-2 pickle of a dict
// whose values are `torch._utils._rebuild_tensor_v2` calls on storage persistent ids, so that
// `torch.load` reads it. Written to a temporary file and renamed: no half-written output.
// (Free of the native addon so tools can use it.)
import * as os from 'os';
import * as zlib from 'zlib';
import { writeAll, writeFileAtomic } from '../../output';

export interface PthTensor {
  name: string;
  shape: number[];
  /** F32 values, or the raw bits of F16/BF16 ones (dtype then says which) */
  data: Float32Array | Uint16Array;
  dtype?: 'F32' | 'F16' | 'BF16';
}

const STORAGE_CLASS = { F32: 'FloatStorage', F16: 'HalfStorage', BF16: 'BFloat16Storage' } as const;

function dtypeOf(t: PthTensor): 'F32' | 'F16' | 'BF16' {
  const d = t.dtype ?? 'F32';
  if ((d === 'F32') !== t.data instanceof Float32Array)
    throw new Error(`writeTorchStateDict: ${t.name}: ${d} data must be a ${d === 'F32' ? 'Float32Array' : 'Uint16Array of raw bits'}`);
  return d;
}

/** The protocol-2 pickle of {name: tensor} with storages keyed "0", "1", … in order;
 *  `ordered`: an OrderedDict, as a module's state_dict() is. */
export function pickleStateDict(tensors: PthTensor[], ordered = false): Buffer {
  const parts: Buffer[] = [];
  const op = (...bytes: number[]) => parts.push(Buffer.from(bytes));
  const text = (s: string) => {
    const b = Buffer.from(s, 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    parts.push(Buffer.from([0x58]), len, b); // BINUNICODE
  };
  const int = (v: number) => {
    if (!Number.isSafeInteger(v) || v < 0) throw new Error(`pickleStateDict: ${v} is not a size`);
    if (v < 0x80000000) {
      const b = Buffer.alloc(5);
      b[0] = 0x4a; // BININT
      b.writeInt32LE(v, 1);
      parts.push(b);
    } else {
      const b = Buffer.alloc(10);
      b[0] = 0x8a; // LONG1, 8 bytes
      b[1] = 8;
      b.writeBigInt64LE(BigInt(v), 2);
      parts.push(b);
    }
  };
  const global = (module: string, name: string) => parts.push(Buffer.from(`c${module}\n${name}\n`, 'utf8'));
  const tuple = (xs: number[]) => {
    op(0x28); // MARK
    xs.forEach(int);
    op(0x74); // TUPLE
  };
  op(0x80, 2); // PROTO 2
  if (ordered) {
    global('collections', 'OrderedDict');
    op(0x29, 0x52); // EMPTY_TUPLE, REDUCE
  } else op(0x7d); // EMPTY_DICT
  op(0x28); // MARK
  tensors.forEach((t, i) => {
    const numel = t.shape.reduce((a, b) => a * b, 1);
    if (numel !== t.data.length) throw new Error(`pickleStateDict: ${t.name}: shape [${t.shape}] needs ${numel} values, got ${t.data.length}`);
    const strides = t.shape.map((_, d) => t.shape.slice(d + 1).reduce((a, b) => a * b, 1));
    text(t.name);
    global('torch._utils', '_rebuild_tensor_v2');
    op(0x28); // MARK: the arguments
    op(0x28); // MARK: the persistent id ('storage', FloatStorage, key, 'cpu', numel)
    text('storage');
    global('torch', STORAGE_CLASS[dtypeOf(t)]);
    text(String(i));
    text('cpu');
    int(numel);
    op(0x74, 0x51); // TUPLE, BINPERSID
    int(0); // storage offset
    tuple(t.shape);
    tuple(strides);
    op(0x89); // NEWFALSE: requires_grad
    global('collections', 'OrderedDict');
    op(0x29, 0x52); // EMPTY_TUPLE, REDUCE: backward hooks OrderedDict()
    op(0x74, 0x52); // TUPLE, REDUCE
  });
  op(0x75, 0x2e); // SETITEMS, STOP
  return Buffer.concat(parts);
}

interface Written {
  name: Buffer;
  crc: number;
  size: number;
  offset: number;
}

/** Writes {name: tensor} as torch.save would, atomically. */
export function writeTorchStateDict(path: string, tensors: PthTensor[], opts: { ordered?: boolean } = {}): void {
  const archive = 'archive';
  const records: [string, Buffer][] = [[`${archive}/data.pkl`, pickleStateDict(tensors, opts.ordered)]];
  tensors.forEach((t, i) => records.push([`${archive}/data/${i}`, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)]));
  records.push([`${archive}/version`, Buffer.from('3\n')]);
  writeZip(path, records);
}

/** Writes a zip of stored `records` (name, bytes) in order, data aligned to 64 bytes as PyTorch
 *  does, atomically (temporary file, then rename). Small files only (no ZIP64). */
export function writeZip(path: string, records: [string, Buffer][]): void {
  if (os.endianness() !== 'LE') throw new Error('writeZip: a big-endian host would need byte swapping');
  const total = records.reduce((s, [, b]) => s + b.length + 200, 0);
  if (total >= 0xffffffff) throw new Error(`writeZip: ${total} bytes need ZIP64, which this small writer does not write`);

  writeFileAtomic(path, (fd) => {
    let pos = 0;
    const put = (b: Buffer) => {
      writeAll(fd, b);
      pos += b.length;
    };
    const written: Written[] = [];
    for (const [name, data] of records) {
      const nameBuf = Buffer.from(name, 'utf8');
      const crc = zlib.crc32(data) >>> 0;
      // PyTorch pads the local header's extra field ("FB") so that the data starts at a multiple of 64
      const start = pos + 30 + nameBuf.length + 4;
      const pad = (64 - (start % 64)) % 64;
      const h = Buffer.alloc(30);
      h.writeUInt32LE(0x04034b50, 0);
      h.writeUInt16LE(20, 4); // version needed
      h.writeUInt16LE(0, 6); // flags
      h.writeUInt16LE(0, 8); // stored
      h.writeUInt32LE(0, 10); // time, date
      h.writeUInt32LE(crc, 14);
      h.writeUInt32LE(data.length, 18);
      h.writeUInt32LE(data.length, 22);
      h.writeUInt16LE(nameBuf.length, 26);
      h.writeUInt16LE(4 + pad, 28);
      const extra = Buffer.alloc(4 + pad, 0x5a); // 'Z' padding, as PyTorch
      extra.writeUInt16LE(0x4246, 0); // "FB"
      extra.writeUInt16LE(pad, 2);
      written.push({ name: nameBuf, crc, size: data.length, offset: pos });
      put(h);
      put(nameBuf);
      put(extra);
      put(data);
    }
    const cdStart = pos;
    for (const w of written) {
      const c = Buffer.alloc(46);
      c.writeUInt32LE(0x02014b50, 0);
      c.writeUInt16LE(20, 4); // version made by
      c.writeUInt16LE(20, 6); // version needed
      c.writeUInt16LE(0, 8);
      c.writeUInt16LE(0, 10);
      c.writeUInt32LE(0, 12);
      c.writeUInt32LE(w.crc, 16);
      c.writeUInt32LE(w.size, 20);
      c.writeUInt32LE(w.size, 24);
      c.writeUInt16LE(w.name.length, 28);
      // extra, comment, disk, internal and external attributes: 0
      c.writeUInt32LE(w.offset, 42);
      put(c);
      put(w.name);
    }
    const e = Buffer.alloc(22);
    e.writeUInt32LE(0x06054b50, 0);
    e.writeUInt16LE(written.length, 8);
    e.writeUInt16LE(written.length, 10);
    e.writeUInt32LE(pos - cdStart, 12);
    e.writeUInt32LE(cdStart, 16);
    put(e);
  });
}
