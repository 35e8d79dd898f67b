// The image-conditioned adapter (SPEC §8) on stories260K: training against the independent float64
// PyTorch reference (tools/reference/mm_reference.py: 10 AdamW steps, mixed image/text sequences,
// nonzero gates), finite differences of the new backward paths (projection, per-segment prompts),
// mixed batches equal to their parts run apart, zero gates equal to the frozen model for any
// image, the adapter file, and bad inputs.
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Adapter, AdapterConfig, AdapterValues } from '../lib/model/adapter';
import { ImagePromptStep } from '../lib/model/image-prompts';
import { Llama } from '../lib/model/llama';
import { writeSafetensors } from '../lib/model/safetensors';
import { AdapterGraph, AdapterGrads, PackedBatch } from '../lib/train/graph';
import { AdamW } from '../lib/train/optimizer';
import { checkProjFits, FeaturesFileSource, parseFeatureLayers, projConfigFor } from '../lib/train/image-features';
import { writeFeatures } from '../lib/data/features';
import { dataDir, repoRoot } from './util/paths';
import { stories } from './util/stories';

interface Seq {
  ids: number[];
  labels: number[];
  image: string | null;
}
interface Scenario {
  adapterLayers: number;
  adapterLen: number;
  gate: 'per-head';
  init: { prompts: number[][]; gates: number[][]; fc1: number[][]; b1: number[]; fc2: number[][]; b2: number[] };
  featureLayers: number[];
  featureSize: number;
  projWidth: number;
  features: Record<string, number[][]>;
  optimizer: { betas: [number, number]; eps: number; weightDecay: number };
  steps: { lr: number; microBatches: Seq[][] }[];
}
type P = 'prompts' | 'gates' | 'fc1' | 'b1' | 'fc2' | 'b2';
interface Golden {
  losses: number[];
  gradNorms: number[];
  targetCounts: number[];
  step0: Record<P, number[] | number[][]>;
  final: Record<P, number[] | number[][]>;
  imageLogits0: number[][];
  baseLogits0: number[][];
}

const readJson = <T>(f: string): T => JSON.parse(fs.readFileSync(path.join(repoRoot, 'test', 'golden', f), 'utf8')) as T;
const flat = (x: number[] | number[][]): number[] => (x as number[][]).flat() as number[];

function expectClose(actual: ArrayLike<number>, expected: number[], what: string, rtol = 1e-4, atol = 1e-6): void {
  expect(actual.length, what).to.equal(expected.length);
  let scale = 0;
  let worst = 0;
  let at = 0;
  for (let i = 0; i < expected.length; i++) {
    scale = Math.max(scale, Math.abs(expected[i]));
    const d = Math.abs(actual[i] - expected[i]);
    if (d > worst) [worst, at] = [d, i];
  }
  expect(worst, `${what}: element ${at} is ${actual[at]}, expected ${expected[at]}`).to.be.at.most(atol + rtol * scale);
}

function configOf(sc: Scenario): AdapterConfig {
  return {
    layers: sc.adapterLayers,
    len: sc.adapterLen,
    gate: sc.gate,
    image: { featureLayers: sc.featureLayers, featureSize: sc.featureSize, width: sc.projWidth },
  };
}

function valuesOf(sc: Scenario): AdapterValues {
  const f = (x: number[] | number[][]) => Float32Array.from(flat(x));
  const i = sc.init;
  return { prompts: f(i.prompts), gates: f(i.gates), image: { fc1: f(i.fc1), b1: f(i.b1), fc2: f(i.fc2), b2: f(i.b2) } };
}

/** Sequences laid end to end, each with its own positions (as test/train-golden.test.ts packs them). */
function pack(seqs: { ids: number[]; labels: number[] }[]): PackedBatch {
  const segments = new Int32Array(seqs.length + 1);
  seqs.forEach((s, i) => (segments[i + 1] = segments[i] + s.ids.length));
  const N = segments[seqs.length];
  const tokens = new Int32Array(N);
  const labels = new Int32Array(N);
  const positions = new Int32Array(N);
  seqs.forEach((s, i) => {
    tokens.set(s.ids, segments[i]);
    labels.set(s.labels, segments[i]);
    s.ids.forEach((_, t) => (positions[segments[i] + t] = t));
  });
  return { tokens, labels, positions, segments };
}

