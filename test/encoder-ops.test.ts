// The image-encoder op families on the CPU (LayerNorm, GELU / quick_gelu, bias, the matmul weight
// gradient, patch extraction) against the float64 references of test/util/encoder-reference.ts,
// every backward against central finite differences taken through the native f32 forward, the
// column sums' independence of the thread count, and bad arguments.
//
// Tolerances (a = native f32 result, e = float64 reference):
//   exact        addBias (= Math.fround(x + b)), patches: bit-equal
//   elementwise  layerNorm |a - e| <= 1e-5 (|e| + |xhat w| + |b|); gelu, quick_gelu 1e-5 |e| (+1e-30
//                for underflowing tails); their backward 1e-5 (|e| + |dy| 1e-1): the derivative of
//                gelu crosses 0 near x = -0.75, where the error is relative to dy
//   reductions   layerNormBackward, biasGrad, matmulWeightGrad: |a - e| <= 1e-4 |e| + 1e-5 max|e|,
//                or relative to the sum of |terms| for the sums of products
//   finite diff. (L(p + h u) - L(p - h u)) / 2h through the native forward, L = <forward, dy>,
//                against <grad, u>: relative 3e-3 (h = 1e-2)
import { expect } from 'chai';
import { native, Tensor } from '../lib/native';
import type { GeluKind } from './util/encoder-reference';
import * as ref from './util/reference';
import * as eref from './util/encoder-reference';
import { bits, f32, maxAbs, readF, throwsErr } from './util/tensors';

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}
/** |a - e| <= rtol |e| + atol max|e| */
function close(a: ArrayLike<number>, e: ArrayLike<number>, rtol: number, atol: number, what: string): void {
  ref.assertClose(a, e, rtol, atol * Math.max(maxAbs(e), 1e-30), what);
}
/** The central difference of L along u at p (h = 1e-2) against <grad, u>. */
async function checkFd(L: (p: Float32Array) => Promise<number>, p: Float32Array, u: Float32Array, grad: ArrayLike<number>, what: string): Promise<void> {
  const h = 1e-2;
  const fd = ((await L(p.map((v, i) => v + h * u[i]))) - (await L(p.map((v, i) => v - h * u[i])))) / (2 * h);
  const an = dot(grad, u);
  expect(Math.abs(fd - an), `${what}: analytic ${an} vs finite difference ${fd}`).to.be.lessThan(3e-3 * Math.max(Math.abs(fd), 1e-2));
}
/** Runs `fn` at 1, 2 and 3 threads; returns the results' bit patterns. */
async function atThreadCounts(fn: () => Promise<Float32Array[]>): Promise<Uint32Array[][]> {
  const before = native.capabilities().threads;
  const out: Uint32Array[][] = [];
  try {
    for (const th of [1, 2, 3]) {
      native.setThreads(th);
      out.push((await fn()).map((a) => Uint32Array.from(bits(a))));
    }
  } finally {
    native.setThreads(before);
  }
  return out;
}

const KINDS: GeluKind[] = ['gelu', 'quick_gelu'];

