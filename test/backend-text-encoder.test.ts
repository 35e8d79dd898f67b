// The text encoder (BERT/RoBERTa, post-norm) on every backend (CUDA on the emulator in CI): last
// hidden states and prompted ones against the float64 references of test/golden/text-encoders, and
// the training graph's gradients against the CPU of the same binding.
//
// Tolerances: hidden states within 5e-5 of the float64 reference (as on the CPU); gradients within
// 1e-4 of the CPU's, relative to each tensor's largest element.
import { expect } from 'chai';
import * as fs from 'fs';
import * as path from 'path';
import type { Tensor } from '../lib/native';
import * as lib from '../lib/native';
import { TextBatchIndex, TextEncoder, TextEncoderGraph } from '../lib/text/encoder';
import { describeEachBackend, withBinding } from './util/backends';
import { repoRoot } from './util/paths';

const goldenDir = path.join(repoRoot, 'test', 'golden', 'text-encoders');
const golden = JSON.parse(fs.readFileSync(path.join(goldenDir, 'golden.json'), 'utf8'));
const floats = (b64: string) => {
  const b = Buffer.from(b64, 'base64');
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
};
const maxAbs = (a: ArrayLike<number>) => Array.from(a).reduce((m, v) => Math.max(m, Math.abs(v)), 0);
function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).to.equal(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
const offsets = [0];
for (const n of golden.lengths as number[]) offsets.push(offsets[offsets.length - 1] + n);

describeEachBackend(
  (b) => `text encoder on ${b}`,
  (b) => {
    const n = () => lib.native;
    for (const name of ['roberta-qa-f32', 'bert-qa-bf16'])
      it(`${name}: hidden states, prompted ones and the prompts' gradients`, async () =>
        withBinding(b.binding, async () => {
          const g = golden.folders[name];
          const p = golden.prompts.L2;
          const [L, K, C] = p.shape as number[];
          const H = p.gateShape[1];
          const runOn = async (device: 'cpu' | 'cuda') => {
            const enc = await TextEncoder.load(path.join(goldenDir, name), { device, tokenizer: false });
            const made: Tensor[] = [];
            const t = (x: Tensor) => (made.push(x), x);
            const idx = new TextBatchIndex({ ids: Int32Array.from(g.ids), types: Int32Array.from(g.types), offsets }, enc.config);
            try {
              const hidden = (await t(enc.forward(idx)).read()) as Float32Array;
              const pv = floats(p.values);
              const gv = floats(p.gates);
              const prompts = Array.from({ length: L }, (_, l) => t(n().fromArray(pv.slice(l * K * C, (l + 1) * K * C), [K, C], 'f32', device)));
              const gates = Array.from({ length: L }, (_, l) => t(n().fromArray(gv.slice(l * H, (l + 1) * H), [H], 'f32', device)));
              const prompted = (await t(enc.forward(idx, { prompts, gates })).read()) as Float32Array;
              const graph = new TextEncoderGraph(enc, L);
              t(graph.forward(idx, { prompts, gates }));
              const dH = t(n().fromArray(Float32Array.from({ length: idx.N * C }, (_, i) => Math.sin(i)), [idx.N, C], 'f32', device));
              const dP = prompts.map(() => t(n().zeros([K, C], 'f32', device)));
              const dG = gates.map(() => t(n().zeros([H], 'f32', device)));
              graph.backward(dH, { prompts: dP, gates: dG });
              const grads = (await Promise.all([...dP, ...dG].map((x) => x.read()))) as Float32Array[];
              return { hidden, prompted, grads };
            } finally {
              made.forEach((x) => x.dispose());
              idx.dispose();
              enc.dispose();
            }
          };
          const here = await runOn(b.device);
          expect(maxDiff(here.hidden, floats(g.hidden))).to.be.below(5e-5);
          expect(maxDiff(here.prompted, floats(g.prompted.L2))).to.be.below(5e-5);
          if (b.device === 'cpu') return;
          const cpu = await runOn('cpu');
          here.grads.forEach((x, i) => expect(maxDiff(x, cpu.grads[i]), `gradient ${i}`).to.be.at.most(1e-4 * maxAbs(cpu.grads[i]) + 1e-7));
        }));
  },
);
