// Image input (SPEC §7): decoding through sharp and the preprocessing, against Pillow's results
// (test/golden/image-preprocess.json, written by tools/reference/image_reference.py from a real
// photo, ../shared/data/vision/bird.rgb).
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { decodeImage, RgbImage } from '../lib/image/decode';
import { resizeRgb, Resample } from '../lib/image/resample';
import { defaultPreprocess, preprocessImage, readPreprocessConfig, PreprocessConfig } from '../lib/image/preprocess';
import { dataPath, repoRoot } from './util/paths';

interface Golden {
  cases: { kind: string; filter?: Resample; src: number[]; out?: number[]; size?: number; crop?: number[]; pixels: string }[];
  files: { format: string; bytes: string; height: number; width: number; pixels: string }[];
}
const golden: Golden = JSON.parse(fs.readFileSync(path.join(repoRoot, 'test', 'golden', 'image-preprocess.json'), 'utf8'));
const bytesOf = (b64: string) => new Uint8Array(Buffer.from(b64, 'base64'));
const floatsOf = (b64: string) => {
  const b = Buffer.from(b64, 'base64');
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
};

const photo = fs.readFileSync(dataPath('vision', 'bird.rgb')); // (224, 224, 3)
function crop([y, x, h, w]: number[]): RgbImage {
  const data = new Uint8Array(h * w * 3);
  for (let r = 0; r < h; r++) data.set(photo.subarray(((y + r) * 224 + x) * 3, ((y + r) * 224 + x + w) * 3), r * w * 3);
  return { width: w, height: h, data };
}

