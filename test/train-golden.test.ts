// Whole-model adapter training on stories260K against an independent PyTorch implementation
// (tools/reference/adapter_reference.py, float64): 10 AdamW steps per scenario, the step-0
// gradients, the loss trajectory and the final adapter. Scenario A starts at g = 0 (the real
// init), B with nonzero gates, C with a scalar gate, clipping and gradient accumulation.
import { expect } from 'chai';
import * as fs from 'fs';
import * as path from 'path';
import { Adapter } from '../lib/model/adapter';
import { Llama } from '../lib/model/llama';
import { AdapterGraph, AdapterGrads, PackedBatch } from '../lib/train/graph';
import { AdamW } from '../lib/train/optimizer';
import { repoRoot } from './util/paths';
import { stories } from './util/stories';

interface Scenario {
  adapterLayers: number;
  adapterLen: number;
  gate: 'per-head' | 'scalar';
  init: { prompts: number[][]; gates: number[][] };
  optimizer: { betas: [number, number]; eps: number; weightDecay: number; clipGrad: number | null };
  steps: { lr: number; microBatches: { ids: number[]; labels: number[] }[][] }[];
}
interface Golden {
  losses: number[];
  gradNorms: number[];
  targetCounts: number[];
  step0: { promptGrad: number[][]; gateGrad: number[][] };
  final: { prompts: number[][]; gates: number[][] };
  frozenLogits0: number[][];
}

const golden = (name: string) => path.join(repoRoot, 'test', 'golden', name);
const readJson = <T>(f: string): T => JSON.parse(fs.readFileSync(f, 'utf8')) as T;

