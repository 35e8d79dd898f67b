// The whole-model forward as one op (native.model + native.modelForward) against the op-by-op
// forward, on the real stories260K weights (f32 and bf16), plain and with adapter prompts in some
// layers: logits and every cache equal bit for bit, for a prefill and decode steps — whether the
// op runs on the caller's thread (a tiny step with the executor idle) or queued behind other work.
// Then its errors, and an upstream failure passed on through the caller-run path.
import { expect } from 'chai';
import { native, Tensor, ModelHandle, DecoderShape } from '../lib/native';
import { loadCheckpoint } from '../lib/model/load';
import { Checkpoint } from '../lib/model/weights';
import { headSize } from '../lib/model/config';
import { dataPath } from './util/paths';
import { modelOpByOp, Prompt, randomArray } from './util/forward-reference';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { writeRandomLlama2c } from '../bench/decode';
import { toGguf } from '../tools/to-gguf';

describe('modelForward: the whole forward as one op equals the op-by-op forward bit for bit (stories260K)', function () {
  this.timeout(60000);
  for (const dtype of ['f32', 'bf16'] as const) {
    let ckpt: Checkpoint;
    let shape: DecoderShape;
    before(async () => {
      ckpt = await loadCheckpoint(dataPath('stories260K', 'stories260K.bin'), { dtype, device: 'cpu' });
      const c = ckpt.config;
      shape = { heads: c.nHeads, kvHeads: c.nKvHeads, eps: c.normEps, theta: c.ropeTheta, layout: c.ropeLayout };
    });
    after(() => ckpt?.dispose());

    const caches = (S: number) => {
      const c = ckpt.config;
      return Array.from({ length: c.nLayers }, () => native.zeros([S, c.nKvHeads, headSize(c)]));
    };

    for (const adapted of [false, true]) {
      it(`${dtype} weights, ${adapted ? 'adapter prompts in layers 1 and 3' : 'plain'}: prefill (all logits), decode steps, a 2-token chunk`, async () => {
        const c = ckpt.config;
        const d = headSize(c);
        const K = 4;
        const prompts: (Prompt | undefined)[] = Array.from({ length: c.nLayers }, (_, l) =>
          adapted && l % 2 === 1
            ? {
                pk: native.fromArray(randomArray(K * c.nKvHeads * d, 1 + l, 1), [K, c.nKvHeads, d]),
                pv: native.fromArray(randomArray(K * c.nKvHeads * d, 11 + l, 1), [K, c.nKvHeads, d]),
                gate: native.fromArray(randomArray(c.nHeads, 21 + l, 1), [c.nHeads]),
              }
            : undefined,
        );
        const model = native.model({ ...ckpt.weights, prompts: prompts.map((p) => p ?? null) }, shape);
        expect(model.layers).to.equal(c.nLayers);
        expect(model.device).to.equal('cpu');
        const S = 24;
        const [k1, v1, k2, v2] = [caches(S), caches(S), caches(S), caches(S)];
        let pos0 = 0;
        const steps: [number[], boolean][] = [
          [[1, 40, 300, 7, 99], true],
          [[12], false],
          [[500], false],
          [[3, 4], false],
          [[256], false],
        ];
        for (const [tokens, all] of steps) {
          const want = await modelOpByOp(ckpt.weights, c, tokens, k1, v1, pos0, all, prompts).read();
          const got = native.modelForward(model, Int32Array.from(tokens), k2, v2, pos0, all);
          expect(got.shape).to.deep.equal([all ? tokens.length : 1, c.vocabSize]);
          expect(Array.from(await got.read()), `logits at positions ${pos0}..${pos0 + tokens.length}`).to.deep.equal(Array.from(want));
          pos0 += tokens.length;
        }
        for (let l = 0; l < c.nLayers; l++) {
          expect(Array.from(await k2[l].read()), `layer ${l} keys`).to.deep.equal(Array.from(await k1[l].read()));
          expect(Array.from(await v2[l].read()), `layer ${l} values`).to.deep.equal(Array.from(await v1[l].read()));
        }
        model.dispose();
        expect(model.disposed).to.equal(true);
      });
    }
  }

  // Decoding runs q/k/v and w1/w3 as one parallel region per group (cpu::matvec_many): matrices
  // large enough to be split between threads, and quantized ones (one int8 x for the group), must
  // give exactly what one matmul each gives.
  for (const form of ['f32', 'bf16', 'Q8_0', 'Q4_K'] as const)
    it(`decode steps at a 256-wide random model (${form} weights): the grouped products equal one matmul each`, async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-matvec-many-'));
      try {
        const bin = writeRandomLlama2c(path.join(dir, 'r.bin'), { dim: 256, hiddenDim: 688, nLayers: 2, nHeads: 8, nKvHeads: 4, vocabSize: 512, seqLen: 64 }, 5);
        let file = bin;
        if (form === 'Q8_0' || form === 'Q4_K') await toGguf(bin, (file = path.join(dir, `r-${form}.gguf`)), { type: form, tokenizer: dataPath('stories260K', 'tok512.bin') });
        const ckpt = await loadCheckpoint(file, { dtype: form === 'bf16' ? 'bf16' : 'f32', device: 'cpu' });
        try {
          const c = ckpt.config;
          if (form === 'Q8_0' || form === 'Q4_K') expect(ckpt.weights.layers[0].wq.dtype).to.equal(form.toLowerCase());
          const model = native.model(ckpt.weights, { heads: c.nHeads, kvHeads: c.nKvHeads, eps: c.normEps, theta: c.ropeTheta, layout: c.ropeLayout });
          const caches = () => Array.from({ length: c.nLayers }, () => native.zeros([16, c.nKvHeads, headSize(c)]));
          const [k1, v1, k2, v2] = [caches(), caches(), caches(), caches()];
          let pos0 = 0;
          for (const tokens of [[1, 200, 7], [33], [401], [5]]) {
            const want = await modelOpByOp(ckpt.weights, c, tokens, k1, v1, pos0, false).read();
            const got = await native.modelForward(model, tokens, k2, v2, pos0, false).read();
            expect(Array.from(got), `${form} logits at ${pos0}`).to.deep.equal(Array.from(want));
            pos0 += tokens.length;
          }
          model.dispose();
        } finally {
          ckpt.dispose();
        }
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

  it('a 400-token prefill (its scratch allocated apart, not the per-thread buffer) equals the op-by-op forward', async () => {
    const ckpt = await loadCheckpoint(dataPath('stories260K', 'stories260K.bin'), { dtype: 'f32', device: 'cpu' });
    try {
      const c = ckpt.config;
      const d = headSize(c);
      const model = native.model(ckpt.weights, { heads: c.nHeads, kvHeads: c.nKvHeads, eps: c.normEps, theta: c.ropeTheta, layout: c.ropeLayout });
      const caches = () => Array.from({ length: c.nLayers }, () => native.zeros([400, c.nKvHeads, d]));
      const [k1, v1, k2, v2] = [caches(), caches(), caches(), caches()];
      const tokens = Array.from({ length: 400 }, (_, i) => (i * 37 + 11) % c.vocabSize);
      const want = await modelOpByOp(ckpt.weights, c, tokens, k1, v1, 0, true).read();
      const got = await native.modelForward(model, tokens, k2, v2, 0, true).read();
      expect(got.length).to.equal(400 * c.vocabSize);
      expect(Array.from(got)).to.deep.equal(Array.from(want));
      model.dispose();
    } finally {
      ckpt.dispose();
    }
  });

  describe('on the caller thread or queued', () => {
    let ckpt: Checkpoint;
    let model: ModelHandle;
    before(async () => {
      ckpt = await loadCheckpoint(dataPath('stories260K', 'stories260K.bin'), { dtype: 'f32', device: 'cpu' });
      const c = ckpt.config;
      model = native.model(ckpt.weights, { heads: c.nHeads, kvHeads: c.nKvHeads, eps: c.normEps, theta: c.ropeTheta, layout: c.ropeLayout });
    });
    after(() => {
      model?.dispose();
      ckpt?.dispose();
    });

    it('decode steps queued behind a long op give the same logits as steps run at once, in order', async () => {
      const c = ckpt.config;
      const d = headSize(c);
      const fresh = () => Array.from({ length: c.nLayers }, () => native.zeros([8, c.nKvHeads, d]));
      const [ka, va, kb, vb] = [fresh(), fresh(), fresh(), fresh()];
      await native.synchronize();
      // the executor idle: each tiny step may run on this thread
      const alone = [await native.modelForward(model, [1], ka, va, 0).read(), await native.modelForward(model, [40], ka, va, 1).read()];
      // A big matmul first: both steps wait their turn, the second reads the first's cache rows.
      const big = native.matmul(native.fromArray(randomArray(256 * 1024, 5, 1), [256, 1024]), native.fromArray(randomArray(1024 * 1024, 6, 1), [1024, 1024]));
      const behind = [native.modelForward(model, [1], kb, vb, 0), native.modelForward(model, [40], kb, vb, 1)];
      expect(Array.from(await behind[1].read())).to.deep.equal(Array.from(alone[1]));
      expect(Array.from(await behind[0].read())).to.deep.equal(Array.from(alone[0]));
      expect((await big.read()).length).to.equal(256 * 1024);
    });

    it('a failed producer of a cache passes its error on through a caller-run step', async () => {
      const c = ckpt.config;
      const d = headSize(c);
      const S = 4;
      // embedding fails in its body (a token id outside the table): its output is poisoned
      const table = native.zeros([3, S * c.nKvHeads * d]);
      const poisoned = native.reshape(native.embedding(table, native.fromArray(Int32Array.from([7]), [1])), [S, c.nKvHeads, d]);
      await native.synchronize().catch(() => undefined);
      const k = Array.from({ length: c.nLayers }, (_, l) => (l === 2 ? poisoned : native.zeros([S, c.nKvHeads, d])));
      const v = Array.from({ length: c.nLayers }, () => native.zeros([S, c.nKvHeads, d]));
      const logits = native.modelForward(model, [1], k, v, 0);
      let message = '';
      await logits.read().catch((e: Error) => (message = e.message));
      expect(message).to.match(/token id 7 .* outside the vocabulary \[0, 3\)/);
      await native.synchronize().catch(() => undefined);
    });
  });

  describe('errors: thrown before anything runs, nothing written', () => {
    let ckpt: Checkpoint;
    let shape: DecoderShape;
    let model: ModelHandle;
    before(async () => {
      ckpt = await loadCheckpoint(dataPath('stories260K', 'stories260K.bin'), { dtype: 'f32', device: 'cpu' });
      const c = ckpt.config;
      shape = { heads: c.nHeads, kvHeads: c.nKvHeads, eps: c.normEps, theta: c.ropeTheta, layout: c.ropeLayout };
      model = native.model(ckpt.weights, shape);
    });
    after(() => {
      model?.dispose();
      ckpt?.dispose();
    });

    it('model(): missing or misshapen weights and prompts name the layer and the tensor', () => {
      const w = ckpt.weights;
      const c = ckpt.config;
      const d = headSize(c);
      expect(() => native.model({ ...w, layers: [] }, shape)).to.throw(/at least one layer/);
      const swapped = w.layers.map((l, i) => (i === 3 ? { ...l, wq: l.w1 } : l));
      expect(() => native.model({ ...w, layers: swapped }, shape)).to.throw(/layers\[3\]\.wq must be \[64, 64\]/);
      const noW2 = w.layers.map((l, i) => (i === 1 ? { ...l, w2: undefined as unknown as Tensor } : l));
      expect(() => native.model({ ...w, layers: noW2 }, shape)).to.throw(TypeError, /layers\[1\]\.w2 must be a Tensor/);
      expect(() => native.model({ ...w, classifier: w.layers[0].wq }, shape)).to.throw(/classifier must be \[512, 64\]/);
      expect(() => native.model(w, { ...shape, heads: 5 })).to.throw(/5 heads and 4 kv heads do not fit 64 channels/);
      expect(() => native.model(w, { ...shape, layout: 'sideways' as never })).to.throw(TypeError, /layout/);
      const pk = native.zeros([2, c.nKvHeads, d]);
      expect(() => native.model({ ...w, prompts: [null, { pk, pv: pk, gate: null as unknown as Tensor }] }, shape)).to.throw(/2 adapter prompts for 5 layers/);
      const half = [null, null, { pk, pv: pk, gate: null as unknown as Tensor }, null, null];
      expect(() => native.model({ ...w, prompts: half }, shape)).to.throw(/layer 2: the prompt keys pk, values pv and gate come together/);
      expect(() => native.model(null as never, shape)).to.throw(TypeError, /weights/);
    });

    it('modelForward(): bad tokens, caches, positions and handles', async () => {
      const c = ckpt.config;
      const d = headSize(c);
      const k = Array.from({ length: c.nLayers }, () => native.zeros([4, c.nKvHeads, d]));
      const v = Array.from({ length: c.nLayers }, () => native.zeros([4, c.nKvHeads, d]));
      expect(() => native.modelForward(model, [1, 512], k, v, 0)).to.throw(/token 512 at index 1 is outside the vocabulary \[0, 512\)/);
      expect(() => native.modelForward(model, [-1], k, v, 0)).to.throw(/token -1 at index 0/);
      expect(() => native.modelForward(model, [], k, v, 0)).to.throw(/at least one token/);
      expect(() => native.modelForward(model, [1.5] as never, k, v, 0)).to.throw(TypeError, /tokens/);
      expect(() => native.modelForward(model, [1, 2], k, v, 3)).to.throw(/positions 3..5 exceed the cache length 4/);
      expect(() => native.modelForward(model, [1], k.slice(1), v, 0)).to.throw(/4 key and 5 value caches for 5 layers/);
      const odd = [...k.slice(0, 4), native.zeros([4, c.nKvHeads, d + 2])];
      expect(() => native.modelForward(model, [1], odd, v, 0)).to.throw(/must be \(S, 4, 8\)/);
      expect(() => native.modelForward(model, [1], [...k.slice(0, 4), 3 as never], v, 0)).to.throw(TypeError, /kCaches/);
      expect(() => native.modelForward({} as never, [1], k, v, 0)).to.throw(TypeError, /a Model/);
      expect(() => native.modelForward(model, [1], k, v, -1)).to.throw(TypeError, /pos0/);
      const gone = native.model(ckpt.weights, shape);
      gone.dispose();
      expect(() => native.modelForward(gone, [1], k, v, 0)).to.throw(/the model was disposed/);
      for (const t of [...k, ...v]) expect(Array.from(await t.read()).every((e) => e === 0)).to.equal(true);
    });

    it('a child process survives misuse of model and modelForward (no crash, exit code 0)', function () {
      const { spawnSync } = require('child_process') as typeof import('child_process');
      const path = require('path') as typeof import('path');
      const lib = path.resolve(__dirname, '..', 'lib');
      const body = `
        const n = require(${JSON.stringify(path.join(lib, 'native.js'))}).native;
        const { loadCheckpoint } = require(${JSON.stringify(path.join(lib, 'model', 'load.js'))});
        const tryAll = (fs) => fs.forEach((f) => { try { const r = f(); if (r && r.catch) r.catch(() => 0); } catch (e) {} });
        loadCheckpoint(${JSON.stringify(dataPath('stories260K', 'stories260K.bin'))}, { device: 'cpu' }).then((ck) => {
          const w = ck.weights;
          const shape = { heads: 8, kvHeads: 4, eps: 1e-5, theta: 1e4, layout: 'interleaved' };
          const m = n.model(w, shape);
          const z = () => Array.from({ length: 5 }, () => n.zeros([2, 4, 8]));
          const dead = n.zeros([2, 4, 8]);
          dead.dispose();
          tryAll([
            () => n.model(),
            () => n.model(42, shape),
            () => n.model({ ...w, layers: [1, 2] }, shape),
            () => n.model({ ...w, layers: new Array(3) }, shape),
            () => n.model({ ...w, prompts: [{}, 'x'] }, shape),
            () => n.model(w, { ...shape, heads: 1e300 }),
            () => n.model(w, { ...shape, eps: NaN }),
            () => n.modelForward(m),
            () => n.modelForward(m, new Int32Array(3), z(), z(), 0),
            () => n.modelForward(m, new Float32Array(1), z(), z(), 0),
            () => n.modelForward(m, [2 ** 40], z(), z(), 0),
            () => n.modelForward(m, [1], [...z().slice(1), dead], z(), 0),
            () => n.modelForward(m, [1], z(), z(), 2 ** 60),
            () => n.modelForward(m, [1], z(), z(), 0, 'yes'),
            () => n.modelForward(m, [1], z(), z(), 1).read(),
          ]);
          m.dispose();
          return n.synchronize().catch(() => 0);
        }).then(() => console.log('CHILD-DONE'));
      `;
      const r = spawnSync(process.execPath, ['-e', body], { encoding: 'utf8', timeout: 20000 });
      expect(r.signal, r.stderr).to.equal(null);
      expect(r.status, r.stderr).to.equal(0);
      expect(r.stdout).to.contain('CHILD-DONE');
    });
  });
});
