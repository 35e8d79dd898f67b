// The plain, AVX2 and AVX-512 bodies of the dot-product and quantized kernels, each forced by
// LLAMA_ADAPTER_SIMD in a child process (test/util/simd-probe.ts), on the same inputs:
//
//   dequantisation   llama.cpp's golden blocks: bit for bit its dequantize_row_* on every path;
//                    read() and embedding of our blocks: bit for bit the same on every path
//   quantized decode M = 1 (x as int8; the integer block sums are the same on every path):
//                    each path within 1e-6 * max|w_row| * sum|x| of the plain path (float rounding
//                    of the per-block scaling, summed in another order), and within the int8 bound
//                    sum_k |w_k| xd(k) / 2 (+ 1e-5 sum|x w|) of the float64 product
//   the rest         few rows, sgemm panels, the input gradient, f32 / bf16 matmul at the shapes of
//                    each dot loop (tails after 16/32-wide loops, rows not a multiple of the unroll),
//                    attention (strided dots, weighted rows): float64 references, 1e-5 sum|terms|
// A path the CPU lacks is skipped, saying so.
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as nodePath from 'path';
import { native } from '../lib/native';
import { readGolden } from './util/golden-quants';
import * as ref from './util/reference';
import {
  ATTENTION_SHAPES, BACKWARD_M, DENSE_SHAPES, EMBED_IDS, QUANT_M, QUANT_N, QUANT_TYPES, unb64, values,
} from './util/simd-probe';

type Level = 'scalar' | 'avx2' | 'avx512';
const LEVELS: Level[] = ['scalar', 'avx2', 'avx512'];
const caps = native.capabilities();
const supported: Record<Level, boolean> = {
  scalar: true,
  avx2: ['avx2', 'fma'].every((f) => caps.simd.includes(f)),
  avx512: ['avx2', 'fma', 'avx512f', 'avx512bw', 'avx512vl', 'avx512vnni'].every((f) => caps.simd.includes(f)),
};
const PROBE = nodePath.join(__dirname, 'util', 'simd-probe.js');

function runChild(env: Record<string, string>, args: string[]) {
  return spawnSync(process.execPath, [PROBE, ...args], { encoding: 'utf8', timeout: 100_000, env: { ...process.env, ...env } });
}

/** bf16 rounding of an f32 (round to nearest even), as fromArray(..., 'bf16') stores it. */
function bf16(a: Float32Array): Float32Array {
  const u = new Uint32Array(a.buffer.slice(0));
  for (let i = 0; i < u.length; i++) u[i] = ((u[i] + 0x7fff + ((u[i] >> 16) & 1)) >>> 16) << 16;
  return new Float32Array(u.buffer);
}

/** y (M, N) = x (M, K) · w (N, K)ᵀ in float64, and sum |x w| per element. */
function product(x: Float32Array, w: Float32Array, M: number, N: number, K: number) {
  const y = new Float64Array(M * N), mag = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0, a = 0;
      for (let k = 0; k < K; k++) {
        const p = x[m * K + k] * w[n * K + k];
        s += p;
        a += Math.abs(p);
      }
      y[m * N + n] = s;
      mag[m * N + n] = a;
    }
  return { y, mag };
}

