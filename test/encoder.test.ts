// The image encoder's forward (SPEC §7, §9) against the float64 references of
// tools/reference/encoder_reference.py (torchvision's VisionTransformer for the ViT folder, and a
// separate implementation of the published CLIP/ViT architecture for all four folders, with the
// gated prompt branch), on the tiny random folders of test/golden/encoders.
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { native, Tensor } from '../lib/native';
import { ImageEncoder, linear } from '../lib/encoder/encoder';
import { preprocessImage } from '../lib/image/preprocess';
import { dataPath, repoRoot } from './util/paths';
import { withMatmulPrecision } from './util/precision';

const goldenDir = path.join(repoRoot, 'test', 'golden', 'encoders');
interface FolderGolden {
  family: string;
  dtype: string;
  architecture: string;
  features: Record<string, string>;
  prompted: Record<string, { features: string; logits?: string }>;
  logits?: string;
  torchvision?: Record<string, string>;
  torchvisionLogits?: string;
}
const golden: {
  pixels: string;
  pixelShape: number[];
  folders: Record<string, FolderGolden>;
  prompts: Record<string, { values: string; shape: number[]; gates: string; gateShape: number[] }>;
} = JSON.parse(fs.readFileSync(path.join(goldenDir, 'golden.json'), 'utf8'));
const floats = (b64: string) => {
  const b = Buffer.from(b64, 'base64');
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
};
const B = golden.pixelShape[0];

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).to.equal(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** (M tensors of (B, D)) -> (B, M, D) as the golden files hold them */
async function stack(ts: Tensor[]): Promise<Float32Array> {
  const vals = (await Promise.all(ts.map((t) => t.read()))) as Float32Array[];
  ts.forEach((t) => t.dispose());
  const D = vals[0].length / B;
  const out = new Float32Array(B * ts.length * D);
  for (let b = 0; b < B; b++) for (let m = 0; m < ts.length; m++) out.set(vals[m].subarray(b * D, (b + 1) * D), (b * ts.length + m) * D);
  return out;
}

// f32 engine against float64 references on O(1) values: measured max |diff| 9.2e-7 (vit-f32 layer -1)
const TOL = 5e-6;

describe('image encoder forward', () => {
  for (const [name, g] of Object.entries(golden.folders))
    describe(`${name} (${g.architecture}, ${g.dtype})`, () => {
      let enc: ImageEncoder;
      let pixels: Tensor;
      before(async () => {
        enc = await ImageEncoder.load(path.join(goldenDir, name), { device: 'cpu' });
        pixels = native.fromArray(floats(golden.pixels), golden.pixelShape);
      });
      after(() => {
        pixels.dispose();
        enc.dispose();
      });

      for (const layers of Object.keys(g.features))
        it(`features of layers ${layers} match the float64 reference`, async () => {
          const got = await stack(enc.forward(pixels, { featureLayers: layers.split(',').map(Number) }));
          expect(maxDiff(got, floats(g.features[layers]))).to.be.below(TOL);
          if (g.torchvision?.[layers]) expect(maxDiff(got, floats(g.torchvision[layers]))).to.be.below(TOL);
        });

      if (g.logits)
        it('the classifier on layernorm(h[cls]) matches (torchvision heads)', async () => {
          const pooled = enc.forward(pixels, { project: false })[0];
          const w = enc.weights.classifier!;
          const logits = linear(pooled, w.w, w.b);
          pooled.dispose();
          const got = (await logits.read()) as Float32Array;
          logits.dispose();
          expect(maxDiff(got, floats(g.logits!))).to.be.below(TOL);
          expect(maxDiff(got, floats(g.torchvisionLogits!))).to.be.below(TOL);
        });

      for (const [key, p] of Object.entries(golden.prompts))
        it(`with gated prompts in the top ${p.shape[0]} layer(s) (SPEC §9) matches the reference`, async () => {
          const L = p.shape[0];
          const K = p.shape[1];
          const C = p.shape[2];
          const vals = floats(p.values);
          const gv = floats(p.gates);
          const prompts = Array.from({ length: L }, (_, l) => native.fromArray(vals.slice(l * K * C, (l + 1) * K * C), [K, C]));
          const gates = Array.from({ length: L }, (_, l) => native.fromArray(gv.slice(l * p.gateShape[1], (l + 1) * p.gateShape[1]), [p.gateShape[1]]));
          const got = await stack(enc.forward(pixels, { prompts: { prompts, gates } }));
          expect(maxDiff(got, floats(g.prompted[key].features))).to.be.below(TOL);
          // gates = 0: the frozen encoder's features, bit for bit
          const zeros = gates.map(() => native.zeros([p.gateShape[1]]));
          const gated0 = await stack(enc.forward(pixels, { prompts: { prompts, gates: zeros } }));
          const frozen = await stack(enc.forward(pixels));
          expect(Buffer.from(gated0.buffer).equals(Buffer.from(frozen.buffer))).to.equal(true);
          [...prompts, ...gates, ...zeros].forEach((t) => t.dispose());
        });
    });

  it('bf16 storage of an F32 folder: features within bf16 rounding of the reference', async () => {
    const enc = await ImageEncoder.load(path.join(goldenDir, 'clip-f32'), { device: 'cpu', dtype: 'bf16' });
    const pixels = native.fromArray(floats(golden.pixels), golden.pixelShape);
    try {
      const got = await stack(enc.forward(pixels));
      const want = floats(golden.folders['clip-f32'].features['-1']);
      const scale = Math.max(...Array.from(want, Math.abs));
      // bf16 keeps 8 bits of mantissa (weights within 2^-9 relative): measured 4.7e-3 of the largest value
      const d = maxDiff(got, want);
      expect(d).to.be.below(0.02 * scale);
      expect(d).to.be.above(0); // it did round
      // matmul precision "medium": the activations rounded to bf16 too (native/core/bf16_gemm.cpp)
      const medium = await withMatmulPrecision('medium', () => stack(enc.forward(pixels)));
      const dm = maxDiff(medium, want);
      expect(dm, 'medium vs the float64 reference').to.be.below(0.03 * scale);
      expect(maxDiff(medium, got), 'medium rounds more than bf16 storage alone').to.be.above(0);
    } finally {
      pixels.dispose();
      enc.dispose();
    }
  });

  describe('embed', () => {
    let tmp: string;
    let enc: ImageEncoder;
    const files: string[] = [];
    before(async () => {
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'la-embed-'));
      enc = await ImageEncoder.load(path.join(goldenDir, 'clip-f32'), { device: 'cpu' });
      // real photos (Fashion-MNIST PNGs, 28 x 28 grey) and a colour crop of bird.rgb as PNG, JPEG, WebP
      for (let i = 0; i < 4; i++) files.push(dataPath('fashion-mnist', 'images', 'test', `0000${i}.png`));
      const bird = fs.readFileSync(dataPath('vision', 'bird.rgb'));
      for (const fmt of ['png', 'jpeg', 'webp'] as const) {
        const f = path.join(tmp, `bird.${fmt}`);
        await sharp(bird, { raw: { width: 224, height: 224, channels: 3 } }).extract({ left: 20, top: 30, width: 150, height: 100 })[fmt]().toFile(f);
        files.push(f);
      }
    });
    after(() => {
      enc.dispose();
      fs.rmSync(tmp, { recursive: true, force: true });
    });

    it('equals the forward of the preprocessed images; batching does not change the result', async () => {
      const progress: number[] = [];
      const got = await enc.embed(files, { batchSize: 3, featureLayers: [1, -1], onProgress: (d) => progress.push(d) });
      expect(progress).to.deep.equal([3, 6, 7]);
      expect(got.length).to.equal(files.length);
      const whole = await enc.embed(files, { batchSize: 32, featureLayers: [1, -1] });
      for (let i = 0; i < files.length; i++) {
        expect(got[i].length).to.equal(2 * 6);
        expect(maxDiff(got[i], whole[i])).to.be.below(1e-6);
      }
      // one image through forward() on its own preprocessed pixels
      const { decodeImage } = await import('../lib/image/decode');
      const { pixels } = preprocessImage(await decodeImage(files[5]), enc.preprocess);
      const t = native.fromArray(pixels, [1, 3, 8, 8]);
      const f = enc.forward(t, { featureLayers: [1, -1] });
      const vals = (await Promise.all(f.map((x) => x.read()))) as Float32Array[];
      expect(maxDiff(got[5], [...vals[0], ...vals[1]])).to.be.below(1e-6);
      [t, ...f].forEach((x) => x.dispose());
      // different images, different features
      expect(maxDiff(got[0], got[4])).to.be.above(1e-3);
    });

    it('bad images and arguments are errors naming them', async () => {
      const rejects = async (p: Promise<unknown>, re: RegExp) => {
        let err: Error | undefined;
        await p.catch((e) => (err = e));
        expect(err?.message).to.match(re);
      };
      await rejects(enc.embed([files[0], path.join(tmp, 'missing.png')]), /missing\.png: no such image file/);
      await rejects(enc.embed([dataPath('vision', 'cat.bmp')]), /cat\.bmp: (not a readable image|unsupported image format)/);
      await rejects(enc.embed(files, { featureLayers: [3] }), /feature layer 3 is outside 1\.\.2/);
      await rejects(enc.embed(files, { featureLayers: [0] }), /feature layer 0 is outside/);
      await rejects(enc.embed(files, { batchSize: 0 }), /positive integer for batchSize/);
      await rejects(enc.embed([{ width: 2, height: 2, data: new Uint8Array(5) }]), /images\[0\]: 2x2 RGB needs 12 bytes/);
      await rejects(ImageEncoder.load(path.join(tmp, 'nope')), /encoder not found/);
      // a preprocessor config that makes images of another size than the encoder takes
      const dir = path.join(tmp, 'clip-crop');
      fs.mkdirSync(dir);
      const src = path.join(goldenDir, 'clip-f16');
      for (const f of fs.readdirSync(src)) fs.copyFileSync(path.join(src, f), path.join(dir, f));
      fs.writeFileSync(path.join(dir, 'preprocessor_config.json'), JSON.stringify({ size: 12, crop_size: 12 }));
      await rejects(ImageEncoder.load(dir, { device: 'cpu' }), /preprocessor_config\.json makes 12x12 images but the encoder takes 8x8/);
    });
  });
});
