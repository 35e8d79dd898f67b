// Matmul precision "medium" (native/core/bf16_gemm.cpp): CPU products with a bf16 weight round their
// f32 input to bf16 too. Checked against a float64 reference on the rounded inputs, on both engines
// (AVX512-BF16 when the CPU has it, widen + sgemm when forced or absent; each engine in a child
// process, since it is chosen once per process), at shapes past every blocking edge of the kernel.
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { native } from '../lib/native';
import * as ref from './util/reference';
import { withMatmulPrecision } from './util/precision';

const load = `require(${JSON.stringify(path.resolve(__dirname, '..', 'lib', 'native.js'))}).native`;
const cpuHasBf16 = /^flags\s*:.*\bavx512_bf16\b/m.test(fs.existsSync('/proc/cpuinfo') ? fs.readFileSync('/proc/cpuinfo', 'utf8') : '');

// [M, N, K]: odd K (a zero-padded k-pair), N past a 32-column panel, M past the 12-row tile and the
// 192-row block, K past the 256-deep pass, one column, one k
const CASES: [number, number, number][] = [
  [9, 5, 3],
  [13, 33, 7],
  [200, 70, 301],
  [25, 100, 600],
  [12, 1, 1],
  [37, 64, 1],
  [397, 40, 515],
];

/** Values in [-1.5, 1.5] that are not bf16 numbers (so rounding them shows), the same in a child. */
function fill(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.sin(i * 0.37 + seed) + 0.5 * Math.cos(i * 0.013 * seed);
  return a;
}

/** per case: [y = x · wᵀ (M, N), dx = dy · w (M, K)] computed under "medium" by the binding `n` */
async function runCases(n: typeof native): Promise<number[][][]> {
  const out: number[][][] = [];
  n.setMatmulPrecision('medium');
  try {
    for (const [M, N, K] of CASES) {
      const w = n.convert(n.fromArray(fill(N * K, N + K), [N, K]), 'bf16');
      const y = await n.matmul(n.fromArray(fill(M * K, M), [M, K]), w).read();
      const dx = await n.matmulBackward(n.fromArray(fill(M * N, M + 7), [M, N]), w).read();
      out.push([Array.from(y), Array.from(dx)]);
    }
  } finally {
    n.setMatmulPrecision('highest');
  }
  return out;
}

function expectCases(results: number[][][], engine: string): void {
  expect(results).to.have.length(CASES.length);
  CASES.forEach(([M, N, K], i) => {
    const x = ref.bf16RoundArray(fill(M * K, M));
    const w = ref.bf16RoundArray(fill(N * K, N + K));
    const dy = ref.bf16RoundArray(fill(M * N, M + 7));
    const wT = new Float32Array(K * N);
    for (let r = 0; r < N; r++) for (let k = 0; k < K; k++) wT[k * N + r] = w[r * K + k];
    // products of bf16 numbers are exact in f32: what is left is the rounding of the f32 sums
    const tol = (abs: Float64Array) => abs.map((a) => 2e-6 * a);
    const what = `${engine} ${M}x${N}x${K}`;
    ref.assertClose(results[i][0], ref.matmul(x, M, K, w, N), 0, tol(ref.matmulAbs(x, M, K, w, N)), `matmul ${what}`);
    ref.assertClose(results[i][1], ref.matmul(dy, M, N, wT, K), 0, tol(ref.matmulAbs(dy, M, N, wT, K)), `matmulBackward ${what}`);
  });
}

/** runCases in a child process with `env` added to this one's */
function inChild(env: Record<string, string>): { engine: string; results: number[][][] } {
  const body = `
    const n = ${load};
    ${fill.toString()}
    const CASES = ${JSON.stringify(CASES)};
    const native = n;
    ${runCases.toString()}
    runCases(n).then((results) => console.log('RESULT ' + JSON.stringify({ engine: n.capabilities().bf16Gemm, results })),
      (e) => { console.error(e); process.exit(1); });`;
  const r = spawnSync(process.execPath, ['-e', body], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000, maxBuffer: 1 << 28 });
  expect(r.status, r.stderr).to.equal(0);
  const line = r.stdout.split('\n').find((l) => l.startsWith('RESULT '));
  expect(line, r.stdout).to.be.a('string');
  return JSON.parse(line!.slice('RESULT '.length));
}

