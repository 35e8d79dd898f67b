// Every CPU forward op against the float64 references of test/util/reference.ts, at several shapes
// including odd ones, plus the executor's ordering and the handles' lifetime rules.
//
// Tolerances (a = native result, e = float64 reference):
//   exact       embedding, sliceRows, kvWrite, convert, addInPlace (= Math.fround(x + y)): bit-equal
//   elementwise rmsnorm, swiglu: |a - e| <= 1e-5 |e| (+ 1e-30 for swiglu's underflowing tails)
//               rope: |a - e| <= 1e-5 |e| + 1e-6 (|x0| + |x1|) for each rotated pair (x0, x1)
//   reductions  matmul, attention: per output row ||a - e|| <= 1e-4 ||e||, and elementwise
//               matmul |a - e| <= 1e-5 sum_k |x_k w_k|; attention |a - e| <= 1e-5 max|v|
import { expect } from 'chai';
import { native, Tensor, RopeLayout } from '../lib/native';
import * as ref from './util/reference';
import { bits, f32, i32, maxAbs, readF } from './util/tensors';

const F32_RTOL = 1e-5;
const NORM_TOL = 1e-4;

/** Rope's per-element absolute allowance: 1e-6 (|x0| + |x1|) of the pair the element belongs to. */
function ropeAtol(x: ArrayLike<number>, rows: number, d: number, layout: RopeLayout): Float64Array {
  const atol = new Float64Array(rows * d);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < d / 2; i++) {
      const [ia, ib] = ref.ropePair(i, d, layout);
      const s = 1e-6 * (Math.abs(x[r * d + ia]) + Math.abs(x[r * d + ib]));
      atol[r * d + ia] = s;
      atol[r * d + ib] = s;
    }
  return atol;
}

