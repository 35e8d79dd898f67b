// CPU GEMM throughput of native.matmul (y = x · wᵀ, w frozen) at LLaMA shapes, f32 and bf16
// weights, against the machine's BLAS peak: the best sgemm rate at a large square shape (for
// M > 8 an f32 native.matmul is one sgemm call: OpenBLAS, or the own kernel without it).
//
// Each timed call reads a different copy of w, cycling through enough copies to overflow the
// last-level cache, so that M = 1 (decode) measures weights streamed from DRAM, as in a real
// forward pass, rather than re-reading a cache-resident matrix.
import './blas-choice'; // first: before the addon loads
import * as fs from 'fs';
import * as os from 'os';
import { native, Tensor } from '../lib/native';
import { BenchTable } from './table';


export interface GemmOptions {
  threads: number;
  /** row counts of x */
  ms?: number[];
  /** (N, K) weight shapes */
  shapes?: [number, number][];
  /** w's storage; bf16-medium: bf16 weights under matmul precision "medium" (x rounded to bf16 too) */
  dtypes?: GemmDType[];
  /** side of the square f32 GEMM whose best rate is the peak */
  peakSize?: number;
  /** seconds of timed calls per configuration (at least 3 batches run regardless) */
  seconds?: number;
  /** before each configuration, wait up to this many seconds for an idle machine (0: never) */
  waitIdle?: number;
  log?: (line: string) => void;
}

export type GemmDType = 'f32' | 'bf16' | 'bf16-medium';

export const LLAMA_SHAPES: [number, number][] = [
  [4096, 4096], // LLaMA-7B wq/wk/wv/wo
  [11008, 4096], // 7B w1/w3
  [4096, 11008], // 7B w2
  [768, 768], // stories110M attention
  [2048, 768], // stories110M w1/w3
];

/** Deterministic uniform(-1, 1) fill: xorshift32, fast enough for 45M values. */
export function fillUniform(a: Float32Array, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  for (let i = 0; i < a.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    a[i] = (s >>> 0) / 2147483648 - 1;
  }
  return a;
}

/** The last-level cache size in bytes (Linux sysfs), or 32 MiB when unknown. */
export function lastLevelCacheBytes(): number {
  let best = 0;
  try {
    const dir = '/sys/devices/system/cpu/cpu0/cache';
    for (const e of fs.readdirSync(dir)) {
      if (!e.startsWith('index')) continue;
      const size = fs.readFileSync(`${dir}/${e}/size`, 'utf8').trim();
      const m = size.match(/^(\d+)([KMG]?)/);
      if (!m) continue;
      const mult = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[m[2] as '' | 'K' | 'M' | 'G'];
      best = Math.max(best, Number(m[1]) * mult);
    }
  } catch {
    /* not Linux */
  }
  return best || 32 * 1024 * 1024;
}

const now = () => Number(process.hrtime.bigint()) / 1e9;

function cpuTimes(): { idle: number; total: number } | undefined {
  try {
    const line = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]; // "cpu  user nice system idle iowait ..."
    const v = line.trim().split(/\s+/).slice(1).map(Number);
    return { idle: v[3] + (v[4] ?? 0), total: v.reduce((a, b) => a + b, 0) };
  } catch {
    return undefined;
  }
}

/**
 * On a shared machine, waits (at most `maxSeconds`) until the CPUs were at least `minIdle` idle
 * over a 0.5 s window, so that a timed run does not start while another process holds a core.
 * Returns false when it gave up (the run then starts anyway) or true; always true off Linux or
 * when maxSeconds is 0.
 */
export async function waitForIdle(maxSeconds: number, minIdle = 0.9): Promise<boolean> {
  if (maxSeconds <= 0 || !cpuTimes()) return true;
  const deadline = now() + maxSeconds;
  for (;;) {
    const a = cpuTimes()!;
    await new Promise((r) => setTimeout(r, 500));
    const b = cpuTimes()!;
    const idle = b.total > a.total ? (b.idle - a.idle) / (b.total - a.total) : 1;
    if (idle >= minIdle) return true;
    if (now() > deadline) return false;
  }
}

