// GEMM cases run in a child process (the CPU GEMM is chosen once per process, from its environment:
// native/core/blas.cpp) and checked here against the float64 reference: matmul (f32 and bf16
// weights) and matmulBackward, at shapes that reach sgemm (M > 8) with ragged edges, one large
// enough to be split over the thread pool, and ones past the own kernel's block sizes.
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as ref from './reference';

export interface GemmCase {
  M: number;
  N: number;
  K: number;
  bf16: boolean;
  seed: number;
}

export const GEMM_CASES: GemmCase[] = [
  { M: 9, N: 300, K: 16, bf16: false, seed: 1 },
  { M: 37, N: 29, K: 45, bf16: false, seed: 2 },
  { M: 24, N: 70, K: 33, bf16: true, seed: 3 },
  { M: 130, N: 150, K: 120, bf16: false, seed: 4 }, // 2.3 MFLOP: cut into blocks over the thread pool
  // the own kernel's blocking (own_gemm.cpp): k deeper than one packed panel (256) and more rows
  // than one packed block of A (96); more columns than one packed block of B (2048)
  { M: 100, N: 40, K: 600, bf16: false, seed: 5 },
  { M: 12, N: 2100, K: 20, bf16: false, seed: 6 },
];

/** The dynamic loader's cache (`ldconfig -p`: "libfoo.so.1 (libc6,x86-64) => /path" lines); '' when
 *  ldconfig is not there (it lives in /sbin, off the PATH of users other than root on Debian). */
export function loaderCache(): string {
  for (const bin of ['ldconfig', '/sbin/ldconfig', '/usr/sbin/ldconfig']) {
    const r = spawnSync(bin, ['-p'], { encoding: 'utf8' });
    if (r.status === 0) return r.stdout;
  }
  return '';
}

/** Deterministic test values in [-1.5, 1.5], computed the same way in the child (it gets this source). */
export function fill(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.sin(i * 0.37 + seed) + 0.5 * Math.cos(i * 0.013 * seed);
  return a;
}

export interface GemmRun {
  status: number | null;
  stderr: string;
  /** capabilities().blas */
  blas?: string;
  blasThreads?: number;
  /** OPENBLAS_CORETYPE as the child saw it after loading the addon */
  coreType?: string | null;
  /** per case: [y (M, N), dx (M, K)] */
  results?: number[][][];
  /** the message of a failed GEMM */
  error?: string;
}

/**
 * Runs GEMM_CASES in a child: `load` is a JS expression for the native binding (e.g.
 * `require('/repo/dist/lib/native.js').native`); `setup` runs first (e.g. `n.setThreads(2)`).
 * `wrap` goes before the child's command (e.g. unshare ...); `env` is the child's whole environment.
 */
export function runGemmChild(load: string, opts: { env?: NodeJS.ProcessEnv; setup?: string; wrap?: string[] } = {}): GemmRun {
  const body = `
    const n = ${load};
    ${fill.toString()}
    const cases = ${JSON.stringify(GEMM_CASES)};
    (async () => {
      ${opts.setup ?? ''}
      const caps = n.capabilities();
      const out = { blas: caps.blas, blasThreads: caps.blasThreads, coreType: process.env.OPENBLAS_CORETYPE ?? null, results: [] };
      try {
        for (const c of cases) {
          const x = n.fromArray(fill(c.M * c.K, c.seed), [c.M, c.K]);
          const w32 = n.fromArray(fill(c.N * c.K, c.seed + 100), [c.N, c.K]);
          const w = c.bf16 ? n.convert(w32, 'bf16') : w32;
          const dy = n.fromArray(fill(c.M * c.N, c.seed + 200), [c.M, c.N]);
          const y = await n.matmul(x, w).read(), dx = await n.matmulBackward(dy, w).read();
          out.results.push([Array.from(y), Array.from(dx)]);
        }
      } catch (e) {
        out.error = e instanceof Error ? e.message : String(e);
      }
      console.log('RESULT ' + JSON.stringify(out));
    })();`;
  const [cmd, ...args] = [...(opts.wrap ?? []), process.execPath, '-e', body];
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: opts.env ?? process.env, timeout: 120_000, maxBuffer: 1 << 28 });
  const run: GemmRun = { status: r.status, stderr: `${r.error ?? ''}${r.stderr}` };
  const line = r.stdout?.split('\n').find((l) => l.startsWith('RESULT '));
  if (line) Object.assign(run, JSON.parse(line.slice('RESULT '.length)));
  return run;
}

/** Every case's y and dx within f32 rounding of the float64 reference (bf16 weights as rounded). */
export function expectGemmResults(run: GemmRun): void {
  expect(run.status, run.stderr).to.equal(0);
  expect(run.error, 'a GEMM failed').to.equal(undefined);
  expect(run.results).to.have.length(GEMM_CASES.length);
  GEMM_CASES.forEach((c, i) => {
    const x = fill(c.M * c.K, c.seed);
    const w = c.bf16 ? ref.bf16RoundArray(fill(c.N * c.K, c.seed + 100)) : fill(c.N * c.K, c.seed + 100);
    const dy = fill(c.M * c.N, c.seed + 200);
    const wT = new Float32Array(c.K * c.N); // (K, N)
    for (let n = 0; n < c.N; n++) for (let k = 0; k < c.K; k++) wT[k * c.N + n] = w[n * c.K + k];
    const what = `${c.M}x${c.N}x${c.K} ${c.bf16 ? 'bf16' : 'f32'}`;
    // error bound: a small multiple of f32 epsilon times the sum of |terms| of each dot product
    const tol = (abs: Float64Array) => abs.map((a) => 2e-6 * a);
    const [y, dx] = run.results![i];
    ref.assertClose(y, ref.matmul(x, c.M, c.K, w, c.N), 0, tol(ref.matmulAbs(x, c.M, c.K, w, c.N)), `matmul ${what}`);
    ref.assertClose(dx, ref.matmul(dy, c.M, c.N, wT, c.K), 0, tol(ref.matmulAbs(dy, c.M, c.N, wT, c.K)), `matmulBackward ${what}`);
  });
}
