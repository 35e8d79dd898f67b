// The CUDA runtime's fallbacks, on the CUDA emulator (native/cuda/emu), each in a child process
// because the choices are made once per process from the environment:
//   - device memory without memory pools (allocator.h): the emulator told to report
//     cudaDevAttrMemoryPoolsSupported = 0 must allocate with cudaMalloc and give the same results
//     as the stream-ordered pool; an allocation past the device's memory fails naming the
//     allocator and CUDA's error text;
//   - the GEMM engine (native/cuda/matmul.cu): a cuBLASLt that fails (test/native/failing_cublaslt.c,
//     loaded through LLAMA_ADAPTER_CUBLASLT) switches the process to our kernel, with the reason in
//     capabilities().cuda.gemm; forced with LLAMA_ADAPTER_GEMM=cublaslt it is an error that names
//     the cause, at every matmul; and the plan is made for the bf16 copy's real alignment.
// Needs `npm run build:emu` (skipped without it, saying so) and a C compiler for the failing library.
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { EMULATOR_ADDON } from '../lib/emulator';
import { repoRoot } from './util/paths';

const built = fs.existsSync(EMULATOR_ADDON);
const skipNote = built ? '' : ' (skipped: emulator not built: npm run build:emu)';

/** The environment without the variables the children are given. */
function env(extra: Record<string, string>): NodeJS.ProcessEnv {
  const e = { ...process.env };
  for (const k of Object.keys(e)) if (/^(LLAMA_ADAPTER_(EMU_|GEMM$|CUBLASLT$)|FAILING_CUBLASLT_)/.test(k)) delete e[k];
  return { ...e, ...extra };
}

interface ChildResult {
  cpu: number[][];
  cuda: number[][];
  memory: { inUse: number; peak: number; reserved: number; allocator: string };
  freed: { inUse: number };
  deviceList: { name: string; memoryPools: boolean; memoryBytes: number }[];
  engineBefore: string;
  engineAfter: string;
  errors: string[];
}

// In the child: matmul forward and backward on bf16 and f32 weights, on the CPU and on the
// emulated GPU, with tensors made and dropped in between (allocations and frees under load); then
// `tail` (more JavaScript, e.g. a failing allocation). Prints one JSON line.
const child = (tail = '') => `
const n = require(${JSON.stringify(EMULATOR_ADDON)});
(async () => {
  const r = { cpu: [], cuda: [], errors: [] };
  const engineBefore = n.capabilities().cuda.gemm;
  for (const dev of ['cpu', 'cuda']) {
    for (const wd of ['bf16', 'f32']) {
      const x = n.randomUniform([20, 48], 'f32', dev, 3, 1);
      const w = n.randomUniform([40, 48], wd, dev, 4, 0.5);
      const dy = n.randomUniform([20, 40], 'f32', dev, 5, 1);
      for (let i = 0; i < 3; i++) n.randomUniform([100 + i * 999], 'f32', dev, 9, 1).dispose();
      try {
        const y = n.matmul(x, w);
        const dx = n.matmulBackward(dy, w);
        r[dev].push(Array.from(await y.read()), Array.from(await dx.read()));
        y.dispose(); dx.dispose();
      } catch (e) { r.errors.push(e.message); }
      x.dispose(); w.dispose(); dy.dispose();
    }
  }
  r.memory = n.cudaMemory();
  r.engineBefore = engineBefore;
  r.engineAfter = n.capabilities().cuda.gemm;
  r.deviceList = n.capabilities().cuda.deviceList;
  ${tail}
  r.freed = n.cudaMemory();
  console.log(JSON.stringify(r));
})().catch((e) => { console.log(JSON.stringify({ fatal: e.message })); });
`;

function run(extraEnv: Record<string, string>, tail = ''): ChildResult {
  const p = spawnSync(process.execPath, ['-e', child(tail)], { env: env(extraEnv), encoding: 'utf8', timeout: 120_000 });
  const line = (p.stdout ?? '').trim().split('\n').pop() ?? '';
  let r: ChildResult & { fatal?: string };
  try {
    r = JSON.parse(line);
  } catch {
    throw new Error(`child failed (status ${p.status}): ${p.stdout}${p.stderr}`);
  }
  if (r.fatal) throw new Error(`child: ${r.fatal}`);
  return r;
}

