// The library on the cuda backend against the CPU of the same binding (stories260K): two training
// steps (forward, backward to the adapter, AdamW) and cached generation with an attached adapter.
// Library code runs on the backend's binding through withBinding (the emulator in CI). Kept small
// (one packed batch of 32 tokens, 2 adapted layers, 3 prompts) so it takes seconds on the emulator.
//
// Tolerances: losses, gradients (relative to each tensor's largest element), the adapter after the
// steps and logits (relative to their largest) within 1e-4.
import { expect } from 'chai';
import type { Device } from '../lib/native';
import { Adapter, AdapterValues } from '../lib/model/adapter';
import { Llama } from '../lib/model/llama';
import { allTensors } from '../lib/model/weights';
import { AdapterGraph, AdapterGrads, PackedBatch } from '../lib/train/graph';
import { AdamW, paperAdamW } from '../lib/train/optimizer';
import { Backend, describeEachBackend, withBinding } from './util/backends';
import * as ref from './util/reference';
import { stories } from './util/stories';

const ADAPTER = { layers: 2, len: 3, gate: 'per-head' as const };

/** Two sequences (20 and 12 tokens) packed, loss on the second half of each. */
function makeBatch(): PackedBatch {
  const rng = new ref.Rng(5);
  const lens = [20, 12];
  const N = lens.reduce((a, b) => a + b, 0);
  const tokens = new Int32Array(N), labels = new Int32Array(N).fill(-1), positions = new Int32Array(N);
  const segments = Int32Array.from([0, lens[0], N]);
  let off = 0;
  for (const len of lens) {
    tokens[off] = 1; // BOS
    for (let t = 1; t < len; t++) tokens[off + t] = rng.int(3, 512);
    for (let t = 0; t < len; t++) positions[off + t] = t;
    for (let t = len >> 1; t < len - 1; t++) labels[off + t] = tokens[off + t + 1];
    off += len;
  }
  return { tokens, labels, positions, segments };
}

function adapterValues(dim: number, nHeads: number): AdapterValues {
  const rng = new ref.Rng(9);
  // open gates, so that every parameter gets a gradient from the first step
  return { prompts: rng.normals(ADAPTER.layers * ADAPTER.len * dim), gates: rng.uniforms(ADAPTER.layers * nHeads, -0.5, 0.5) };
}

/** |a - e| <= tol * max|e| over the whole tensor */
function closeToScale(a: ArrayLike<number>, e: ArrayLike<number>, tol: number, what: string): void {
  let m = 0;
  for (let i = 0; i < e.length; i++) m = Math.max(m, Math.abs(e[i]));
  ref.assertClose(a, e, tol, tol * m, what);
}

interface StepRun {
  losses: number[];
  norms: number[];
  grads: Float32Array[][]; // per step, per parameter
  final: AdapterValues;
}

async function trainSteps(device: Device, batch: PackedBatch): Promise<StepRun> {
  const model = await Llama.load(stories.v0, { device });
  try {
    expect(model.device).to.equal(device);
    for (const t of allTensors(model.checkpoint.weights)) expect(t.device, 'weight device').to.equal(device);
    const adapter = Adapter.fromValues(model.config, ADAPTER, adapterValues(model.config.dim, model.config.nHeads), device);
    const grads = new AdapterGrads(adapter);
    const graph = new AdapterGraph(model, adapter);
    const opt = new AdamW(adapter.parameters(), paperAdamW);
    try {
      for (const t of [...adapter.parameters(), ...grads.all(), ...opt.m, ...opt.v]) expect(t.device).to.equal(device);
      const run: StepRun = { losses: [], norms: [], grads: [], final: { prompts: new Float32Array(), gates: new Float32Array() } };
      const targets = batch.labels.filter((l) => l >= 0).length;
      for (let step = 0; step < 2; step++) {
        grads.zero();
        const r = await graph.run(batch, 1 / targets, grads);
        expect(r.targets).to.equal(targets);
        run.losses.push(r.lossSum / targets);
        run.grads.push((await Promise.all(grads.all().map((g) => g.read()))) as Float32Array[]);
        run.norms.push(await opt.update(grads.all(), 1e-2));
      }
      run.final = await adapter.values();
      return run;
    } finally {
      grads.dispose();
      opt.dispose();
      adapter.dispose();
    }
  } finally {
    model.dispose();
  }
}

/** Logits of a prefill of 5 tokens then 3 single-token steps, with the adapter attached (made on
 *  the host: on cuda, setAdapter copies what it needs). */
async function generateLogits(device: Device): Promise<Float32Array[]> {
  const model = await Llama.load(stories.v0, { device });
  let adapter: Adapter | undefined;
  try {
    adapter = Adapter.fromValues(model.config, ADAPTER, adapterValues(model.config.dim, model.config.nHeads), 'cpu');
    model.setAdapter(adapter);
    const cache = model.newCache(16);
    expect(cache.k[0].device).to.equal(device);
    const out: Float32Array[] = [];
    try {
      const steps = [[1, 403, 407, 261, 378], [300], [42], [7]];
      for (const ids of steps) {
        const t = model.forward(ids, cache);
        expect(t.device).to.equal(device);
        out.push((await t.read()) as Float32Array);
        t.dispose();
      }
    } finally {
      cache.dispose();
    }
    return out;
  } finally {
    model.dispose();
    adapter?.dispose();
  }
}

describeEachBackend(
  (name) => `${name}: training steps and generation on stories260K against the CPU of the same binding`,
  (b: Backend) => {
    it('two AdamW steps: losses, gradients and the adapter within 1e-4', async () => {
      const batch = makeBatch();
      const [host, dev] = await withBinding(b.binding, async () => [await trainSteps('cpu', batch), await trainSteps(b.device, batch)]);
      ref.assertClose(dev.losses, host.losses, 1e-4, 0, 'losses');
      ref.assertClose(dev.norms, host.norms, 1e-4, 0, 'gradient norms');
      for (let s = 0; s < 2; s++)
        host.grads[s].forEach((g, i) => {
          expect(g.some((v) => v !== 0), `step ${s} gradient ${i} is not all zero`).to.equal(true);
          closeToScale(dev.grads[s][i], g, 1e-4, `step ${s}: gradient of parameter ${i}`);
        });
      closeToScale(dev.final.prompts, host.final.prompts, 1e-4, 'prompts after 2 steps');
      closeToScale(dev.final.gates, host.final.gates, 1e-4, 'gates after 2 steps');
    });

    it('prefill and decode logits with an adapter attached from the host within 1e-4', async () => {
      const [host, dev] = await withBinding(b.binding, async () => [await generateLogits('cpu'), await generateLogits(b.device)]);
      host.forEach((h, i) => closeToScale(dev[i], h, 1e-4, `logits of step ${i}`));
    });
  },
  (b) => b.device !== 'cpu',
);
