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
import { Rng } from './util/reference';
import { finiteDiff } from './util/vit-reference';

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