describe('matmul precision "medium": bf16 products on the CPU', function () {
  this.timeout(120_000);

  it('is off by default, and reported by capabilities()', () => {
    const c = native.capabilities();
    expect(c.matmulPrecision).to.equal('highest');
    expect(c.bf16Gemm).to.equal(cpuHasBf16 ? 'avx512bf16' : 'widen+sgemm');
    native.setMatmulPrecision('medium');
    expect(native.capabilities().matmulPrecision).to.equal('medium');
    native.setMatmulPrecision('highest');
    expect(native.capabilities().matmulPrecision).to.equal('highest');
  });

  it('rejects anything but "highest" and "medium", naming it', () => {
    expect(() => native.setMatmulPrecision('low' as never)).to.throw(/precision must be "highest" or "medium", got "low"/);
    expect(() => (native.setMatmulPrecision as (x: unknown) => void)(3)).to.throw(/precision/);
    expect(native.capabilities().matmulPrecision).to.equal('highest');
  });

  it(`this process's engine (${cpuHasBf16 ? 'AVX512-BF16' : 'widen + sgemm'}): y = bf16(x)·wᵀ and dx = bf16(dy)·w equal the float64 reference`, async () => {
    expectCases(await runCases(native), native.capabilities().bf16Gemm);
  });

  it('the widen + sgemm engine (LLAMA_ADAPTER_BF16_GEMM=sgemm) gives the same', () => {
    const r = inChild({ LLAMA_ADAPTER_BF16_GEMM: 'sgemm' });
    expect(r.engine).to.equal('widen+sgemm');
    expectCases(r.results, r.engine);
  });

  it('"highest" keeps x in f32: its products differ from the rounded ones by more than the tolerance', async () => {
    const [M, N, K] = [40, 50, 300];
    const x = fill(M * K, 1);
    const w = native.convert(native.fromArray(fill(N * K, 2), [N, K]), 'bf16');
    const high = await native.matmul(native.fromArray(x, [M, K]), w).read();
    const wUsed = ref.bf16RoundArray(fill(N * K, 2));
    ref.assertClose(high, ref.matmul(x, M, K, wUsed, N), 0, ref.matmulAbs(x, M, K, wUsed, N).map((a) => 2e-6 * a), 'highest');
    const med = await withMatmulPrecision('medium', () => native.matmul(native.fromArray(x, [M, K]), w).read());
    let worst = 0;
    const abs = ref.matmulAbs(x, M, K, wUsed, N);
    med.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - high[i]) / abs[i])));
    expect(worst).to.be.above(1e-4); // bf16 keeps 8 bits: the rounding of x shows
  });

  it('decoding (8 rows or fewer) keeps f32 inputs under either precision: equal bit for bit', async () => {
    for (const M of [1, 8]) {
      const [N, K] = [70, 301];
      const x = native.fromArray(fill(M * K, 3), [M, K]);
      const w = native.convert(native.fromArray(fill(N * K, 4), [N, K]), 'bf16');
      const high = await native.matmul(x, w).read();
      const medium = await withMatmulPrecision('medium', () => native.matmul(x, w).read());
      expect(Array.from(medium)).to.deep.equal(Array.from(high));
    }
  });

  it('f32 weights are not affected', async () => {
    const [M, N, K] = [20, 30, 40];
    const x = native.fromArray(fill(M * K, 5), [M, K]);
    const w = native.fromArray(fill(N * K, 6), [N, K]);
    const high = await native.matmul(x, w).read();
    const medium = await withMatmulPrecision('medium', () => native.matmul(x, w).read());
    expect(Array.from(medium)).to.deep.equal(Array.from(high));
  });
});
