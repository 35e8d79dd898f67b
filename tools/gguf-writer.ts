// Writing GGUF (version 3) and quantizing f32 rows to ggml's block types, written from the format
// (no native addon: tests and tools/to-gguf.ts use it).
//
// Quantizers:
//   Q8_0, Q4_0: round to nearest exactly as ggml's quantize_row_q8_0_ref / q4_0_ref (d = amax/127,
//     resp. d = (signed value of largest magnitude) / -8; the same float32 steps), so the bytes equal
//     llama.cpp's (checked against test/golden/ggml-quants.bin).
//   Q4_K, Q5_K: a simpler scale search than ggml's: per 32-value sub-block, scale = (max - min) / nmax
//     and min = -min(0, min x) with no search; the 8 scales and mins are stored in 6 bits relative to
//     their maxima (/63), and the values re-rounded against the stored (6-bit, fp16) scales.
//   Q6_K: per 16-value sub-block, scale = (signed value of largest magnitude) / -32, stored as int8
//     relative to the block's largest (-128 / max), values re-rounded against the stored scales.
//   Every one writes the exact block layout llama.cpp reads (ggml-common.h).
import * as fs from 'fs';
import { GGML_TYPES, GGML_TYPE_ID, GGUF_MAGIC, GgmlTypeName, GgufType } from '../lib/model/gguf';

const f = Math.fround;

/** f32 -> IEEE half, round to nearest even (overflow to Inf, NaN stays NaN). */
export function f32ToF16(x: number): number {
  const b = new DataView(new ArrayBuffer(4));
  b.setFloat32(0, x, true);
  const u = b.getUint32(0, true);
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let man = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (man ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    man |= 0x800000;
    const shift = 14 - e;
    let h = man >>> shift;
    const rem = man & ((1 << shift) - 1), half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (man >>> 13);
  const rem = man & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h; // a carry into the exponent is the right rounding (up to Inf)
}

export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp === 0) return sign * man * 2 ** -24;
  if (exp === 31) return man ? NaN : sign * Infinity;
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

/** ggml's nearest_int: round half to even (the float magic-number trick). */
function nearestInt(x: number): number {
  return Math.round(x) - (Math.abs(x % 1) === 0.5 && Math.round(x) % 2 !== 0 ? 1 : 0);
}
/** C's roundf: half away from zero. */
function roundf(x: number): number {
  return Math.sign(x) * Math.round(Math.abs(x));
}

function quantQ8_0(x: Float32Array, out: Uint8Array): void {
  for (let b = 0; b < x.length / 32; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]));
    const d = f(amax / 127), id = d ? f(1 / d) : 0;
    const o = b * 34, h = f32ToF16(d);
    out[o] = h & 0xff;
    out[o + 1] = h >> 8;
    for (let j = 0; j < 32; j++) out[o + 2 + j] = roundf(f(x[b * 32 + j] * id)) & 0xff;
  }
}

