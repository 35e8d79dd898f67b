// The text encoder (BERT/RoBERTa, post-norm) on every backend (CUDA on the emulator in CI): last
// hidden states and prompted ones against the float64 references of test/golden/text-encoders, and
// the training graph's gradients and three whole SQuAD steps (forward, span loss, backward, AdamW)
// against the CPU of the same binding.
//
// Tolerances: hidden states within 5e-5 of the float64 reference (as on the CPU); gradients within
// 1e-4 of the CPU's, relative to each tensor's largest element.
import { expect } from 'chai';
import * as fs from 'fs';
import * as path from 'path';
import type { Tensor } from '../lib/native';
import * as lib from '../lib/native';
import { TextBatchIndex, TextEncoderModel, TextEncoderGraph } from '../lib/text/encoder';
import * as os from 'os';
import { writeRandomTextFolder } from '../lib/text/random-folder';
import { loadSquad } from '../lib/data/squad';
import { disposeParams, initParams, makeFeatures, paramValues, squadOptimizer, squadStep } from '../lib/tasks/squad';
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
            const enc = await TextEncoderModel.load(path.join(goldenDir, name), { device, tokenizer: false });
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
  
    it('three SQuAD training steps: losses and parameters as on the CPU', async () =>
      withBinding(b.binding, async () => {
        const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'squad-backend-'));
        try {
          const dir = path.join(tmp, 'enc');
          writeRandomTextFolder(dir, {
            family: 'roberta', tokenizerDir: path.join(repoRoot, 'test', 'golden', 'text-tokenizers', 'roberta'),
            hidden: 32, layers: 2, heads: 4, ffn: 64, maxTokens: 48, qaHead: true, seed: 2, init: 'fan-in',
          });
          const context = 'The licenses for most software are designed to take away your freedom to share and change the works.';
          const qas = ['software', 'freedom', 'works'].map((w, i) => ({ id: `q${i}`, question: `Which ${w}?`, answers: [{ text: w, answer_start: context.indexOf(w) }] }));
          fs.writeFileSync(path.join(tmp, 'd.json'), JSON.stringify({ data: [{ paragraphs: [{ context, qas }] }] }));
          const data = loadSquad(path.join(tmp, 'd.json'));
          const runOn = async (device: 'cpu' | 'cuda') => {
            const enc = await TextEncoderModel.load(dir, { device });
            const feats = makeFeatures(data.examples, enc.tokenizer!, { maxSeqLen: 24, docStride: 4, maxQueryLen: 8 });
            const prm = await initParams(enc, 2, 3, 'random', 1);
            const opt = squadOptimizer(prm, 0.02);
            const graph = new TextEncoderGraph(enc, 2);
            const losses: number[] = [];
            for (let s = 0; s < 3; s++) losses.push((await squadStep(enc, prm, graph, opt, feats.slice(0, 4), 1e-2)).loss);
            const values = await paramValues(prm);
            opt.dispose();
            disposeParams(prm);
            enc.dispose();
            return { losses, values };
          };
          const here = await runOn(b.device);
          expect(here.losses[2]).to.be.below(here.losses[0]);
          if (b.device === 'cpu') return;
          const cpu = await runOn('cpu');
          here.losses.forEach((l, i) => expect(Math.abs(l - cpu.losses[i])).to.be.below(1e-5 * Math.abs(cpu.losses[i])));
          // not the head's bias (the last): its gradient, a sum of (softmax - one-hot) over each window,
          // is 0 up to rounding, which Adam's normalisation turns into steps of +-lr on either device
          here.values.slice(0, -1).forEach((v, i) => expect(maxDiff(v, cpu.values[i]), `parameter ${i}`).to.be.at.most(1e-4 * maxAbs(cpu.values[i]) + 1e-7));
        } finally {
          fs.rmSync(tmp, { recursive: true, force: true });
        }
      }));
  },
);