/** max |a − b| / max |b| over every output */
function relDiff(a: number[][], b: number[][]): number {
  let num = 0;
  let den = 0;
  a.forEach((xs, i) => xs.forEach((x, j) => {
    num = Math.max(num, Math.abs(x - b[i][j]));
    den = Math.max(den, Math.abs(b[i][j]));
  }));
  return num / den;
}

describe(`CUDA runtime fallbacks on the emulator${skipNote}`, function () {
  this.timeout(120_000);
  before(function () {
    if (!built) this.skip();
  });

  describe('device memory without memory pools (allocator.h)', () => {
    let pooled: ChildResult;
    before(function () {
      if (!built) this.skip();
      pooled = run({});
    });

    it('with pools: the stream-ordered allocator, results as the CPU', () => {
      expect(pooled.errors).to.deep.equal([]);
      expect(pooled.memory.allocator).to.equal('stream-ordered pool (cudaMallocAsync)');
      expect(pooled.deviceList.map((d) => d.memoryPools)).to.deep.equal([true]);
      expect(pooled.cuda).to.have.length(4);
      // bf16 weights: the GPU rounds x to bf16 as well (the CPU keeps f32 x): within bf16's precision
      expect(relDiff(pooled.cuda, pooled.cpu)).to.be.lessThan(1e-2);
      expect(relDiff(pooled.cuda.slice(2), pooled.cpu.slice(2))).to.be.lessThan(1e-5);
    });

    it('LLAMA_ADAPTER_EMU_MEMORY_POOLS=0: cudaMalloc/cudaFree, the same results bit for bit, memory given back', () => {
      const plain = run({ LLAMA_ADAPTER_EMU_MEMORY_POOLS: '0' });
      expect(plain.errors).to.deep.equal([]);
      expect(plain.deviceList.map((d) => d.memoryPools)).to.deep.equal([false]);
      expect(plain.memory.allocator).to.equal('cudaMalloc/cudaFree, synchronised (the device reports no memory pools)');
      expect(plain.cuda).to.deep.equal(pooled.cuda);
      expect(plain.cpu).to.deep.equal(pooled.cpu);
      // every tensor was disposed: nothing held, and cudaMalloc reserves nothing beyond what is live
      expect(plain.memory.inUse).to.equal(0);
      expect(plain.memory.reserved).to.equal(plain.memory.inUse);
      expect(plain.memory.peak).to.be.greaterThan(20 * 48 * 4);
    });

    for (const [label, pools, how] of [['with pools', '1', 'cudaMallocAsync'], ['without pools', '0', 'cudaMalloc']] as const) {
      it(`${label}: an allocation past the device's memory fails with ${how}'s error text, and the next one works`, () => {
        const r = run(
          { LLAMA_ADAPTER_EMU_MEMORY_POOLS: pools, LLAMA_ADAPTER_EMU_MEMORY_BYTES: String(8 << 20) },
          `try { n.zeros([4 << 20], 'f32', 'cuda'); r.errors.push('no error'); } catch (e) { r.errors.push(e.message); }
           const t = n.zeros([1000], 'f32', 'cuda'); r.after = Array.from(await t.read()).every((v) => v === 0); t.dispose();`,
        );
        expect(r.deviceList[0].memoryBytes).to.equal(8 << 20);
        expect(r.errors).to.have.length(1);
        expect(r.errors[0]).to.match(
          new RegExp(`CUDA out of memory allocating 16777216 bytes with ${how} \\(8 MiB free of 8 MiB; 0 MiB held by live tensors\\): out of memory \\(cudaErrorMemoryAllocation\\)`),
        );
        expect((r as unknown as { after: boolean }).after).to.equal(true);
        expect(r.freed.inUse).to.equal(0);
      });
    }
  });

  describe('the GEMM engine: cuBLASLt that fails (native/cuda/matmul.cu)', () => {
    let dir: string;
    let lib: string;
    let own: ChildResult;
    before(function () {
      if (!built) this.skip();
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-cublaslt-'));
      lib = path.join(dir, 'libcublasLt-failing.so');
      const cc = spawnSync('cc', ['-shared', '-fPIC', '-o', lib, path.join(repoRoot, 'test', 'native', 'failing_cublaslt.c')], { encoding: 'utf8' });
      if (cc.error || cc.status !== 0) throw new Error(`cc could not build the failing cuBLASLt: ${cc.error ?? cc.stderr}`);
      own = run({});
    });
    after(() => dir && fs.rmSync(dir, { recursive: true, force: true }));

    it('without a library the emulator runs our kernel, and says why', () => {
      expect(own.engineBefore).to.equal(
        'own tensor-core kernel (the CUDA emulator build loads cuBLASLt only from the file LLAMA_ADAPTER_CUBLASLT names, and it is unset)',
      );
      expect(own.engineAfter).to.equal(own.engineBefore);
    });

    it('a failing cuBLASLt switches to our kernel (same results), and the engine read afterwards names the failure', () => {
      const log = path.join(dir, 'align.log');
      const r = run({ LLAMA_ADAPTER_CUBLASLT: lib, FAILING_CUBLASLT_LOG: log });
      expect(r.errors).to.deep.equal([]);
      expect(r.cuda).to.deep.equal(own.cuda);
      expect(r.engineBefore).to.equal(`cublasLt 13.0.2 (${lib})`);
      expect(r.engineAfter).to.equal(
        `own tensor-core kernel (cublasLt 13.0.2 (${lib}) failed: cublasLtMatmul returned status 13 (forward M=20 N=40 K=48 bf16))`,
      );
      // the plan of the first (bf16) matmul was made for the alignment the bf16 copy of x really
      // has (a fresh allocation: 256 bytes), as for w and y: A, B, C, D
      expect(fs.readFileSync(log, 'utf8').trim().split('\n')).to.deep.equal(['align 5 256', 'align 6 256', 'align 7 256', 'align 8 256']);
    });

    it('LLAMA_ADAPTER_GEMM=cublaslt with a failing cuBLASLt: every matmul is an error naming the cause', () => {
      const r = run({ LLAMA_ADAPTER_CUBLASLT: lib, LLAMA_ADAPTER_GEMM: 'cublaslt' });
      const cause = `LLAMA_ADAPTER_GEMM=cublaslt, but cublasLt 13.0.2 (${lib}) failed: cublasLtMatmul returned status 13 (forward M=20 N=40 K=48 bf16)`;
      // bf16 and f32 weights both fail (the second as the first: no quiet switch to our kernel)
      expect(r.errors).to.deep.equal([`matmul(f32[20, 48], bf16[40, 48]): ${cause}`, `matmul(f32[20, 48], f32[40, 48]): ${cause}`]);
      expect(r.cuda).to.deep.equal([]);
      expect(r.engineAfter).to.equal(`error: ${cause}`);
      const c = run({ LLAMA_ADAPTER_CUBLASLT: lib, LLAMA_ADAPTER_GEMM: 'cublaslt', FAILING_CUBLASLT_AT: 'create' });
      expect(c.errors[0]).to.equal(`matmul(f32[20, 48], bf16[40, 48]): LLAMA_ADAPTER_GEMM=cublaslt, but cublasLt 13.0.2 (${lib}) failed: cublasLtCreate returned status 1`);
    });

    it('LLAMA_ADAPTER_GEMM=cublaslt without the library: capabilities and every matmul name the missing file', () => {
      const missing = path.join(dir, 'absent', 'libcublasLt.so.13');
      const r = run({ LLAMA_ADAPTER_CUBLASLT: missing, LLAMA_ADAPTER_GEMM: 'cublaslt' });
      const cause = `LLAMA_ADAPTER_GEMM=cublaslt, but libcublasLt not found: ${missing}: cannot open shared object file: No such file or directory`;
      expect(r.engineBefore.startsWith(`error: ${cause}`), r.engineBefore).to.equal(true);
      expect(r.errors).to.have.length(2);
      for (const e of r.errors) expect(e).to.contain(cause);
    });
  });
});