describe('image input', () => {
  let tmp: string;
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'la-image-'));
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  describe('resize equals Pillow bit for bit', () => {
    for (const c of golden.cases.filter((c) => c.kind === 'resize'))
      it(`${c.filter} ${c.src[3]}x${c.src[2]} -> ${c.out![1]}x${c.out![0]}`, () => {
        const r = resizeRgb(crop(c.src), c.out![1], c.out![0], c.filter!);
        expect(Buffer.from(r.data).equals(Buffer.from(bytesOf(c.pixels)))).to.equal(true);
      });
  });

  describe('the CLIP and ViT pipelines equal Hugging Face (Pillow + numpy float32) bit for bit', () => {
    for (const c of golden.cases.filter((c) => c.kind === 'clip' || c.kind === 'vit'))
      it(`${c.kind} ${c.src[3]}x${c.src[2]} -> ${c.size}x${c.size}`, () => {
        const { pixels, size } = preprocessImage(crop(c.src), defaultPreprocess(c.kind as 'clip' | 'vit', c.size!));
        expect(size).to.deep.equal({ height: c.size, width: c.size });
        expect(Buffer.from(pixels.buffer).equals(Buffer.from(floatsOf(c.pixels).buffer))).to.equal(true);
      });
  });

  describe('centre crop pads a smaller image with zeros as HF', () => {
    for (const c of golden.cases.filter((c) => c.kind === 'crop'))
      it(`${c.src[3]}x${c.src[2]} -> ${c.crop![1]}x${c.crop![0]}`, () => {
        const cfg: PreprocessConfig = { resize: null, resample: 'bicubic', crop: { height: c.crop![0], width: c.crop![1] }, rescale: null, mean: null, std: null };
        const { pixels } = preprocessImage(crop(c.src), cfg);
        const want = bytesOf(c.pixels); // (h, w, 3)
        const [h, w] = c.crop!;
        for (let i = 0; i < h * w; i++) for (let ch = 0; ch < 3; ch++) expect(pixels[ch * h * w + i]).to.equal(want[i * 3 + ch]);
      });
  });

  it('an image already of the crop size is used as it is (no resampling)', () => {
    const img = crop([7, 9, 16, 16]);
    const { pixels } = preprocessImage(img, defaultPreprocess('clip', 16));
    const f = Math.fround;
    const mean = [0.48145466, 0.4578275, 0.40821073];
    const std = [0.26862954, 0.26130258, 0.27577711];
    for (let i = 0; i < 256; i++)
      for (let c = 0; c < 3; c++) expect(pixels[c * 256 + i]).to.equal(f(f(f(img.data[i * 3 + c] / 255) - f(mean[c])) / f(std[c])));
  });

  it('decodes PNG, and JPEG/WebP written by Pillow, to Pillow\'s pixels', async () => {
    const src = crop([30, 40, 24, 32]);
    const png = await sharp(Buffer.from(src.data), { raw: { width: 32, height: 24, channels: 3 } }).png().toBuffer();
    const d = await decodeImage('crop.png', png);
    expect([d.width, d.height]).to.deep.equal([32, 24]);
    expect(Buffer.from(d.data).equals(Buffer.from(src.data))).to.equal(true);
    for (const f of golden.files) {
      const img = await decodeImage(`pillow.${f.format}`, Buffer.from(f.bytes, 'base64'));
      expect([img.width, img.height]).to.deep.equal([f.width, f.height]);
      const want = bytesOf(f.pixels);
      let maxDiff = 0;
      for (let i = 0; i < want.length; i++) maxDiff = Math.max(maxDiff, Math.abs(img.data[i] - want[i]));
      // measured 0 for both (sharp's mozjpeg/libwebp and Pillow's libjpeg-turbo/libwebp agree here)
      expect(maxDiff, f.format).to.equal(0);
    }
  });

  it('expands grey and palette images and drops alpha (no compositing)', async () => {
    const grey = Uint8Array.from({ length: 12 }, (_, i) => i * 20);
    const g = await decodeImage('grey.png', await sharp(Buffer.from(grey), { raw: { width: 4, height: 3, channels: 1 } }).png().toBuffer());
    for (let i = 0; i < 12; i++) expect([...g.data.subarray(i * 3, i * 3 + 3)]).to.deep.equal([grey[i], grey[i], grey[i]]);

    const rgba = Uint8Array.from({ length: 4 * 3 * 4 }, (_, i) => (i % 4 === 3 ? (i * 37) % 256 : (i * 11) % 256));
    const a = await decodeImage('alpha.png', await sharp(Buffer.from(rgba), { raw: { width: 4, height: 3, channels: 4 } }).png().toBuffer());
    for (let i = 0; i < 12; i++) expect([...a.data.subarray(i * 3, i * 3 + 3)]).to.deep.equal([...rgba.subarray(i * 4, i * 4 + 3)]);

    // four colours: the palette holds them exactly
    const colours = [[200, 10, 30], [0, 0, 0], [255, 255, 255], [12, 140, 90]];
    const pal = Uint8Array.from({ length: 8 * 8 * 3 }, (_, i) => colours[Math.floor(i / 3) % 4][i % 3]);
    const palPng = await sharp(Buffer.from(pal), { raw: { width: 8, height: 8, channels: 3 } }).png({ palette: true, dither: 0 }).toBuffer();
    expect((await sharp(palPng).metadata()).isPalette).to.equal(true);
    const p = await decodeImage('palette.png', palPng);
    expect(Buffer.from(p.data).equals(Buffer.from(pal))).to.equal(true);

    // a real grey photo (Fashion-MNIST, 28 x 28 PNG)
    const fm = await decodeImage(dataPath('fashion-mnist', 'images', 'train', '00000.png'));
    expect([fm.width, fm.height]).to.deep.equal([28, 28]);
    let nonzero = 0;
    for (let i = 0; i < 28 * 28; i++) {
      expect(fm.data[i * 3]).to.equal(fm.data[i * 3 + 1]).and.equal(fm.data[i * 3 + 2]);
      if (fm.data[i * 3]) nonzero++;
    }
    expect(nonzero).to.be.greaterThan(100);
  });

  it('a missing, truncated, unsupported or non-image file is an error naming it', async () => {
    const rejects = async (p: string, re: RegExp) => {
      let err: Error | undefined;
      try {
        await decodeImage(p);
      } catch (e) {
        err = e as Error;
      }
      expect(err?.message, p).to.match(re);
      expect(err!.message.startsWith(p)).to.equal(true);
    };
    await rejects(path.join(tmp, 'nope.png'), /no such image file/);
    await rejects(dataPath('vision', 'cat.bmp'), /not a readable image|unsupported image format/);
    const full = await sharp(Buffer.from(crop([0, 0, 64, 64]).data), { raw: { width: 64, height: 64, channels: 3 } }).png().toBuffer();
    fs.writeFileSync(path.join(tmp, 'cut.png'), full.subarray(0, full.length >> 1));
    await rejects(path.join(tmp, 'cut.png'), /cannot decode the PNG image.*truncated or corrupt/);
    const jpg = await sharp(Buffer.from(crop([0, 0, 64, 64]).data), { raw: { width: 64, height: 64, channels: 3 } }).jpeg().toBuffer();
    fs.writeFileSync(path.join(tmp, 'cut.jpg'), jpg.subarray(0, jpg.length >> 1));
    await rejects(path.join(tmp, 'cut.jpg'), /cannot decode the JPEG image/);
    fs.writeFileSync(path.join(tmp, 'notes.png'), 'not an image at all');
    await rejects(path.join(tmp, 'notes.png'), /not a readable image/);
    fs.writeFileSync(path.join(tmp, 'a.gif'), await sharp(Buffer.from(crop([0, 0, 8, 8]).data), { raw: { width: 8, height: 8, channels: 3 } }).gif().toBuffer());
    await rejects(path.join(tmp, 'a.gif'), /unsupported image format gif/);
  });

  it('reads preprocessor_config.json over the family defaults; a bad key is named', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'cfg-'));
    const write = (o: unknown) => fs.writeFileSync(path.join(dir, 'preprocessor_config.json'), JSON.stringify(o));
    expect(readPreprocessConfig(dir, 'vit', 224)).to.deep.equal(defaultPreprocess('vit', 224));
    write({ size: 224, crop_size: 200, do_center_crop: true, resample: 3, image_mean: [0.1, 0.2, 0.3], image_std: 0.5 });
    const c = readPreprocessConfig(dir, 'clip', 200);
    expect(c.resize).to.deep.equal({ shortestEdge: 224 });
    expect(c.crop).to.deep.equal({ height: 200, width: 200 });
    expect(c.mean).to.deep.equal([0.1, 0.2, 0.3]);
    expect(c.std).to.deep.equal([0.5, 0.5, 0.5]);
    write({ size: { height: 32, width: 48 }, resample: 2, do_normalize: false });
    const v = readPreprocessConfig(dir, 'vit', 32);
    expect(v.resize).to.deep.equal({ height: 32, width: 48 });
    expect(v.mean).to.equal(null);
    write({ size: 'big' });
    expect(() => readPreprocessConfig(dir, 'vit', 224)).to.throw(/preprocessor_config.json: key "size" must be/);
    write({ size: { shortest_edge: 1e9 } });
    expect(() => readPreprocessConfig(dir, 'clip', 224)).to.throw(/key "size" must be a positive integer up to 16384/);
    write({ resample: 9 });
    expect(() => readPreprocessConfig(dir, 'vit', 224)).to.throw(/key "resample" must be a Pillow filter code/);
    fs.writeFileSync(path.join(dir, 'preprocessor_config.json'), '{oops');
    expect(() => readPreprocessConfig(dir, 'vit', 224)).to.throw(/preprocessor_config.json is not valid JSON/);
  });
});