/** Packed with its segments' image keys. */
function packImages(seqs: Seq[]): PackedBatch {
  return { ...pack(seqs), images: seqs.map((s) => s.image) };
}

/** The image prompts of the images `seqs` name (in first-seen order). */
function promptsFor(adapter: Adapter, sc: Scenario, seqs: Seq[], withGrad: boolean): ImagePromptStep {
  const keys = [...new Set(seqs.map((s) => s.image).filter((k): k is string => k !== null))];
  const values = Float32Array.from(keys.flatMap((k) => sc.features[k].flat()));
  return new ImagePromptStep(adapter.image!, keys, values, withGrad);
}

async function readAll(ts: Tensor[]): Promise<number[]> {
  const out: number[] = [];
  for (const t of ts) out.push(...((await t.read()) as Float32Array));
  return out;
}
type Tensor = import('../lib/native').Tensor;

/** Loss sum and every gradient (parameters() order, flattened) of `seqs` as one micro-batch. */
async function lossAndGrads(model: Llama, adapter: Adapter, sc: Scenario, seqs: Seq[]): Promise<{ loss: number; grads: number[][] }> {
  const grads = new AdapterGrads(adapter);
  const graph = new AdapterGraph(model, adapter);
  const step = promptsFor(adapter, sc, seqs, true);
  try {
    const { lossSum } = await graph.run(packImages(seqs), 1, grads, step);
    step.backward(grads.image!);
    const out: number[][] = [];
    for (const g of grads.all()) out.push(Array.from((await g.read()) as Float32Array));
    return { loss: lossSum, grads: out };
  } finally {
    step.dispose();
    grads.dispose();
  }
}

