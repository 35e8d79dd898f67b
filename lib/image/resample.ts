// Resizing 8-bit RGB exactly as Pillow's Image.resize does (Hugging Face's image processors resize
// through Pillow), so that a pretrained encoder sees the pixels it was trained on: a separable
// convolution, horizontal pass then vertical, the filter stretched by the scale when shrinking
// (antialiasing), coefficients normalised then rounded to 22-bit fixed point, sums rounded and
// clamped to 0..255 (Pillow's libImaging/Resample.c, ImagingResample with box = the whole image).
// NEAREST follows Pillow's affine nearest-neighbour path (source index of (x + 0.5) * in / out).
import type { RgbImage } from './decode';

export type Resample = 'nearest' | 'bilinear' | 'bicubic' | 'lanczos' | 'box' | 'hamming';

/** Pillow's resample codes as preprocessor_config.json stores them. */
export const PIL_RESAMPLE: Record<number, Resample> = { 0: 'nearest', 1: 'lanczos', 2: 'bilinear', 3: 'bicubic', 4: 'box', 5: 'hamming' };

interface Filter {
  support: number;
  f(x: number): number;
}

const F054 = Math.fround(0.54);
const F046 = Math.fround(0.46);
const sinc = (x: number) => (x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x));
const FILTERS: Record<Exclude<Resample, 'nearest'>, Filter> = {
  box: { support: 0.5, f: (x) => (x > -0.5 && x <= 0.5 ? 1 : 0) },
  bilinear: { support: 1, f: (x) => (x < 0 && (x = -x), x < 1 ? 1 - x : 0) },
  hamming: {
    support: 1,
    f: (x) => {
      if (x < 0) x = -x;
      if (x === 0) return 1;
      if (x >= 1) return 0;
      x *= Math.PI;
      return (Math.sin(x) / x) * (F054 + F046 * Math.cos(x)); // 0.54f, 0.46f in Pillow
    },
  },
  bicubic: {
    // a = -0.5 (Keys / Catmull-Rom), as Pillow
    support: 2,
    f: (x) => {
      const a = -0.5;
      if (x < 0) x = -x;
      if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
      if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
      return 0;
    },
  },
  lanczos: { support: 3, f: (x) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0) },
};

const PRECISION_BITS = 32 - 8 - 2;

/** Per output index: the first input index, the tap count, and fixed-point weights (ksize each). */
function coefficients(inSize: number, outSize: number, filter: Filter): { bounds: Int32Array; k: Int32Array; ksize: number } {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const k = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    // C casts truncate toward zero; the arguments here are >= -0.5 so (int) is Math.trunc
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      w[x] = filter.f((x + xmin - center + 0.5) * ss);
      ww += w[x];
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0 ? w[x] / ww : w[x];
      // normalize_coeffs_8bpc: round half away from zero, then (int)
      k[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { bounds, k, ksize };
}

const clip8 = (ss: number) => {
  const v = ss >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
};

/** src (H, W, 3) -> (H, outW, 3) over rows y0 .. y0 + rows. */
function horizontal(src: Uint8Array, W: number, y0: number, rows: number, outW: number, filter: Filter): Uint8Array {
  const { bounds, k, ksize } = coefficients(W, outW, filter);
  const out = new Uint8Array(rows * outW * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let y = 0; y < rows; y++) {
    const row = (y + y0) * W * 3;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[xx * 2];
      const xmax = bounds[xx * 2 + 1];
      let s0 = half;
      let s1 = half;
      let s2 = half;
      for (let x = 0; x < xmax; x++) {
        const c = k[xx * ksize + x];
        const p = row + (x + xmin) * 3;
        s0 += src[p] * c;
        s1 += src[p + 1] * c;
        s2 += src[p + 2] * c;
      }
      const o = (y * outW + xx) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return out;
}

/** src (rows, W, 3) -> (outH, W, 3); the coefficient bounds are relative to row `y0` of the full image. */
function vertical(src: Uint8Array, W: number, outH: number, bounds: Int32Array, k: Int32Array, ksize: number, y0: number): Uint8Array {
  const out = new Uint8Array(outH * W * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2] - y0;
    const ymax = bounds[yy * 2 + 1];
    for (let x = 0; x < W * 3; x++) {
      let s = half;
      for (let y = 0; y < ymax; y++) s += src[(y + ymin) * W * 3 + x] * k[yy * ksize + y];
      out[yy * W * 3 + x] = clip8(s);
    }
  }
  return out;
}

/** `img` resized to outW x outH with Pillow's filter `resample`; the same size returns a copy. */
export function resizeRgb(img: RgbImage, outW: number, outH: number, resample: Resample): RgbImage {
  const { width: W, height: H } = img;
  if (W === outW && H === outH) return { width: W, height: H, data: img.data.slice() };
  if (resample === 'nearest') {
    // Pillow's ImagingScaleAffine: the source coordinate accumulates the scale step by step
    const index = (inSize: number, outSize: number) => {
      const idx = new Int32Array(outSize);
      const step = inSize / outSize;
      let o = step * 0.5;
      for (let i = 0; i < outSize; i++, o += step) idx[i] = Math.min(Math.trunc(o), inSize - 1);
      return idx;
    };
    const xs = index(W, outW);
    const ys = index(H, outH);
    const out = new Uint8Array(outW * outH * 3);
    for (let y = 0; y < outH; y++)
      for (let x = 0; x < outW; x++) {
        const p = (ys[y] * W + xs[x]) * 3;
        out.set(img.data.subarray(p, p + 3), (y * outW + x) * 3);
      }
    return { width: outW, height: outH, data: out };
  }
  const filter = FILTERS[resample];
  // As Pillow: only the passes whose size changes; the horizontal pass covers just the rows the
  // vertical one reads.
  let data = img.data;
  if (H !== outH) {
    const v = coefficients(H, outH, filter);
    const first = v.bounds[0];
    const last = v.bounds[(outH - 1) * 2] + v.bounds[(outH - 1) * 2 + 1];
    const rows = last - first;
    const tmp = W !== outW ? horizontal(data, W, first, rows, outW, filter) : data.subarray(first * W * 3, last * W * 3);
    data = vertical(tmp, outW, outH, v.bounds, v.k, v.ksize, first);
  } else {
    data = horizontal(data, W, 0, H, outW, filter);
  }
  return { width: outW, height: outH, data };
}
