// Every op on every backend (test/util/backends.ts) against the CPU result of the same binding, in
// the spirit of ggml's test-backend-ops: the CPU ops are checked against float64 references
// elsewhere (ops.test.ts, train-ops.test.ts); here each backend must agree with them. The same
// inputs are built twice, on the backend's device and on the host; outputs must have the same
// shapes and dtypes, live on the device the op ran on, and agree within:
//
//   exact        embedding, sliceRows, kvWrite, convert, gatherRows, addInPlace, scaleInPlace,
//                toDevice, randomUniform: bit-equal
//   f32 1e-5     elementwise ops: |a - e| <= 1e-5 (|e| + s), s a scale that reductions can cancel
//                against: the row's largest |e| (rmsnorm, attention, backward ops), sum_k |x_k w_k|
//                (matmul), the rotated pair's |x0| + |x1| (rope)
//   bf16 1e-2    matmul and matmulBackward with bf16 weights on cuda: the tensor-core path rounds the
//                f32 activations to bf16 too (the CPU multiplies them in f32), a relative error of
//                up to 2^-9 per product
//
// Shapes stay small (N <= 64 tokens, d <= 32, V <= 512): on a machine without a GPU the cuda
// backend is the emulator, which runs the CUDA kernels as CPU fibers.
import { expect } from 'chai';
import type { RopeLayout, Tensor } from '../lib/native';
import { Backend, On, describeEachBackend } from './util/backends';
import { Case, CASES, Data, makeData, MODE_CASES, optionsOf, promptShape } from './util/attention-cases';
import * as ref from './util/reference';
import * as tref from './util/train-reference';
import { rejects } from './util/tensors';

type Out = Tensor | null | void | (Tensor | null)[];
type Values = (Float32Array | Int32Array | null)[];

function list(o: Out): (Tensor | null)[] {
  if (o === undefined) return [];
  return Array.isArray(o) ? o : [o];
}

/**
 * Builds the same computation on the backend's device and on the host of its binding (`build` is
 * called twice; inputs must be made inside it from data made outside), checks the outputs' shapes,
 * dtypes and devices, and reads both.
 */
async function onBoth(b: Backend, build: (on: On) => Out): Promise<{ got: Values; want: Values }> {
  const dev = new On(b.binding, b.device);
  const host = new On(b.binding, 'cpu');
  const g = list(build(dev));
  const w = list(build(host));
  expect(g.length).to.equal(w.length);
  g.forEach((t, i) => {
    const h = w[i];
    if (t === null || h === null) return expect(t === null, `output ${i} is null on one device only`).to.equal(h === null);
    expect(t.device, `output ${i}: device`).to.equal(b.device);
    expect(h.device, `output ${i}: host device`).to.equal('cpu');
    expect(t.shape, `output ${i}: shape`).to.deep.equal(h.shape);
    expect(t.dtype, `output ${i}: dtype`).to.equal(h.dtype);
  });
  const read = (ts: (Tensor | null)[]) => Promise.all(ts.map((t) => (t ? t.read() : Promise.resolve(null))));
  return { got: await read(g), want: await read(w) };
}

/** |a - e| <= rtol (|e| + scale_i) */
function near(a: ArrayLike<number>, e: ArrayLike<number>, rtol: number, scale: number | ArrayLike<number>, what: string): void {
  const atol = typeof scale === 'number' ? rtol * scale : Float64Array.from(scale, (s) => rtol * s + 1e-37);
  ref.assertClose(a, e, rtol, atol, what);
}

/** Per element: the largest |e| of its row of `len` elements. */
function rowMax(e: ArrayLike<number>, len: number): Float64Array {
  const s = new Float64Array(e.length);
  for (let r = 0; r < e.length; r += len) {
    let m = 0;
    for (let i = r; i < r + len; i++) m = Math.max(m, Math.abs(e[i]));
    s.fill(m, r, r + len);
  }
  return s;
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** Rope's scale: |x0| + |x1| of the pair each element belongs to. */
function pairScale(x: ArrayLike<number>, rows: number, d: number, layout: RopeLayout): Float64Array {
  const s = new Float64Array(rows * d);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < d / 2; i++) {
      const [ia, ib] = ref.ropePair(i, d, layout);
      s[r * d + ia] = s[r * d + ib] = Math.abs(x[r * d + ia]) + Math.abs(x[r * d + ib]);
    }
  return s;
}

const F32 = 1e-5;
/** bf16-weight matmuls: 1e-2 on cuda (activations rounded to bf16 by the tensor-core path). */
const bf16Tol = (b: Backend) => (b.device === 'cuda' ? 1e-2 : F32);

// The gated attention cases within the emulator's budget (N <= 64, d <= 32), plus two of our own.
const ATTN_CASES: Case[] = [
  ...CASES.filter((c) => c.lens.reduce((a, l) => a + l, 0) <= 64 && c.d <= 32),
  { name: 'no prompt, H = 3 Hkv, d = 12, segments 33, 4, 0, 20', H: 3, Hkv: 1, d: 12, lens: [33, 4, 0, 20], K: 0, gate: 'none' },
  { name: 'd = 32, K = 10, per-head gate, segments 40, 1, 23', H: 2, Hkv: 2, d: 32, lens: [40, 1, 23], K: 10, gate: 'head' },
  {
    name: '16 short segments (lengths 0 .. 7, two empty), K = 4, scalar gate',
    H: 4, Hkv: 2, d: 8, lens: Array.from({ length: 16 }, (_, i) => (i * 5) % 8), K: 4, gate: 'scalar',
  },
  // the non-causal and per-segment-prompt modes (SPEC §8, §9)
  ...MODE_CASES.filter((c) => c.lens.reduce((a, l) => a + l, 0) <= 64 && c.d <= 32),
  { name: 'non-causal, segments 40, 1, 30: a segment across two query tiles', H: 2, Hkv: 1, d: 8, lens: [40, 1, 30], K: 3, gate: 'head', causal: false },
  {
    name: 'per-segment prompts, non-causal, segments 50, 0, 30, 20: one across two query tiles, an empty one',
    H: 2, Hkv: 1, d: 8, lens: [50, 0, 30, 20], K: 5, gate: 'head', causal: false, perSegment: true,
  },
  {
    name: 'per-segment prompts, causal, 16 short segments (0 .. 7) in one query tile, scalar gate',
    H: 4, Hkv: 2, d: 8, lens: Array.from({ length: 16 }, (_, i) => (i * 5) % 8), K: 4, gate: 'scalar', perSegment: true,
  },
  { name: 'per-segment prompts, K = 70 (two prompt tiles), segments 5, 9', H: 2, Hkv: 1, d: 8, lens: [5, 9], K: 70, gate: 'head', perSegment: true },
];