/** Counts the timed runs that started on a busy machine. */
export class IdleGate {
  busyStarts = 0;
  starts = 0;
  constructor(readonly maxSeconds: number) {}
  async wait(): Promise<void> {
    this.starts++;
    if (!(await waitForIdle(this.maxSeconds))) this.busyStarts++;
  }
  /** waits like wait() but does not count a start (for the batches of a long measurement) */
  async pause(): Promise<void> {
    await waitForIdle(this.maxSeconds);
  }
  note(): string {
    if (this.maxSeconds <= 0) return 'Runs did not wait for an idle machine (--wait-idle 0).';
    return (
      `Each timed run waited (up to ${this.maxSeconds} s) for the CPUs to be >= 90% idle; ` +
      (this.busyStarts ? `${this.busyStarts} of ${this.starts} started on a busy machine anyway.` : `all ${this.starts} started idle.`)
    );
  }
}

interface Timing {
  /** best seconds per call */
  best: number;
  /** median seconds per call over the batches */
  median: number;
}

/**
 * Times `call(i)` (which queues one op and returns its output), in batches queued back to back
 * and awaited once, so that the executor's round trip is amortised as in a forward pass.
 */
async function timeCalls(
  call: (i: number) => Tensor,
  seconds: number,
  beforeLongBatch?: () => Promise<void>,
): Promise<Timing> {
  // warm-up (page faults, BLAS buffers, thread wake-up) and a first estimate
  let t0 = now();
  call(0).dispose();
  await native.synchronize();
  let est = now() - t0;
  t0 = now();
  call(1).dispose();
  await native.synchronize();
  est = Math.min(est, now() - t0);
  const batch = Math.max(1, Math.min(1000, Math.round(0.03 / Math.max(est, 1e-7))));
  const perCall: number[] = [];
  let spent = 0;
  let i = 2;
  while (perCall.length < 3 || (spent < seconds && perCall.length < 50)) {
    // a batch of a tenth of a second or more is worth waiting for an idle machine
    if (beforeLongBatch && est * batch > 0.1) await beforeLongBatch();
    const t = now();
    for (let b = 0; b < batch; b++) call(i++).dispose();
    await native.synchronize();
    const dt = now() - t;
    spent += dt;
    perCall.push(dt / batch);
  }
  perCall.sort((a, b) => a - b);
  return { best: perCall[0], median: perCall[perCall.length >> 1] };
}

/** The best f32 GEMM rate (GFLOP/s) at (n, n) · (n, n)ᵀ: the BLAS peak of this machine. */
export async function measurePeak(
  n: number,
  seconds: number,
  beforeLongBatch?: () => Promise<void>,
): Promise<{ gflops: number; seconds: number }> {
  const x = native.fromArray(fillUniform(new Float32Array(n * n), 1), [n, n]);
  const w = native.fromArray(fillUniform(new Float32Array(n * n), 2), [n, n]);
  const t = await timeCalls(() => native.matmul(x, w), seconds, beforeLongBatch);
  x.dispose();
  w.dispose();
  return { gflops: (2 * n * n * n) / t.best / 1e9, seconds: t.best };
}

const fmt = (v: number, digits: number) => v.toFixed(digits);