describe('image-encoder ops (CPU)', function () {
  this.timeout(60000);

  afterEach(async () => {
    await native.synchronize();
  });

  describe('the float64 references (self-check)', () => {
    it('erfc matches published values; Φ is symmetric; gelu matches its definition', () => {
      const known: Array<[number, number]> = [
        [0, 1],
        [0.5, 0.4795001221869535],
        [1, 0.15729920705028513],
        [2, 0.004677734981047266],
        [3, 2.209049699858544e-5],
        [5, 1.5374597944280351e-12],
        [-1, 1.8427007929497148],
      ];
      for (const [z, want] of known) expect(Math.abs(eref.erfc(z) - want) / want, `erfc(${z})`).to.be.lessThan(1e-9);
      for (const x of [0.1, 1, 2.9, 3.1, 7]) expect(eref.normalCdf(x) + eref.normalCdf(-x)).to.be.closeTo(1, 1e-14);
      // erfc's two branches meet at z = 3
      expect(Math.abs(eref.erfc(3 - 1e-9) - eref.erfc(3 + 1e-9)) / eref.erfc(3)).to.be.lessThan(1e-7);
    });

    it('its backward passes match central differences of its forward', () => {
      const rng = new ref.Rng(5);
      const T = 3, C = 6, eps = 1e-5;
      const x = rng.normals(T * C), w = rng.normals(C), b = rng.normals(C), dy = rng.normals(T * C);
      const g = eref.layerNormBackward(dy, x, T, C, w, eps);
      const L = (xx: ArrayLike<number>, ww: ArrayLike<number>, bb: ArrayLike<number>) => dot(eref.layerNorm(xx, T, C, ww, bb, eps), dy);
      const h = 1e-6;
      for (const i of [0, 7, 17]) {
        const xp = Float64Array.from(x), xm = Float64Array.from(x);
        xp[i] += h;
        xm[i] -= h;
        expect((L(xp, w, b) - L(xm, w, b)) / (2 * h)).to.be.closeTo(g.dx[i], 1e-6);
      }
      for (const c of [0, 5]) {
        const wp = Float64Array.from(w), wm = Float64Array.from(w), bp = Float64Array.from(b), bm = Float64Array.from(b);
        wp[c] += h;
        wm[c] -= h;
        bp[c] += h;
        bm[c] -= h;
        expect((L(x, wp, b) - L(x, wm, b)) / (2 * h)).to.be.closeTo(g.dw[c], 1e-6);
        expect((L(x, w, bp) - L(x, w, bm)) / (2 * h)).to.be.closeTo(g.db[c], 1e-6);
      }
      for (const kind of KINDS)
        for (const v of [-3, -0.75, 0, 0.4, 2.5]) {
          const d = (eref.gelu([v + h], kind)[0] - eref.gelu([v - h], kind)[0]) / (2 * h);
          expect(eref.geluBackward([1], [v], kind)[0], `${kind}'(${v})`).to.be.closeTo(d, 1e-8);
        }
    });
  });

  describe('layerNorm', () => {
    for (const C of [1, 7, 64, 771])
      for (const T of [1, 3, 70])
        it(`C=${C}, T=${T}: against the reference (eps 1e-5 and 1e-6)`, async () => {
          for (const eps of [1e-5, 1e-6]) {
            const rng = new ref.Rng(C * 7 + T + eps * 1e7);
            const x = rng.normals(T * C, 2, 0.3), w = rng.normals(C, 1, 1), b = rng.normals(C, 0.5);
            const out = native.layerNorm(f32(x, [T, C]), f32(w, [C]), f32(b, [C]), eps);
            expect(out.shape).to.deep.equal([T, C]);
            expect(out.dtype).to.equal('f32');
            const scale = eref.layerNormScale(x, T, C, w, b, eps);
            ref.assertClose(await readF(out), eref.layerNorm(x, T, C, w, b, eps), 1e-5, scale.map((s) => 1e-5 * s), `layerNorm C=${C} T=${T}`);
          }
        });

    it('rows far from 0 (mean 1000, std 0.01), a constant row (= b) and tiny rows (eps dominates)', async () => {
      const C = 384, rng = new ref.Rng(9);
      const x = new Float32Array(3 * C);
      x.set(rng.normals(C, 0.01, 1000), 0);
      x.fill(-7.5, C, 2 * C);
      x.set(rng.normals(C, 1e-5), 2 * C);
      const w = rng.normals(C, 1, 1), b = rng.normals(C);
      const got = await readF(native.layerNorm(f32(x, [3, C]), f32(w, [C]), f32(b, [C]), 1e-5));
      const want = eref.layerNorm(x, 3, C, w, b, 1e-5);
      // x - mean is exact in f32 near 1000 only to 2^-14: the first row's tolerance is 1e-3
      ref.assertClose(got.subarray(0, C), want.subarray(0, C), 1e-3, 1e-3 * maxAbs(want.subarray(0, C)), 'mean 1000');
      ref.assertEqual(got.subarray(C, 2 * C), Float32Array.from(b), 'constant row');
      ref.assertClose(got.subarray(2 * C), want.subarray(2 * C), 1e-5, 1e-5 * maxAbs(want.subarray(2 * C)), 'tiny row');
    });
  });

  describe('layerNormBackward', () => {
    for (const [T, C] of [
      [1, 1],
      [1, 9],
      [3, 7],
      [5, 64],
      [130, 33],
      [2, 1000],
    ])
      it(`T=${T}, C=${C}: dx, dw, db against the reference and finite differences through layerNorm`, async () => {
        const rng = new ref.Rng(T * 100 + C);
        const x = rng.normals(T * C), w = rng.normals(C), b = rng.normals(C), dy = rng.normals(T * C), eps = 1e-5;
        const g = native.layerNormBackward(f32(dy, [T, C]), f32(x, [T, C]), f32(w, [C]), eps);
        expect(g.map((t) => t.shape)).to.deep.equal([[T, C], [C], [C]]);
        const [dx, dw, db] = await Promise.all(g.map(readF));
        const want = eref.layerNormBackward(dy, x, T, C, w, eps);
        // C = 1: xhat = 0 and dx = 0 up to rounding, relative to dy's scale
        if (C === 1) ref.assertClose(dx, want.dx, 0, 1e-6 * maxAbs(dy), 'dx');
        else close(dx, want.dx, 1e-4, 1e-5, 'dx');
        close(dw, want.dw, 1e-4, 1e-5, 'dw');
        close(db, want.db, 1e-5, 1e-6, 'db');
        if (C === 1) return;
        const u = rng.normals(T * C), uc = rng.normals(C);
        const L = async (xx: Float32Array, ww: Float32Array, bb: Float32Array) =>
          dot(await readF(native.layerNorm(f32(xx, [T, C]), f32(ww, [C]), f32(bb, [C]), eps)), dy);
        await checkFd((p) => L(p, w, b), x, u, dx, 'dx');
        await checkFd((p) => L(x, p, b), w, uc, dw, 'dw');
        await checkFd((p) => L(x, w, p), b, uc, db, 'db');
      });

    it('dw and db (and dx) are bit-identical for 1, 2 and 3 threads (several row blocks)', async () => {
      const T = 300, C = 77, rng = new ref.Rng(3);
      const x = rng.normals(T * C), w = rng.normals(C), dy = rng.normals(T * C);
      const runs = await atThreadCounts(() => Promise.all(native.layerNormBackward(f32(dy, [T, C]), f32(x, [T, C]), f32(w, [C]), 1e-5).map(readF)));
      for (let i = 1; i < runs.length; i++) for (let j = 0; j < 3; j++) ref.assertEqual(runs[i][j], runs[0][j], `output ${j} at ${i + 1} threads`);
    });
  });

  describe('gelu and geluBackward', () => {
    const extremes = [0, -0, 1e-8, -1e-8, 0.5, -0.75, 3, -3, 5, -5, 10, -10, 20, -20, 88, -88, 100, -100];
    for (const kind of KINDS)
      for (const shape of [[1], [3, 7], [257], [65, 96]])
        it(`${kind} [${shape}]: forward and backward against the reference`, async () => {
          const n = shape.reduce((a, s) => a * s, 1);
          const rng = new ref.Rng(n + kind.length);
          const x = rng.normals(n, 3), dy = rng.normals(n);
          for (let i = 0; i < Math.min(n, extremes.length); i++) x[i] = extremes[i];
          const y = native.gelu(f32(x, shape), kind);
          expect(y.shape).to.deep.equal(shape);
          const want = eref.gelu(x, kind);
          // quick_gelu's exp flushes below ~1e-38 (x < -51): those values are within 1e-30 of 0
          ref.assertClose(await readF(y), want, 1e-5, 1e-30, kind);
          const dx = await readF(native.geluBackward(f32(dy, shape), f32(x, shape), kind));
          ref.assertClose(dx, eref.geluBackward(dy, x, kind), 1e-5, Float64Array.from(dy, (g) => 1e-6 * Math.abs(g) + 1e-30), `${kind} backward`);
        });

    for (const kind of KINDS)
      it(`${kind}: geluBackward is the gradient of gelu (finite differences)`, async () => {
        const rng = new ref.Rng(17 + kind.length);
        const n = 301;
        const x = rng.normals(n, 2), dy = rng.normals(n), u = rng.normals(n);
        const dx = await readF(native.geluBackward(f32(dy, [n]), f32(x, [n]), kind));
        await checkFd(async (p) => dot(await readF(native.gelu(f32(p, [n]), kind)), dy), x, u, dx, kind);
      });

    it('a dense sweep of x in [-13, 10] (both tails): forward within 2e-6 relative, backward within 1e-5 relative + 1e-6', async () => {
      // the exact gelu has no scalar erf: its tails come from erfc = t exp(-x²/2 + P(t)) with x² split
      const n = 100001, x = new Float32Array(n), ones = new Float32Array(n).fill(1);
      for (let i = 0; i < n; i++) x[i] = -13 + (23 * i) / (n - 1);
      for (const kind of KINDS) {
        const y = await readF(native.gelu(f32(x, [n]), kind));
        ref.assertClose(y, eref.gelu(x, kind), 2e-6, 1e-37, `${kind} sweep`);
        const g = await readF(native.geluBackward(f32(ones, [n]), f32(x, [n]), kind));
        ref.assertClose(g, eref.geluBackward(ones, x, kind), 1e-5, 1e-6, `${kind} backward sweep`);
      }
    });

    it('non-finite inputs: gelu(+inf) = +inf for both kinds, NaN stays NaN', async () => {
      for (const kind of KINDS) {
        const y = await readF(native.gelu(f32([Infinity, NaN, 16, -16, 17, -17], [6]), kind));
        expect(y[0], kind).to.equal(Infinity);
        expect(Number.isNaN(y[1]), kind).to.equal(true);
        ref.assertClose(y.subarray(2), eref.gelu([16, -16, 17, -17], kind), 1e-6, 1e-37, kind);
      }
    });

    it('exact gelu and quick_gelu differ (the kind is honoured), and any shape is kept', async () => {
      const x = f32([1, -1, 2, -2, 0.5, 3], [1, 2, 3]);
      const a = native.gelu(x, 'gelu'), q = native.gelu(x, 'quick_gelu');
      expect(a.shape).to.deep.equal([1, 2, 3]);
      const av = await readF(a), qv = await readF(q);
      expect(av[0]).to.be.closeTo(0.8413447460685429, 1e-6);
      expect(qv[0]).to.be.closeTo(1 / (1 + Math.exp(-1.702)), 1e-6);
    });
  });

  describe('addBias and biasGrad', () => {
    for (const [M, N] of [
      [1, 1],
      [3, 7],
      [70, 33],
      [200, 1000],
    ])
      it(`(${M}, ${N}): addBias exact, biasGrad against the reference and finite differences`, async () => {
        const rng = new ref.Rng(M * 31 + N);
        const x = rng.normals(M * N), b = rng.normals(N), dy = rng.normals(M * N);
        const t = f32(x, [M, N]);
        native.addBias(t, f32(b, [N]));
        ref.assertEqual(await readF(t), Float32Array.from(x, (v, i) => Math.fround(v + b[i % N])), 'addBias');
        const db = native.biasGrad(f32(dy, [M, N]));
        expect(db.shape).to.deep.equal([N]);
        const got = await readF(db);
        // sums in double rounded once: within an f32 rounding of the exact sum, plus the sum's own
        // rounding relative to sum |dy|
        const abs = eref.biasGrad(dy.map(Math.abs), M, N);
        ref.assertClose(got, eref.biasGrad(dy, M, N), 6e-8, abs.map((s) => 1e-12 * s + 1e-30), 'biasGrad');
        // the bias gradient of L = <x + b, dy>
        const u = rng.normals(N);
        await checkFd(async (p) => {
          const y = f32(x, [M, N]);
          native.addBias(y, f32(p, [N]));
          return dot(await readF(y), dy);
        }, b, u, got, 'db');
      });

    it('biasGrad is bit-identical for 1, 2 and 3 threads (several row blocks)', async () => {
      const M = 1000, N = 130, dy = new ref.Rng(8).normals(M * N, 5);
      const runs = await atThreadCounts(async () => [await readF(native.biasGrad(f32(dy, [M, N])))]);
      for (let i = 1; i < runs.length; i++) ref.assertEqual(runs[i][0], runs[0][0], `at ${i + 1} threads`);
    });

    it('addBias runs in queue order with the ops around it', async () => {
      const x = f32([1, 2, 3, 4], [2, 2]);
      native.addBias(x, f32([10, 20], [2]));
      native.addBias(x, f32([0.5, 0.25], [2]));
      const y = native.matmul(x, f32([1, 0, 0, 1], [2, 2]));
      expect(Array.from(await readF(y))).to.deep.equal([11.5, 22.25, 13.5, 24.25]);
    });
  });

  describe('matmulWeightGrad dW = dyᵀ · x', () => {
    for (const [M, N, K] of [
      [1, 1, 1],
      [3, 5, 7],
      [33, 9, 17],
      [197, 10, 768],
      [70, 129, 65],
    ])
      it(`M=${M}, N=${N}, K=${K}: against the reference`, async () => {
        const rng = new ref.Rng(M * 7 + N * 3 + K);
        const dy = rng.normals(M * N), x = rng.normals(M * K);
        const dw = native.matmulWeightGrad(f32(dy, [M, N]), f32(x, [M, K]));
        expect(dw.shape).to.deep.equal([N, K]);
        const got = await readF(dw);
        // per element: f32 sums of M products, error <= ~1e-6 * sum |dy_m x_m|
        const abs = eref.weightGrad(dy.map(Math.abs), x.map(Math.abs), M, N, K);
        ref.assertClose(got, eref.weightGrad(dy, x, M, N, K), 1e-5, abs.map((s) => 2e-6 * s + 1e-30), 'dW');
      });

    it('is the weight gradient of matmul (finite differences), and independent of the thread count', async () => {
      const rng = new ref.Rng(121);
      const M = 40, N = 9, K = 11;
      const x = rng.normals(M * K), w = rng.normals(N * K), dy = rng.normals(M * N), u = rng.normals(N * K);
      const dw = await readF(native.matmulWeightGrad(f32(dy, [M, N]), f32(x, [M, K])));
      await checkFd(async (p) => dot(await readF(native.matmul(f32(x, [M, K]), f32(p, [N, K]))), dy), w, u, dw, 'dW');
      const big = { M: 300, N: 64, K: 96 };
      const dy2 = rng.normals(big.M * big.N), x2 = rng.normals(big.M * big.K);
      const runs = await atThreadCounts(async () => [await readF(native.matmulWeightGrad(f32(dy2, [big.M, big.N]), f32(x2, [big.M, big.K])))]);
      for (let i = 1; i < runs.length; i++) ref.assertEqual(runs[i][0], runs[0][0], `at ${i + 1} threads`);
    });
  });

  describe('patches (im2col)', () => {
    for (const [B, Cin, H, W, P] of [
      [1, 1, 1, 1, 1],
      [2, 3, 4, 6, 2],
      [1, 3, 32, 32, 16],
      [3, 2, 15, 10, 5],
      [2, 3, 28, 28, 14],
    ])
      it(`images (${B}, ${Cin}, ${H}, ${W}), P=${P}: exact, rows over the grid, columns (c, ky, kx)`, async () => {
        const img = new ref.Rng(B * 1000 + H * 10 + P).normals(B * Cin * H * W);
        const p = native.patches(f32(img, [B, Cin, H, W]), P);
        expect(p.shape).to.deep.equal([(B * H * W) / (P * P), Cin * P * P]);
        ref.assertEqual(await readF(p), Float32Array.from(eref.patches(img, B, Cin, H, W, P)), 'patches');
      });

    it('matmul(patches, W as (D, Cin·P·P)) is the Conv2d patch embedding (stride = kernel = P)', async () => {
      const B = 2, Cin = 3, H = 12, W = 8, P = 4, D = 5;
      const rng = new ref.Rng(44);
      const img = rng.normals(B * Cin * H * W), w = rng.normals(D * Cin * P * P, 0.2);
      const emb = native.matmul(native.patches(f32(img, [B, Cin, H, W]), P), f32(w, [D, Cin * P * P]));
      const want = eref.conv2d(img, B, Cin, H, W, w, D, P);
      const abs = eref.conv2d(img.map(Math.abs), B, Cin, H, W, w.map(Math.abs), D, P);
      ref.assertClose(await readF(emb), want, 1e-5, abs.map((s) => 1e-6 * s), 'patch embedding');
    });
  });

  describe('bad inputs are clear errors', () => {
    const z = (...shape: number[]) => native.zeros(shape);
    it('shapes, dtypes and arguments, named synchronously', () => {
      throwsErr(() => native.layerNorm(z(2, 3), z(4), z(3), 1e-5), Error, /^layerNorm: w f32\[4\] does not match x f32\[2, 3\]/);
      throwsErr(() => native.layerNorm(z(2, 3), z(3), z(2), 1e-5), Error, /^layerNorm: b f32\[2\] does not match x f32\[2, 3\]/);
      throwsErr(() => native.layerNorm(z(6), z(6), z(6), 1e-5), Error, /^layerNorm: x must have 2 dimensions, got f32\[6\]/);
      throwsErr(() => native.layerNorm(z(2, 3), native.zeros([3], 'bf16'), z(3), 1e-5), Error, /^layerNorm: w must be f32, got bf16\[3\]/);
      throwsErr(() => native.layerNorm(z(2, 3), z(3), z(3), -1), Error, /^layerNorm: eps must be >= 0, got -1/);
      throwsErr(() => native.layerNormBackward(z(2, 4), z(2, 3), z(3), 1e-5), Error, /^layerNormBackward: dy f32\[2, 4\] and x f32\[2, 3\] differ/);
      throwsErr(() => native.layerNormBackward(z(2, 3), z(2, 3), z(4), 1e-5), Error, /^layerNormBackward: w f32\[4\] does not match x f32\[2, 3\]/);
      throwsErr(() => native.gelu(native.zeros([3], 'i32'), 'gelu'), Error, /^gelu: x must be f32, got i32\[3\]/);
      throwsErr(() => native.geluBackward(z(3), z(4), 'gelu'), Error, /^geluBackward: dy f32\[3\] and x f32\[4\] differ/);
      throwsErr(() => native.addBias(z(2, 3), z(2)), Error, /^addBias: b f32\[2\] must have one entry per column of x f32\[2, 3\]/);
      throwsErr(() => native.addBias(z(6), z(6)), Error, /^addBias: x must have 2 dimensions, got f32\[6\]/);
      const x = z(1, 3);
      throwsErr(() => native.addBias(x, native.reshape(x, [3])), Error, /^addBias: x and b must not share storage/);
      throwsErr(() => native.biasGrad(z(6)), Error, /^biasGrad: dy must have 2 dimensions, got f32\[6\]/);
      throwsErr(() => native.biasGrad(native.zeros([2, 3], 'bf16')), Error, /^biasGrad: dy must be f32, got bf16\[2, 3\]/);
      throwsErr(() => native.matmulWeightGrad(z(4, 3), z(5, 2)), Error, /^matmulWeightGrad: dy f32\[4, 3\] and x f32\[5, 2\] must have the same rows M/);
      throwsErr(() => native.matmulWeightGrad(z(4, 3), native.zeros([4, 2], 'bf16')), Error, /^matmulWeightGrad: x must be f32, got bf16\[4, 2\]/);
      throwsErr(() => native.patches(z(1, 3, 30, 32), 16), Error, /^patches: images f32\[1, 3, 30, 32\] \(B, Cin, H, W\): H = 30 and W = 32 must be multiples of the patch size 16/);
      throwsErr(() => native.patches(z(3, 32, 32), 16), Error, /^patches: images must have 4 dimensions, got f32\[3, 32, 32\]/);
      throwsErr(() => native.patches(native.zeros([1, 1, 4, 4], 'bf16'), 2), Error, /^patches: images must be f32, got bf16\[1, 1, 4, 4\]/);
    });

    it('non-Tensor and bad scalar arguments are TypeErrors naming the op and the argument', () => {
      const t = z(2, 3);
      throwsErr(() => native.gelu(t, 'relu' as GeluKind), TypeError, /^gelu: argument 2 \(kind\) must be 'gelu' or 'quick_gelu'/);
      throwsErr(() => native.geluBackward(t, t, undefined as unknown as GeluKind), TypeError, /^geluBackward: argument 3 \(kind\) must be a string/);
      throwsErr(() => native.patches(z(1, 1, 4, 4), 0), TypeError, /^patches: argument 2 \(patch\) must be a positive integer/);
      throwsErr(() => native.patches(z(1, 1, 4, 4), 2.5), TypeError, /^patches: argument 2 \(patch\) must be a positive integer/);
      throwsErr(() => native.layerNorm(t, null as unknown as Tensor, t, 1e-5), TypeError, /^layerNorm: argument 2 \(w\) must be a Tensor/);
      throwsErr(() => native.layerNormBackward(t, t, z(3), NaN), TypeError, /^layerNormBackward: argument 4 \(eps\) must be a finite number/);
      throwsErr(() => native.matmulWeightGrad(t, {} as Tensor), TypeError, /^matmulWeightGrad: argument 2 \(x\) must be a Tensor/);
      throwsErr(() => native.biasGrad(undefined as unknown as Tensor), TypeError, /^biasGrad: argument 1 \(dy\) must be a Tensor/);
    });

    it('a read-only weight view refuses addBias (in place)', function () {
      // addBias writes x in place: a tensor viewing a file mapping must be copied first
      const fs = require('fs') as typeof import('fs');
      const os = require('os') as typeof import('os');
      const path = require('path') as typeof import('path');
      const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'la-enc-')), 'w.bin');
      fs.writeFileSync(file, Buffer.from(new Float32Array(6).buffer));
      const map = native.mapFile(file);
      const view = native.fromFile(map, 0, [2, 3], 'f32', 'f32');
      throwsErr(() => native.addBias(view, z(3)), Error, /^addBias: x f32\[2, 3\] views a read-only weight file/);
      map.close();
      fs.rmSync(path.dirname(file), { recursive: true });
    });
    it('a child process survives every misuse above (no crash, exit code 0)', function () {
      const { spawnSync } = require('child_process') as typeof import('child_process');
      const path = require('path') as typeof import('path');
      const nativeJs = path.resolve(__dirname, '..', 'lib', 'native.js');
      const body = `
        const n = require(${JSON.stringify(nativeJs)}).native;
        const z = (...s) => n.zeros(s);
        const tryAll = (fs) => fs.forEach((f) => { try { f(); } catch (e) {} });
        tryAll([
          () => n.layerNorm(z(2, 3), z(4), z(3), 1e-5),
          () => n.layerNormBackward(z(2, 3), z(2, 3), undefined, 1e-5),
          () => n.gelu(z(3), 'relu'),
          () => n.geluBackward(z(3), z(3)),
          () => n.addBias(z(2, 3), z(2)),
          () => n.biasGrad(),
          () => n.matmulWeightGrad(z(4, 3), z(5, 2)),
          () => n.patches(z(1, 3, 30, 32), 16),
          () => n.patches(z(1, 3, 32, 32), -1),
          () => n.patches(z(1, 3, 32, 32), 1e300),
        ]);
        n.synchronize().catch(() => 0).then(() => console.log('CHILD-DONE'));
      `;
      const r = spawnSync(process.execPath, ['-e', body], { encoding: 'utf8', timeout: 20000 });
      expect(r.signal, r.stderr).to.equal(null);
      expect(r.status, r.stderr).to.equal(0);
      expect(r.stdout).to.contain('CHILD-DONE');
    });
  });
});
