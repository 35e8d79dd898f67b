// Image preprocessing for an encoder (SPEC §7), as Hugging Face's CLIPImageProcessor /
// ViTImageProcessor do it: resize (Pillow's filters, lib/image/resample.ts), centre crop, x * 1/255,
// normalise per channel, to a (3, H, W) float32 array. The settings come from the folder's
// preprocessor_config.json, else from the family's defaults.
import * as fs from 'fs';
import * as nodePath from 'path';
import { RgbImage, checkRgbImage } from './decode';
import { PIL_RESAMPLE, Resample, resizeRgb } from './resample';

export const PREPROCESSOR_CONFIG = 'preprocessor_config.json';
/** the largest image side a preprocessor config may ask for */
const MAX_SIDE = 16384;

export const CLIP_MEAN: [number, number, number] = [0.48145466, 0.4578275, 0.40821073];
export const CLIP_STD: [number, number, number] = [0.26862954, 0.26130258, 0.27577711];

export interface Size2 {
  height: number;
  width: number;
}

export interface PreprocessConfig {
  /** the shortest side to `shortestEdge` (aspect kept), or exactly height x width; null: no resize */
  resize: { shortestEdge: number } | Size2 | null;
  resample: Resample;
  /** centre crop (zero padding where the image is smaller, as HF); null: none */
  crop: Size2 | null;
  /** multiplies the 0..255 values (1/255); null: none */
  rescale: number | null;
  /** per-channel (x - mean) / std; null: none */
  mean: [number, number, number] | null;
  std: [number, number, number] | null;
}

/** SPEC §7's defaults for a family at `imageSize`. */
export function defaultPreprocess(family: 'clip' | 'vit', imageSize: number): PreprocessConfig {
  if (family === 'clip')
    return {
      resize: { shortestEdge: imageSize },
      resample: 'bicubic',
      crop: { height: imageSize, width: imageSize },
      rescale: 1 / 255,
      mean: CLIP_MEAN,
      std: CLIP_STD,
    };
  return {
    resize: { height: imageSize, width: imageSize },
    resample: 'bilinear',
    crop: null,
    rescale: 1 / 255,
    mean: [0.5, 0.5, 0.5],
    std: [0.5, 0.5, 0.5],
  };
}

/**
 * The preprocessing of `dir`: its preprocessor_config.json read over the family's defaults (keys it
 * does not have keep the default), or the defaults when there is none. Errors name the file and key.
 */