export async function runGemm(opts: GemmOptions): Promise<BenchTable> {
  const loadAtStart = os.loadavg()[0];
  const log = opts.log ?? (() => {});
  const ms = opts.ms ?? [1, 16, 128, 512];
  const shapes = opts.shapes ?? LLAMA_SHAPES;
  const dtypes = opts.dtypes ?? ['f32', 'bf16', 'bf16-medium'];
  const peakSize = opts.peakSize ?? 2048;
  const seconds = opts.seconds ?? 0.5;
  native.setThreads(opts.threads);
  const caps = native.capabilities();

  const gate = new IdleGate(opts.waitIdle ?? 30);
  await gate.wait();
  log(`gemm: measuring the BLAS peak (f32 ${peakSize}^3, ${opts.threads} threads) ...`);
  const peak = await measurePeak(peakSize, Math.max(seconds, 1), () => gate.pause());
  log(`gemm: peak ${peak.gflops.toFixed(1)} GFLOP/s`);

  const llc = lastLevelCacheBytes();
  const workingSet = Math.max(4 * llc, 128 * 1024 * 1024);
  const rows: string[][] = [];
  for (const [N, K] of shapes) {
    const master = native.fromArray(fillUniform(new Float32Array(N * K), 7 + N + K), [N, K]);
    for (const dtype of dtypes) {
      const bytes = N * K * (dtype === 'f32' ? 4 : 2);
      const copies = Math.max(2, Math.min(128, Math.ceil(workingSet / bytes)));
      const ws: Tensor[] = [];
      for (let c = 0; c < copies; c++) ws.push(native.convert(master, dtype === 'f32' ? 'f32' : 'bf16'));
      native.setMatmulPrecision(dtype === 'bf16-medium' ? 'medium' : 'highest');
      await native.synchronize();
      for (const M of ms) {
        const x = native.fromArray(fillUniform(new Float32Array(M * K), M), [M, K]);
        await gate.wait();
        const t = await timeCalls((i) => native.matmul(x, ws[i % copies]), seconds, () => gate.pause());
        x.dispose();
        const flops = 2 * M * N * K;
        const gflops = flops / t.best / 1e9;
        rows.push([
          String(M),
          String(N),
          String(K),
          dtype,
          fmt(t.best * 1e3, t.best < 1e-3 ? 3 : 2),
          fmt(gflops, 1),
          fmt((100 * gflops) / peak.gflops, 0) + '%',
          fmt(bytes / t.best / 1e9, 1),
        ]);
        log(`gemm: ${rows[rows.length - 1].join(' ')}`);
      }
      for (const w of ws) w.dispose();
      native.setMatmulPrecision('highest');
    }
    master.dispose();
  }
  return {
    title: `GEMM: native.matmul y = x·wᵀ, x (M,K) f32, w (N,K) — ${opts.threads} threads, ${caps.blas}`,
    columns: ['M', 'N', 'K', 'w dtype', 'ms/call', 'GFLOP/s', '% of peak', 'w GB/s'],
    align: ['r', 'r', 'r', 'l', 'r', 'r', 'r', 'r'],
    rows,
    notes: [
      `BLAS peak = ${peak.gflops.toFixed(1)} GFLOP/s: best f32 sgemm at ${peakSize}x${peakSize}x${peakSize} ` +
        `through native.matmul (${(peak.seconds * 1e3).toFixed(1)} ms); other shapes can beat it by a few %.`,
      `M <= 8 runs the native SIMD dot-product kernel (memory-bound: compare "w GB/s" with the read ` +
        `bandwidth in the decode table); M > 8 runs the CPU GEMM of the title, OpenBLAS sgemm or the own kernel (bf16 widened to f32 block by block); ` +
        `bf16-medium: bf16 weights with matmul precision "medium" (x rounded to bf16, ${caps.bf16Gemm}; M <= 8 as bf16).`,
      `Best of >= 3 batches (batches of 0.1 s or more each wait for an idle machine); each call reads another copy of w (working set >= ` +
        `${Math.round(workingSet / 2 ** 20)} MiB > LLC ${Math.round(llc / 2 ** 20)} MiB), so weights come from DRAM.`,
      `Load average at the start: ${loadAtStart.toFixed(2)} on ${os.cpus().length} CPUs. ${gate.note()}`,
    ],
  };
}
