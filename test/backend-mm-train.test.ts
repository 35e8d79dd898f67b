// The image-conditioned adapter (SPEC §8) on the cuda backend against the CPU of the same binding
// (stories260K; the emulator in CI): two AdamW steps on a packed batch of image and text-only
// sequences (per-segment prompts, the projection's forward and backward on the device), and
// cached generation with one image's prompts attached from the host. Tolerances as in
// backend-train.test.ts: 1e-4 relative to each tensor's largest element.
import { expect } from 'chai';
import * as fs from 'fs';
import * as path from 'path';
import type { Device } from '../lib/native';
import { Adapter, AdapterConfig, AdapterValues } from '../lib/model/adapter';
import { ImagePromptStep } from '../lib/model/image-prompts';
import { Llama } from '../lib/model/llama';
import { AdapterGraph, AdapterGrads, PackedBatch } from '../lib/train/graph';
import { AdamW, paperAdamW } from '../lib/train/optimizer';
import { Backend, describeEachBackend, withBinding } from './util/backends';
import { repoRoot } from './util/paths';
import * as ref from './util/reference';
import { stories } from './util/stories';

interface Seq {
  ids: number[];
  labels: number[];
  image: string | null;
}
interface Scenario {
  adapterLayers: number;
  adapterLen: number;
  init: { prompts: number[][]; gates: number[][]; fc1: number[][]; b1: number[]; fc2: number[][]; b2: number[] };
  featureLayers: number[];
  featureSize: number;
  projWidth: number;
  features: Record<string, number[][]>;
  steps: { microBatches: Seq[][] }[];
}

const sc = JSON.parse(fs.readFileSync(path.join(repoRoot, 'test', 'golden', 'scenario-mm.json'), 'utf8')) as Scenario;
const config: AdapterConfig = {
  layers: sc.adapterLayers,
  len: sc.adapterLen,
  gate: 'per-head',
  image: { featureLayers: sc.featureLayers, featureSize: sc.featureSize, width: sc.projWidth },
};
const f32 = (x: number[] | number[][]) => Float32Array.from((x as number[][]).flat() as number[]);
const values = (): AdapterValues => ({
  prompts: f32(sc.init.prompts),
  gates: f32(sc.init.gates),
  image: { fc1: f32(sc.init.fc1), b1: f32(sc.init.b1), fc2: f32(sc.init.fc2), b2: f32(sc.init.b2) },
});
// three sequences: two images (one twice) and a text-only one
const seqs: Seq[] = sc.steps[0].microBatches.flat().slice(0, 3).map((s, i) => ({ ...s, image: ['img/a.png', null, 'img/a.png'][i] }));
seqs.push({ ...sc.steps[1].microBatches[0][0], image: 'img/b.png' });

function pack(): PackedBatch {
  const segments = new Int32Array(seqs.length + 1);
  seqs.forEach((s, i) => (segments[i + 1] = segments[i] + s.ids.length));
  const N = segments[seqs.length];
  const tokens = new Int32Array(N), labels = new Int32Array(N), positions = new Int32Array(N);
  seqs.forEach((s, i) => {
    tokens.set(s.ids, segments[i]);
    labels.set(s.labels, segments[i]);
    s.ids.forEach((_, t) => (positions[segments[i] + t] = t));
  });
  return { tokens, labels, positions, segments, images: seqs.map((s) => s.image) };
}

function closeToScale(a: ArrayLike<number>, e: ArrayLike<number>, tol: number, what: string): void {
  let m = 0;
  for (let i = 0; i < e.length; i++) m = Math.max(m, Math.abs(e[i]));
  ref.assertClose(a, e, tol, tol * m, what);
}

async function trainSteps(device: Device) {
  const model = await Llama.load(stories.v0, { device });
  const adapter = Adapter.fromValues(model.config, config, values(), device);
  const grads = new AdapterGrads(adapter);
  const graph = new AdapterGraph(model, adapter);
  const opt = new AdamW(adapter.parameters(), paperAdamW, undefined, adapter.decayMask());
  const batch = pack();
  const keys = ['img/a.png', 'img/b.png'];
  const targets = batch.labels.filter((l) => l >= 0).length;
  const run = { losses: [] as number[], grads: [] as Float32Array[][], final: [] as Float32Array[] };
  try {
    for (let step = 0; step < 2; step++) {
      grads.zero();
      const images = new ImagePromptStep(adapter.image!, keys, Float32Array.from(keys.flatMap((k) => sc.features[k].flat())), true);
      for (const t of [images.ip, images.dIp!]) expect(t.device).to.equal(device);
      const r = await graph.run(batch, 1 / targets, grads, images);
      images.backward(grads.image!);
      images.dispose();
      run.losses.push(r.lossSum / targets);
      run.grads.push((await Promise.all(grads.all().map((g) => g.read()))) as Float32Array[]);
      await opt.update(grads.all(), 1e-2);
    }
    run.final = (await Promise.all(adapter.parameters().map((p) => p.read()))) as Float32Array[];
    return run;
  } finally {
    grads.dispose();
    opt.dispose();
    adapter.dispose();
    model.dispose();
  }
}

async function generateLogits(device: Device): Promise<Float32Array[]> {
  const model = await Llama.load(stories.v0, { device });
  const adapter = Adapter.fromValues(model.config, config, values(), 'cpu');
  try {
    model.setAdapter(adapter, { imageFeatures: f32(sc.features['img/c.png']) });
    const cache = model.newCache(16);
    const out: Float32Array[] = [];
    try {
      for (const ids of [[1, 403, 407, 261, 378], [300], [42]]) {
        const t = model.forward(ids, cache);
        out.push((await t.read()) as Float32Array);
        t.dispose();
      }
    } finally {
      cache.dispose();
    }
    return out;
  } finally {
    model.dispose();
    adapter.dispose();
  }
}

describeEachBackend(
  (name) => `${name}: image-conditioned training steps and generation with an image against the CPU of the same binding`,
  (b: Backend) => {
    it('two AdamW steps on a mixed image/text batch: losses, every gradient and the adapter within 1e-4', async () => {
      const [host, dev] = await withBinding(b.binding, async () => [await trainSteps('cpu'), await trainSteps(b.device)]);
      ref.assertClose(dev.losses, host.losses, 1e-4, 0, 'losses');
      for (let s = 0; s < 2; s++)
        host.grads[s].forEach((g, i) => {
          expect(g.some((v) => v !== 0), `step ${s} gradient ${i} is not all zero`).to.equal(true);
          closeToScale(dev.grads[s][i], g, 1e-4, `step ${s}: gradient of parameter ${i}`);
        });
      host.final.forEach((p, i) => closeToScale(dev.final[i], p, 1e-4, `parameter ${i} after 2 steps`));
    });

    it("prefill and decode logits with one image's prompts within 1e-4", async () => {
      const [host, dev] = await withBinding(b.binding, async () => [await generateLogits('cpu'), await generateLogits(b.device)]);
      host.forEach((h, i) => closeToScale(dev[i], h, 1e-4, `logits of step ${i}`));
    });
  },
  (b) => b.device !== 'cpu',
);