describe('image-conditioned adapter (SPEC §8, stories260K)', function () {
  this.timeout(120_000);
  let model: Llama;
  let sc: Scenario;
  before(async () => {
    model = await Llama.load(stories.v0, { device: 'cpu' });
    sc = readJson<Scenario>('scenario-mm.json');
  });
  after(() => model?.dispose());

  it('10 AdamW steps equal the float64 PyTorch reference: losses, step-0 gradients, final prompts, gates and projection', async () => {
    const gold = readJson<Golden>('golden-mm.json');
    const adapter = Adapter.fromValues(model.config, configOf(sc), valuesOf(sc), 'cpu');
    const grads = new AdapterGrads(adapter);
    const graph = new AdapterGraph(model, adapter);
    const [b1, b2] = sc.optimizer.betas;
    const opt = new AdamW(adapter.parameters(), { beta1: b1, beta2: b2, eps: sc.optimizer.eps, weightDecay: sc.optimizer.weightDecay }, undefined, adapter.decayMask());
    try {
      const losses: number[] = [];
      const norms: number[] = [];
      for (let s = 0; s < sc.steps.length; s++) {
        const micro = sc.steps[s].microBatches;
        const targets = micro.flat().reduce((n, q) => n + q.labels.filter((l) => l >= 0).length, 0);
        expect(targets).to.equal(gold.targetCounts[s]);
        grads.zero();
        // I_p once per image of the step; the projection's backward once, after the micro-batches
        const step = promptsFor(adapter, sc, micro.flat(), true);
        let sum = 0;
        for (const mb of micro) sum += (await graph.run(packImages(mb), 1 / targets, grads, step)).lossSum;
        step.backward(grads.image!);
        step.dispose();
        losses.push(sum / targets);
        if (s === 0) {
          const L = sc.adapterLayers;
          expectClose(await readAll(grads.prompts), flat(gold.step0.prompts), 'step-0 prompt gradient', 1e-3, 1e-9);
          expectClose(await readAll(grads.gates.slice(0, L)), flat(gold.step0.gates), 'step-0 gate gradient', 1e-3, 1e-9);
          const im = grads.image!;
          for (const k of ['fc1', 'b1', 'fc2', 'b2'] as const)
            expectClose(await readAll([im[k]]), flat(gold.step0[k]), `step-0 ${k} gradient`, 1e-3, 1e-9);
        }
        norms.push(await opt.update(grads.all(), sc.steps[s].lr));
      }
      expectClose(losses, gold.losses, 'losses', 1e-5);
      expectClose(norms, gold.gradNorms, 'gradient norms', 1e-4);
      const final = await adapter.values();
      expectClose(final.prompts, flat(gold.final.prompts), 'final prompts', 1e-4);
      expectClose(final.gates, flat(gold.final.gates), 'final gates', 1e-4, 1e-6);
      for (const k of ['fc1', 'b1', 'fc2', 'b2'] as const) expectClose(final.image![k], flat(gold.final[k]), `final ${k}`, 1e-4, 1e-6);
    } finally {
      grads.dispose();
      opt.dispose();
      adapter.dispose();
    }
  });

  it("generation's prompts for one image give the reference logits; at g = 0 the frozen model's for any image", async () => {
    const gold = readJson<Golden>('golden-mm.json');
    const first = sc.steps.flatMap((s) => s.microBatches.flat()).find((q) => q.image !== null)!;
    const ids = first.ids.slice(0, 8);
    const logitsOf = async () => {
      const cache = model.newCache(16);
      const t = model.forward(ids, cache, { allLogits: true });
      const v = Array.from((await t.read()) as Float32Array);
      t.dispose();
      cache.dispose();
      return v;
    };
    const frozen = await logitsOf();
    expectClose(frozen, gold.baseLogits0.flat(), 'frozen logits', 1e-5);
    const adapter = Adapter.fromValues(model.config, configOf(sc), valuesOf(sc), 'cpu');
    const zero = Adapter.fromValues(model.config, configOf(sc), { ...valuesOf(sc), gates: new Float32Array(sc.adapterLayers * model.config.nHeads) }, 'cpu');
    try {
      model.setAdapter(adapter, { imageFeatures: Float32Array.from(sc.features[first.image!].flat()) });
      expectClose(await logitsOf(), gold.imageLogits0.flat(), 'logits with the image', 1e-5);
      for (const key of Object.keys(sc.features)) {
        model.setAdapter(zero, { imageFeatures: Float32Array.from(sc.features[key].flat().map((v) => v * 7)) });
        expect(await logitsOf()).to.deep.equal(frozen, `g = 0, image ${key}`);
      }
    } finally {
      model.setAdapter(undefined);
      adapter.dispose();
      zero.dispose();
    }
  });

  it('at g = 0 the training graph gives the frozen loss exactly, and no prompt or projection gradient', async () => {
    const seqs = sc.steps[0].microBatches.flat();
    const zero = Adapter.fromValues(model.config, configOf(sc), { ...valuesOf(sc), gates: new Float32Array(sc.adapterLayers * model.config.nHeads) }, 'cpu');
    try {
      const frozen = await new AdapterGraph(model, undefined).run(pack(seqs), 1);
      const { loss, grads } = await lossAndGrads(model, zero, sc, seqs);
      expect(loss).to.equal(frozen.lossSum);
      const L = sc.adapterLayers;
      const gateGrads = grads.slice(L, 2 * L).flat();
      const others = [...grads.slice(0, L), ...grads.slice(2 * L)].flat();
      expect(others.every((v) => v === 0)).to.equal(true, 'prompt and projection gradients at g = 0 must be exactly 0');
      expect(gateGrads.some((v) => v !== 0)).to.equal(true);
    } finally {
      zero.dispose();
    }
  });

  it('a packed batch of image and text-only records equals running them apart (loss and every gradient)', async () => {
    const seqs: Seq[] = sc.steps[1].microBatches.flat().slice(0, 4);
    seqs[1] = { ...seqs[1], image: null };
    seqs[2] = { ...seqs[2], image: seqs[0].image };
    expect(seqs.some((q) => q.image === null) && seqs.some((q) => q.image !== null)).to.equal(true);
    const adapter = Adapter.fromValues(model.config, configOf(sc), valuesOf(sc), 'cpu');
    try {
      const together = await lossAndGrads(model, adapter, sc, seqs);
      let loss = 0;
      let sum: number[][] | undefined;
      for (const q of seqs) {
        const r = await lossAndGrads(model, adapter, sc, [q]);
        loss += r.loss;
        sum = sum ? sum.map((g, i) => g.map((v, j) => v + r.grads[i][j])) : r.grads;
      }
      expect(together.loss).to.be.closeTo(loss, 1e-5 * loss);
      together.grads.forEach((g, i) => expectClose(g, sum![i], `gradient tensor ${i}`, 1e-5, 1e-9));
      // a text-only segment alone takes the shared-prompt path: P_l, no image
      const text = await lossAndGrads(model, adapter, sc, [seqs[1]]);
      expect(text.grads.slice(2 * sc.adapterLayers).flat().every((v) => v === 0)).to.equal(true, 'no projection gradient without an image');
    } finally {
      adapter.dispose();
    }
  });

  it('finite differences: the projection (fc1, b1, fc2, b2) and the per-segment prompts', async () => {
    const seqs: Seq[] = sc.steps[2].microBatches.flat().slice(0, 3);
    seqs[0] = { ...seqs[0], image: 'img/a.png' };
    seqs[1] = { ...seqs[1], image: 'img/b.png' };
    seqs[2] = { ...seqs[2], image: null };
    const values = valuesOf(sc);
    values.gates = values.gates.map((g) => g * 5); // larger gates: a larger signal over f32 rounding
    const adapter = Adapter.fromValues(model.config, configOf(sc), values, 'cpu');
    const { grads } = await lossAndGrads(model, adapter, sc, seqs);
    adapter.dispose();
    const L = sc.adapterLayers;
    // parameters() order: L prompts, L gates, fc1, b1, fc2, b2; the host arrays hold them flat
    const where: { name: string; tensor: number; arr: Float32Array; offset: number }[] = [
      { name: 'prompts (top layer)', tensor: L - 1, arr: values.prompts, offset: (L - 1) * sc.adapterLen * model.config.dim },
      { name: 'fc1', tensor: 2 * L, arr: values.image!.fc1, offset: 0 },
      { name: 'b1', tensor: 2 * L + 1, arr: values.image!.b1, offset: 0 },
      { name: 'fc2', tensor: 2 * L + 2, arr: values.image!.fc2, offset: 0 },
      { name: 'b2', tensor: 2 * L + 3, arr: values.image!.b2, offset: 0 },
    ];
    const h = 1e-2;
    for (const w of where) {
      // the two largest entries of the analytic gradient
      const g = grads[w.tensor];
      const top = g.map((v, i) => [Math.abs(v), i]).sort((a, b) => b[0] - a[0]).slice(0, 2).map(([, i]) => i);
      for (const i of top) {
        const lossAt = async (delta: number) => {
          const saved = w.arr[w.offset + i];
          w.arr[w.offset + i] = saved + delta;
          const a = Adapter.fromValues(model.config, configOf(sc), values, 'cpu');
          const step = promptsFor(a, sc, seqs, false);
          try {
            return (await new AdapterGraph(model, a).run(packImages(seqs), 1, undefined, step)).lossSum;
          } finally {
            step.dispose();
            a.dispose();
            w.arr[w.offset + i] = saved;
          }
        };
        const fd = ((await lossAt(h)) - (await lossAt(-h))) / (2 * h);
        expect(fd, `${w.name}[${i}]: finite difference ${fd}, analytic ${g[i]}`).to.be.closeTo(g[i], 0.02 * Math.abs(g[i]) + 2e-3);
      }
    }
  });

  it('the adapter file holds image_proj.* and the feature metadata; --gate-init random draws N(0,1) gates', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mm-adapter-'));
    try {
      const cfg = configOf(sc);
      const a = Adapter.init(model.config, cfg, 7, 'cpu');
      const r = Adapter.init(model.config, cfg, 7, 'cpu', 'random');
      const va = await a.values();
      const vr = await r.values();
      expect(Array.from(va.prompts)).to.deep.equal(Array.from(vr.prompts)); // prompts N(0,1) either way
      expect(Array.from(va.image!.fc1)).to.deep.equal(Array.from(vr.image!.fc1));
      expect(va.gates.every((g) => g === 0)).to.equal(true);
      const mean = vr.gates.reduce((s, g) => s + g, 0) / vr.gates.length;
      const sd = Math.sqrt(vr.gates.reduce((s, g) => s + (g - mean) ** 2, 0) / vr.gates.length);
      expect(vr.gates.every((g) => g !== 0)).to.equal(true);
      expect(sd).to.be.within(0.6, 1.5);
      expect(va.image!.b1.every((v) => v === 0) && va.image!.b2.every((v) => v === 0)).to.equal(true);
      const file = path.join(dir, 'adapter.safetensors');
      await r.save(file);
      const back = Adapter.load(file, model.config, 'cpu');
      expect(back.config.image).to.deep.equal(cfg.image);
      const vb = await back.values();
      for (const k of ['fc1', 'b1', 'fc2', 'b2'] as const) expect(Array.from(vb.image![k])).to.deep.equal(Array.from(vr.image![k]));
      expect(Array.from(vb.gates)).to.deep.equal(Array.from(vr.gates));
      expect(back.decayMask().slice(-4)).to.deep.equal([true, false, true, false]);
      [a, r, back].forEach((x) => x.dispose());
      // a file with only part of the projection, or of the wrong shape, is refused by name
      const text = Adapter.init(model.config, { layers: 3, len: 4, gate: 'per-head' }, 1, 'cpu');
      const tv = await text.values();
      text.dispose();
      const base = [
        { name: 'adapter_query.weight', dtype: 'F32' as const, shape: [12, model.config.dim], data: tv.prompts },
        ...[2, 3, 4].map((n, l) => ({ name: `layers.${n}.attention.gate`, dtype: 'F32' as const, shape: [1, 8, 1, 1], data: tv.gates.slice(l * 8, l * 8 + 8) })),
      ];
      const partial = path.join(dir, 'partial.safetensors');
      writeSafetensors(partial, [...base, { name: 'image_proj.fc1.weight', dtype: 'F32', shape: [5, 12], data: new Float32Array(60) }]);
      expect(() => Adapter.load(partial, model.config, 'cpu')).to.throw(/image_proj\.fc1\.bias.*it has only image_proj\.fc1\.weight/);
      const wrong = path.join(dir, 'wrong.safetensors');
      writeSafetensors(
        wrong,
        [
          ...base,
          { name: 'image_proj.fc1.weight', dtype: 'F32', shape: [5, 12], data: new Float32Array(60) },
          { name: 'image_proj.fc1.bias', dtype: 'F32', shape: [5], data: new Float32Array(5) },
          { name: 'image_proj.fc2.weight', dtype: 'F32', shape: [32, 5], data: new Float32Array(160) },
          { name: 'image_proj.fc2.bias', dtype: 'F32', shape: [64], data: new Float32Array(64) },
        ],
        { feature_size: '6', feature_layers: '-2,-1' },
      );
      expect(() => Adapter.load(wrong, model.config, 'cpu')).to.throw(/image_proj\.fc2\.weight is \[32,5\].*need \[64,5\]/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('bad inputs: a record whose image is not in the features file, a feature size mismatch, bad --feature-layers', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mm-features-'));
    try {
      const file = path.join(dir, 'f.safetensors');
      writeFeatures(file, new Map([['a.png', new Float32Array(6)], ['b.png', new Float32Array(6)]]), { M: 1, D: 6 });
      const src = new FeaturesFileSource(file);
      try {
        expect(src.check('a.png')).to.equal(undefined);
        expect(src.check('missing.png')).to.match(/image "missing\.png" is not in the features file/);
        expect(projConfigFor(src, 16)).to.deep.equal({ featureLayers: [-1], featureSize: 6, width: 16 });
        expect(() => projConfigFor(src, 16, [-2, -1])).to.throw(/--feature-layers names 2 layer\(s\).*1 feature vector/);
        expect(() => checkProjFits('run/adapter.safetensors', { featureLayers: [-1], featureSize: 1280, width: 128 }, src)).to.throw(
          /run\/adapter\.safetensors projects 1 feature vector\(s\) of size 1280 but features file .* gives 1 of size 6/,
        );
      } finally {
        src.close();
      }
      expect(parseFeatureLayers('-2,-1')).to.deep.equal([-2, -1]);
      expect(() => parseFeatureLayers('-1,0')).to.throw(/--feature-layers must be comma-separated nonzero integers/);
      expect(() => parseFeatureLayers('last')).to.throw(/--feature-layers/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('bad inputs through train and generate: the record and key named, projection and features that do not fit, image adapters without features', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mm-train-'));
    const errorOf = async (f: () => Promise<unknown>) => {
      try {
        await f();
      } catch (e) {
        return (e as Error).message;
      }
      return 'no error';
    };
    try {
      const features = path.join(dir, 'f.safetensors');
      writeFeatures(features, new Map([['a.png', Float32Array.from({ length: 6 }, (_, i) => i)]]), { M: 1, D: 6 });
      const data = path.join(dir, 'data.jsonl');
      const rec = (image?: string) => JSON.stringify({ instruction: 'What is shown?', input: '', output: 'A cat.', ...(image ? { image } : {}) });
      fs.writeFileSync(data, [rec('a.png'), rec(), rec('nope.png')].join('\n') + '\n');
      const flags = { model: stories.v0, data, out: path.join(dir, 'run'), device: 'cpu', 'proj-width': '16', 'max-steps': '1', 'batch-size': '2', 'grad-accum': '1' };
      const { resolveTrainConfig } = await import('../lib/train/config');
      const { Trainer } = await import('../lib/train/trainer');
      expect(await errorOf(() => Trainer.create(resolveTrainConfig({ ...flags, 'image-features': features })))).to.match(/record 2 .*image "nope\.png" is not in features file/);
      // --skip-missing-images: the record is left out and counted instead
      const skipped: string[] = [];
      const kept = await Trainer.create(resolveTrainConfig({ ...flags, 'image-features': features, 'skip-missing-images': true }), (m) => skipped.push(m));
      try {
        expect(kept.train.length).to.equal(2);
        expect(skipped.join("\n")).to.match(/1 of 3 records of .*data\.jsonl" have a missing image; skipped \(record 2: nope\.png/);
      } finally {
        kept.dispose();
      }
      const notes: string[] = [];
      (await Trainer.create(resolveTrainConfig(flags), (m) => notes.push(m))).dispose();
      expect(notes.join('\n')).to.match(/2 of 3 records of .*data\.jsonl have an image; a text-only adapter does not see them/);
      fs.writeFileSync(data, [rec('a.png'), rec()].join('\n') + '\n');
      // an --init-adapter whose projection reads 1280 values per image, with features of 6
      const init = path.join(dir, 'init.safetensors');
      const big = Adapter.init(model.config, { layers: 3, len: 10, gate: 'per-head', image: { featureLayers: [-1], featureSize: 1280, width: 16 } }, 0, 'cpu');
      await big.save(init);
      big.dispose();
      const trainer = await Trainer.create(resolveTrainConfig({ ...flags, 'image-features': features, 'init-adapter': init }));
      try {
        expect(await errorOf(() => trainer.run())).to.match(/--init-adapter .*init\.safetensors has an image projection 1 x 1280 -> 16, the run asks for 1 x 6 -> 16/);
      } finally {
        trainer.dispose();
      }
      // generate: an image adapter needs features, and features need an image adapter
      const { run: generateRun } = await import('../lib/cli/generate');
      const sink = new (await import('stream')).PassThrough();
      const gen = (...extra: string[]) => errorOf(() => generateRun(['--model', stories.v0, '--device', 'cpu', '--prompt', 'x', '--max-tokens', '1', ...extra], sink));
      expect(await gen('--adapter', init)).to.match(/init\.safetensors is an image-conditioned adapter .*pass --image-features FILE or --encoder DIR/);
      expect(await gen('--image-features', features)).to.match(/--image-features needs an image-conditioned adapter, but no --adapter was given/);
      expect(await gen('--adapter', init, '--image-features', features)).to.match(/projects 1 feature vector\(s\) of size 1280 but features file .* gives 1 of size 6/);
      expect(await gen('--image', 'a.png')).to.match(/--image needs --image-features FILE or --encoder DIR/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('--encoder: training on features from the frozen encoder equals training on a features file the encoder wrote', async () => {
    const { ImageEncoder } = await import('../lib/encoder/encoder');
    const { resolveTrainConfig } = await import('../lib/train/config');
    const { Trainer } = await import('../lib/train/trainer');
    const encoderDir = path.join(repoRoot, 'test', 'golden', 'encoders', 'vit-f32');
    const photos = path.join(dataDir, 'fashion-mnist', 'images');
    const keys = ['train/00000.png', 'train/00001.png', 'train/00002.png'];
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mm-encoder-'));
    try {
      const enc = await ImageEncoder.load(encoderDir, { device: 'cpu' });
      const feats = await enc.embed(keys.map((k) => path.join(photos, k)), { featureLayers: [-2, -1] });
      const D = enc.featureDim;
      enc.dispose();
      const features = path.join(dir, 'f.safetensors');
      writeFeatures(features, new Map(keys.map((k, i) => [k, feats[i]])), { M: 2, D, metadata: { layers: '-2,-1' } });
      const data = path.join(dir, 'data.jsonl');
      const rec = (image?: string) => JSON.stringify({ instruction: 'What is shown in this picture?', input: '', output: 'A photo of a shoe.', ...(image ? { image } : {}) });
      fs.writeFileSync(data, [rec(keys[0]), rec(keys[1]), rec(), rec(keys[2])].join('\n') + '\n');
      const run = async (out: string, extra: Record<string, string>) => {
        const cfg = resolveTrainConfig({
          model: stories.v0, data, out: path.join(dir, out), device: 'cpu', 'proj-width': '8', 'max-steps': '3', 'batch-size': '2',
          'grad-accum': '2', lr: '1e-2', 'gate-init': 'random', 'no-shuffle': true, ...extra,
        } as Record<string, string | boolean>);
        const t = await Trainer.create(cfg);
        try {
          await t.run();
        } finally {
          t.dispose();
        }
        return fs.readFileSync(path.join(dir, out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).loss as number);
      };
      const viaEncoder = await run('enc', { encoder: encoderDir, 'image-root': photos, 'feature-layers': '-2,-1' });
      const viaFile = await run('file', { 'image-features': features });
      expect(viaEncoder).to.have.length(3);
      expect(viaEncoder).to.deep.equal(viaFile);
      const a = Adapter.load(path.join(dir, 'enc', 'adapter.safetensors'), model.config, 'cpu');
      expect(a.config.image).to.deep.equal({ featureLayers: [-2, -1], featureSize: D, width: 8 });
      a.dispose();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('--resume of an image-conditioned run gives the bit-identical adapter of an uninterrupted one', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mm-resume-'));
    try {
      const features = path.join(dir, 'f.safetensors');
      writeFeatures(features, new Map(['a.png', 'b.png', 'c.png'].map((k, i) => [k, Float32Array.from({ length: 6 }, (_, j) => Math.cos(i + 2 * j) * 3)])), { M: 1, D: 6 });
      const data = path.join(dir, 'data.jsonl');
      const rec = (o: string, image?: string) => JSON.stringify({ instruction: 'What is it?', input: '', output: o, ...(image ? { image } : {}) });
      fs.writeFileSync(data, [rec('A cat.', 'a.png'), rec('A dog.', 'b.png'), rec('Nothing.'), rec('A bird.', 'c.png')].join('\n') + '\n');
      const { resolveTrainConfig } = await import('../lib/train/config');
      const { Trainer } = await import('../lib/train/trainer');
      const train = async (out: string, extra: Record<string, string> = {}) => {
        const t = await Trainer.create(
          resolveTrainConfig({ model: stories.v0, data, out: path.join(dir, out), device: 'cpu', 'image-features': features, 'proj-width': '8', 'batch-size': '2', 'grad-accum': '1', lr: '1e-2', 'gate-init': 'random', 'save-every': '2', ...extra }),
        );
        try {
          return (await t.run()).adapterPath;
        } finally {
          t.dispose();
        }
      };
      const whole = fs.readFileSync(await train('whole', { 'max-steps': '4' }));
      // a run stopped after step 2: its checkpoint alone
      fs.cpSync(path.join(dir, 'whole', 'step-000002'), path.join(dir, 'part', 'step-000002'), { recursive: true });
      const resumed = fs.readFileSync(await train('part', { 'max-steps': '4', resume: 'auto' }));
      expect(resumed.equals(whole)).to.equal(true);
      const steps = fs.readFileSync(path.join(dir, 'part', 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).step);
      expect(steps).to.deep.equal([3, 4]); // it continued from the checkpoint (the optimiser state of the projection included)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the eval and generate commands condition on each record\'s image', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mm-cli-'));
    try {
      const features = path.join(dir, 'f.safetensors');
      const feats = new Map(['a.png', 'b.png'].map((k, i) => [k, Float32Array.from({ length: 6 }, (_, j) => Math.sin(3 * i + j) * 4)]));
      writeFeatures(features, feats, { M: 1, D: 6 });
      const cfg: AdapterConfig = { layers: 3, len: 4, gate: 'per-head', image: { featureLayers: [-1], featureSize: 6, width: 8 } };
      const adapter = Adapter.init(model.config, cfg, 3, 'cpu', 'random');
      const file = path.join(dir, 'adapter.safetensors');
      await adapter.save(file);
      const data = path.join(dir, 'data.jsonl');
      const rec = (image?: string) => ({ instruction: 'Tell me a story.', input: '', output: 'Once upon a time', ...(image ? { image } : {}) });
      fs.writeFileSync(data, [rec('a.png'), rec(), rec('b.png')].map((r) => JSON.stringify(r)).join('\n') + '\n');
      const { PassThrough } = await import('stream');
      const runCli = async (cmd: 'eval' | 'generate', args: string[]) => {
        const out = new PassThrough();
        let text = '';
        out.on('data', (d) => (text += d));
        const mod = cmd === 'eval' ? await import('../lib/cli/eval') : await import('../lib/cli/generate');
        await mod.run(['--model', stories.v0, '--device', 'cpu', '--adapter', file, ...args], out);
        return text;
      };
      // eval's loss: the API's over the same examples, with the same features
      const got = JSON.parse(await runCli('eval', ['--data', data, '--image-features', features]));
      const { tokenizeRecords } = await import('../lib/data/alpaca');
      const { evaluateLoss } = await import('../lib/train/trainer');
      const tok = model.loadTokenizer(stories.tokenizer);
      const { examples } = tokenizeRecords(tok, [rec('a.png'), rec(), rec('b.png')], { maxSeqLen: 512 });
      const src = new FeaturesFileSource(features);
      const want = await evaluateLoss(model, adapter, examples, 8, src);
      const textOnly = await evaluateLoss(model, adapter, examples.map((e) => ({ ...e, image: undefined })), 8);
      src.close();
      expect(got.tokens).to.equal(want.tokens);
      expect(got.loss).to.be.closeTo(want.loss, 1e-6);
      expect(Math.abs(want.loss - textOnly.loss)).to.be.above(1e-4); // the images matter
      const exact = JSON.parse(await runCli('eval', ['--data', data, '--image-features', features, '--metric', 'exact', '--max-tokens', '6']));
      expect(exact).to.include({ metric: 'exact', examples: 3 });
      // a record whose image is not in the features file: an error naming it, or left out with --skip-missing-images
      const withMissing = path.join(dir, 'missing.jsonl');
      fs.writeFileSync(withMissing, [rec('a.png'), rec('gone.png'), rec('b.png')].map((r) => JSON.stringify(r)).join('\n') + '\n');
      let err = '';
      await runCli('eval', ['--data', withMissing, '--image-features', features]).catch((e: Error) => (err = e.message));
      expect(err).to.match(/record 1 .*image "gone\.png" is not in features file/);
      const skippedEval = JSON.parse(await runCli('eval', ['--data', withMissing, '--image-features', features, '--metric', 'exact', '--max-tokens', '6', '--skip-missing-images']));
      expect(skippedEval).to.include({ metric: 'exact', examples: 2 });
      // generate --image: the prompts of that image
      const gen = (image: string) => runCli('generate', ['--image-features', features, '--image', image, '--prompt', 'Once', '--temperature', '0', '--max-tokens', '12']);
      model.setAdapter(adapter, { imageFeatures: feats.get('b.png') });
      let direct = '';
      const { generate } = await import('../lib/generate/generate');
      for await (const piece of generate(model, tok, 'Once', { temperature: 0, maxTokens: 12 })) direct += piece;
      model.setAdapter(undefined);
      expect(await gen('b.png')).to.equal(direct + '\n');
      expect(await gen('a.png')).to.not.equal(direct + '\n');
      adapter.dispose();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a text-only adapter does not see images; an image adapter refuses a batch with images but no image prompts', async () => {
    const text = Adapter.init(model.config, { layers: 3, len: 4, gate: 'per-head', }, 1, 'cpu', 'random');
    const img = Adapter.fromValues(model.config, configOf(sc), valuesOf(sc), 'cpu');
    const seqs = sc.steps[0].microBatches[0];
    try {
      const graph = new AdapterGraph(model, text);
      expect((await graph.run(packImages(seqs), 1)).lossSum).to.equal((await graph.run(pack(seqs), 1)).lossSum);
      let msg = '';
      await new AdapterGraph(model, img).run(packImages(seqs), 1).catch((e) => (msg = (e as Error).message));
      expect(msg).to.match(/pass the step's image prompts/);
    } finally {
      text.dispose();
      img.dispose();
    }
  });
});
