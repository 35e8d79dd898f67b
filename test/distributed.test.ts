// Data parallelism (lib/train/distributed.ts, native/comm): 2 processes under mpirun train the same
// adapter as one process with the same global batch, resume needs the same world size, a rank
// that dies or hangs stops the others with a clear error in bounded time, and the NCCL engine's
// plumbing (dlopen, host staging, the unique id by value) works against stand-in libraries.
// The multi-process tests need Open MPI (`apt-get install openmpi-bin libopenmpi-dev`, then a
// rebuild); without it they are skipped, saying why.
import { expect } from 'chai';
import { ChildProcess, execFileSync, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { makeDemoDataset } from '../lib/data/demo';
import { packBatch } from '../lib/data/alpaca';
import { Adapter } from '../lib/model/adapter';
import { readLlama2cHeader } from '../lib/model/llama2c';
import { native } from '../lib/native';
import { detectLaunch, mpirunArgs, shardRange, which, World } from '../lib/train/distributed';
import { repoRoot } from './util/paths';
import { stories } from './util/stories';

const cli = path.join(repoRoot, 'dist', 'lib', 'cli', 'main.js');
const model = ['--model', stories.v0, '--tokenizer', stories.tokenizer];

function runCli(args: string[], env: NodeJS.ProcessEnv = {}) {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
  return { ...r, seconds: (Date.now() - t0) / 1000 };
}

async function adapterValues(file: string): Promise<Float32Array> {
  const a = Adapter.load(file, readLlama2cHeader(stories.v0).config);
  try {
    const v = await a.values();
    return Float32Array.from([...v.prompts, ...v.gates]);
  } finally {
    a.dispose();
  }
}

function metrics(out: string): Record<string, number>[] {
  return fs
    .readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
}

/** Pids of this machine's processes whose environment has all of `vars`. */
function pidsWithEnv(vars: Record<string, string>): number[] {
  const found: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const env = fs.readFileSync(`/proc/${d}/environ`, 'utf8').split('\0');
      if (Object.entries(vars).every(([k, v]) => env.includes(`${k}=${v}`))) found.push(Number(d));
    } catch {
      /* gone, or not ours */
    }
  }
  return found;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('data parallelism', function () {
  this.timeout(120_000);

  describe('without mpirun', () => {
    it('shards are disjoint, contiguous, cover the batch and differ in size by at most 1', () => {
      for (const S of [0, 1, 2, 3, 4, 7, 16])
        for (const W of [1, 2, 3, 4]) {
          const parts = Array.from({ length: W }, (_, r) => shardRange(S, r, W));
          expect(parts[0][0]).to.equal(0);
          expect(parts[W - 1][1]).to.equal(S);
          for (let r = 1; r < W; r++) expect(parts[r][0]).to.equal(parts[r - 1][1]);
          const sizes = parts.map(([lo, hi]) => hi - lo);
          expect(Math.max(...sizes) - Math.min(...sizes)).to.be.at.most(1);
        }
    });

    it("a rank's share of a micro-batch packs its examples; a world of one keeps the batch", () => {
      const ex = [3, 5, 2].map((n, i) => {
        const ids = Int32Array.from({ length: n }, (_, t) => 10 * i + t);
        const labels = Int32Array.from({ length: n }, (_, t) => (t + 1 < n ? ids[t + 1] : -1));
        return { ids, inputs: ids, labels, promptLen: 1, targets: n - 1, fullLength: n, truncated: false };
      });
      const batch = packBatch(ex, [2, 0, 1]);
      expect(World.single().shard(batch, ex)).to.equal(batch);
      const a = new World('mpi', 0, 2).shard(batch, ex);
      const b = new World('mpi', 1, 2).shard(batch, ex);
      expect(a.exampleIndices).to.deep.equal([2]);
      expect(b.exampleIndices).to.deep.equal([0, 1]);
      expect(a.targetCount + b.targetCount).to.equal(batch.targetCount);
      expect(Array.from(b.tokens)).to.deep.equal([0, 1, 2, 10, 11, 12, 13, 14]);
      expect(Array.from(b.positions)).to.deep.equal([0, 1, 2, 0, 1, 2, 3, 4]);
    });

    it("reads mpirun's environment, and builds mpirun's command line", () => {
      expect(detectLaunch({})).to.equal(undefined);
      expect(
        detectLaunch({ OMPI_COMM_WORLD_SIZE: '4', OMPI_COMM_WORLD_RANK: '3', OMPI_COMM_WORLD_LOCAL_RANK: '1', OMPI_COMM_WORLD_LOCAL_SIZE: '2' }),
      ).to.deep.equal({ rank: 3, size: 4, localRank: 1, localSize: 2 });
      expect(mpirunArgs(2, ['node', 'x.js'], true)).to.deep.equal(['-np', '2', '--oversubscribe', '--bind-to', 'none', '--allow-run-as-root', 'node', 'x.js']);
      expect(mpirunArgs(3, ['node'], false)).to.not.include('--allow-run-as-root');
    });

    it('a world of one: the collectives are the identity', async () => {
      const info = native.commInfo();
      expect(info.size).to.equal(1);
      const t = native.fromArray(new Float32Array([1, -2, 3]), [3]);
      await native.allreduceSum([t]);
      expect(Array.from(await t.read())).to.deep.equal([1, -2, 3]);
      t.dispose();
      expect(Array.from(await native.allreduceScalars(Float64Array.of(0.25, 7)))).to.deep.equal([0.25, 7]);
      expect(Array.from(await native.broadcast(Uint8Array.of(1, 2), 0))).to.deep.equal([1, 2]);
    });

    it('--comm mpi without mpirun, and --devices against the world mpirun made, are clear errors', () => {
      const base = ['train', ...model, '--data', '/nonexistent.jsonl', '--out', path.join(os.tmpdir(), 'la-never')];
      let r = runCli([...base, '--comm', 'mpi']);
      expect(r.status).to.not.equal(0);
      expect(r.stderr).to.match(/--comm mpi needs the process to be started by mpirun/);
      r = runCli([...base, '--devices', '3'], { OMPI_COMM_WORLD_SIZE: '2', OMPI_COMM_WORLD_RANK: '0' });
      expect(r.status).to.equal(2);
      expect(r.stderr).to.match(/--devices 3, but mpirun started 2 processes/);
    });
  });

  describe('2 processes under mpirun (stories260K)', () => {
    let dir: string;
    let data: string;
    // 16 records in micro-batches of 3: 5 full batches and a last one of 1 example (rank 1's share
    // of it is empty), 2 micro-batches per step
    const flags = ['--batch-size', '3', '--grad-accum', '2', '--lr', '1e-2', '--warmup-steps', '1', '--seed', '5', '--adapter-layers', '3', '--adapter-len', '4'];

    before(function () {
      if (!which('mpirun')) {
        console.log('      (skipped: mpirun is not on PATH; apt-get install openmpi-bin libopenmpi-dev, then npm run build:native)');
        this.skip();
      }
      if (!native.commInfo().mpi.compiled) {
        console.log(`      (skipped: ${native.commInfo().mpi.library})`);
        this.skip();
      }
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-dist-'));
      data = path.join(dir, 'train.jsonl');
      fs.writeFileSync(data, makeDemoDataset({ count: 16, seed: 2 }).map((r) => JSON.stringify(r)).join('\n') + '\n');
    });
    after(() => dir && fs.rmSync(dir, { recursive: true, force: true }));

    it('train the same adapter as one process with the same global batch (up to summation order)', async () => {
      const one = path.join(dir, 'one');
      const two = path.join(dir, 'two');
      const r1 = runCli(['train', ...model, '--data', data, '--out', one, ...flags, '--max-steps', '4']);
      expect(r1.status, r1.stderr).to.equal(0);
      const r2 = runCli(['train', ...model, '--data', data, '--out', two, ...flags, '--max-steps', '4', '--devices', '2', '--save-every', '2']);
      expect(r2.status, r2.stderr).to.equal(0);
      console.log(`      (1 process: ${r1.seconds.toFixed(1)} s, 2 processes: ${r2.seconds.toFixed(1)} s)`);
      // rank 0 alone prints: one path on stdout, one line per step
      expect(r2.stdout.trim()).to.equal(path.join(two, 'adapter.safetensors'));
      expect(r2.stderr.match(/^step 4\/4 /gm)).to.have.length(1);
      // the losses of every step: the same tokens and targets, the same mean up to float rounding
      const m1 = metrics(one);
      const m2 = metrics(two).filter((m) => 'loss' in m);
      expect(m2.map((m) => m.step)).to.deep.equal([1, 2, 3, 4]);
      m1.forEach((m, i) => {
        expect(m2[i].tokens).to.equal(m.tokens);
        expect(m2[i].targets).to.equal(m.targets);
        expect(m2[i].loss).to.be.closeTo(m.loss, 1e-6 * m.loss);
        expect(m2[i].grad_norm).to.be.closeTo(m.grad_norm, 1e-5 * m.grad_norm);
      });
      // the final adapters: |a - b| <= 1e-5 max(1, |a|) for every value (the prompts are O(1): ~80
      // float32 ulps at 1.0). The summation order changes the gradients by an ulp or so, and AdamW's
      // per-element normalisation turns that into a few ulps of the values after 4 steps.
      const a = await adapterValues(path.join(one, 'adapter.safetensors'));
      const b = await adapterValues(path.join(two, 'adapter.safetensors'));
      expect(b.length).to.equal(a.length);
      let worst = 0;
      let maxAbs = 0;
      for (let i = 0; i < a.length; i++) {
        worst = Math.max(worst, Math.abs(a[i] - b[i]) / (1e-5 * Math.max(1, Math.abs(a[i]))));
        maxAbs = Math.max(maxAbs, Math.abs(a[i] - b[i]));
      }
      console.log(`      (largest difference ${maxAbs.toExponential(2)}, ${(100 * worst).toFixed(1)}% of the tolerance)`);
      expect(worst, 'largest difference in units of the tolerance').to.be.at.most(1);
    });

    it('resume: bit-identical with the same world size, a clear error with another', async () => {
      const two = path.join(dir, 'two'); // written by the previous test, checkpoints at steps 2 and 4
      const ckpt = path.join(two, 'step-000002');
      expect(fs.existsSync(ckpt)).to.equal(true);
      const state = JSON.parse(fs.readFileSync(path.join(ckpt, 'state.json'), 'utf8'));
      expect(state.world).to.equal(2);
      const again = path.join(dir, 'again');
      const r = runCli(['train', ...model, '--data', data, '--out', again, ...flags, '--max-steps', '4', '--devices', '2', '--resume', ckpt]);
      expect(r.status, r.stderr).to.equal(0);
      expect(r.stderr).to.match(/resuming from .*step-000002 at step 2\/4/);
      const a = await adapterValues(path.join(two, 'adapter.safetensors'));
      const b = await adapterValues(path.join(again, 'adapter.safetensors'));
      expect(Array.from(b)).to.deep.equal(Array.from(a));
      const other = runCli(['train', ...model, '--data', data, '--out', path.join(dir, 'other'), ...flags, '--max-steps', '4', '--resume', ckpt]);
      expect(other.status).to.equal(1);
      expect(other.stderr).to.match(/cannot resume from .*step-000002: it was written by a run of 2 processes, this run has 1\. Resume with the same world size: 2 processes \(--devices 2/);
    });

    // Starts a long 2-process run, waits for 2 steps, does `act` to rank 1's process, and returns
    // how the whole run ended.
    async function disturbRank1(act: (pid: number) => void, extra: string[]) {
      const out = path.join(dir, `disturbed-${Date.now()}`);
      const marker = `${process.pid}-${Date.now()}`;
      const t0 = Date.now();
      const child: ChildProcess = spawn(
        process.execPath,
        [cli, 'train', ...model, '--data', data, '--out', out, ...flags, '--max-steps', '100000', '--devices', '2', ...extra],
        { env: { ...process.env, LLAMA_ADAPTER_TEST_MARKER: marker }, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let stderr = '';
      child.stderr!.on('data', (d) => (stderr += d));
      child.stdout!.on('data', (d) => (stderr += d));
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      let victim: number | undefined;
      try {
        for (let i = 0; i < 600 && !victim; i++) {
          await sleep(100);
          const steps = fs.existsSync(path.join(out, 'metrics.jsonl')) ? metrics(out).length : 0;
          if (steps >= 2) victim = pidsWithEnv({ LLAMA_ADAPTER_TEST_MARKER: marker, OMPI_COMM_WORLD_RANK: '1' })[0];
        }
        expect(victim, `rank 1 was not found running:\n${stderr}`).to.be.a('number');
        const tAct = Date.now();
        act(victim!);
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), 60_000)));
        const code = await Promise.race([exited, timeout]);
        clearTimeout(timer);
        expect(code, `the run did not end within 60 s:\n${stderr}`).to.not.equal('timeout');
        return { code: code as number | null, stderr, seconds: (Date.now() - tAct) / 1000, total: (Date.now() - t0) / 1000 };
      } finally {
        child.kill('SIGKILL');
        for (const pid of pidsWithEnv({ LLAMA_ADAPTER_TEST_MARKER: marker })) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            /* already gone */
          }
        }
      }
    }

    it('a rank killed mid-training stops the run with a clear error in bounded time', async () => {
      const r = await disturbRank1((pid) => process.kill(pid, 'SIGKILL'), []);
      console.log(`      (the run ended ${r.seconds.toFixed(1)} s after rank 1 was killed)`);
      expect(r.code).to.not.equal(0);
      expect(r.stderr).to.match(/rank 1 .*exited on signal 9 \(Killed\)/);
      expect(r.stderr).to.match(/llama-adapter train: error: the 2 training processes failed \(mpirun exit status \d+/);
      expect(r.seconds).to.be.below(60);
    });

    it('a rank that hangs makes the others fail after --comm-timeout, naming the cause', async () => {
      const r = await disturbRank1((pid) => process.kill(pid, 'SIGSTOP'), ['--comm-timeout', '3']);
      console.log(`      (the run ended ${r.seconds.toFixed(1)} s after rank 1 was stopped)`);
      expect(r.code).to.not.equal(0);
      expect(r.stderr).to.match(/error on rank 0 of 2: .*no answer from the other ranks within 3 s: a rank died, hangs or is far behind/);
      expect(r.seconds).to.be.below(60);
    });

    it('a rank that hangs before joining makes the others fail after --comm-timeout, not wait forever', () => {
      const wrap = path.join(dir, 'stop-rank-1.sh');
      fs.writeFileSync(wrap, '#!/bin/bash\n# rank 1 stops itself before its program starts\nif [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then kill -STOP $$; fi\nexec "$@"\n');
      const marker = `${process.pid}-init-${Date.now()}`;
      const t0 = Date.now();
      const args = [cli, 'train', ...model, '--data', data, '--out', path.join(dir, 'never'), ...flags, '--max-steps', '4', '--comm-timeout', '3'];
      const r = spawnSync(which('mpirun')!, mpirunArgs(2, ['bash', wrap, process.execPath, ...args]), {
        encoding: 'utf8',
        timeout: 60_000,
        env: { ...process.env, LLAMA_ADAPTER_TEST_MARKER: marker },
      });
      for (const pid of pidsWithEnv({ LLAMA_ADAPTER_TEST_MARKER: marker })) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
      const seconds = (Date.now() - t0) / 1000;
      console.log(`      (the run ended after ${seconds.toFixed(1)} s)`);
      expect(r.error, 'mpirun did not end within 60 s').to.equal(undefined);
      expect(r.status).to.not.equal(0);
      expect(r.stdout + r.stderr).to.match(/error on rank 0 of 2: commInit\(mpi\): joining the world took longer than 3 s/);
    });
  });

  describe('the NCCL engine', () => {
    it('without NCCL or a GPU, says what is missing', () => {
      const script = `const { native } = require(${JSON.stringify(path.join(repoRoot, 'dist', 'lib', 'native.js'))});
        try { native.commInit('nccl', { ncclLibrary: '/nonexistent/libnccl.so.2' }); console.log('joined'); }
        catch (e) { console.log(e.message); }`;
      const out = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, LD_LIBRARY_PATH: '' } });
      if (out.trim() === 'joined') return; // a machine with a GPU and NCCL
      expect(out).to.match(/CUDA driver library could not be loaded|needs an NVIDIA GPU|NCCL could not be loaded/);
    });

    it('through stand-in libcuda.so.1 and libnccl.so.2: staging, the unique id and the all-reduce', function () {
      const cc = which('cc') ?? which('gcc');
      if (!cc) {
        console.log('      (skipped: no C compiler to build the stand-in libraries)');
        return this.skip();
      }
      const mock = fs.mkdtempSync(path.join(os.tmpdir(), 'la-nccl-mock-'));
      try {
        fs.writeFileSync(path.join(mock, 'cuda.c'), MOCK_CUDA);
        fs.writeFileSync(path.join(mock, 'nccl.c'), MOCK_NCCL);
        execFileSync(cc, ['-shared', '-fPIC', '-o', path.join(mock, 'libcuda.so.1'), path.join(mock, 'cuda.c')]);
        execFileSync(cc, ['-shared', '-fPIC', '-o', path.join(mock, 'libnccl.so.2'), path.join(mock, 'nccl.c')]);
        const script = `const { native } = require(${JSON.stringify(path.join(repoRoot, 'dist', 'lib', 'native.js'))});
          (async () => {
            const w = native.commInit('nccl', { timeoutS: 5 });
            const a = native.fromArray(new Float32Array([1, 2, 3]), [3]);
            const b = native.fromArray(new Float32Array([-0.5]), [1]);
            await native.allreduceSum([a, b]);
            const s = await native.allreduceScalars(Float64Array.of(1.5));
            const i = native.commInfo();
            console.log(JSON.stringify({ w, a: Array.from(await a.read()), b: Array.from(await b.read()), s: Array.from(s), n: i.stats.allreduces }));
            await native.commFinalize();
          })().catch((e) => { console.log('ERR ' + e.message); process.exit(1); });`;
        const out = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, LD_LIBRARY_PATH: mock } });
        const r = JSON.parse(out.trim());
        expect(r.w).to.include({ kind: 'nccl', rank: 0, size: 1 });
        expect(r.w.library).to.match(/^NCCL 2\.99\.1 \(libnccl\.so\.2, device 0\)$/);
        expect(r.a).to.deep.equal([3, 6, 9]); // the stand-in sums over 3 pretend ranks
        expect(r.b).to.deep.equal([-1.5]);
        expect(r.s).to.deep.equal([1.5]); // host scalars of a world of one
        expect(r.n).to.equal(1);
      } finally {
        fs.rmSync(mock, { recursive: true, force: true });
      }
    });
  });
});

