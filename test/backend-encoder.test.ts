// The image encoder on every backend (the CUDA one on the emulator in CI): features of the tiny
// ViT and CLIP folders against the float64 references of test/golden/encoders, the gated prompt
// branch, and the training graph's gradients against the CPU of the same binding.
//
// Tolerances: features within 1e-5 of the float64 reference (measured on the CPU: < 1e-6);
// gradients within 1e-4 of the CPU's, relative to each tensor's largest element.
import { expect } from 'chai';
import * as fs from 'fs';
import * as path from 'path';
import type { Tensor } from '../lib/native';
import * as lib from '../lib/native';
import { ImageEncoder } from '../lib/encoder/encoder';
import { EncoderGraph } from '../lib/encoder/train';
import { describeEachBackend, withBinding } from './util/backends';
import { repoRoot } from './util/paths';

const goldenDir = path.join(repoRoot, 'test', 'golden', 'encoders');
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

describeEachBackend(
  (b) => `image encoder on ${b}`,
  (b) => {
    const n = () => lib.native; // the backend's binding inside withBinding
    for (const name of ['vit-f32', 'clip-f16'])
      it(`${name}: features, prompted features and training gradients`, async () =>
        withBinding(b.binding, async () => {
          const g = golden.folders[name];
          const p = golden.prompts.L2;
          const [L, K, C] = p.shape as number[];
          const H = p.gateShape[1];
          /** everything on one device: features, prompted features, gradients */
          const runOn = async (device: 'cpu' | 'cuda') => {
            const enc = await ImageEncoder.load(path.join(goldenDir, name), { device });
            const made: Tensor[] = [];
            const t = (x: Tensor) => (made.push(x), x);
            try {
              const pixels = t(n().fromArray(floats(golden.pixels), golden.pixelShape, 'f32', device));
              const feats = (await enc.forward(pixels)[0].read()) as Float32Array;
              const pv = floats(p.values);
              const gv = floats(p.gates);
              const prompts = Array.from({ length: L }, (_, l) => t(n().fromArray(pv.slice(l * K * C, (l + 1) * K * C), [K, C], 'f32', device)));
              const gates = Array.from({ length: L }, (_, l) => t(n().fromArray(gv.slice(l * H, (l + 1) * H), [H], 'f32', device)));
              const prompted = (await enc.forward(pixels, { prompts: { prompts, gates } })[0].read()) as Float32Array;
              const graph = new EncoderGraph(enc, L);
              const pooled = t(graph.forward(pixels, { prompts, gates }));
              const B = golden.pixelShape[0];
              const dPooled = t(n().fromArray(Float32Array.from({ length: B * C }, (_, i) => Math.sin(i)), [B, C], 'f32', device));
              const dP = prompts.map(() => t(n().zeros([K, C], 'f32', device)));
              const dG = gates.map(() => t(n().zeros([H], 'f32', device)));
              graph.backward(dPooled, { prompts: dP, gates: dG });
              const grads = (await Promise.all([...dP, ...dG, pooled].map((x) => x.read()))) as Float32Array[];
              return { feats, prompted, grads };
            } finally {
              made.forEach((x) => x.dispose());
              enc.dispose();
            }
          };
          const here = await runOn(b.device);
          expect(maxDiff(here.feats, floats(g.features['-1']))).to.be.below(1e-5);
          expect(maxDiff(here.prompted, floats(g.prompted.L2.features))).to.be.below(1e-5);
          if (b.device === 'cpu') return;
          const cpu = await runOn('cpu');
          here.grads.forEach((x, i) => expect(maxDiff(x, cpu.grads[i]), `gradient ${i}`).to.be.at.most(1e-4 * maxAbs(cpu.grads[i]) + 1e-7));
        }));
  },
);
