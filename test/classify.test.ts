// Image classification with zero-init gated prompts (SPEC §9): the head's and the whole adapter's
// gradients against finite differences of an independent float64 reference on a tiny random ViT,
// g = 0 with a zero head gives the frozen encoder's features exactly, the adapter file and its
// checks, and the training loss going down on a small separable set.
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native, Tensor } from '../lib/native';
import { Classifier, EncoderDims, headBackward, headForward } from '../lib/model/classifier';
import { writeSafetensors } from '../lib/model/safetensors';
import { readSafetensorsHeader } from '../lib/model/safetensors';
import { ClassifyEncoder } from '../lib/tasks/classify-encoder';
import { classifyLogits, openClassifier } from '../lib/tasks/classify';
import { writeRandomViT } from '../tools/make-random-vit';
import { Rng } from './util/reference';
import { classifyLoss, finiteDiff, RefAdapter, RefViT, vitFeatures } from './util/vit-reference';

/** The float64 reference model of a ViT folder's model.safetensors. */
function refOf(dir: string, o: { image: number; patch: number; hidden: number; heads: number; mlp: number }): RefViT {
  const file = path.join(dir, 'model.safetensors');
  const h = readSafetensorsHeader(file);
  const buf = fs.readFileSync(file);
  const w = new Map<string, Float64Array>();
  for (const [name, e] of h.tensors) w.set(name.replace(/^vit\./, ''), Float64Array.from(new Float32Array(buf.buffer.slice(buf.byteOffset + e.byteOffset, buf.byteOffset + e.byteOffset + e.byteLength))));
  return { D: o.hidden, H: o.heads, F: o.mlp, patch: o.patch, image: o.image, channels: 3, eps: 1e-12, w };
}

/** Random 8-bit RGB PNGs of size x size. */
async function writePngs(dir: string, n: number, size: number, seed: number): Promise<string[]> {
  const sharp = (await import('sharp')).default;
  const rng = new Rng(seed);
  const files: string[] = [];
  for (let i = 0; i < n; i++) {
    const data = Buffer.from(Array.from({ length: size * size * 3 }, () => Math.floor(rng.uniform() * 256)));
    const f = path.join(dir, `img${i}.png`);
    await sharp(data, { raw: { width: size, height: size, channels: 3 } }).png().toFile(f);
    files.push(f);
  }
  return files;
}

async function f32(t: Tensor): Promise<Float32Array> {
  return (await t.read()) as Float32Array;
}