// Stand-ins with the ABI of the CUDA driver and NCCL functions the engine uses: "device" memory is
// host memory, the stream is always done, and the all-reduce sums over 3 pretend ranks (x3).
const MOCK_CUDA = `#include <stdlib.h>
#include <string.h>
typedef unsigned long long CUdeviceptr;
int cuInit(unsigned f) { return 0; }
int cuDeviceGetCount(int* c) { *c = 1; return 0; }
int cuDeviceGet(int* d, int o) { *d = o; return 0; }
int cuDevicePrimaryCtxRetain(void** c, int d) { *c = (void*)0x10; return 0; }
int cuCtxSetCurrent(void* c) { return c == (void*)0x10 ? 0 : 201; }
int cuCtxSynchronize(void) { return 0; }
int cuMemAlloc_v2(CUdeviceptr* p, size_t n) { *p = (CUdeviceptr)malloc(n); return *p ? 0 : 2; }
int cuMemFree_v2(CUdeviceptr p) { free((void*)p); return 0; }
int cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, void* st) { memcpy((void*)d, s, n); return 0; }
int cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, void* st) { memcpy(d, (void*)s, n); return 0; }
int cuStreamCreate(void** s, unsigned f) { *s = (void*)0x20; return 0; }
int cuStreamQuery(void* s) { return 0; }
int cuStreamDestroy_v2(void* s) { return 0; }
int cuGetErrorString(int e, const char** s) { *s = "stand-in CUDA error"; return 0; }
`;

const MOCK_NCCL = `#include <string.h>
typedef struct { char internal[128]; } ncclUniqueId;
int ncclGetVersion(int* v) { *v = 29901; return 0; }
int ncclGetUniqueId(ncclUniqueId* id) { memset(id->internal, 7, 128); return 0; }
int ncclCommInitRank(void** c, int n, ncclUniqueId id, int r) {
  if (n != 1 || r != 0 || id.internal[0] != 7 || id.internal[127] != 7) return 4;
  *c = (void*)0x30; return 0;
}
int ncclAllReduce(const void* s, void* r, size_t n, int dt, int op, void* c, void* st) {
  if (dt != 7 || op != 0 || c != (void*)0x30 || st != (void*)0x20) return 4;
  const float* i = s; float* o = r;
  for (size_t k = 0; k < n; k++) o[k] = 3 * i[k];
  return 0;
}
int ncclCommDestroy(void* c) { return 0; }
int ncclCommAbort(void* c) { return 0; }
int ncclCommGetAsyncError(void* c, int* e) { *e = 0; return 0; }
const char* ncclGetErrorString(int r) { return "stand-in NCCL error"; }
`;