describe('SIMD paths: plain, AVX2 and AVX-512 agree (LLAMA_ADAPTER_SIMD)', function () {
  this.timeout(200_000);
  const golden = readGolden();
  const results: Partial<Record<Level, Record<string, Float32Array>>> = {};
  const tmp = fs.mkdtempSync(nodePath.join(os.tmpdir(), 'la-simd-test-'));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  before(() => {
    const gfile = nodePath.join(tmp, 'golden.json');
    const g: Record<string, { rows: number; blocks: string }> = {};
    for (const { q } of QUANT_TYPES) {
      const s = golden.get(q)!;
      g[q] = { rows: s.input.length / 256, blocks: Buffer.from(s.blocks).toString('base64') };
    }
    fs.writeFileSync(gfile, JSON.stringify(g));
    for (const level of LEVELS) {
      if (!supported[level]) continue;
      const file = nodePath.join(tmp, `${level}.json`);
      const r = runChild({ LLAMA_ADAPTER_SIMD: level }, [file, gfile]);
      expect(r.status, `probe with LLAMA_ADAPTER_SIMD=${level}: ${r.stderr}`).to.equal(0);
      const raw = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, string>;
      expect(raw.level, 'the path the child reports').to.equal(level);
      results[level] = Object.fromEntries(Object.entries(raw).filter(([k]) => k !== 'level').map(([k, v]) => [k, unb64(v)]));
    }
  });

  it('capabilities().simdLevel is the best path the CPU has unless LLAMA_ADAPTER_SIMD names another; a bad name warns', () => {
    const best: Level = supported.avx512 ? 'avx512' : supported.avx2 ? 'avx2' : 'scalar';
    const level = (env: Record<string, string>) => {
      const r = spawnSync(process.execPath, ['-e', `process.stdout.write(require(${JSON.stringify(nodePath.join(__dirname, '..', 'lib', 'native'))}).native.capabilities().simdLevel)`], {
        encoding: 'utf8',
        env: { ...process.env, LLAMA_ADAPTER_SIMD: '', LLAMA_ADAPTER_NO_AVX2: '', ...env },
      });
      return { out: r.stdout, err: r.stderr };
    };
    expect(level({}).out).to.equal(best);
    expect(level({ LLAMA_ADAPTER_SIMD: 'AVX2' }).out).to.equal(supported.avx2 ? 'avx2' : 'scalar');
    expect(level({ LLAMA_ADAPTER_NO_AVX2: '1' }).out).to.equal('scalar');
    const bad = level({ LLAMA_ADAPTER_SIMD: 'sse9' });
    expect(bad.out).to.equal(best);
    expect(bad.err).to.match(/LLAMA_ADAPTER_SIMD=sse9 is not one of avx512, avx2, scalar; using/);
  });

  for (const level of LEVELS) {
    describe(`${level}`, () => {
      let r: Record<string, Float32Array>;
      let plain: Record<string, Float32Array>;
      before(function () {
        if (!supported[level]) this.skip(); // this CPU lacks the instructions
        r = results[level]!;
        plain = results.scalar!;
      });

      it("dequantises llama.cpp's golden blocks to its dequantize_row_* values bit for bit", () => {
        for (const { q } of QUANT_TYPES) {
          const want = golden.get(q)!.output, got = r[`golden.${q}`];
          expect(Buffer.from(got.buffer).equals(Buffer.from(want.buffer)), `${q} on ${level}`).to.equal(true);
        }
      });

      it('read() and embedding give the plain path\'s dequantised values bit for bit', () => {
        for (const { q, K } of QUANT_TYPES) {
          const W = r[`${q}.read`];
          expect(Buffer.from(W.buffer).equals(Buffer.from(plain[`${q}.read`].buffer)), `${q} read`).to.equal(true);
          const want = new Float32Array(EMBED_IDS.length * K);
          EMBED_IDS.forEach((id, t) => want.set(W.subarray(id * K, id * K + K), t * K));
          expect(Buffer.from(r[`${q}.embedding`].buffer).equals(Buffer.from(want.buffer)), `${q} embedding`).to.equal(true);
        }
      });

      it(`quantized decode (M = 1, N = ${QUANT_N}): within float rounding of the plain path's int8 sums, and within the int8 bound of float64`, () => {
        for (const { q, K } of QUANT_TYPES) {
          const W = plain[`${q}.read`], x = values(K, 101), got = r[`${q}.matmul.1`];
          const xb = q === 'q8_0' || q === 'q4_0' ? 32 : 256;
          const sumAbsX = x.reduce((s, v) => s + Math.abs(v), 0);
          const { y, mag } = product(x, W, 1, QUANT_N, K);
          const near = new Float64Array(QUANT_N), bound = new Float64Array(QUANT_N);
          for (let n = 0; n < QUANT_N; n++) {
            let wmax = 0, e = 0;
            for (let k = 0; k < K; k++) {
              wmax = Math.max(wmax, Math.abs(W[n * K + k]));
              const xd = Math.max(...x.subarray(k - (k % xb), k - (k % xb) + xb).map(Math.abs)) / 127;
              e += (Math.abs(W[n * K + k]) * xd) / 2;
            }
            near[n] = 1e-6 * wmax * sumAbsX;
            bound[n] = 1.01 * e + 1e-5 * mag[n];
          }
          ref.assertClose(got, plain[`${q}.matmul.1`], 0, near, `${q} decode, ${level} vs plain`);
          ref.assertClose(got, y, 0, bound, `${q} decode, ${level} vs float64`);
        }
      });

      it(`quantized few rows (M = ${QUANT_M.slice(1).join(', ')}) and input gradient (M = ${BACKWARD_M}) against float64`, () => {
        for (const { q, K } of QUANT_TYPES) {
          const W = plain[`${q}.read`];
          for (const M of QUANT_M.slice(1)) {
            const { y, mag } = product(values(M * K, 100 + M), W, M, QUANT_N, K);
            ref.assertClose(r[`${q}.matmul.${M}`], y, 0, Float64Array.from(mag, (a) => 1e-5 * a + 1e-30), `${q} M=${M} on ${level}`);
          }
          // dx (M, K) = dy (M, N) · W (N, K): the product with Wᵀ as the (K, N) weight
          const Wt = new Float32Array(K * QUANT_N);
          for (let n = 0; n < QUANT_N; n++) for (let k = 0; k < K; k++) Wt[k * QUANT_N + n] = W[n * K + k];
          const { y, mag } = product(values(BACKWARD_M * QUANT_N, 55), Wt, BACKWARD_M, K, QUANT_N);
          ref.assertClose(r[`${q}.backward`], y, 0, Float64Array.from(mag, (a) => 1e-5 * a + 1e-30), `${q} backward on ${level}`);
        }
      });

      it('f32 and bf16 matmul (strided rows, 4 rows in lockstep, several rows of x; odd K) against float64', () => {
        for (const dtype of ['f32', 'bf16'])
          for (const [M, N, K] of DENSE_SHAPES) {
            const w = values(N * K, 11, 0.05);
            const { y, mag } = product(values(M * K, 12), dtype === 'bf16' ? bf16(w) : w, M, N, K);
            ref.assertClose(r[`${dtype}.matmul.${M}x${N}x${K}`], y, 0, Float64Array.from(mag, (a) => 1e-5 * a + 1e-30), `${dtype} ${M}x${N}x${K} on ${level}`);
          }
      });

      it('attention (odd head sizes 40, 72) against float64', () => {
        for (const [T, H, Hkv, d, pos0] of ATTENTION_SHAPES) {
          const S = pos0 + T;
          const q = values(T * H * d, 21, 0.3), k = values(S * Hkv * d, 22, 0.3), v = values(S * Hkv * d, 23);
          const want = new Float64Array(T * H * d), atol = new Float64Array(T * H * d);
          for (let t = 0; t < T; t++)
            for (let h = 0; h < H; h++) {
              const kvh = Math.floor(h / (H / Hkv)), keys = pos0 + t + 1;
              const e = new Float64Array(keys);
              for (let s = 0; s < keys; s++) {
                let dot = 0;
                for (let i = 0; i < d; i++) dot += q[(t * H + h) * d + i] * k[(s * Hkv + kvh) * d + i];
                e[s] = dot / Math.sqrt(d);
              }
              const mx = Math.max(...e);
              let z = 0;
              for (let s = 0; s < keys; s++) z += (e[s] = Math.exp(e[s] - mx));
              for (let i = 0; i < d; i++) {
                let o = 0, a = 0;
                for (let s = 0; s < keys; s++) {
                  o += (e[s] / z) * v[(s * Hkv + kvh) * d + i];
                  a += (e[s] / z) * Math.abs(v[(s * Hkv + kvh) * d + i]);
                }
                want[(t * H + h) * d + i] = o;
                atol[(t * H + h) * d + i] = 1e-5 * a + 1e-30;
              }
            }
          ref.assertClose(r[`attention.${T}x${H}x${Hkv}x${d}x${pos0}`], want, 0, atol, `attention d=${d} on ${level}`);
        }
      });
    });
  }
});