describe('ops (CPU) against the float64 reference', function () {
  this.timeout(30000);

  // Nothing may be left in flight between tests (or when mocha exits).
  afterEach(async () => {
    await native.synchronize();
  });

  describe('tensor handles', () => {
    it('reports shape, dtype, device and bytes', async () => {
      const a = native.fromArray(new Float32Array(21), [3, 7]);
      expect(a.shape).to.deep.equal([3, 7]);
      expect(a.dtype).to.equal('f32');
      expect(a.device).to.equal('cpu');
      expect(a.bytes).to.equal(84);
      expect(a.disposed).to.equal(false);
      const b = native.fromArray(new Float32Array(21), [3, 7], 'bf16');
      expect(b.dtype).to.equal('bf16');
      expect(b.bytes).to.equal(42);
      const c = native.zeros([2, 3, 4], 'i32');
      expect(c.dtype).to.equal('i32');
      expect(c.bytes).to.equal(96);
      const cv = await c.read();
      expect(cv).to.be.instanceOf(Int32Array);
      expect(Array.from(cv)).to.deep.equal(new Array(24).fill(0));
      expect(Array.from(await readF(native.zeros([5])))).to.deep.equal([0, 0, 0, 0, 0]);
    });

    it('fromArray copies the data (later changes to the JS array are not seen) and honours subarray offsets', async () => {
      const src = new Float32Array([1, 2, 3, 4, 5, 6]);
      const t = native.fromArray(src.subarray(2, 6), [2, 2]);
      src[3] = 100;
      expect(Array.from(await readF(t))).to.deep.equal([3, 4, 5, 6]);
      const ints = new Int32Array([9, 8, 7, 6]);
      const ti = native.fromArray(ints.subarray(1), [3]);
      expect(Array.from(await ti.read())).to.deep.equal([8, 7, 6]);
    });

    it('capabilities() describes the build', () => {
      const c = native.capabilities();
      expect(c.version).to.be.a('string').and.not.equal('');
      expect(c.threads).to.be.a('number').and.at.least(1);
      expect(c.cuda).to.have.keys(['compiled', 'available', 'devices', 'reason', 'gemm', 'deviceList']);
      // one entry per visible GPU (none without one), each with what the GPU check's peaks need
      expect(c.cuda.deviceList).to.have.length(c.cuda.available ? c.cuda.devices : 0);
      for (const d of c.cuda.deviceList)
        expect(d).to.have.keys(['name', 'sm', 'multiprocessors', 'clockKHz', 'memoryClockKHz', 'memoryBusBits', 'memoryBytes', 'memoryPools']);
      expect(c.simd).to.be.an('array');
    });
  });

  describe('embedding', () => {
    const cases: Array<[number, number, number]> = [
      [1, 1, 1],
      [10, 7, 5],
      [33, 64, 1],
      [5, 4097, 9],
      [300, 65, 17],
    ];
    for (const dtype of ['f32', 'bf16'] as const)
      for (const [V, C, T] of cases)
        it(`${dtype} table (${V}, ${C}), ${T} tokens: exact rows`, async () => {
          const rng = new ref.Rng(V * 1000 + C + T);
          const table = rng.normals(V * C);
          const tokens = rng.ints(T, 0, V);
          if (T > 2) {
            tokens[0] = V - 1; // last id
            tokens[1] = 0; // first id
            tokens[T - 1] = tokens[T - 2]; // a repeat
          }
          const tt = native.fromArray(table, [V, C], dtype);
          const out = native.embedding(tt, i32(tokens));
          expect(out.shape).to.deep.equal([T, C]);
          expect(out.dtype).to.equal('f32');
          const want = ref.embedding(dtype === 'bf16' ? ref.bf16RoundArray(table) : table, V, C, tokens);
          ref.assertEqual(await readF(out), want, `embedding ${dtype}`);
        });
  });

  describe('rmsnorm', () => {
    for (const C of [1, 7, 64, 4097])
      for (const T of [1, 3])
        for (const eps of [1e-5, 1e-6])
          it(`C=${C}, T=${T}, eps=${eps}: elementwise rtol 1e-5`, async () => {
            const rng = new ref.Rng(C * 7 + T + eps * 1e7);
            const x = rng.normals(T * C, 2, 0.3);
            const w = rng.normals(C, 1, 1);
            const out = native.rmsnorm(f32(x, [T, C]), f32(w, [C]), eps);
            expect(out.shape).to.deep.equal([T, C]);
            ref.assertClose(await readF(out), ref.rmsnorm(x, T, C, w, eps), F32_RTOL, 1e-30, `rmsnorm C=${C}`);
          });

    it('eps dominates for tiny inputs, and large inputs do not overflow (sum of squares)', async () => {
      const C = 4096;
      const rng = new ref.Rng(5);
      const tiny = rng.normals(C, 1e-6);
      const big = rng.normals(C, 1e18); // x^2 overflows f32 but not the f64 accumulator
      const w = rng.normals(C, 1, 1);
      const x = new Float32Array(2 * C);
      x.set(tiny, 0);
      x.set(big, C);
      const out = await readF(native.rmsnorm(f32(x, [2, C]), f32(w, [C]), 1e-5));
      const want = ref.rmsnorm(x, 2, C, w, 1e-5);
      expect(out.every(Number.isFinite)).to.equal(true);
      ref.assertClose(out, want, F32_RTOL, 1e-30, 'rmsnorm extreme');
    });
  });

  describe('rope', () => {
    const layouts: RopeLayout[] = ['interleaved', 'half'];
    for (const layout of layouts)
      for (const d of [2, 8, 64, 128])
        for (const [T, H, pos0] of [
          [1, 1, 0],
          [1, 3, 1],
          [5, 2, 17],
          [3, 4, 4095],
          [2, 1, 100000],
        ])
          it(`${layout}, d=${d}, T=${T}, H=${H}, pos0=${pos0}`, async () => {
            const rng = new ref.Rng(d * 31 + T * 7 + H + pos0);
            const x = rng.normals(T * H * d);
            const t = f32(x, [T, H, d]);
            const ret = native.rope(t, pos0, 10000, layout);
            expect(ret).to.equal(undefined);
            expect(t.shape).to.deep.equal([T, H, d]);
            const want = ref.rope(x, T, H, d, pos0, 10000, layout);
            ref.assertClose(await readF(t), want, F32_RTOL, ropeAtol(x, T * H, d, layout), `rope ${layout} d=${d}`);
          });

    it('theta is honoured (500000, LLaMA-3 style) and position 0 is the identity', async () => {
      const rng = new ref.Rng(77);
      const [T, H, d] = [4, 2, 64];
      const x = rng.normals(T * H * d);
      for (const layout of layouts) {
        const t = f32(x, [T, H, d]);
        native.rope(t, 3, 500000, layout);
        const want = ref.rope(x, T, H, d, 3, 500000, layout);
        ref.assertClose(await readF(t), want, F32_RTOL, ropeAtol(x, T * H, d, layout), `rope theta ${layout}`);
        const t0 = f32(x.subarray(0, H * d), [1, H, d]);
        native.rope(t0, 0, 10000, layout);
        ref.assertEqual(await readF(t0), x.subarray(0, H * d), 'rope at position 0');
      }
    });

    for (const d of [2, 8, 64, 128])
      it(`'half' on per-head-permuted rows equals the permuted 'interleaved' result (d=${d})`, async () => {
        const rng = new ref.Rng(1000 + d);
        const [T, H, pos0] = [3, 4, 11];
        const x = rng.normals(T * H * d);
        const inter = f32(x, [T, H, d]);
        const half = f32(ref.permuteHeads(x, T * H, d), [T, H, d]);
        native.rope(inter, pos0, 10000, 'interleaved');
        native.rope(half, pos0, 10000, 'half');
        const gotInter = await readF(inter);
        const gotHalf = await readF(half);
        // equal up to f32 rounding of the same products
        ref.assertClose(gotHalf, ref.permuteHeads(gotInter, T * H, d), 1e-6, 1e-7, 'half vs permuted interleaved');
        // and the two layouts really differ on unpermuted data (the check is not vacuous)
        if (d > 2) expect(ref.firstMismatch(gotHalf, gotInter, 1e-3, 1e-3)).to.not.equal(undefined);
      });
  });

  describe('matmul x · wᵀ', () => {
    const NK: Array<[number, number]> = [
      [1, 1],
      [7, 7],
      [65, 300],
      [300, 65],
      [1, 300],
      [300, 1],
      [16, 16],
      [9, 17],
      [5, 8],
    ];
    for (const dtype of ['f32', 'bf16'] as const)
      for (const M of [1, 3, 8, 9, 33, 128])
        it(`${dtype} weights, M=${M}, (N, K) in ${NK.map(([n, k]) => `(${n},${k})`).join(' ')}`, async () => {
          for (const [N, K] of NK) {
            const rng = new ref.Rng(M * 100003 + N * 101 + K);
            const x = rng.normals(M * K);
            const w = rng.normals(N * K, 0.5);
            const wt = native.fromArray(w, [N, K], dtype);
            const y = native.matmul(f32(x, [M, K]), wt);
            expect(y.shape).to.deep.equal([M, N]);
            expect(y.dtype).to.equal('f32');
            const wUsed = dtype === 'bf16' ? ref.bf16RoundArray(w) : w;
            const got = await readF(y);
            const want = ref.matmul(x, M, K, wUsed, N);
            const what = `matmul ${dtype} M=${M} N=${N} K=${K}`;
            ref.assertCloseNorm(got, want, N, NORM_TOL, what);
            const scale = ref.matmulAbs(x, M, K, wUsed, N).map((s) => 1e-5 * s);
            ref.assertClose(got, want, 0, scale, what);
          }
        });

    it('long rows (K=4097) and a wide output (N=1000) on both paths (M <= 8 and M > 8)', async () => {
      for (const [M, N, K] of [
        [2, 3, 4097],
        [12, 3, 4097],
        [1, 1000, 33],
        [10, 1000, 33],
      ]) {
        const rng = new ref.Rng(M + N + K);
        const x = rng.normals(M * K);
        const w = rng.normals(N * K);
        for (const dtype of ['f32', 'bf16'] as const) {
          const got = await readF(native.matmul(f32(x, [M, K]), native.fromArray(w, [N, K], dtype)));
          const wUsed = dtype === 'bf16' ? ref.bf16RoundArray(w) : w;
          ref.assertCloseNorm(got, ref.matmul(x, M, K, wUsed, N), N, NORM_TOL, `matmul ${dtype} ${M}x${N}x${K}`);
        }
      }
    });

    it('results do not depend on the thread count', async () => {
      const before = native.capabilities().threads;
      const rng = new ref.Rng(4242);
      const [M, N, K] = [9, 130, 77];
      const x = f32(rng.normals(M * K), [M, K]);
      const w = f32(rng.normals(N * K), [N, K]);
      const many = await readF(native.matmul(x, w));
      native.setThreads(1);
      try {
        expect(native.capabilities().threads).to.equal(1);
        const one = await readF(native.matmul(x, w));
        ref.assertCloseNorm(one, many, N, 1e-6, 'matmul with 1 thread');
      } finally {
        native.setThreads(before);
      }
      expect(native.capabilities().threads).to.equal(before);
    });
  });

  describe('attention (causal GQA against a cache)', () => {
    // [H, Hkv, d, T, pos0, S]
    const cases: Array<[number, number, number, number, number, number]> = [
      [1, 1, 8, 1, 0, 1], // a single key
      [4, 4, 64, 1, 10, 16], // H = Hkv, decode
      [4, 4, 64, 33, 5, 64], // H = Hkv, long prefill with pos0 > 0
      [4, 2, 32, 7, 0, 7], // H = 2 Hkv, prefill from 0 filling the cache
      [4, 2, 16, 5, 9, 20], // H = 2 Hkv, prefill with pos0 > 0
      [8, 1, 64, 3, 30, 40], // H = 8 Hkv (multi-query)
      [16, 2, 128, 1, 63, 64], // H = 8 Hkv, decode at the last slot
      [6, 3, 10, 4, 2, 9], // head size not a power of two
      [2, 1, 17, 3, 4, 8], // odd head size (the SIMD tail)
      [3, 3, 3, 2, 1, 5], // tiny odd head size
    ];
    for (const [H, Hkv, d, T, pos0, S] of cases)
      it(`H=${H}, Hkv=${Hkv}, d=${d}, T=${T}, pos0=${pos0}, S=${S}`, async () => {
        const rng = new ref.Rng(H * 1e6 + Hkv * 1e4 + d * 100 + T * 10 + pos0);
        const q = rng.normals(T * H * d, 1.5);
        const k = rng.normals(S * Hkv * d);
        const v = rng.normals(S * Hkv * d);
        // Cache rows no query may see are NaN: a kernel that reads them poisons its output.
        for (let i = (pos0 + T) * Hkv * d; i < S * Hkv * d; i++) k[i] = v[i] = NaN;
        const out = native.attention(f32(q, [T, H, d]), f32(k, [S, Hkv, d]), f32(v, [S, Hkv, d]), pos0);
        expect(out.shape).to.deep.equal([T, H, d]);
        const got = await readF(out);
        const want = ref.attention(q, T, H, d, k, v, Hkv, pos0);
        ref.assertCloseNorm(got, want, d, NORM_TOL, 'attention');
        ref.assertClose(got, want, 0, 1e-5 * maxAbs(v.subarray(0, (pos0 + T) * Hkv * d)), 'attention');
      });

    it('a sharp softmax (large scores) stays finite and correct', async () => {
      const [H, Hkv, d, T, pos0, S] = [2, 1, 64, 4, 3, 7];
      const rng = new ref.Rng(99);
      const q = rng.normals(T * H * d, 30);
      const k = rng.normals(S * Hkv * d, 30);
      const v = rng.normals(S * Hkv * d);
      const got = await readF(native.attention(f32(q, [T, H, d]), f32(k, [S, Hkv, d]), f32(v, [S, Hkv, d]), pos0));
      expect(got.every(Number.isFinite)).to.equal(true);
      ref.assertCloseNorm(got, ref.attention(q, T, H, d, k, v, Hkv, pos0), d, NORM_TOL, 'sharp attention');
    });

    it('decoding token by token through kvWrite equals one prefill', async () => {
      const [H, Hkv, d, T, S] = [8, 2, 32, 6, 8];
      const rng = new ref.Rng(2024);
      const q = rng.normals(T * H * d);
      const k = rng.normals(T * Hkv * d);
      const v = rng.normals(T * Hkv * d);
      const kc = native.zeros([S, Hkv, d]);
      const vc = native.zeros([S, Hkv, d]);
      native.kvWrite(kc, f32(k, [T, Hkv, d]), 0);
      native.kvWrite(vc, f32(v, [T, Hkv, d]), 0);
      const prefill = await readF(native.attention(f32(q, [T, H, d]), kc, vc, 0));
      const kc2 = native.zeros([S, Hkv, d]);
      const vc2 = native.zeros([S, Hkv, d]);
      const steps: Tensor[] = [];
      for (let t = 0; t < T; t++) {
        const row = (a: Float32Array, n: number) => f32(a.subarray(t * n, (t + 1) * n), [1, n / d, d]);
        native.kvWrite(kc2, row(k, Hkv * d), t);
        native.kvWrite(vc2, row(v, Hkv * d), t);
        steps.push(native.attention(row(q, H * d), kc2, vc2, t)); // queued, not awaited
      }
      const decoded = new Float32Array(T * H * d);
      for (let t = 0; t < T; t++) decoded.set(await readF(steps[t]), t * H * d);
      ref.assertCloseNorm(decoded, prefill, d, 1e-5, 'decode vs prefill');
      ref.assertCloseNorm(prefill, ref.attention(q, T, H, d, k, v, Hkv, 0), d, NORM_TOL, 'prefill');
    });
  });

  describe('swiglu', () => {
    for (const shape of [[1], [1, 1], [3, 7], [5, 4097], [2, 3, 5], [70001]])
      it(`shape [${shape}]: silu(a) * b, elementwise rtol 1e-5`, async () => {
        const n = shape.reduce((p, s) => p * s, 1);
        const rng = new ref.Rng(n);
        const a = rng.normals(n, 4);
        const b = rng.normals(n);
        const extremes = [0, -0, 1e-8, -1e-8, 20, -20, 88, -88, 100, -100];
        for (let i = 0; i < Math.min(n, extremes.length); i++) a[i] = extremes[i];
        const out = native.swiglu(f32(a, shape), f32(b, shape));
        expect(out.shape).to.deep.equal(shape);
        const got = await readF(out);
        expect(got.every(Number.isFinite)).to.equal(true);
        ref.assertClose(got, ref.swiglu(a, b), F32_RTOL, 1e-30, 'swiglu');
      });
  });

  describe('addInPlace', () => {
    for (const shape of [[1], [3, 7], [2, 3, 4097], [70001]])
      it(`shape [${shape}]: x += y exactly (f32 addition)`, async () => {
        const n = shape.reduce((p, s) => p * s, 1);
        const rng = new ref.Rng(n + 1);
        const x = rng.normals(n);
        const y = rng.normals(n, 3);
        const xt = f32(x, shape);
        expect(native.addInPlace(xt, f32(y, shape))).to.equal(undefined);
        ref.assertEqual(await readF(xt), x.map((v, i) => Math.fround(v + y[i])), 'addInPlace');
      });

    it('x += x doubles, and repeated adds accumulate in queue order', async () => {
      const x = f32([1, -2, 3.5], [3]);
      native.addInPlace(x, x);
      expect(Array.from(await readF(x))).to.deep.equal([2, -4, 7]);
      const acc = native.zeros([2, 2]);
      const one = f32([1, 1, 1, 1], [2, 2]);
      for (let i = 0; i < 10; i++) native.addInPlace(acc, one);
      expect(Array.from(await readF(acc))).to.deep.equal([10, 10, 10, 10]);
    });
  });

  describe('sliceRows', () => {
    it('f32 2-D: first, middle, last and all rows', async () => {
      const [T, C] = [9, 7];
      const x = new ref.Rng(3).normals(T * C);
      const xt = f32(x, [T, C]);
      for (const [start, count] of [
        [0, 1],
        [3, 4],
        [8, 1],
        [0, 9],
      ]) {
        const s = native.sliceRows(xt, start, count);
        expect(s.shape).to.deep.equal([count, C]);
        ref.assertEqual(await readF(s), x.subarray(start * C, (start + count) * C), `rows ${start}+${count}`);
      }
    });

    it('3-D f32, bf16 and i32 keep dtype and trailing dims', async () => {
      const x = new ref.Rng(4).normals(5 * 3 * 2);
      const s3 = native.sliceRows(f32(x, [5, 3, 2]), 2, 2);
      expect(s3.shape).to.deep.equal([2, 3, 2]);
      ref.assertEqual(await readF(s3), x.subarray(12, 24), 'sliceRows 3-D');
      const sb = native.sliceRows(native.fromArray(x, [5, 6], 'bf16'), 1, 3);
      expect(sb.dtype).to.equal('bf16');
      ref.assertEqual(await readF(sb), ref.bf16RoundArray(x.subarray(6, 24)), 'sliceRows bf16');
      const si = native.sliceRows(i32([1, 2, 3, 4, 5, 6], [3, 2]), 2, 1);
      expect(si.dtype).to.equal('i32');
      expect(Array.from(await si.read())).to.deep.equal([5, 6]);
    });

    it('the slice is a copy: later in-place ops on the source do not change it', async () => {
      const x = f32([1, 2, 3, 4], [2, 2]);
      const s = native.sliceRows(x, 1, 1);
      native.addInPlace(x, f32([10, 10, 10, 10], [2, 2]));
      expect(Array.from(await readF(s))).to.deep.equal([3, 4]);
      expect(Array.from(await readF(x))).to.deep.equal([11, 12, 13, 14]);
    });
  });

  describe('kvWrite', () => {
    for (const [S, Hkv, d, T, pos0] of [
      [1, 1, 1, 1, 0],
      [8, 2, 16, 3, 0],
      [8, 2, 16, 3, 2],
      [8, 2, 16, 3, 5], // up to the last slot
      [17, 3, 10, 17, 0], // the whole cache
    ])
      it(`cache (${S}, ${Hkv}, ${d}) <- ${T} rows at pos0=${pos0}; other rows untouched`, async () => {
        const rng = new ref.Rng(S * 100 + T * 10 + pos0);
        const init = rng.normals(S * Hkv * d);
        const src = rng.normals(T * Hkv * d);
        const cache = f32(init, [S, Hkv, d]);
        expect(native.kvWrite(cache, f32(src, [T, Hkv, d]), pos0)).to.equal(undefined);
        const want = Float32Array.from(init);
        want.set(src, pos0 * Hkv * d);
        ref.assertEqual(await readF(cache), want, 'kvWrite');
      });
  });

  describe('convert and bf16 rounding', () => {
    // [f32 bits, expected bf16 bits]
    const cases: Array<[number, number, string]> = [
      [0x3f800000, 0x3f80, '1 exactly'],
      [0x3f808000, 0x3f80, 'tie, lower is even: stays'],
      [0x3f818000, 0x3f82, 'tie, lower is odd: rounds up'],
      [0xbf808000, 0xbf80, 'negative tie to even'],
      [0xbf818000, 0xbf82, 'negative tie to even (up in magnitude)'],
      [0x3f808001, 0x3f81, 'just above a tie'],
      [0x3f807fff, 0x3f80, 'just below a tie'],
      [0x00000000, 0x0000, '+0'],
      [0x80000000, 0x8000, '-0'],
      [0x00000001, 0x0000, 'smallest subnormal to 0'],
      [0x00018000, 0x0002, 'subnormal tie to even'],
      [0x7f7fffff, 0x7f80, 'max f32 overflows to Inf'],
      [0x7f7f7fff, 0x7f7f, 'just below the overflow midpoint'],
      [0x7f800000, 0x7f80, '+Inf'],
      [0xff800000, 0xff80, '-Inf'],
    ];
    const nanBits = [0x7fc00000, 0x7f800001, 0xff800001, 0x7fffffff, 0x7f80ffff];

    it('the reference rounds the tie cases as expected (self-check)', () => {
      for (const [bits, want, what] of cases) expect(ref.bf16Bits(ref.f32FromBits(bits)), what).to.equal(want);
      for (const bits of nanBits) expect(ref.bf16IsNaN(ref.bf16Bits(ref.f32FromBits(bits)))).to.equal(true);
    });

    for (const how of ['convert', 'fromArray'] as const)
      it(`f32 -> bf16 by ${how}: round to nearest even, Inf and -0 kept, every NaN stays NaN`, async () => {
        const inputBits = new Uint32Array([...cases.map((c) => c[0]), ...nanBits]);
        const src = new Float32Array(inputBits.buffer);
        const t = how === 'convert' ? native.convert(native.fromArray(src, [src.length]), 'bf16') : native.fromArray(src, [src.length], 'bf16');
        expect(t.dtype).to.equal('bf16');
        expect(t.bytes).to.equal(2 * src.length);
        const got = bits(await readF(t)); // bf16 reads back as f32: bf16 bits << 16
        for (let i = 0; i < cases.length; i++) {
          expect(got[i] & 0xffff, cases[i][2]).to.equal(0);
          expect((got[i] >>> 16).toString(16), cases[i][2]).to.equal(cases[i][1].toString(16));
        }
        for (let i = 0; i < nanBits.length; i++) {
          const h = got[cases.length + i] >>> 16;
          expect(ref.bf16IsNaN(h), `NaN 0x${nanBits[i].toString(16)} gave 0x${h.toString(16)}`).to.equal(true);
        }
      });

    it('f32 -> bf16 -> f32 on many random values (the parallel path) matches the reference', async () => {
      const n = 100003;
      const rng = new ref.Rng(8);
      const x = rng.normals(n, 100);
      for (let i = 0; i < 1000; i++) {
        // exact ties with random exponents and mantissas
        x[i] = ref.f32FromBits(((rng.int(1, 254) << 23) | (rng.int(0, 1 << 7) << 16) | 0x8000) >>> 0);
      }
      const b = native.convert(f32(x, [n]), 'bf16');
      const back = native.convert(b, 'f32');
      expect(back.dtype).to.equal('f32');
      ref.assertEqual(await readF(back), ref.bf16RoundArray(x), 'bf16 round trip');
    });

    it('bf16 -> f32 is exact, and same-dtype convert is an independent copy', async () => {
      const vals = [1, -2.5, 3.140625, 65280, -1e-20, 0];
      const b = native.fromArray(Float32Array.from(vals), [2, 3], 'bf16');
      const f = native.convert(b, 'f32');
      expect(f.shape).to.deep.equal([2, 3]);
      ref.assertEqual(await readF(f), ref.bf16RoundArray(vals), 'bf16 -> f32');
      const bb = native.convert(b, 'bf16');
      expect(bb.dtype).to.equal('bf16');
      ref.assertEqual(await readF(bb), ref.bf16RoundArray(vals), 'bf16 -> bf16');
      const x = f32([1, 2, 3], [3]);
      const copy = native.convert(x, 'f32');
      native.addInPlace(x, f32([1, 1, 1], [3]));
      expect(Array.from(await readF(copy))).to.deep.equal([1, 2, 3]);
      expect(Array.from(await readF(x))).to.deep.equal([2, 3, 4]);
    });
  });

  describe('reshape', () => {
    it('is the same storage with another shape: in-place ops through either handle are seen by both, in order', async () => {
      const x = f32([1, 2, 3, 4, 5, 6], [2, 3]);
      const y = native.reshape(x, [3, 2]);
      expect(y.shape).to.deep.equal([3, 2]);
      expect(y.dtype).to.equal('f32');
      expect(x.shape).to.deep.equal([2, 3]);
      native.addInPlace(y, f32([10, 10, 10, 10, 10, 10], [3, 2]));
      const z = native.reshape(y, [6]);
      native.addInPlace(z, f32([1, 2, 3, 4, 5, 6], [6]));
      const want = [12, 14, 16, 18, 20, 22];
      expect(Array.from(await readF(x))).to.deep.equal(want);
      x.dispose(); // the other handles keep the storage alive
      expect(Array.from(await readF(y))).to.deep.equal(want);
      expect(Array.from(await readF(native.reshape(z, [1, 2, 1, 3])))).to.deep.equal(want);
    });

    it('keeps bf16 and i32 dtypes', async () => {
      const b = native.reshape(native.fromArray(Float32Array.from([1, 2.5, -3, 4]), [4], 'bf16'), [2, 2]);
      expect(b.dtype).to.equal('bf16');
      expect(Array.from(await readF(b))).to.deep.equal([1, 2.5, -3, 4]);
      const t = native.reshape(i32([5, 6, 7, 8, 9, 10], [6]), [3, 2]);
      expect(t.dtype).to.equal('i32');
      expect(Array.from(await native.sliceRows(t, 1, 2).read())).to.deep.equal([7, 8, 9, 10]);
    });
  });

  describe('queue ordering and handle lifetimes', () => {
    it('an in-place rope then a matmul on it (through reshape) reads the rotated values', async () => {
      const [T, H, d, N] = [5, 3, 8, 7];
      const rng = new ref.Rng(10);
      const x = rng.normals(T * H * d);
      const w = rng.normals(N * H * d);
      const xt = f32(x, [T, H, d]);
      native.rope(xt, 2, 10000, 'half');
      const y = native.matmul(native.reshape(xt, [T, H * d]), f32(w, [N, H * d]));
      const xr = ref.rope(x, T, H, d, 2, 10000, 'half');
      ref.assertCloseNorm(await readF(y), ref.matmul(xr, T, H * d, w, N), N, NORM_TOL, 'matmul after rope');
    });

    it('an in-place rope is seen by the kvWrite, convert and attention queued after it (no awaits between)', async () => {
      const [H, Hkv, d, T] = [4, 2, 16, 5];
      const rng = new ref.Rng(11);
      const q = rng.normals(T * H * d);
      const k = rng.normals(T * Hkv * d);
      const v = rng.normals(T * Hkv * d);
      const qt = f32(q, [T, H, d]);
      const kt = f32(k, [T, Hkv, d]);
      const kc = native.zeros([T, Hkv, d]);
      const vc = native.zeros([T, Hkv, d]);
      native.rope(qt, 0, 10000, 'interleaved');
      native.rope(kt, 0, 10000, 'interleaved');
      const qCopy = native.convert(qt, 'f32');
      native.kvWrite(kc, kt, 0);
      native.kvWrite(vc, f32(v, [T, Hkv, d]), 0);
      const out = native.attention(qt, kc, vc, 0);
      const qr = ref.rope(q, T, H, d, 0, 10000, 'interleaved');
      const kr = ref.rope(k, T, Hkv, d, 0, 10000, 'interleaved');
      ref.assertClose(await readF(qCopy), qr, F32_RTOL, ropeAtol(q, T * H, d, 'interleaved'), 'rotated q copy');
      ref.assertCloseNorm(await readF(out), ref.attention(qr, T, H, d, kr, v, Hkv, 0), d, NORM_TOL, 'attention after rope');
    });

    it('a transformer-block-like chain queued without awaiting matches the composed reference', async () => {
      const [T, C, F] = [3, 32, 48];
      const rng = new ref.Rng(12);
      const x = rng.normals(T * C);
      const wn = rng.normals(C, 0.2, 1);
      const w1 = rng.normals(F * C, 0.2);
      const w3 = rng.normals(F * C, 0.2);
      const w2 = rng.normals(C * F, 0.2);
      const xt = f32(x, [T, C]);
      const h = native.rmsnorm(xt, f32(wn, [C]), 1e-5);
      const g = native.swiglu(native.matmul(h, f32(w1, [F, C])), native.matmul(h, f32(w3, [F, C])));
      native.addInPlace(xt, native.matmul(g, f32(w2, [C, F]))); // x += W2 (silu(W1 h) * W3 h)
      const y = native.matmul(xt, f32(w1, [F, C])); // must read the updated x
      const rh = ref.rmsnorm(x, T, C, wn, 1e-5);
      const rg = ref.swiglu(ref.matmul(rh, T, C, w1, F), ref.matmul(rh, T, C, w3, F));
      const rd = ref.matmul(rg, T, F, w2, C);
      const rx = x.map((v, i) => v + rd[i]);
      ref.assertCloseNorm(await readF(y), ref.matmul(rx, T, C, w1, F), F, NORM_TOL, 'chain');
      ref.assertCloseNorm(await readF(xt), rx, C, NORM_TOL, 'residual');
    });

    it('reading a tensor that an in-flight op still uses works (and sees exactly the ops queued before the read)', async () => {
      const [M, K, N] = [64, 512, 1024];
      const rng = new ref.Rng(13);
      const x = rng.normals(M * K);
      const xt = f32(x, [M, K]);
      const wt = f32(rng.normals(N * K), [N, K]);
      const y = native.matmul(xt, wt); // in flight while x is read
      const xr1 = xt.read();
      const x3 = f32(x.subarray(0, 4 * 8 * 16), [4, 8, 16]);
      const before = x3.read();
      native.rope(x3, 5, 10000, 'half');
      const after = x3.read();
      const [a, b, c] = await Promise.all([xr1, before, after]);
      ref.assertEqual(a as Float32Array, x, 'x read during matmul');
      ref.assertEqual(b as Float32Array, x.subarray(0, 512), 'read queued before rope');
      ref.assertClose(c as Float32Array, ref.rope(x.subarray(0, 512), 4, 8, 16, 5, 10000, 'half'), F32_RTOL, ropeAtol(x, 32, 16, 'half'), 'read queued after rope');
      expect((await readF(y)).length).to.equal(M * N);
    });

    it('many concurrent reads resolve with their own tensors', async () => {
      const ts = Array.from({ length: 50 }, (_, i) => f32([i, -i, i * 0.5], [3]));
      const vals = await Promise.all(ts.map((t) => t.read()));
      vals.forEach((v, i) => expect(Array.from(v)).to.deep.equal([i, -i, i * 0.5]));
    });

    it('native.synchronize() resolves (with undefined) once queued ops ran, and on an idle queue', async () => {
      const x = native.zeros([256, 256]);
      const one = f32(new Float32Array(256 * 256).fill(1), [256, 256]);
      for (let i = 0; i < 20; i++) native.addInPlace(x, one);
      const p = native.synchronize();
      expect(p).to.be.instanceOf(Promise);
      expect(await p).to.equal(undefined);
      expect((await readF(x)).every((v) => v === 20)).to.equal(true);
      expect(await native.synchronize()).to.equal(undefined);
    });

    it('dispose() is idempotent, frees the handle, and queued ops keep their inputs alive', async () => {
      const rng = new ref.Rng(14);
      const [M, N, K] = [9, 33, 65];
      const x = rng.normals(M * K);
      const w = rng.normals(N * K);
      const xt = f32(x, [M, K]);
      const wt = f32(w, [N, K]);
      const y = native.matmul(xt, wt);
      xt.dispose();
      wt.dispose();
      wt.dispose(); // idempotent
      expect(xt.disposed).to.equal(true);
      expect(xt.bytes).to.equal(0);
      ref.assertCloseNorm(await readF(y), ref.matmul(x, M, K, w, N), N, NORM_TOL, 'matmul of disposed inputs');
      y.dispose();
      y.dispose();
      expect(y.disposed).to.equal(true);
    });

    it('a disposed tensor used as an input throws a clear error naming the op', async () => {
      const x = f32([1, 2, 3, 4], [2, 2]);
      const w = f32([1, 0, 0, 1], [2, 2]);
      x.dispose();
      expect(() => native.matmul(x, w)).to.throw(/matmul.*disposed/);
      expect(() => native.matmul(w, x)).to.throw(/matmul.*disposed/);
      expect(() => native.addInPlace(x, w)).to.throw(/addInPlace.*disposed/);
      expect(() => native.convert(x, 'bf16')).to.throw(/convert.*disposed/);
      // reading it fails too (synchronously or as a rejection), and w is still fine
      let err: unknown;
      try {
        await x.read();
      } catch (e) {
        err = e;
      }
      expect(String(err)).to.match(/disposed/);
      expect(Array.from(await readF(native.matmul(w, w)))).to.deep.equal([1, 0, 0, 1]);
    });
  });
});