describeEachBackend(
  (name) => `${name} ops against the CPU of the same binding`,
  (b) => {
    const n = b.binding;

    afterEach(async () => {
      await n.synchronize();
    });

    describe('toDevice, randomUniform, tensors on the device', () => {
      for (const dtype of ['f32', 'bf16', 'i32'] as const)
        for (const shape of [[1], [3, 7], [5, 3, 2], [65, 33]])
          it(`${dtype} [${shape}]: host -> ${b.device} -> host is exact`, async () => {
            const count = shape.reduce((a, s) => a * s, 1);
            const rng = new ref.Rng(count + dtype.length);
            const data = dtype === 'i32' ? rng.ints(count, -1000, 1000) : rng.normals(count, 3);
            const host = n.fromArray(data, shape, dtype);
            expect(host.device).to.equal('cpu');
            const dev = n.toDevice(host, b.device);
            expect(dev.device).to.equal(b.device);
            expect(dev.shape).to.deep.equal(shape);
            expect(dev.dtype).to.equal(dtype);
            const back = n.toDevice(dev, 'cpu');
            expect(back.device).to.equal('cpu');
            const want = dtype === 'bf16' ? ref.bf16RoundArray(data) : data;
            ref.assertEqual(await dev.read(), want, 'read on the device');
            ref.assertEqual(await back.read(), want, 'copied back');
            // made there directly
            const direct = n.fromArray(data, shape, dtype, b.device);
            expect(direct.device).to.equal(b.device);
            ref.assertEqual(await direct.read(), want, 'fromArray on the device');
            const z = n.zeros(shape, dtype, b.device);
            expect(z.device).to.equal(b.device);
            expect(Array.from(await z.read()).every((v) => v === 0)).to.equal(true);
          });

      it('toDevice to the same device shares the storage; copies are queued in order', async () => {
        const x = n.fromArray(Float32Array.from([1, 2, 3]), [3], 'f32', b.device);
        const same = n.toDevice(x, b.device);
        expect(same.device).to.equal(b.device);
        n.addInPlace(same, n.fromArray(Float32Array.from([10, 10, 10]), [3], 'f32', b.device));
        expect(Array.from(await x.read())).to.deep.equal([11, 12, 13]);
        if (b.device === 'cpu') return; // no other device to copy to
        // a copy taken after an in-place op sees it; one taken before does not
        const before = n.toDevice(x, 'cpu');
        n.scaleInPlace(x, 2);
        const after = n.toDevice(x, 'cpu');
        n.scaleInPlace(x, 0);
        expect(Array.from(await before.read())).to.deep.equal([11, 12, 13]);
        expect(Array.from(await after.read())).to.deep.equal([22, 24, 26]);
        expect(Array.from(await x.read())).to.deep.equal([0, 0, 0]);
      });

      for (const dtype of ['f32', 'bf16'] as const)
        it(`randomUniform ${dtype}: in [-scale, scale), the same values on ${b.device} and the host`, async () => {
          const { got, want } = await onBoth(b, (on) => n.randomUniform([37, 5], dtype, on.device, 1234, 0.5));
          ref.assertEqual(got[0]!, want[0]!, 'randomUniform');
          const v = got[0]!;
          expect(Array.from(v).every((x) => x >= -0.5 && x <= 0.5)).to.equal(true);
          if (dtype === 'f32') expect(Array.from(v).every((x) => x < 0.5)).to.equal(true);
          expect(new Set(v).size).to.be.greaterThan(150); // not constant
          const other = await n.randomUniform([37, 5], dtype, b.device, 1235, 0.5).read();
          expect(ref.firstMismatch(other, v, 0, 0)).to.not.equal(undefined); // the seed matters
        });
    });

    describe('embedding', () => {
      for (const dtype of ['f32', 'bf16'] as const)
        for (const [V, C, T] of [
          [1, 1, 1],
          [10, 7, 5],
          [33, 32, 17],
          [300, 24, 64],
        ])
          it(`${dtype} table (${V}, ${C}), ${T} tokens: exact`, async () => {
            const rng = new ref.Rng(V * 1000 + C + T);
            const table = rng.normals(V * C);
            const tokens = rng.ints(T, 0, V);
            tokens[0] = V - 1;
            const { got, want } = await onBoth(b, (on) => n.embedding(on.f32(table, [V, C], dtype), on.idx(tokens)));
            ref.assertEqual(got[0]!, want[0]!, 'embedding');
          });
    });

    describe('rmsnorm and rmsnormBackward', () => {
      for (const [T, C] of [
        [1, 1],
        [3, 7],
        [17, 32],
        [64, 24],
      ])
        it(`T=${T}, C=${C}`, async () => {
          const rng = new ref.Rng(T * 100 + C);
          const x = rng.normals(T * C, 2, 0.3), w = rng.normals(C, 1, 1), dy = rng.normals(T * C);
          const f = await onBoth(b, (on) => n.rmsnorm(on.f32(x, [T, C]), on.f32(w, [C]), 1e-5));
          near(f.got[0]!, f.want[0]!, F32, 1e-30, 'rmsnorm');
          const g = await onBoth(b, (on) => n.rmsnormBackward(on.f32(dy, [T, C]), on.f32(x, [T, C]), on.f32(w, [C]), 1e-5));
          near(g.got[0]!, g.want[0]!, F32, rowMax(g.want[0]!, C), 'rmsnormBackward');
        });
    });

    describe('rope and ropeAt', () => {
      for (const layout of ['interleaved', 'half'] as RopeLayout[])
        for (const d of [2, 8, 32])
          for (const [T, H, pos0] of [
            [1, 1, 0],
            [5, 2, 17],
            [3, 4, 4095],
          ])
            it(`rope ${layout}, d=${d}, T=${T}, H=${H}, pos0=${pos0}`, async () => {
              const x = new ref.Rng(d * 31 + T * 7 + H + pos0).normals(T * H * d);
              const { got, want } = await onBoth(b, (on) => {
                const t = on.f32(x, [T, H, d]);
                n.rope(t, pos0, 10000, layout);
                return t;
              });
              near(got[0]!, want[0]!, F32, pairScale(x, T * H, d, layout), 'rope');
            });

      for (const layout of ['interleaved', 'half'] as RopeLayout[])
        for (const inverse of [false, true])
          it(`ropeAt ${layout}${inverse ? ' inverse' : ''}: positions restarting per segment, and a large one`, async () => {
            const N = 13, H = 3, d = 10;
            const pos = [0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 4, 5, 700];
            const x = new ref.Rng(11).normals(N * H * d);
            const { got, want } = await onBoth(b, (on) => {
              const t = on.f32(x, [N, H, d]);
              n.ropeAt(t, on.idx(pos), 500000, layout, inverse);
              return t;
            });
            near(got[0]!, want[0]!, F32, pairScale(x, N * H, d, layout), 'ropeAt');
          });
    });

    describe('matmul and matmulBackward', () => {
      const NK: Array<[number, number]> = [
        [1, 1],
        [7, 7],
        [33, 32],
        [5, 24],
        [17, 9],
        [512, 32],
      ];
      for (const dtype of ['f32', 'bf16'] as const)
        for (const M of [1, 3, 17, 64])
          it(`matmul, ${dtype} weights, M=${M}, (N, K) in ${NK.map(([a, c]) => `(${a},${c})`).join(' ')}`, async () => {
            for (const [N, K] of NK) {
              const rng = new ref.Rng(M * 100003 + N * 101 + K);
              const x = rng.normals(M * K), w = rng.normals(N * K, 0.5);
              const { got, want } = await onBoth(b, (on) => n.matmul(on.f32(x, [M, K]), on.f32(w, [N, K], dtype)));
              const scale = ref.matmulAbs(x, M, K, dtype === 'bf16' ? ref.bf16RoundArray(w) : w, N);
              near(got[0]!, want[0]!, dtype === 'bf16' ? bf16Tol(b) : F32, scale, `matmul ${dtype} M=${M} N=${N} K=${K}`);
            }
          });

      for (const dtype of ['f32', 'bf16'] as const)
        for (const [M, N, K] of [
          [1, 1, 1],
          [3, 5, 7],
          [9, 33, 17],
          [64, 32, 24],
          [10, 512, 32],
        ])
          it(`matmulBackward, ${dtype} weights, M=${M}, N=${N}, K=${K}`, async () => {
            const rng = new ref.Rng(M * 7 + N * 3 + K);
            const dy = rng.normals(M * N), w = rng.normals(N * K);
            const { got, want } = await onBoth(b, (on) => n.matmulBackward(on.f32(dy, [M, N]), on.f32(w, [N, K], dtype)));
            const wr = dtype === 'bf16' ? ref.bf16RoundArray(w) : w;
            const scale = tref.matmulBackward(dy.map(Math.abs), M, N, wr.map(Math.abs), K);
            near(got[0]!, want[0]!, dtype === 'bf16' ? bf16Tol(b) : F32, scale, 'matmulBackward');
          });
    });

    describe('kvWrite', () => {
      for (const [S, Hkv, d, T, pos0] of [
        [1, 1, 1, 1, 0],
        [8, 2, 16, 3, 2],
        [8, 2, 16, 3, 5],
        [17, 3, 10, 17, 0],
      ])
        it(`cache (${S}, ${Hkv}, ${d}) <- ${T} rows at ${pos0}: exact, other rows untouched`, async () => {
          const rng = new ref.Rng(S * 100 + T * 10 + pos0);
          const init = rng.normals(S * Hkv * d), src = rng.normals(T * Hkv * d);
          const { got, want } = await onBoth(b, (on) => {
            const cache = on.f32(init, [S, Hkv, d]);
            n.kvWrite(cache, on.f32(src, [T, Hkv, d]), pos0);
            return cache;
          });
          ref.assertEqual(got[0]!, want[0]!, 'kvWrite');
        });
    });

    describe('attention against a cache (decode and prefill, GQA, with and without the adapter branch)', () => {
      // [H, Hkv, d, T, pos0, S]
      const cases: Array<[number, number, number, number, number, number]> = [
        [1, 1, 8, 1, 0, 1],
        [4, 4, 32, 1, 10, 16],
        [4, 4, 32, 33, 5, 64],
        [4, 2, 32, 7, 0, 7],
        [4, 2, 16, 5, 9, 20],
        [8, 1, 32, 3, 30, 40],
        [6, 3, 10, 4, 2, 9],
        [2, 1, 17, 3, 4, 8],
        [3, 3, 3, 2, 1, 5],
      ];
      for (const [H, Hkv, d, T, pos0, S] of cases)
        for (const adapter of ['none', 'per-head', 'scalar'] as const)
          it(`H=${H}, Hkv=${Hkv}, d=${d}, T=${T}, pos0=${pos0}, S=${S}, adapter: ${adapter}`, async () => {
            const rng = new ref.Rng(H * 1e6 + Hkv * 1e4 + d * 100 + T * 10 + pos0);
            const K = 5;
            const q = rng.normals(T * H * d, 1.5), k = rng.normals(S * Hkv * d), v = rng.normals(S * Hkv * d);
            // cache rows no query may see are NaN: a kernel that reads them poisons its output
            for (let i = (pos0 + T) * Hkv * d; i < S * Hkv * d; i++) k[i] = v[i] = NaN;
            const pk = rng.normals(K * Hkv * d), pv = rng.normals(K * Hkv * d);
            const gate = rng.uniforms(adapter === 'per-head' ? H : 1, -1, 1);
            const { got, want } = await onBoth(b, (on) => {
              const [qt, kt, vt] = [on.f32(q, [T, H, d]), on.f32(k, [S, Hkv, d]), on.f32(v, [S, Hkv, d])];
              if (adapter === 'none') return n.attention(qt, kt, vt, pos0);
              return n.attention(qt, kt, vt, pos0, on.f32(pk, [K, Hkv, d]), on.f32(pv, [K, Hkv, d]), on.f32(gate, [gate.length]));
            });
            expect(Array.from(got[0]!).every(Number.isFinite)).to.equal(true);
            // outputs are averages of the values (plus tanh(g) times an average of the prompt values)
            const scale = 2 * Math.max(maxAbs(v.subarray(0, (pos0 + T) * Hkv * d)), maxAbs(pv));
            near(got[0]!, want[0]!, F32, scale, 'attention');
          });
    });

    describe('swiglu and swigluBackward', () => {
      for (const shape of [[1], [3, 7], [17, 33], [64, 32]])
        it(`shape [${shape}]`, async () => {
          const count = shape.reduce((p, s) => p * s, 1);
          const rng = new ref.Rng(count);
          const a = rng.normals(count, 4), bb = rng.normals(count), dout = rng.normals(count);
          const extremes = [0, -0, 1e-8, -1e-8, 20, -20, 88, -88, 100, -100];
          for (let i = 0; i < Math.min(count, extremes.length); i++) a[i] = extremes[i];
          const f = await onBoth(b, (on) => n.swiglu(on.f32(a, shape), on.f32(bb, shape)));
          near(f.got[0]!, f.want[0]!, F32, 1e-30, 'swiglu');
          const g = await onBoth(b, (on) => n.swigluBackward(on.f32(dout, shape), on.f32(a, shape), on.f32(bb, shape)));
          // da vanishes where silu' does (a near -1.28): there, relative to |dout * b|
          near(g.got[0]!, g.want[0]!, F32, Float64Array.from(a, (_, i) => Math.abs(dout[i] * bb[i])), 'da');
          near(g.got[1]!, g.want[1]!, F32, 1e-30, 'db');
        });
    });

    // ---- image-encoder ops (ops-encoder): layerNorm, gelu, bias, weight gradient, patches ----
    // addBias and patches bit-equal; the others f32 1e-5 against the scales named beside them.
    describe('layerNorm and layerNormBackward', () => {
      for (const [T, C] of [
        [1, 1],
        [1, 9],
        [3, 7],
        [17, 32],
        [64, 24],
        [130, 33],
      ])
        it(`T=${T}, C=${C}`, async () => {
          const rng = new ref.Rng(T * 100 + C + 7);
          const x = rng.normals(T * C, 2, 0.3), w = rng.normals(C, 1, 1), bias = rng.normals(C), dy = rng.normals(T * C);
          const f = await onBoth(b, (on) => n.layerNorm(on.f32(x, [T, C]), on.f32(w, [C]), on.f32(bias, [C]), 1e-5));
          near(f.got[0]!, f.want[0]!, F32, rowMax(f.want[0]!, C), 'layerNorm');
          const g = await onBoth(b, (on) => n.layerNormBackward(on.f32(dy, [T, C]), on.f32(x, [T, C]), on.f32(w, [C]), 1e-5));
          near(g.got[0]!, g.want[0]!, F32, C === 1 ? maxAbs(dy) : rowMax(g.want[0]!, C), 'dx');
          near(g.got[1]!, g.want[1]!, F32, maxAbs(g.want[1]!), 'dw');
          near(g.got[2]!, g.want[2]!, F32, maxAbs(g.want[2]!), 'db');
        });
    });

    describe('gelu and geluBackward', () => {
      for (const kind of ['gelu', 'quick_gelu'] as const)
        for (const shape of [[1], [3, 7], [17, 33], [64, 32]])
          it(`${kind} [${shape}]`, async () => {
            const count = shape.reduce((p, s) => p * s, 1);
            const rng = new ref.Rng(count + kind.length);
            const x = rng.normals(count, 3), dy = rng.normals(count);
            const extremes = [0, -0, 1e-8, -1e-8, -0.75, 5, -5, 20, -20, 88, -88, 100, -100, Infinity, NaN];
            for (let i = 0; i < Math.min(count, extremes.length); i++) x[i] = extremes[i];
            const f = await onBoth(b, (on) => n.gelu(on.f32(x, shape), kind));
            near(f.got[0]!, f.want[0]!, F32, 1e-30, kind);
            const g = await onBoth(b, (on) => n.geluBackward(on.f32(dy, shape), on.f32(x, shape), kind));
            // the derivative crosses 0 (near x = -0.75 for gelu): there, relative to |dy|
            near(g.got[0]!, g.want[0]!, F32, Float64Array.from(dy, (v) => 0.1 * Math.abs(v)), `${kind} backward`);
          });
    });

    describe('addBias, biasGrad, matmulWeightGrad', () => {
      for (const [M, N] of [
        [1, 1],
        [3, 7],
        [64, 33],
        [130, 17],
      ])
        it(`addBias (${M}, ${N}): exact; biasGrad: f32 1e-5`, async () => {
          const rng = new ref.Rng(M * 13 + N);
          const x = rng.normals(M * N), bias = rng.normals(N), dy = rng.normals(M * N);
          const a = await onBoth(b, (on) => {
            const t = on.f32(x, [M, N]);
            n.addBias(t, on.f32(bias, [N]));
            return t;
          });
          ref.assertEqual(a.got[0]!, a.want[0]!, 'addBias');
          const g = await onBoth(b, (on) => n.biasGrad(on.f32(dy, [M, N])));
          near(g.got[0]!, g.want[0]!, F32, maxAbs(g.want[0]!), 'biasGrad');
        });

      for (const [M, N, K] of [
        [1, 1, 1],
        [3, 5, 7],
        [9, 33, 17],
        [64, 32, 24],
        [130, 10, 96],
        [40, 129, 130],
      ])
        it(`matmulWeightGrad, M=${M}, N=${N}, K=${K}`, async () => {
          const rng = new ref.Rng(M * 7 + N * 3 + K + 1);
          const dy = rng.normals(M * N), x = rng.normals(M * K);
          const { got, want } = await onBoth(b, (on) => n.matmulWeightGrad(on.f32(dy, [M, N]), on.f32(x, [M, K])));
          // dW = dyᵀ x: the scale of element (n, k) is sum_m |dy_mn x_mk|
          const dyT = new Float32Array(N * M);
          for (let m = 0; m < M; m++) for (let j = 0; j < N; j++) dyT[j * M + m] = Math.abs(dy[m * N + j]);
          const xT = new Float32Array(K * M);
          for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) xT[k * M + m] = Math.abs(x[m * K + k]);
          near(got[0]!, want[0]!, F32, ref.matmulAbs(dyT, N, M, xT, K), 'matmulWeightGrad');
        });
    });

    describe('patches', () => {
      for (const [B, Cin, H, W, P] of [
        [1, 1, 1, 1, 1],
        [2, 3, 4, 6, 2],
        [3, 2, 15, 10, 5],
        [2, 3, 32, 16, 16],
      ])
        it(`images (${B}, ${Cin}, ${H}, ${W}), P=${P}: exact`, async () => {
          const img = new ref.Rng(B * 1000 + H * 10 + P).normals(B * Cin * H * W);
          const { got, want } = await onBoth(b, (on) => n.patches(on.f32(img, [B, Cin, H, W]), P));
          ref.assertEqual(got[0]!, want[0]!, 'patches');
        });
    });

    describe('addInPlace, scaleInPlace, sliceRows, convert', () => {
      for (const shape of [[1], [3, 7], [64, 33]])
        it(`addInPlace and scaleInPlace [${shape}]: exact`, async () => {
          const count = shape.reduce((p, s) => p * s, 1);
          const rng = new ref.Rng(count + 1);
          const x = rng.normals(count), y = rng.normals(count, 3);
          const { got, want } = await onBoth(b, (on) => {
            const t = on.f32(x, shape);
            n.addInPlace(t, on.f32(y, shape));
            const u = on.f32(x, shape);
            n.scaleInPlace(u, -0.375);
            return [t, u];
          });
          ref.assertEqual(got[0]!, want[0]!, 'addInPlace');
          ref.assertEqual(got[1]!, want[1]!, 'scaleInPlace');
        });

      it('scaleInPlace by 0 clears NaN and Inf', async () => {
        const t = n.fromArray(Float32Array.from([1, NaN, Infinity, -Infinity]), [4], 'f32', b.device);
        n.scaleInPlace(t, 0);
        expect(Array.from(await t.read())).to.deep.equal([0, 0, 0, 0]);
      });

      for (const dtype of ['f32', 'bf16', 'i32'] as const)
        it(`sliceRows ${dtype}: first, middle, last, all rows; trailing dims kept`, async () => {
          const [T, A, B] = [9, 3, 5];
          const x = new ref.Rng(3).normals(T * A * B, 10);
          for (const [start, count] of [
            [0, 1],
            [3, 4],
            [8, 1],
            [0, 9],
          ]) {
            const { got, want } = await onBoth(b, (on) => {
              const src = dtype === 'i32' ? n.fromArray(Int32Array.from(x, Math.round), [T, A, B], 'i32', on.device) : on.f32(x, [T, A, B], dtype);
              return n.sliceRows(src, start, count);
            });
            ref.assertEqual(got[0]!, want[0]!, `sliceRows ${start}+${count}`);
          }
        });

      it('convert f32 -> bf16 -> f32: round to nearest even, ties, Inf, -0 and NaN as on the host', async () => {
        const rng = new ref.Rng(8);
        const x = rng.normals(1001, 100);
        for (let i = 0; i < 200; i++) x[i] = ref.f32FromBits(((rng.int(1, 254) << 23) | (rng.int(0, 1 << 7) << 16) | 0x8000) >>> 0); // exact ties
        x.set([Infinity, -Infinity, -0, 0, ref.f32FromBits(0x7f7fffff), ref.f32FromBits(0x00018000)], 200);
        const { got, want } = await onBoth(b, (on) => {
          const h = n.convert(on.f32(x, [1001]), 'bf16');
          return [h, n.convert(h, 'f32'), n.convert(h, 'bf16')];
        });
        for (let i = 0; i < 3; i++) {
          const a = new Uint32Array(got[i]!.buffer, got[i]!.byteOffset, 1001);
          const e = new Uint32Array(want[i]!.buffer, want[i]!.byteOffset, 1001);
          ref.assertEqual(a, e, `convert output ${i} (bits)`);
        }
        const nan = await n.convert(n.fromArray(Float32Array.from([NaN]), [1], 'f32', b.device), 'bf16').read();
        expect(Number.isNaN(nan[0])).to.equal(true);
      });
    });

    describe('gatedAttention and gatedAttentionBackward (packed segments)', () => {
      const tensors = (on: On, x: Data) => {
        const { H, Hkv, d, K } = x.c;
        return {
          q: on.f32(x.q, [x.N, H, d]),
          k: on.f32(x.k, [x.N, Hkv, d]),
          v: on.f32(x.v, [x.N, Hkv, d]),
          seg: on.idx(x.seg),
          pk: x.pk ? on.f32(x.pk, promptShape(x.c)) : null,
          pv: x.pv ? on.f32(x.pv, promptShape(x.c)) : null,
          gate: x.gate ? on.f32(x.gate, [x.gate.length]) : null,
        };
      };
      for (const c of ATTN_CASES)
        it(c.name, async () => {
          const x = makeData(c, 31);
          const dout = new ref.Rng(42).normals(x.N * c.H * c.d);
          const { got, want } = await onBoth(b, (on) => {
            const t = tensors(on, x);
            const [out, stats] = n.gatedAttention(t.q, t.k, t.v, t.seg, t.pk, t.pv, t.gate, optionsOf(c));
            const g = n.gatedAttentionBackward(on.f32(dout, [x.N, c.H, c.d]), t.q, t.k, t.v, t.seg, t.pk, t.pv, t.gate, out, stats, optionsOf(c));
            return [out, stats, ...g];
          });
          near(got[0]!, want[0]!, F32, maxAbs(want[0]!), 'out');
          // log-sum-exps: -Infinity for the prompt without a prompt (equal infinities match)
          near(got[1]!, want[1]!, F32, 1, 'stats');
          const names = ['dq', 'dk', 'dv', 'dpk', 'dpv', 'dgate'];
          for (let i = 0; i < 6; i++) {
            if (!want[2 + i]) continue;
            // each gradient relative to its largest element (dpk, dpv, dgate sum over all tokens);
            // dpk, dpv at least to dq's (with K = 1 dpk is 0 up to rounding)
            const floor = i === 3 || i === 4 ? maxAbs(want[2]!) : 1e-30;
            near(got[2 + i]!, want[2 + i]!, F32, Math.max(maxAbs(want[2 + i]!), floor), names[i]);
          }
          if (c.gate !== 'none') expect(got[7]!.length).to.equal(c.gate === 'scalar' ? 1 : c.H);
        });

      it('at g = 0 the prompt gradients are exactly 0 and the output is plain attention', async () => {
        const c = ATTN_CASES[0];
        const x = makeData(c, 61);
        x.gate = new Float32Array(x.gate!.length);
        const dout = new ref.Rng(62).normals(x.N * c.H * c.d);
        const on = new On(n, b.device);
        const t = tensors(on, x);
        const [o1, s1] = n.gatedAttention(t.q, t.k, t.v, t.seg, t.pk, t.pv, t.gate);
        const [o0] = n.gatedAttention(t.q, t.k, t.v, t.seg, null, null, null);
        ref.assertEqual(await o1.read(), await o0.read(), 'g = 0 vs no prompt');
        const g = n.gatedAttentionBackward(on.f32(dout, [x.N, c.H, c.d]), t.q, t.k, t.v, t.seg, t.pk, t.pv, t.gate, o1, s1);
        expect(Array.from(await g[3]!.read()).every((v) => v === 0)).to.equal(true);
        expect(Array.from(await g[4]!.read()).every((v) => v === 0)).to.equal(true);
        expect(Array.from(await g[5]!.read()).every((v) => v !== 0)).to.equal(true);
      });

      for (const causal of [true, false])
        it(`per-segment copies of one prompt give the shared prompt's out, stats, dq, dk, dv and dgate bit for bit (causal: ${causal})`, async () => {
          const c: Case = { name: 'copies', H: 4, Hkv: 2, d: 8, lens: [30, 0, 3, 40, 1], K: 6, gate: 'head', causal };
          const x = makeData(c, 63);
          const S = c.lens.length;
          const copies = (a: Float32Array) => Float32Array.from({ length: S * a.length }, (_, i) => a[i % a.length]);
          const xs: Data = { ...x, c: { ...c, perSegment: true }, pk: copies(x.pk!), pv: copies(x.pv!) };
          const dout = new ref.Rng(64).normals(x.N * c.H * c.d);
          const on = new On(n, b.device);
          const run = async (y: Data) => {
            const t = tensors(on, y);
            const [out, stats] = n.gatedAttention(t.q, t.k, t.v, t.seg, t.pk, t.pv, t.gate, { causal });
            const g = n.gatedAttentionBackward(on.f32(dout, [x.N, c.H, c.d]), t.q, t.k, t.v, t.seg, t.pk, t.pv, t.gate, out, stats, { causal });
            return Promise.all([out, stats, ...g].map((r) => r!.read()));
          };
          const shared = await run(x);
          const per = await run(xs);
          ['out', 'stats', 'dq', 'dk', 'dv'].forEach((name, i) => ref.assertEqual(per[i], shared[i], name));
          ref.assertEqual(per[7], shared[7], 'dgate');
          for (const i of [5, 6]) {
            const sum = new Float64Array(shared[i].length);
            per[i].forEach((v, j) => (sum[j % sum.length] += v));
            near(shared[i] as Float32Array, sum, F32, maxAbs(sum), i === 5 ? 'dpk summed over segments' : 'dpv summed');
          }
        });
    });

    describe('gatherRows, scatterAddRows', () => {
      for (const dtype of ['f32', 'bf16'] as const)
        it(`gatherRows ${dtype}: repeats allowed, trailing dims kept, exact`, async () => {
          const x = new ref.Rng(5).normals(7 * 3 * 5);
          const idx = [6, 0, 6, 2, 3, 3, 1];
          const { got, want } = await onBoth(b, (on) => n.gatherRows(on.f32(x, [7, 3, 5], dtype), on.idx(idx)));
          ref.assertEqual(got[0]!, want[0]!, 'gatherRows');
        });

      for (const [N, C, idx] of [
        [4, 3, [1, 3, 1, 1]],
        [7, 33, [6, 0, 6, 2, 2, 5]],
        [64, 32, Array.from({ length: 40 }, (_, i) => (i * 7) % 64)],
        [3, 1, [0, 0, 0, 2, 0]],
      ] as Array<[number, number, number[]]>)
        it(`scatterAddRows (${N}, ${C}) <- ${idx.length} rows, repeated indices accumulate`, async () => {
          const rng = new ref.Rng(N * C + idx.length);
          const dst = rng.normals(N * C), src = rng.normals(idx.length * C);
          const { got, want } = await onBoth(b, (on) => {
            const t = on.f32(dst, [N, C]);
            n.scatterAddRows(t, on.idx(idx), on.f32(src, [idx.length, C]));
            return t;
          });
          // repeated rows may be added in another order on the device: f32 rounding only
          const scale = Float64Array.from(dst, Math.abs); // |dst| + sum of the |src| added to it
          idx.forEach((r, m) => {
            for (let c = 0; c < C; c++) scale[r * C + c] += Math.abs(src[m * C + c]);
          });
          near(got[0]!, want[0]!, F32, scale, 'scatterAddRows');
        });
    });

    describe('crossEntropy', () => {
      for (const [M, V, spread] of [
        [1, 1, 1],
        [7, 33, 3],
        [5, 512, 80],
        [64, 100, 2],
      ])
        it(`M=${M}, V=${V}, logits ~ N(0, ${spread}^2)`, async () => {
          const rng = new ref.Rng(M * 1000 + V);
          const logits = rng.normals(M * V, spread), targets = rng.ints(M, 0, V);
          const scale = 1 / (M + 2);
          const { got, want } = await onBoth(b, (on) => n.crossEntropy(on.f32(logits, [M, V]), on.idx(targets), scale));
          near(got[0]!, want[0]!, F32, 1e-6 * M, 'loss');
          near(got[1]!, want[1]!, F32, rowMax(want[1]!, V), 'dlogits');
        });
    });

    describe('adamw, sumSquares', () => {
      for (const count of [1, 7, 1000])
        it(`adamw, ${count} elements, 3 steps (with and without weight decay)`, async () => {
          const rng = new ref.Rng(151 + count);
          const p0 = rng.normals(count);
          const gs = [rng.normals(count, 0.1), rng.normals(count, 0.1), rng.normals(count, 1e-3)];
          for (const wd of [0.02, 0]) {
            const { got, want } = await onBoth(b, (on) => {
              const p = on.f32(p0, [count]), m = on.zeros([count]), v = on.zeros([count]);
              gs.forEach((g, s) => n.adamw(p, on.f32(g, [count]), m, v, s + 1, 3e-3, 0.9, 0.95, 1e-8, wd));
              return [p, m, v];
            });
            near(got[0]!, want[0]!, F32, 1e-3, 'param');
            near(got[1]!, want[1]!, F32, maxAbs(want[1]!), 'm');
            near(got[2]!, want[2]!, F32, maxAbs(want[2]!), 'v');
          }
        });

      for (const count of [1, 7, 1001, 4096])
        it(`sumSquares of ${count} elements`, async () => {
          const x = new ref.Rng(161 + count).normals(count, 3);
          const { got, want } = await onBoth(b, (on) => n.sumSquares(on.f32(x, [count])));
          expect(got[0]!.length).to.equal(1);
          near(got[0]!, want[0]!, 1e-6, 0, 'sumSquares');
        });
    });

    if (b.device !== 'cpu')
      describe(`mixed devices and index tensors (${b.label})`, () => {
        const on = () => new On(n, b.device);
        const host = () => new On(n, 'cpu');

        it('an op given float tensors on two devices throws, naming the op and both devices', () => {
          const d = on(), h = host();
          const z3 = (o: On) => o.zeros([4, 2, 8]);
          const cases: Array<[string, () => unknown]> = [
            ['matmul', () => n.matmul(d.zeros([3, 8]), h.zeros([5, 8]))],
            ['matmulBackward', () => n.matmulBackward(d.zeros([3, 5]), h.zeros([5, 8]))],
            ['rmsnorm', () => n.rmsnorm(d.zeros([3, 8]), h.zeros([8]), 1e-5)],
            ['rmsnormBackward', () => n.rmsnormBackward(d.zeros([3, 8]), h.zeros([3, 8]), d.zeros([8]), 1e-5)],
            ['swiglu', () => n.swiglu(h.zeros([3, 8]), d.zeros([3, 8]))],
            ['swigluBackward', () => n.swigluBackward(d.zeros([3, 8]), d.zeros([3, 8]), h.zeros([3, 8]))],
            ['addInPlace', () => n.addInPlace(d.zeros([3, 8]), h.zeros([3, 8]))],
            ['kvWrite', () => n.kvWrite(d.zeros([8, 2, 8]), h.zeros([2, 2, 8]), 0)],
            ['attention', () => n.attention(d.zeros([1, 2, 8]), h.zeros([4, 2, 8]), d.zeros([4, 2, 8]), 0)],
            ['attention', () => n.attention(d.zeros([1, 2, 8]), d.zeros([4, 2, 8]), d.zeros([4, 2, 8]), 0, d.zeros([3, 2, 8]), d.zeros([3, 2, 8]), h.zeros([2]))],
            ['gatedAttention', () => n.gatedAttention(z3(d), z3(h), z3(d), d.idx([0, 4]), null, null, null)],
            ['gatedAttention', () => n.gatedAttention(z3(d), z3(d), z3(d), d.idx([0, 4]), h.zeros([3, 2, 8]), d.zeros([3, 2, 8]), d.zeros([2]))],
            ['scatterAddRows', () => n.scatterAddRows(d.zeros([3, 8]), d.idx([0]), h.zeros([1, 8]))],
            ['adamw', () => n.adamw(d.zeros([4]), h.zeros([4]), d.zeros([4]), d.zeros([4]), 1, 0.1, 0.9, 0.95, 1e-8, 0)],
          ];
          for (const [op, fn] of cases) {
            let err: unknown;
            try {
              fn();
            } catch (e) {
              err = e;
            }
            expect(err, `${op} with mixed devices must throw`).to.be.instanceOf(Error);
            const msg = (err as Error).message;
            expect(msg, op).to.match(new RegExp(`^${op}: `));
            expect(msg, op).to.match(/device/).and.match(/cpu/).and.match(/cuda/);
          }
        });

        it('gatedAttentionBackward with one tensor on the host throws, naming the op', () => {
          const d = on();
          const q = d.zeros([4, 2, 8]);
          const [out, stats] = n.gatedAttention(q, q, q, d.idx([0, 4]), null, null, null);
          expect(() => n.gatedAttentionBackward(host().zeros([4, 2, 8]), q, q, q, d.idx([0, 4]), null, null, null, out, stats)).to.throw(/^gatedAttentionBackward: .*device/);
        });

        it('index tensors on the device are accepted too, with the same results', async () => {
          const rng = new ref.Rng(71);
          const d = on();
          const devIdx = (a: ArrayLike<number>) => n.toDevice(d.idx(a), b.device);
          const table = rng.normals(20 * 8), logits = rng.normals(3 * 20);
          const tokens = [3, 19, 0, 3];
          const e1 = await n.embedding(d.f32(table, [20, 8]), d.idx(tokens)).read();
          const e2 = await n.embedding(d.f32(table, [20, 8]), devIdx(tokens)).read();
          ref.assertEqual(e2, e1, 'embedding with device tokens');
          const g1 = await n.gatherRows(d.f32(table, [20, 8]), d.idx(tokens)).read();
          const g2 = await n.gatherRows(d.f32(table, [20, 8]), devIdx(tokens)).read();
          ref.assertEqual(g2, g1, 'gatherRows with device rows');
          const [l1, dl1] = n.crossEntropy(d.f32(logits, [3, 20]), d.idx([1, 0, 19]), 1);
          const [l2, dl2] = n.crossEntropy(d.f32(logits, [3, 20]), devIdx([1, 0, 19]), 1);
          ref.assertEqual(await l2.read(), await l1.read(), 'crossEntropy loss with device targets');
          ref.assertEqual(await dl2.read(), await dl1.read(), 'crossEntropy dlogits with device targets');
          const x = rng.normals(5 * 2 * 8);
          const r1 = d.f32(x, [5, 2, 8]), r2 = d.f32(x, [5, 2, 8]);
          n.ropeAt(r1, d.idx([0, 1, 2, 0, 1]), 1e4, 'half', false);
          n.ropeAt(r2, devIdx([0, 1, 2, 0, 1]), 1e4, 'half', false);
          ref.assertEqual(await r2.read(), await r1.read(), 'ropeAt with device positions');
          const q = d.f32(rng.normals(5 * 2 * 8), [5, 2, 8]);
          const [o1] = n.gatedAttention(q, r1, r1, d.idx([0, 3, 5]), null, null, null);
          const [o2] = n.gatedAttention(q, r1, r1, devIdx([0, 3, 5]), null, null, null);
          ref.assertEqual(await o2.read(), await o1.read(), 'gatedAttention with device segments');
        });

        it('a CPU op refuses an index tensor on the device, saying where it is', () => {
          const idx = n.toDevice(host().idx([0, 1]), b.device);
          expect(() => n.embedding(host().zeros([4, 8]), idx)).to.throw(/^embedding: .*cuda.*cpu|^embedding: .*cpu.*cuda/);
          expect(() => n.gatherRows(host().zeros([4, 8]), idx)).to.throw(/^gatherRows: .*(cuda.*cpu|cpu.*cuda)/);
        });

        it('bad index values are still checked (on the host) for a device op, and reject at read', async () => {
          const d = on();
          await rejects(() => n.gatherRows(d.zeros([3, 2]), d.idx([0, 3])).read(), /gatherRows.*idx\[1\] = 3 is outside \[0, 3\)/);
          const [loss] = n.crossEntropy(d.zeros([2, 4]), d.idx([1, 4]), 1);
          await rejects(() => loss.read(), /crossEntropy.*targets\[1\] = 4 is outside/);
          const [out] = n.gatedAttention(d.zeros([5, 2, 4]), d.zeros([5, 1, 4]), d.zeros([5, 1, 4]), d.idx([0, 3, 2, 5]), null, null, null);
          await rejects(() => out.read(), /segments must be non-decreasing/);
          await n.synchronize().catch(() => undefined);
        });

        it('cudaMemory() counts device tensors; cudaResetPeak() resets the peak to what is in use', async () => {
          await n.synchronize();
          const m0 = n.cudaMemory();
          for (const k of ['inUse', 'peak', 'reserved'] as const) expect(m0[k]).to.be.a('number').and.at.least(0);
          expect(m0.peak).to.be.at.least(m0.inUse);
          const t = n.zeros([256, 1024], 'f32', b.device); // 1 MiB
          await t.read();
          const m1 = n.cudaMemory();
          expect(m1.inUse - m0.inUse).to.be.at.least(1 << 20);
          expect(m1.reserved).to.be.at.least(m1.inUse);
          t.dispose();
          await n.synchronize();
          const m2 = n.cudaMemory();
          expect(m2.inUse).to.be.at.most(m1.inUse - (1 << 20));
          expect(m2.peak).to.be.at.least(m1.inUse);
          n.cudaResetPeak();
          expect(n.cudaMemory().peak).to.equal(n.cudaMemory().inUse);
        });
      });
  },
);
