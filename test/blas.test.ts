// The CPU GEMM chosen at run time (native/core/blas.cpp): OpenBLAS loaded with dlopen when the
// machine has it (after lib/blas-env.ts has set OPENBLAS_CORETYPE), the own kernel when it does not
// or when asked. Each choice runs in a child process, checked against the float64 reference.
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { expectGemmResults, loaderCache, runGemmChild } from './util/gemm-cases';
import { repoRoot } from './util/paths';

const load = `require(${JSON.stringify(path.resolve(__dirname, '..', 'lib', 'native.js'))}).native`;
/** OpenBLAS on the loader's path (CI installs libopenblas0) */
const hasOpenblas = /\blibopenblas\.so\.0\b/.test(loaderCache());

/** this process's environment without the variables that choose the GEMM */
function env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const e = { ...process.env };
  for (const k of ['LLAMA_ADAPTER_CPU_GEMM', 'LLAMA_ADAPTER_OPENBLAS', 'LLAMA_ADAPTER_GEMM_SPLIT', 'OPENBLAS_CORETYPE']) delete e[k];
  return { ...e, ...extra };
}

describe('CPU GEMM: OpenBLAS loaded at run time, or the own kernel', function () {
  this.timeout(120_000);

  it('by default OpenBLAS, loaded at run time with the OPENBLAS_CORETYPE lib/blas-env.ts chose', function () {
    if (!hasOpenblas) this.skip(); // no libopenblas.so.0 here: the next tests cover the own kernel
    const run = runGemmChild(load, { env: env(), setup: 'n.setThreads(2)' });
    expectGemmResults(run);
    expect(run.blas).to.match(/^OpenBLAS \d+\.\d+\.\d+ \(\w+ kernels; \S*libopenblas\S*\.so\.0, loaded at run time\)$/);
    // set by lib/blas-env.ts before the addon loaded, and OpenBLAS (loaded later) obeyed it
    if (run.coreType) expect(run.blas).to.contain(`(${run.coreType} kernels;`);
  });

  it('OPENBLAS_CORETYPE set by the user reaches OpenBLAS (it reads it when it loads)', function () {
    if (!hasOpenblas || os.arch() !== 'x64') this.skip();
    const run = runGemmChild(load, { env: env({ OPENBLAS_CORETYPE: 'Sandybridge' }) });
    expectGemmResults(run);
    expect(run.blas).to.contain('(Sandybridge kernels;');
  });

  it("setThreads sets OpenBLAS's threads: 1 while our pool splits the GEMM, n with LLAMA_ADAPTER_GEMM_SPLIT=0", function () {
    if (!hasOpenblas) this.skip();
    const split = runGemmChild(load, { env: env(), setup: 'n.setThreads(2)' });
    expectGemmResults(split);
    expect(split.blasThreads).to.equal(1);
    const own = runGemmChild(load, { env: env({ LLAMA_ADAPTER_GEMM_SPLIT: '0' }), setup: 'n.setThreads(2)' });
    expectGemmResults(own);
    expect(own.blasThreads).to.equal(2);
    const one = runGemmChild(load, { env: env({ LLAMA_ADAPTER_GEMM_SPLIT: '0' }), setup: 'n.setThreads(2); n.setThreads(1)' });
    expect(one.blasThreads).to.equal(1);
  });

  it('the own kernel, every transpose, alpha, beta and leading dimension, either micro-kernel (C++ check, ~5 s)', function () {
    // op(A) transposed is not reachable from an op yet (matmulWeightGrad will), so this calls
    // own_sgemm directly: test/native/own_gemm_check.cpp, built here with the compiler a source build uses
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-own-gemm-'));
    try {
      const exe = path.join(dir, 'own_gemm_check');
      const core = (f: string) => path.join(repoRoot, 'native', 'core', f);
      const build = spawnSync(process.env.CXX ?? 'c++', ['-O2', '-std=c++17', `-I${core('')}`, path.join(repoRoot, 'test', 'native', 'own_gemm_check.cpp'),
        ...['own_gemm.cpp', 'blas.cpp', 'parallel.cpp', 'glibc_compat.cpp'].map(core), '-ldl', '-lpthread', '-o', exe], { encoding: 'utf8' });
      expect(build.status, `${build.error ?? ''}${build.stderr}`).to.equal(0);
      for (const noAvx2 of ['0', '1']) {
        const r = spawnSync(exe, { encoding: 'utf8', env: { ...process.env, LLAMA_ADAPTER_NO_AVX2: noAvx2 } });
        expect(r.status, `LLAMA_ADAPTER_NO_AVX2=${noAvx2}: ${r.stdout}${r.stderr}`).to.equal(0);
        expect(r.stdout).to.match(/^(\d+) of \1 cases within 1e-6$/m);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('LLAMA_ADAPTER_CPU_GEMM=own: the own kernel, 1 and 2 threads', () => {
    for (const threads of [1, 2]) {
      const run = runGemmChild(load, { env: env({ LLAMA_ADAPTER_CPU_GEMM: 'own' }), setup: `n.setThreads(${threads})` });
      expectGemmResults(run);
      expect(run.blas).to.equal('own kernels (LLAMA_ADAPTER_CPU_GEMM=own)');
      expect(run.blasThreads).to.equal(0);
    }
  });

  it('OpenBLAS missing (LLAMA_ADAPTER_OPENBLAS names no file): the own kernel, and the reason', () => {
    const missing = path.join(os.tmpdir(), 'no-such-dir', 'libopenblas.so.0');
    const run = runGemmChild(load, { env: env({ LLAMA_ADAPTER_OPENBLAS: missing }) });
    expectGemmResults(run);
    expect(run.blas).to.match(/^own kernels \(.*no-such-dir\/libopenblas\.so\.0 could not be loaded: .*No such file or directory\)$/);
  });

  it('a file that is not a CBLAS library is refused with the reason', () => {
    // libm loads, but has no cblas_sgemm
    const run = runGemmChild(load, { env: env({ LLAMA_ADAPTER_OPENBLAS: 'libm.so.6' }) });
    expectGemmResults(run);
    expect(run.blas).to.equal('own kernels (libm.so.6 has no cblas_sgemm (not a CBLAS library?))');
  });

  it('LLAMA_ADAPTER_CPU_GEMM=openblas requires it: GEMMs reject with the reason, nothing crashes', () => {
    const run = runGemmChild(load, { env: env({ LLAMA_ADAPTER_CPU_GEMM: 'openblas', LLAMA_ADAPTER_OPENBLAS: '/nonexistent/libopenblas.so.0' }) });
    expect(run.status, run.stderr).to.equal(0);
    // the op's error names the op and the reason
    expect(run.error).to.match(/^matmul\(f32\[9, 16\], f32\[300, 16\]\): LLAMA_ADAPTER_CPU_GEMM=openblas, but \/nonexistent\/libopenblas\.so\.0 could not be loaded/);
    expect(run.blas).to.match(/^none \(LLAMA_ADAPTER_CPU_GEMM=openblas, but /);
  });

  it('a bad LLAMA_ADAPTER_CPU_GEMM value is named', () => {
    const run = runGemmChild(load, { env: env({ LLAMA_ADAPTER_CPU_GEMM: 'mkl' }) });
    expect(run.status, run.stderr).to.equal(0);
    expect(run.error).to.equal('matmul(f32[9, 16], f32[300, 16]): LLAMA_ADAPTER_CPU_GEMM must be "own" or "openblas" (or unset), not "mkl"');
  });
});
