// The fused decoder layer (native.decoderLayer) against the op-by-op forward it replaces, on the
// real stories260K weights (f32 and bf16), with and without the adapter branch: the final hidden
// state and both caches must be equal bit for bit, for prefill and decode steps.
import { expect } from 'chai';
import { native } from '../lib/native';
import { loadCheckpoint } from '../lib/model/load';
import { Checkpoint, LayerWeights } from '../lib/model/weights';
import { headSize } from '../lib/model/config';
import { dataPath } from './util/paths';
import { layerOpByOp, Prompt, randomArray } from './util/forward-reference';

describe('decoderLayer: the fused layer equals the op-by-op forward bit for bit (stories260K)', function () {
  this.timeout(60000);
  for (const dtype of ['f32', 'bf16'] as const) {
    let ckpt: Checkpoint;
    before(async () => {
      ckpt = await loadCheckpoint(dataPath('stories260K', 'stories260K.bin'), { dtype, device: 'cpu' });
    });
    after(() => ckpt?.dispose());

    for (const adapted of [false, true]) {
      it(`${dtype} weights, ${adapted ? 'with the adapter branch' : 'plain'}: prefill 5 tokens, then 3 decode steps`, async () => {
        const c = ckpt.config;
        const d = headSize(c);
        const S = 16;
        const caches = (n: number) => Array.from({ length: n }, () => native.zeros([S, c.nKvHeads, d]));
        const [k1, v1, k2, v2] = caches(4);
        const K = 3;
        const p: Prompt | undefined = adapted
          ? {
              pk: native.fromArray(randomArray(K * c.nKvHeads * d, 1, 1), [K, c.nKvHeads, d]),
              pv: native.fromArray(randomArray(K * c.nKvHeads * d, 2, 1), [K, c.nKvHeads, d]),
              gate: native.fromArray(randomArray(c.nHeads, 3, 1), [c.nHeads]),
            }
          : undefined;
        const shape = { heads: c.nHeads, kvHeads: c.nKvHeads, eps: c.normEps, theta: c.ropeTheta, layout: c.ropeLayout };
        let pos0 = 0;
        for (const T of [5, 1, 1, 1]) {
          const x0 = randomArray(T * c.dim, 10 + pos0, 1);
          const xa = native.fromArray(x0, [T, c.dim]);
          const xb = native.fromArray(x0, [T, c.dim]);
          const l = pos0 % c.nLayers;
          layerOpByOp(xa, ckpt.weights.layers[l], c, k1, v1, pos0, p);
          native.decoderLayer(xb, ckpt.weights.layers[l], k2, v2, pos0, shape, p?.pk, p?.pv, p?.gate);
          const [a, b] = [await xa.read(), await xb.read()];
          expect(Array.from(b), `x after positions ${pos0}..${pos0 + T}`).to.deep.equal(Array.from(a));
          expect(a.some((value, i) => value !== x0[i]), 'the layer changed x').to.equal(true);
          pos0 += T;
        }
        expect(Array.from(await k2.read())).to.deep.equal(Array.from(await k1.read()));
        expect(Array.from(await v2.read())).to.deep.equal(Array.from(await v1.read()));
      });
    }

    it(`${dtype}: bad arguments are clear errors, nothing written`, async () => {
      const c = ckpt.config;
      const d = headSize(c);
      const lw = ckpt.weights.layers[0];
      const k = native.zeros([4, c.nKvHeads, d]);
      const v = native.zeros([4, c.nKvHeads, d]);
      const x = native.zeros([2, c.dim]);
      const shape = { heads: c.nHeads, kvHeads: c.nKvHeads, eps: c.normEps, theta: c.ropeTheta, layout: c.ropeLayout };
      expect(() => native.decoderLayer(x, lw, k, v, 3, shape)).to.throw(/positions 3..5 exceed the cache length 4/);
      expect(() => native.decoderLayer(x, { ...lw, wq: lw.w1 }, k, v, 0, shape)).to.throw(/decoderLayer: wq must be/);
      const noW2 = { ...lw } as Partial<LayerWeights>;
      delete noW2.w2;
      expect(() => native.decoderLayer(x, noW2 as LayerWeights, k, v, 0, shape)).to.throw(TypeError, /w2 must be a Tensor/);
      expect(() => native.decoderLayer(x, lw, k, v, 0, { ...shape, heads: 3 })).to.throw(/heads/);
      expect(() => native.decoderLayer(x, lw, k, v, 0, { ...shape, layout: 'x' as never })).to.throw(TypeError, /layout/);
      expect(Array.from(await k.read()).every((e) => e === 0)).to.equal(true);
    });
  }
});