/** Sequences laid end to end, each with its own positions and causal mask. */
export function pack(seqs: { ids: number[]; labels: number[] }[]): PackedBatch {
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

/** max |a - b| <= atol + rtol * max|b| over the whole tensor */
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

describe('adapter training against the PyTorch reference (stories260K)', function () {
  this.timeout(120_000);
  let model: Llama;
  before(async () => {
    model = await Llama.load(stories.v0);
  });
  after(() => model?.dispose());

  for (const name of ['a', 'b', 'c']) {
    it(`scenario ${name.toUpperCase()}: step-0 gradients, 10-step losses and the final adapter`, async () => {
      const sc = readJson<Scenario>(golden(`scenario-${name}.json`));
      const gold = readJson<Golden>(golden(`golden-${name}.json`));
      const adapter = Adapter.fromValues(
        model.config,
        { layers: sc.adapterLayers, len: sc.adapterLen, gate: sc.gate },
        { prompts: Float32Array.from(sc.init.prompts.flat()), gates: Float32Array.from(sc.init.gates.flat()) },
      );
      const grads = new AdapterGrads(adapter);
      const graph = new AdapterGraph(model, adapter);
      const [b1, b2] = sc.optimizer.betas;
      const opt = new AdamW(adapter.parameters(), { beta1: b1, beta2: b2, eps: sc.optimizer.eps, weightDecay: sc.optimizer.weightDecay });
      try {
        const losses: number[] = [];
        const norms: number[] = [];
        for (let s = 0; s < sc.steps.length; s++) {
          const micro = sc.steps[s].microBatches.map(pack);
          const targets = micro.reduce((n, b) => n + b.labels.filter((l) => l >= 0).length, 0);
          expect(targets).to.equal(gold.targetCounts[s]);
          grads.zero();
          let sum = 0;
          for (const b of micro) sum += (await graph.run(b, 1 / targets, grads)).lossSum;
          losses.push(sum / targets);
          if (s === 0) {
            const L = sc.adapterLayers;
            const pg: number[] = [];
            const gg: number[] = [];
            for (let l = 0; l < L; l++) {
              pg.push(...((await grads.prompts[l].read()) as Float32Array));
              gg.push(...((await grads.gates[l].read()) as Float32Array));
            }
            const goldPrompt = gold.step0.promptGrad.flat();
            if (name === 'a') {
              // zero-init attention: at g = 0 the prompts get exactly no gradient, the gates do
              expect(pg.every((v) => v === 0)).to.equal(true, 'prompt gradient at g = 0 must be exactly 0');
              expect(gg.some((v) => v !== 0)).to.equal(true);
            }
            expectClose(pg, goldPrompt, 'step-0 prompt gradient', 1e-3, 1e-9);
            expectClose(gg, gold.step0.gateGrad.flat(), 'step-0 gate gradient', 1e-3, 1e-9);
          }
          norms.push(await opt.update(grads.all(), sc.steps[s].lr, sc.optimizer.clipGrad ?? undefined));
        }
        expectClose(losses, gold.losses, 'losses', 1e-5);
        expectClose(norms, gold.gradNorms, 'gradient norms', 1e-4);
        const final = await adapter.values();
        expectClose(final.prompts, gold.final.prompts.flat(), 'final prompts', 1e-4);
        expectClose(final.gates, gold.final.gates.flat(), 'final gates', 1e-4, 1e-6);
      } finally {
        grads.dispose();
        opt.dispose();
        adapter.dispose();
      }
    });
  }

  it('activation checkpointing gives the same gradients, keeping less memory', async () => {
    const sc = readJson<Scenario>(golden('scenario-b.json'));
    const adapter = Adapter.fromValues(
      model.config,
      { layers: sc.adapterLayers, len: sc.adapterLen, gate: sc.gate },
      { prompts: Float32Array.from(sc.init.prompts.flat()), gates: Float32Array.from(sc.init.gates.flat()) },
    );
    const batch = pack(sc.steps[0].microBatches[0]);
    const results = [];
    for (const checkpointing of [false, true]) {
      const grads = new AdapterGrads(adapter);
      const graph = new AdapterGraph(model, adapter, { checkpointing });
      const { lossSum } = await graph.run(batch, 0.01, grads);
      const values = [];
      for (const g of grads.all()) values.push(...((await g.read()) as Float32Array));
      results.push({ lossSum, values, bytes: graph.activationBytes });
      grads.dispose();
    }
    adapter.dispose();
    expect(results[1].lossSum).to.equal(results[0].lossSum);
    expect(results[1].values).to.deep.equal(results[0].values); // the same ops on the same inputs: bit for bit
    expect(results[1].bytes).to.be.greaterThan(0);
    expect(results[1].bytes * 4).to.be.lessThan(results[0].bytes);
  });

  it('the adapted forward at init gives the reference logits (and at g = 0 the frozen ones)', async () => {
    for (const name of ['a', 'b']) {
      const sc = readJson<Scenario>(golden(`scenario-${name}.json`));
      const gold = readJson<Golden & { baseLogits0: number[][] }>(golden(`golden-${name}.json`));
      const adapter = Adapter.fromValues(
        model.config,
        { layers: sc.adapterLayers, len: sc.adapterLen, gate: sc.gate },
        { prompts: Float32Array.from(sc.init.prompts.flat()), gates: Float32Array.from(sc.init.gates.flat()) },
      );
      const ids = sc.steps[0].microBatches[0][0].ids.slice(0, 8);
      const logitsOf = async () => {
        const cache = model.newCache(16);
        const t = model.forward(ids, cache, { allLogits: true });
        const v = (await t.read()) as Float32Array;
        t.dispose();
        cache.dispose();
        return v;
      };
      const frozen = await logitsOf();
      expectClose(frozen, gold.baseLogits0.flat(), 'frozen logits', 1e-5);
      model.setAdapter(adapter);
      try {
        const got = await logitsOf();
        expectClose(got, gold.frozenLogits0.flat(), `scenario ${name} adapted logits`, 1e-5);
        // zero-init attention: at g = 0 the adapted model is the frozen model, bit for bit
        if (name === 'a') expect(Array.from(got)).to.deep.equal(Array.from(frozen));
        else expect(Array.from(got)).to.not.deep.equal(Array.from(frozen));
      } finally {
        model.setAdapter(undefined);
        adapter.dispose();
      }
    }
  });
});
