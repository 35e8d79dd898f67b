// Image classification on the cuda backend against the CPU of the same binding (a GPU when there is
// one, else the CUDA emulator): two training steps of prompts + gates + head (cached pixels, the
// encoder's training graph, the head's weight gradient, AdamW) and the head-only path on cached
// features. Tolerances: losses, gradients and the parameters after the steps within 1e-4 of each
// tensor's largest element.
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import type { Device, Tensor } from '../lib/native';
import { native } from '../lib/native';
import { Classifier, ClassifierValues, headBackward, headForward } from '../lib/model/classifier';
import { FeatureSource } from '../lib/tasks/classify';
import { ClassifyEncoder } from '../lib/tasks/classify-encoder';
import { AdamW, paperAdamW } from '../lib/train/optimizer';
import { writeRandomViT } from '../tools/make-random-vit';
import { describeEachBackend, withBinding } from './util/backends';
import * as ref from './util/reference';

const vit = { image: 8, patch: 4, hidden: 16, layers: 3, heads: 2, mlp: 32, seed: 2 };

interface Run {
  losses: number[];
  grads: Float32Array[][]; // per step, per parameter
  final: ClassifierValues;
}

function closeToScale(a: ArrayLike<number>, e: ArrayLike<number>, tol: number, what: string): void {
  let m = 0;
  for (let i = 0; i < e.length; i++) m = Math.max(m, Math.abs(e[i]));
  ref.assertClose(a, e, tol, tol * m, what);
}

/** Two steps on 4 images (labels 0 1 2 0); layers 0 = the head alone. */
async function trainSteps(dir: string, files: string[], device: Device, layers: number): Promise<Run> {
  const enc = await ClassifyEncoder.load(dir, device);
  const items = files.map((f, i) => ({ image: f, file: f, label: i % 3 }));
  const rng = new ref.Rng(3);
  const init = Classifier.init(enc.dims, { layers, len: layers ? 3 : 0, gateInit: 'random', labels: ['a', 'b', 'c'] }, 1, 'cpu');
  const v = await init.values();
  init.dispose();
  const classifier = Classifier.fromValues(enc.dims, init.config, { ...v, weight: rng.normals(3 * vit.hidden, 0.3), bias: rng.normals(3, 0.3) }, device);
  const src = await FeatureSource.create(enc, items, classifier, () => {}, 'test');
  const params = classifier.parameters();
  const grads = params.map((p) => native.zeros([...p.shape], 'f32', device));
  const opt = new AdamW(params, paperAdamW);
  try {
    for (const t of [...params, ...grads]) expect(t.device).to.equal(device);
    const out: Run = { losses: [], grads: [], final: v };
    const idx = Int32Array.from([0, 1, 2, 3]);
    for (let step = 0; step < 2; step++) {
      for (const g of grads) native.scaleInPlace(g, 0);
      const run = await src.forward(idx, true);
      expect(run.f.device).to.equal(device);
      const logits = headForward(run.f, classifier.weight, classifier.bias);
      const [loss, dlogits] = native.crossEntropy(logits, native.fromArray(Int32Array.from(items, (x) => x.label), [4], 'i32'), 1 / 4);
      const { dW, db, df } = headBackward(dlogits, run.f, classifier.weight, !!run.backward);
      native.addInPlace(grads[grads.length - 2], dW);
      native.addInPlace(grads[grads.length - 1], db);
      run.backward?.(df!, grads.slice(0, grads.length - 2));
      out.losses.push((await loss.read())[0] / 4);
      out.grads.push((await Promise.all(grads.map((g) => g.read()))) as Float32Array[]);
      for (const t of [logits, loss, dlogits, dW, db, df] as (Tensor | undefined)[]) t?.dispose();
      run.dispose();
      await opt.update(grads, 1e-2);
    }
    out.final = await classifier.values();
    return out;
  } finally {
    src.dispose();
    for (const g of grads) g.dispose();
    opt.dispose();
    classifier.dispose();
    enc.dispose();
  }
}

describeEachBackend(
  (b) => `image classification training on ${b}`,
  (b) => {
    let dir: string;
    let files: string[];
    before(async function () {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-cls-backend-'));
      writeRandomViT(path.join(dir, 'vit'), vit);
      const rng = new ref.Rng(8);
      files = [];
      for (let i = 0; i < 4; i++) {
        const f = path.join(dir, `i${i}.png`);
        const px = Buffer.from(Array.from({ length: 8 * 8 * 3 }, () => Math.floor(rng.uniform() * 256)));
        await sharp(px, { raw: { width: 8, height: 8, channels: 3 } }).png().toFile(f);
        files.push(f);
      }
    });
    after(() => fs.rmSync(dir, { recursive: true, force: true }));

    for (const layers of [2, 0])
      it(`${layers ? 'prompts in the top 2 layers + head' : 'the head alone on cached features'}: two steps equal the CPU's`, async function () {
        this.timeout(300_000);
        const [cpu, dev] = await withBinding(b.binding, async () => [
          await trainSteps(path.join(dir, 'vit'), files, 'cpu', layers),
          await trainSteps(path.join(dir, 'vit'), files, b.device, layers),
        ]);
        for (let s = 0; s < 2; s++) {
          expect(dev.losses[s]).to.be.closeTo(cpu.losses[s], 1e-4 * Math.abs(cpu.losses[s]));
          cpu.grads[s].forEach((g, i) => closeToScale(dev.grads[s][i], g, 1e-4, `step ${s + 1}, gradient ${i}`));
        }
        if (layers) expect(cpu.grads[0].slice(0, 2 * layers).every((g) => g.some((x) => x !== 0))).to.equal(true);
        for (const k of ['prompts', 'gates', 'weight', 'bias'] as const) closeToScale(dev.final[k], cpu.final[k], 1e-4, k);
      });
  },
);