function quantQ4_0(x: Float32Array, out: Uint8Array): void {
  for (let b = 0; b < x.length / 32; b++) {
    let amax = 0, max = 0;
    for (let j = 0; j < 32; j++) {
      const v = x[b * 32 + j];
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = f(max / -8), id = d ? f(1 / d) : 0;
    const o = b * 18, h = f32ToF16(d);
    out[o] = h & 0xff;
    out[o + 1] = h >> 8;
    for (let j = 0; j < 16; j++) {
      const q0 = Math.min(15, Math.trunc(f(f(x[b * 32 + j] * id) + 8.5)));
      const q1 = Math.min(15, Math.trunc(f(f(x[b * 32 + 16 + j] * id) + 8.5)));
      out[o + 2 + j] = q0 | (q1 << 4);
    }
  }
}

/** Packs 8 6-bit scales and mins into K-quant's 12 bytes. */
export function packScales(ls: number[], lm: number[], s: Uint8Array): void {
  for (let j = 0; j < 8; j++) {
    if (j < 4) {
      s[j] = ls[j];
      s[j + 4] = lm[j];
    } else {
      s[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
      s[j - 4] |= (ls[j] >> 4) << 6;
      s[j] |= (lm[j] >> 4) << 6;
    }
  }
}

/** Q4_K (nmax 15) and Q5_K (nmax 31): min/max scale per 32-value sub-block. */
function quantK45(x: Float32Array, out: Uint8Array, five: boolean): void {
  const nmax = five ? 31 : 15, bb = five ? 176 : 144;
  for (let b = 0; b < x.length / 256; b++) {
    const xb = x.subarray(b * 256, b * 256 + 256);
    const scales: number[] = [], mins: number[] = [];
    for (let j = 0; j < 8; j++) {
      let lo = 0, hi = -Infinity;
      for (let l = 0; l < 32; l++) {
        lo = Math.min(lo, xb[32 * j + l]);
        hi = Math.max(hi, xb[32 * j + l]);
      }
      scales.push(hi > lo ? f((hi - lo) / nmax) : 0);
      mins.push(f(-lo));
    }
    const maxScale = Math.max(...scales), maxMin = Math.max(...mins);
    const invS = maxScale > 0 ? f(63 / maxScale) : 0, invM = maxMin > 0 ? f(63 / maxMin) : 0;
    const ls = scales.map((s) => Math.min(63, nearestInt(f(invS * s))));
    const lm = mins.map((m) => Math.min(63, nearestInt(f(invM * m))));
    const o = b * bb;
    const dH = f32ToF16(f(maxScale / 63)), mH = f32ToF16(f(maxMin / 63));
    out[o] = dH & 0xff;
    out[o + 1] = dH >> 8;
    out[o + 2] = mH & 0xff;
    out[o + 3] = mH >> 8;
    const sc = out.subarray(o + 4, o + 16);
    sc.fill(0);
    packScales(ls, lm, sc);
    const d = f16ToF32(dH), dmin = f16ToF32(mH);
    const L = new Uint8Array(256);
    for (let j = 0; j < 8; j++) {
      const dj = f(d * ls[j]);
      if (!dj) continue;
      const mj = f(dmin * lm[j]);
      for (let l = 0; l < 32; l++) L[32 * j + l] = Math.max(0, Math.min(nmax, nearestInt(f(f(xb[32 * j + l] + mj) / dj))));
    }
    const qh = five ? out.subarray(o + 16, o + 48) : undefined;
    qh?.fill(0);
    const q = out.subarray(o + (five ? 48 : 16), o + bb);
    for (let i = 0; i < 4; i++) {
      for (let l = 0; l < 32; l++) {
        let a = L[64 * i + l], c = L[64 * i + 32 + l];
        if (qh) {
          if (a > 15) {
            a -= 16;
            qh[l] |= 1 << (2 * i);
          }
          if (c > 15) {
            c -= 16;
            qh[l] |= 1 << (2 * i + 1);
          }
        }
        q[32 * i + l] = a | (c << 4);
      }
    }
  }
}

function quantQ6_K(x: Float32Array, out: Uint8Array): void {
  for (let b = 0; b < x.length / 256; b++) {
    const xb = x.subarray(b * 256, b * 256 + 256);
    const o = b * 210;
    out.fill(0, o, o + 210);
    const scales: number[] = [];
    let maxScale = 0, maxAbs = 0;
    for (let j = 0; j < 16; j++) {
      let amax = 0, max = 0;
      for (let l = 0; l < 16; l++) {
        const v = xb[16 * j + l];
        if (Math.abs(v) > amax) {
          amax = Math.abs(v);
          max = v;
        }
      }
      const s = amax ? f(max / -32) : 0;
      scales.push(s);
      if (Math.abs(s) > maxAbs) {
        maxAbs = Math.abs(s);
        maxScale = s;
      }
    }
    if (!maxAbs) continue; // an all-zero block: d = 0, every value 0
    const iscale = f(-128 / maxScale);
    const dH = f32ToF16(f(1 / iscale));
    out[o + 208] = dH & 0xff;
    out[o + 209] = dH >> 8;
    const d = f16ToF32(dH);
    const L = new Uint8Array(256).fill(32);
    for (let j = 0; j < 16; j++) {
      const s = Math.max(-128, Math.min(127, nearestInt(f(iscale * scales[j]))));
      out[o + 192 + j] = s & 0xff;
      const dj = f(d * s);
      if (!dj) continue;
      for (let l = 0; l < 16; l++) L[16 * j + l] = Math.max(-32, Math.min(31, nearestInt(f(xb[16 * j + l] / dj)))) + 32;
    }
    for (let h = 0; h < 2; h++) {
      for (let l = 0; l < 32; l++) {
        const [q1, q2, q3, q4] = [0, 32, 64, 96].map((k) => L[128 * h + l + k]);
        out[o + 64 * h + l] = (q1 & 0xf) | ((q3 & 0xf) << 4);
        out[o + 64 * h + l + 32] = (q2 & 0xf) | ((q4 & 0xf) << 4);
        out[o + 128 + 32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
      }
    }
  }
}

/** `x` (a whole number of rows of whole blocks) stored as `type`. */
export function quantize(x: Float32Array, type: GgmlTypeName): Uint8Array {
  const t = GGML_TYPES[GGML_TYPE_ID[type]];
  if (x.length % t.block) throw new Error(`quantize: ${x.length} values are not a whole number of ${type} blocks (${t.block})`);
  const out = new Uint8Array((x.length / t.block) * t.bytes);
  switch (type) {
    case 'F32':
      new Uint8Array(x.buffer, x.byteOffset, x.byteLength).forEach((v, i) => (out[i] = v));
      break;
    case 'F16':
    case 'BF16': {
      const dv = new DataView(out.buffer);
      const fb = new DataView(new ArrayBuffer(4));
      for (let i = 0; i < x.length; i++) {
        let h: number;
        if (type === 'F16') h = f32ToF16(x[i]);
        else {
          fb.setFloat32(0, x[i], true);
          const u = fb.getUint32(0, true);
          h = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16; // round to nearest even (finite weights)
        }
        dv.setUint16(2 * i, h, true);
      }
      break;
    }
    case 'Q8_0': quantQ8_0(x, out); break;
    case 'Q4_0': quantQ4_0(x, out); break;
    case 'Q4_K': quantK45(x, out, false); break;
    case 'Q5_K': quantK45(x, out, true); break;
    case 'Q6_K': quantQ6_K(x, out); break;
  }
  return out;
}

/** A metadata value with its GGUF type (arrays: of one item type). */
export type GgufMeta =
  | { type: 'u32' | 'i32' | 'f32' | 'u64'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'array'; itemType: 'string' | 'f32' | 'i32'; value: (string | number)[] };

export interface GgufTensorOut {
  name: string;
  /** rows first, as our tensors (written as ggml's ne, reversed) */
  shape: number[];
  type: GgmlTypeName;
  data: Uint8Array;
}

class Bytes {
  private parts: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    this.parts.push(b);
    this.length += b.length;
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }
  u64(v: number): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }
  concat(): Buffer {
    return Buffer.concat(this.parts);
  }
}

function writeValue(out: Bytes, m: GgufMeta): void {
  const scalar = (type: string, v: number | boolean | string) => {
    const b = Buffer.alloc(8);
    switch (type) {
      case 'u32': b.writeUInt32LE(v as number); return out.push(b.subarray(0, 4));
      case 'i32': b.writeInt32LE(v as number); return out.push(b.subarray(0, 4));
      case 'f32': b.writeFloatLE(v as number); return out.push(b.subarray(0, 4));
      case 'u64': b.writeBigUInt64LE(BigInt(v as number)); return out.push(b);
      case 'bool': return out.push(Buffer.from([v ? 1 : 0]));
      default: return out.str(v as string);
    }
  };
  const code: Record<string, number> = { u32: GgufType.U32, i32: GgufType.I32, f32: GgufType.F32, u64: GgufType.U64, bool: GgufType.BOOL, string: GgufType.STRING };
  if (m.type === 'array') {
    out.u32(GgufType.ARRAY);
    out.u32(code[m.itemType]);
    out.u64(m.value.length);
    for (const v of m.value) scalar(m.itemType, v);
  } else {
    out.u32(code[m.type]);
    scalar(m.type, m.value);
  }
}

/**
 * Writes a GGUF v3 file: metadata in the given order, then the tensors, each at an offset that is
 * a multiple of `alignment` (general.alignment is written when it is not the default 32). The file
 * is written under a temporary name and renamed when complete.
 */
export function writeGguf(path: string, metadata: [string, GgufMeta][], tensors: GgufTensorOut[], alignment = 32): void {
  const head = new Bytes();
  head.u32(GGUF_MAGIC);
  head.u32(3);
  head.u64(tensors.length);
  const meta = alignment === 32 ? metadata : [...metadata, ['general.alignment', { type: 'u32', value: alignment }] as [string, GgufMeta]];
  head.u64(meta.length);
  for (const [k, v] of meta) {
    head.str(k);
    writeValue(head, v);
  }
  const pad = (n: number) => Math.ceil(n / alignment) * alignment;
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    const tt = GGML_TYPES[GGML_TYPE_ID[t.type]];
    const n = t.shape.reduce((a, b) => a * b, 1);
    if ((n / tt.block) * tt.bytes !== t.data.length) throw new Error(`writeGguf: tensor ${t.name} has ${t.data.length} bytes, its shape and type imply ${(n / tt.block) * tt.bytes}`);
    head.str(t.name);
    head.u32(t.shape.length);
    for (const s of [...t.shape].reverse()) head.u64(s);
    head.u32(GGML_TYPE_ID[t.type]);
    head.u64(offset);
    offsets.push(offset);
    offset = pad(offset + t.data.length);
  }
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    const h = head.concat();
    fs.writeSync(fd, h);
    const dataStart = pad(h.length);
    fs.writeSync(fd, Buffer.alloc(dataStart - h.length));
    let at = dataStart;
    tensors.forEach((t, i) => {
      if (dataStart + offsets[i] > at) fs.writeSync(fd, Buffer.alloc(dataStart + offsets[i] - at));
      fs.writeSync(fd, t.data);
      at = dataStart + offsets[i] + t.data.length;
    });
    fs.closeSync(fd);
    fs.renameSync(tmp, path);
  } catch (e) {
    try {
      fs.closeSync(fd);
    } catch {
      /* already closed */
    }
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}
