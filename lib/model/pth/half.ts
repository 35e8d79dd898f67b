// IEEE half precision to f32, exactly (every f16 value is an f32 value), for the shards that are
// merged in memory and for small adapter files. (Free of the native addon.)

/** The f32 values of raw f16 bits. */
export function f16ToF32(h: Uint16Array): Float32Array {
  const out = new Float32Array(h.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < h.length; i++) {
    const x = h[i];
    const sign = (x & 0x8000) << 16;
    const exp = (x >> 10) & 0x1f;
    let mant = x & 0x3ff;
    if (exp === 0x1f) bits[i] = sign | 0x7f800000 | (mant << 13); // Inf, NaN
    else if (exp !== 0) bits[i] = sign | ((exp + 112) << 23) | (mant << 13); // normal: rebias 15 -> 127
    else if (mant === 0) bits[i] = sign; // ±0
    else {
      // subnormal: normalise the mantissa
      let e = 113;
      while ((mant & 0x400) === 0) {
        mant <<= 1;
        e--;
      }
      bits[i] = sign | (e << 23) | ((mant & 0x3ff) << 13);
    }
  }
  return out;
}

/** The f16 bits nearest each f32 value (round to nearest even, as torch's .half()); overflow
 *  gives ±Inf. */
export function f32ToF16(x: Float32Array): Uint16Array {
  const out = new Uint16Array(x.length);
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  for (let i = 0; i < x.length; i++) {
    const u = bits[i];
    const sign = (u >>> 16) & 0x8000;
    const exp = (u >>> 23) & 0xff;
    const mant = u & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (mant ? 0x200 : 0); // Inf, NaN
      continue;
    }
    const e = exp - 127 + 15; // the f16 exponent field
    if (e >= 0x1f) out[i] = sign | 0x7c00; // overflow
    else if (e <= 0) {
      // subnormal (or zero): shift the full significand right, rounding to nearest even
      if (e < -10) {
        out[i] = sign;
        continue;
      }
      const m = mant | 0x800000;
      const shift = 14 - e; // 24-bit significand -> 10 bits, and the subnormal shift
      let h = m >>> shift;
      const rest = m & ((1 << shift) - 1);
      const half = 1 << (shift - 1);
      if (rest > half || (rest === half && h & 1)) h++;
      out[i] = sign | h;
    } else {
      let h = (e << 10) | (mant >>> 13);
      const rest = mant & 0x1fff;
      if (rest > 0x1000 || (rest === 0x1000 && h & 1)) h++; // may carry into the exponent: correct
      out[i] = sign | h;
    }
  }
  return out;
}