/** max |a - b| / max(max |b|, floor): a norm-wise relative error */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>, floor = 1e-6): number {
  let num = 0;
  let den = floor;
  for (let i = 0; i < b.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

async function errorOf(fn: () => unknown): Promise<string> {
  try {
    await fn();
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error('expected an error');
}

/** Mean cross-entropy (float64) of the head (C, D), (C) on features (B, D). */
function headLoss(f: ArrayLike<number>, W: ArrayLike<number>, b: ArrayLike<number>, labels: number[], D: number, C: number): number {
  let sum = 0;
  labels.forEach((y, i) => {
    const z = Array.from({ length: C }, (_, c) => {
      let s = b[c];
      for (let k = 0; k < D; k++) s += f[i * D + k] * W[c * D + k];
      return s;
    });
    const m = Math.max(...z);
    sum += m + Math.log(z.reduce((a, v) => a + Math.exp(v - m), 0)) - z[y];
  });
  return sum / labels.length;
}

describe('image classification (SPEC §9)', function () {
  this.timeout(120_000);

  describe('the linear head', function () {
    it('dW = dlogitsᵀ f, db = column sums, df = dlogits · W against finite differences of the float64 loss', async function () {
      const rng = new Rng(11);
      const B = 5;
      const D = 12;
      const C = 4;
      const f = Float64Array.from({ length: B * D }, () => rng.normal());
      const W = Float64Array.from({ length: C * D }, () => 0.5 * rng.normal());
      const b = Float64Array.from({ length: C }, () => 0.5 * rng.normal());
      const labels = [0, 3, 1, 1, 2];
      const ft = native.fromArray(Float32Array.from(f), [B, D]);
      const Wt = native.fromArray(Float32Array.from(W), [C, D]);
      const bt = native.fromArray(Float32Array.from(b), [C]);
      const logits = headForward(ft, Wt, bt);
      const [loss, dlogits] = native.crossEntropy(logits, native.fromArray(Int32Array.from(labels), [B], 'i32'), 1 / B);
      const { dW, db, df } = headBackward(dlogits, ft, Wt, true);
      // f32 inputs: the reference runs on the same rounded values
      const f32v = Float64Array.from(Float32Array.from(f));
      const W32 = Float64Array.from(Float32Array.from(W));
      const b32 = Float64Array.from(Float32Array.from(b));
      const L = () => headLoss(f32v, W32, b32, labels, D, C);
      expect((await f32(loss))[0] / B).to.be.closeTo(L(), 1e-5);
      expect(relErr(await f32(dW), finiteDiff(L, W32))).to.be.below(1e-4);
      expect(relErr(await f32(db), finiteDiff(L, b32))).to.be.below(1e-4);
      expect(relErr(await f32(df!), finiteDiff(L, f32v))).to.be.below(1e-4);
      for (const t of [ft, Wt, bt, logits, loss, dlogits, dW, db, df!]) t.dispose();
    });
  });

  describe('on a tiny random ViT (8px images, 4px patches, hidden 8, 3 layers, 2 heads)', function () {
    const o = { image: 8, patch: 4, hidden: 8, layers: 3, heads: 2, mlp: 16, seed: 4 };
    let dir: string;
    let enc: ClassifyEncoder;
    let ref: RefViT;
    let files: string[];
    let px: Float64Array[]; // each image's preprocessed pixels (3, 8, 8)
    before(async function () {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-cls-vit-'));
      writeRandomViT(path.join(dir, 'vit'), o);
      enc = await ClassifyEncoder.load(path.join(dir, 'vit'), 'cpu');
      ref = refOf(path.join(dir, 'vit'), o);
      files = await writePngs(dir, 3, 8, 9);
      const p = await enc.pixels(files);
      const all = await f32(p);
      p.dispose();
      px = files.map((_, i) => Float64Array.from(all.subarray(i * 192, (i + 1) * 192)));
    });
    after(() => {
      enc?.dispose();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    /** A classifier on the tiny encoder: Classifier.init's prompts and gates, a random head (or zero). */
    async function classifierOf(layers: number, gates: 'zero' | 'random', head: boolean): Promise<Classifier> {
      const init = Classifier.init(enc.dims, { layers, len: layers ? 3 : 0, gateInit: gates, labels: ['a', 'b', 'c'] }, 2, 'cpu');
      const v = await init.values();
      init.dispose();
      const rng = new Rng(5);
      const weight = head ? rng.normals(3 * o.hidden, 0.5) : new Float32Array(3 * o.hidden);
      const bias = head ? rng.normals(3, 0.5) : new Float32Array(3);
      return Classifier.fromValues(enc.dims, init.config, { ...v, weight, bias }, 'cpu');
    }

    function refAdapter(c: Classifier, v: { prompts: Float32Array; gates: Float32Array; weight: Float32Array; bias: Float32Array }): RefAdapter {
      const { layers: L, len: K } = c.config;
      const D = o.hidden;
      return {
        first: c.firstLayer,
        K,
        prompts: Array.from({ length: L }, (_, l) => Float64Array.from(v.prompts.subarray(l * K * D, (l + 1) * K * D))),
        gates: Array.from({ length: L }, (_, l) => Float64Array.from(v.gates.subarray(l * o.heads, (l + 1) * o.heads))),
        weight: Float64Array.from(v.weight),
        bias: Float64Array.from(v.bias),
      };
    }

    /** The native loss and gradients (every parameter) of the classifier on the three images. */
    async function nativeGrads(c: Classifier, labels: number[]): Promise<{ loss: number; grads: Float32Array[] }> {
      const pixels = await enc.pixels(files);
      const B = files.length;
      const params = c.parameters();
      const grads = params.map((p) => native.zeros([...p.shape], 'f32', 'cpu'));
      let f: Tensor;
      let run: ReturnType<ClassifyEncoder['adaptedForward']> | undefined;
      if (c.config.layers === 0) f = enc.features(pixels);
      else {
        run = enc.adaptedForward(pixels, c, true);
        f = run.features;
      }
      const logits = headForward(f, c.weight, c.bias);
      const [loss, dlogits] = native.crossEntropy(logits, native.fromArray(Int32Array.from(labels), [B], 'i32'), 1 / B);
      const { dW, db, df } = headBackward(dlogits, f, c.weight, !!run);
      native.addInPlace(grads[grads.length - 2], dW);
      native.addInPlace(grads[grads.length - 1], db);
      run?.backward!(df!, grads.slice(0, grads.length - 2));
      const out = { loss: (await f32(loss))[0] / B, grads: await Promise.all(grads.map(f32)) };
      for (const t of [pixels, logits, loss, dlogits, dW, db, df, ...grads]) t?.dispose();
      if (run) run.dispose();
      else f.dispose();
      return out;
    }

    it('the frozen features equal the float64 reference (an independent ViT forward)', async function () {
      const p = await enc.pixels(files);
      const f = enc.features(p);
      const got = await f32(f);
      for (let i = 0; i < files.length; i++) expect(relErr(got.subarray(i * 8, (i + 1) * 8), vitFeatures(ref, px[i]))).to.be.below(1e-4);
      p.dispose();
      f.dispose();
    });

    it('g = 0: the adapted layers give the frozen features bit for bit, and a zero head gives logits 0', async function () {
      const p = await enc.pixels(files);
      const frozen = await f32(enc.features(p));
      for (const L of [1, 3]) {
        const c = await classifierOf(L, 'zero', false);
        const run = enc.adaptedForward(p, c, false);
        const train = enc.adaptedForward(p, c, true); // the training graph's forward too
        expect(Array.from(await f32(train.features)), `top ${L} layers, training graph`).to.deep.equal(Array.from(frozen));
        train.dispose();
        expect(Array.from(await f32(run.features)), `top ${L} layers`).to.deep.equal(Array.from(frozen));
        const logits = headForward(run.features, c.weight, c.bias);
        expect(Array.from(await f32(logits))).to.deep.equal(new Array(9).fill(0));
        logits.dispose();
        run.dispose();
        c.dispose();
      }
      p.dispose();
    });

    it('head only: the loss and the head gradient against finite differences of the float64 reference', async function () {
      const c = await classifierOf(0, 'zero', true);
      const labels = [2, 0, 1];
      const { loss, grads } = await nativeGrads(c, labels);
      const a = refAdapter(c, await c.values());
      const L = () => classifyLoss(ref, px, labels, a);
      expect(loss).to.be.closeTo(L(), 1e-5);
      expect(relErr(grads[0], finiteDiff(L, a.weight))).to.be.below(1e-3);
      expect(relErr(grads[1], finiteDiff(L, a.bias))).to.be.below(1e-3);
      c.dispose();
    });

    it('prompts + gates + head: every gradient against finite differences of the float64 reference', async function () {
      for (const L of [1, 2]) {
        const c = await classifierOf(L, 'random', true);
        const labels = [1, 2, 0];
        const { loss, grads } = await nativeGrads(c, labels);
        const a = refAdapter(c, await c.values());
        const F = () => classifyLoss(ref, px, labels, a);
        expect(loss, `top ${L}: loss`).to.be.closeTo(F(), 1e-5);
        for (let l = 0; l < L; l++) {
          expect(relErr(grads[l], finiteDiff(F, a.prompts[l])), `top ${L}: prompts of layer ${l}`).to.be.below(2e-3);
          expect(relErr(grads[L + l], finiteDiff(F, a.gates[l])), `top ${L}: gates of layer ${l}`).to.be.below(2e-3);
        }
        expect(relErr(grads[2 * L], finiteDiff(F, a.weight)), `top ${L}: head weight`).to.be.below(1e-3);
        expect(relErr(grads[2 * L + 1], finiteDiff(F, a.bias)), `top ${L}: head bias`).to.be.below(1e-3);
        c.dispose();
      }
    });

    it("a ViTForImageClassification folder's own classifier: logits = classifier · features + bias against the reference", async function () {
      const withHead = writeRandomViT(path.join(dir, 'vit-cls'), { ...o, labels: ['x', 'y', 'z'] });
      const e2 = await ClassifyEncoder.load(withHead, 'cpu');
      try {
        const c = await openClassifier(e2, withHead);
        expect(c.config.labels).to.deep.equal(['x', 'y', 'z']);
        const logits = await classifyLogits(e2, c, files.map((f) => ({ image: f, file: f, label: 0 })), 2);
        const r = refOf(withHead, o);
        const W = r.w.get('classifier.weight')!;
        const b = r.w.get('classifier.bias')!;
        files.forEach((_, i) => {
          const f = vitFeatures(r, px[i]);
          const want = [0, 1, 2].map((k) => b[k] + f.reduce((s, v, j) => s + v * W[k * o.hidden + j], 0));
          expect(relErr(logits.subarray(i * 3, i * 3 + 3), want)).to.be.below(1e-4);
        });
        c.dispose();
      } finally {
        e2.dispose();
      }
    });

    it('at g = 0 the prompts get no gradient, the gates do', async function () {
      const c = await classifierOf(2, 'zero', true);
      const { grads } = await nativeGrads(c, [0, 1, 2]);
      expect(grads[0].every((g) => g === 0) && grads[1].every((g) => g === 0)).to.equal(true);
      expect(grads[2].some((g) => g !== 0) && grads[3].some((g) => g !== 0)).to.equal(true);
      c.dispose();
    });
  });

  describe('the adapter file', function () {
    const enc: EncoderDims = { family: 'vit', hidden: 8, layers: 3, heads: 2, patch: 4, image: 8 };
    let dir: string;
    before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-cls-file-'))));
    after(() => fs.rmSync(dir, { recursive: true, force: true }));

    it('init: prompts N(0, 1) from the seed, gates 0 (or N(0, 1) for the ablation), a zero head', async function () {
      const a = Classifier.init(enc, { layers: 2, len: 3, gateInit: 'zero', labels: ['a', 'b', 'c'] }, 5, 'cpu');
      const v = await a.values();
      expect(v.prompts.length).to.equal(2 * 3 * 8);
      const mean = v.prompts.reduce((s, x) => s + x, 0) / v.prompts.length;
      expect(Math.abs(mean)).to.be.below(0.5);
      expect(Array.from(v.gates)).to.deep.equal([0, 0, 0, 0]);
      expect(v.weight.every((x) => x === 0) && v.bias.every((x) => x === 0)).to.equal(true);
      expect(a.firstLayer).to.equal(1);
      expect(a.layer(0)).to.equal(undefined);
      expect(a.layer(2)!.prompt.shape).to.deep.equal([3, 8]);
      expect(a.parameterCount).to.equal(2 * (3 * 8 + 2) + 3 * 9);
      const r = Classifier.init(enc, { layers: 2, len: 3, gateInit: 'random', labels: ['a', 'b', 'c'] }, 5, 'cpu');
      const rv = await r.values();
      expect(Array.from(rv.prompts)).to.deep.equal(Array.from(v.prompts)); // the same prompts; the gates drawn after them
      expect(rv.gates.every((g) => g !== 0)).to.equal(true);
      a.dispose();
      r.dispose();
    });

    it('save and load round-trip every value, labels and dims in the metadata', async function () {
      const a = Classifier.init(enc, { layers: 2, len: 3, gateInit: 'random', labels: ['cat', 'dog'] }, 1, 'cpu');
      native.addInPlace(a.weight, native.fromArray(Float32Array.from({ length: 16 }, (_, i) => i / 7), [2, 8]));
      const file = path.join(dir, 'a.safetensors');
      await a.save(file);
      const b = Classifier.load(file, enc, 'cpu');
      expect(b.config).to.deep.equal(a.config);
      const [va, vb] = [await a.values(), await b.values()];
      for (const k of ['prompts', 'gates', 'weight', 'bias'] as const) expect(Array.from(vb[k])).to.deep.equal(Array.from(va[k]));
      a.dispose();
      b.dispose();
      const h = Classifier.init(enc, { layers: 0, len: 0, gateInit: 'zero', labels: ['x', 'y'] }, 1, 'cpu');
      await h.save(path.join(dir, 'h.safetensors'));
      const h2 = Classifier.load(path.join(dir, 'h.safetensors'), enc, 'cpu');
      expect(h2.parameters()).to.have.length(2);
      h.dispose();
      h2.dispose();
    });

    it('an adapter for another encoder, a LLaMA adapter or a damaged file is a clear error', async function () {
      const a = Classifier.init(enc, { layers: 2, len: 3, gateInit: 'zero', labels: ['cat', 'dog'] }, 1, 'cpu');
      const file = path.join(dir, 'b.safetensors');
      await a.save(file);
      a.dispose();
      expect(await errorOf(() => Classifier.load(file, { ...enc, hidden: 16, heads: 4 }, 'cpu'))).to.equal(
        `${file} was trained for another encoder: hidden_size 8 in the adapter, 16 in the encoder; num_attention_heads 2 in the adapter, 4 in the encoder`,
      );
      expect(await errorOf(() => Classifier.load(file, { ...enc, image: 16 }, 'cpu'))).to.match(/image_size 8 in the adapter, 16 in the encoder/);
      const llama = path.join(dir, 'llama.safetensors');
      writeSafetensors(llama, [{ name: 'adapter_query.weight', dtype: 'F32', shape: [2, 8], data: new Float32Array(16) }], { adapter_len: '2' });
      expect(await errorOf(() => Classifier.load(llama, enc, 'cpu'))).to.match(/is not an image-classification adapter/);
      expect(await errorOf(() => Classifier.load(path.join(dir, 'none.safetensors'), enc, 'cpu'))).to.match(/does not exist/);
    });
  });
});
