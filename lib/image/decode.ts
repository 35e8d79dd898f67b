// Image decoding (SPEC §7): PNG, JPEG or WebP through sharp (libvips) to 8-bit RGB, grey and
// palette images expanded, alpha dropped (as PIL's convert("RGB"), which Hugging Face's
// processors use: no compositing, no EXIF rotation). Errors name the file.
import * as fs from 'fs';
import type SharpModule from 'sharp';

/** sharp (and libvips) load on the first image, not when the library is required. */
let sharpModule: typeof SharpModule | undefined;
function sharp(input: Buffer, opts?: SharpModule.SharpOptions): SharpModule.Sharp {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  sharpModule ??= require('sharp') as typeof SharpModule;
  return sharpModule(input, opts);
}

/** An 8-bit RGB image: data (H, W, 3) row-major, interleaved. */
export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array;
}

/** The formats we accept (sharp's names). */
const FORMATS: Record<string, string> = { png: 'PNG', jpeg: 'JPEG', webp: 'WebP' };

/** Checks a caller-made image; throws naming `what` when its fields disagree. */
export function checkRgbImage(img: RgbImage, what = 'image'): RgbImage {
  const ok = (n: unknown) => typeof n === 'number' && Number.isSafeInteger(n) && n > 0;
  if (typeof img !== 'object' || img === null || !ok(img.width) || !ok(img.height) || !(img.data instanceof Uint8Array))
    throw new TypeError(`${what}: expected { width, height, data: Uint8Array (height * width * 3 RGB bytes) }`);
  if (img.data.length !== img.width * img.height * 3)
    throw new RangeError(
      `${what}: ${img.width}x${img.height} RGB needs ${img.width * img.height * 3} bytes, data has ${img.data.length}`,
    );
  return img;
}

/**
 * Decodes the file at `path` (or the bytes of `input`, named `path` in errors) to 8-bit RGB. A
 * missing file, an unsupported format, or a truncated/corrupt image rejects with an Error whose
 * message begins with the path.
 */
export async function decodeImage(path: string, input?: Buffer): Promise<RgbImage> {
  let bytes = input;
  if (!bytes) {
    try {
      bytes = await fs.promises.readFile(path);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new Error(`${path}: ${code === 'ENOENT' ? 'no such image file' : `cannot read the image (${(e as Error).message})`}`);
    }
  }
  let format: string | undefined;
  try {
    format = (await sharp(bytes).metadata()).format;
  } catch (e) {
    throw new Error(`${path}: not a readable image (${shortReason(e)}); PNG, JPEG and WebP are supported`);
  }
  if (!format || !(format in FORMATS))
    throw new Error(`${path}: unsupported image format ${format ?? 'unknown'} (PNG, JPEG and WebP are supported)`);
  try {
    // failOn 'warning' (sharp's default, stated): a truncated file is an error, not a grey tail.
    const { data, info } = await sharp(bytes, { failOn: 'warning' })
      .removeAlpha()
      .toColourspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels, expected 3`);
    return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
  } catch (e) {
    throw new Error(`${path}: cannot decode the ${FORMATS[format]} image (${shortReason(e)}); truncated or corrupt?`);
  }
}

function shortReason(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split('\n')[0].trim();
}
