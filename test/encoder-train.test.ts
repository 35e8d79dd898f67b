// The encoder's training graph (SPEC §9): gradients of prompts and gates by finite differences of
// the inference forward, on the tiny ViT and CLIP folders of test/golden/encoders.
import { expect } from 'chai';
import * as fs from 'fs';
import * as path from 'path';
import { native, Tensor } from '../lib/native';
import { ImageEncoder } from '../lib/encoder/encoder';
import { EncoderGraph } from '../lib/encoder/train';
import { Random } from '../lib/generate/random';
import { repoRoot } from './util/paths';

const goldenDir = path.join(repoRoot, 'test', 'golden', 'encoders');
const golden = JSON.parse(fs.readFileSync(path.join(goldenDir, 'golden.json'), 'utf8'));
const pixelValues = (() => {
  const b = Buffer.from(golden.pixels, 'base64');
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
})();

function normals(n: number, seed: number, scale = 1): Float32Array {
  // Box-Muller over the seeded uniform stream
  const r = new Random(seed);
  return Float32Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(1 - r.next())) * Math.cos(2 * Math.PI * r.next()) * scale);
}

for (const name of ['vit-f32', 'clip-f32'])
  describe(`encoder training graph: ${name}`, () => {
    let enc: ImageEncoder;
    let pixels: Tensor;
    const K = 3;
    const L = 2;
    let C: number;
    let H: number;
    let B: number;
    before(async () => {
      enc = await ImageEncoder.load(path.join(goldenDir, name), { device: 'cpu' });
      pixels = native.fromArray(pixelValues, golden.pixelShape);
      C = enc.config.dim;
      H = enc.config.nHeads;
      B = golden.pixelShape[0];
    });
    after(() => {
      pixels.dispose();
      enc.dispose();
    });

    /** loss = sum(pooled * R) through the inference forward, in double */
    async function loss(P: Float32Array[], G: Float32Array[], R: Float32Array): Promise<number> {
      const prompts = P.map((p) => native.fromArray(p, [K, C]));
      const gates = G.map((g) => native.fromArray(g, [H]));
      const [pooled] = enc.forward(pixels, { prompts: { prompts, gates }, project: false });
      const v = (await pooled.read()) as Float32Array;
      [pooled, ...prompts, ...gates].forEach((t) => t.dispose());
      let s = 0;
      for (let i = 0; i < v.length; i++) s += v[i] * R[i];
      return s;
    }

    async function grads(P: Float32Array[], G: Float32Array[], R: Float32Array) {
      const prompts = P.map((p) => native.fromArray(p, [K, C]));
      const gates = G.map((g) => native.fromArray(g, [H]));
      const graph = new EncoderGraph(enc, L);
      const pooled = graph.forward(pixels, { prompts, gates });
      const dP = prompts.map(() => native.zeros([K, C]));
      const dG = gates.map(() => native.zeros([H]));
      const dPooled = native.fromArray(R, [B, C]);
      graph.backward(dPooled, { prompts: dP, gates: dG });
      const out = {
        pooled: (await pooled.read()) as Float32Array,
        dP: (await Promise.all(dP.map((t) => t.read()))) as Float32Array[],
        dG: (await Promise.all(dG.map((t) => t.read()))) as Float32Array[],
      };
      [pooled, dPooled, ...prompts, ...gates, ...dP, ...dG].forEach((t) => t.dispose());
      return out;
    }

    it('dPrompts and dGates match central finite differences', async () => {
      const P = [normals(K * C, 1), normals(K * C, 2)];
      const G = [normals(H, 3, 0.7), normals(H, 4, 0.7)];
      const R = normals(B * C, 5);
      const g = await grads(P, G, R);
      // the graph's forward is the inference forward, bit for bit
      const prompts = P.map((p) => native.fromArray(p, [K, C]));
      const gates = G.map((x) => native.fromArray(x, [H]));
      const [ref] = enc.forward(pixels, { prompts: { prompts, gates }, project: false });
      expect(Buffer.from(((await ref.read()) as Float32Array).buffer).equals(Buffer.from(g.pooled.buffer))).to.equal(true);
      [ref, ...prompts, ...gates].forEach((t) => t.dispose());

      const h = 1e-2;
      const check = async (an: number, set: (v: number) => void, v0: number, what: string) => {
        set(v0 + h);
        const up = await loss(P, G, R);
        set(v0 - h);
        const down = await loss(P, G, R);
        set(v0);
        const fd = (up - down) / (2 * h);
        // f32 forward: loss noise ~1e-6 over 2h, and O(h^2) truncation
        expect(Math.abs(fd - an), `${what}: fd ${fd} analytic ${an}`).to.be.at.most(2e-3 + 1e-2 * Math.abs(an));
      };
      for (let l = 0; l < L; l++) {
        for (let j = 0; j < H; j++) await check(g.dG[l][j], (v) => (G[l][j] = v), G[l][j], `gate[${l}][${j}]`);
        for (const j of [0, 7, C + 3, 2 * C + C - 1]) await check(g.dP[l][j], (v) => (P[l][j] = v), P[l][j], `prompt[${l}][${j}]`);
      }
      // the gradients are not trivially small
      expect(Math.max(...g.dG.flatMap((x) => [...x].map(Math.abs)))).to.be.above(1e-2);
      expect(Math.max(...g.dP.flatMap((x) => [...x].map(Math.abs)))).to.be.above(1e-3);
    });

    it('at gates = 0: dPrompts is exactly 0, dGates is not, the pooled output is the frozen one', async () => {
      const P = [normals(K * C, 11), normals(K * C, 12)];
      const G = [new Float32Array(H), new Float32Array(H)];
      const R = normals(B * C, 13);
      const g = await grads(P, G, R);
      for (const d of g.dP) expect(d.every((v) => v === 0)).to.equal(true);
      expect(g.dG.some((d) => d.some((v) => v !== 0))).to.equal(true);
      const [frozen] = enc.forward(pixels, { project: false });
      expect(Buffer.from(((await frozen.read()) as Float32Array).buffer).equals(Buffer.from(g.pooled.buffer))).to.equal(true);
      frozen.dispose();
    });

    it('one adapted layer; bad arguments are clear errors', async () => {
      const graph = new EncoderGraph(enc, 1);
      const prompts = [native.fromArray(normals(K * C, 21), [K, C])];
      const gates = [native.fromArray(normals(H, 22), [H])];
      const pooled = graph.forward(pixels, { prompts, gates });
      const dP = [native.zeros([K, C])];
      const dG = [native.zeros([H])];
      graph.backward(native.fromArray(normals(B * C, 23), [B, C]), { prompts: dP, gates: dG });
      expect(((await dP[0].read()) as Float32Array).some((v) => v !== 0)).to.equal(true);
      expect(() => graph.backward(pooled, { prompts: dP, gates: dG })).to.throw(/call forward\(\) first/);
      expect(() => new EncoderGraph(enc, 3)).to.throw(/adapted layers must be 1\.\.2/);
      expect(() => graph.forward(pixels, { prompts: [...prompts, ...prompts], gates: [...gates, ...gates] })).to.throw(/2 prompt layers, the graph adapts 1/);
      const bad = native.zeros([K, C + 1]);
      expect(() => graph.forward(pixels, { prompts: [bad], gates })).to.throw(/prompts\[0\] must be \(K, 16\) f32/);
      [pooled, bad, ...prompts, ...gates, ...dP, ...dG].forEach((t) => t.dispose());
    });
  });