export function readPreprocessConfig(dir: string, family: 'clip' | 'vit', imageSize: number): PreprocessConfig {
  const cfg = defaultPreprocess(family, imageSize);
  const file = nodePath.join(dir, PREPROCESSOR_CONFIG);
  if (!fs.existsSync(file)) return cfg;
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file} is not valid JSON (${(e as Error).message})`);
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new Error(`${file} is not a JSON object`);
  const bad = (k: string, want: string) => new Error(`${file}: key "${k}" must be ${want}, got ${JSON.stringify(o[k])}`);
  const has = (k: string) => o[k] !== undefined && o[k] !== null;
  // sizes are bounded so that a bad file cannot make a resize allocate gigabytes
  const posInt = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v > 0 && v <= MAX_SIDE;
  const flag = (k: string): boolean | undefined => {
    if (!has(k)) return undefined;
    if (typeof o[k] !== 'boolean') throw bad(k, 'true or false');
    return o[k] as boolean;
  };
  const size2 = (k: string): Size2 | { shortestEdge: number } => {
    const v = o[k];
    if (posInt(v)) return { height: v as number, width: v as number };
    if (typeof v === 'object' && v !== null) {
      const s = v as Record<string, unknown>;
      if (posInt(s.shortest_edge) && s.height === undefined) return { shortestEdge: s.shortest_edge as number };
      if (posInt(s.height) && posInt(s.width)) return { height: s.height as number, width: s.width as number };
    }
    throw bad(k, `a positive integer up to ${MAX_SIDE}, {"shortest_edge": n} or {"height": h, "width": w}`);
  };
  const triple = (k: string): [number, number, number] => {
    const v = o[k];
    if (typeof v === 'number' && Number.isFinite(v)) return [v, v, v];
    if (Array.isArray(v) && v.length === 3 && v.every((x) => typeof x === 'number' && Number.isFinite(x)))
      return v as [number, number, number];
    throw bad(k, 'a number or three numbers');
  };

  if (has('size')) {
    const s = size2('size');
    // an int size means: CLIP the shortest edge, ViT a square (HF's default_to_square per processor)
    cfg.resize = 'height' in s && typeof o.size === 'number' && family === 'clip' ? { shortestEdge: s.height } : s;
  }
  if (flag('do_resize') === false) cfg.resize = null;
  if (has('resample')) {
    const r = PIL_RESAMPLE[o.resample as number];
    if (r === undefined) throw bad('resample', 'a Pillow filter code 0..5');
    cfg.resample = r;
  }
  if (has('crop_size')) {
    const c = size2('crop_size');
    if (!('height' in c)) throw bad('crop_size', `a positive integer up to ${MAX_SIDE} or {"height": h, "width": w}`);
    cfg.crop = c;
  }
  const doCrop = flag('do_center_crop');
  if (doCrop === false) cfg.crop = null;
  else if (doCrop === true && !cfg.crop) throw new Error(`${file}: do_center_crop is true but there is no crop_size`);
  if (has('rescale_factor')) {
    const r = o.rescale_factor;
    if (typeof r !== 'number' || !Number.isFinite(r) || r <= 0) throw bad('rescale_factor', 'a positive number');
    cfg.rescale = r;
  }
  if (flag('do_rescale') === false) cfg.rescale = null;
  if (has('image_mean')) cfg.mean = triple('image_mean');
  if (has('image_std')) {
    cfg.std = triple('image_std');
    if (cfg.std.some((s) => s === 0)) throw bad('image_std', 'non-zero');
  }
  if (flag('do_normalize') === false) cfg.mean = cfg.std = null;
  return cfg;
}

/** The height x width that `cfg` makes of any image (when it does not depend on the image). */
export function outputSize(cfg: PreprocessConfig): Size2 | undefined {
  if (cfg.crop) return cfg.crop;
  if (cfg.resize && 'height' in cfg.resize) return cfg.resize;
  return undefined;
}

/** The HF resized size of a W x H image (shortest edge: the long side int(size * long / short)). */
function resizedSize(img: RgbImage, resize: NonNullable<PreprocessConfig['resize']>): Size2 {
  if ('height' in resize) return resize;
  const s = resize.shortestEdge;
  const { width: W, height: H } = img;
  return W <= H ? { width: s, height: Math.trunc((s * H) / W) } : { height: s, width: Math.trunc((s * W) / H) };
}

/** The centre `crop` of img; where the image is smaller, zeros pad it evenly (as HF's center_crop). */
function centreCrop(img: RgbImage, crop: Size2): RgbImage {
  const { width: W, height: H } = img;
  if (W === crop.width && H === crop.height) return img;
  // top = (H - h) // 2 when the image is taller, else the image sits ceil((h - H) / 2) rows down
  const offset = (have: number, want: number) => (have >= want ? Math.floor((have - want) / 2) : -Math.ceil((want - have) / 2));
  const top = offset(H, crop.height);
  const left = offset(W, crop.width);
  const out = new Uint8Array(crop.width * crop.height * 3);
  for (let y = 0; y < crop.height; y++) {
    const sy = y + top;
    if (sy < 0 || sy >= H) continue;
    for (let x = 0; x < crop.width; x++) {
      const sx = x + left;
      if (sx < 0 || sx >= W) continue;
      out.set(img.data.subarray((sy * W + sx) * 3, (sy * W + sx) * 3 + 3), (y * crop.width + x) * 3);
    }
  }
  return { width: crop.width, height: crop.height, data: out };
}

/**
 * `img` preprocessed by `cfg` into `out` (3, H, W) float32 (a new array when not given). The
 * arithmetic is HF's: rescale in float64 then float32, (x - mean) / std in float32.
 */
export function preprocessImage(img: RgbImage, cfg: PreprocessConfig, out?: Float32Array): { pixels: Float32Array; size: Size2 } {
  checkRgbImage(img);
  let im = img;
  if (cfg.resize) {
    const s = resizedSize(im, cfg.resize);
    im = resizeRgb(im, s.width, s.height, cfg.resample);
  }
  if (cfg.crop) im = centreCrop(im, cfg.crop);
  const { width: W, height: H, data } = im;
  const plane = W * H;
  if (out && out.length !== 3 * plane)
    throw new RangeError(`preprocessImage: the output holds ${out.length} floats, the image needs 3 x ${H} x ${W}`);
  const pixels = out ?? new Float32Array(3 * plane);
  const f = Math.fround;
  for (let c = 0; c < 3; c++) {
    const mean = cfg.mean ? f(cfg.mean[c]) : 0;
    const std = cfg.std ? f(cfg.std[c]) : 1;
    for (let i = 0; i < plane; i++) {
      let v = f(cfg.rescale !== null ? data[i * 3 + c] * cfg.rescale : data[i * 3 + c]);
      if (cfg.mean) v = f(f(v - mean) / std);
      pixels[c * plane + i] = v;
    }
  }
  return { pixels, size: { height: H, width: W } };
}
