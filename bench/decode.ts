// Decode throughput (tokens/s after the prompt prefill) of Llama.forward + greedy generateTokens,
// for stories260K and a random-weight model shaped like stories110M, with f32 and bf16 weights,
// beside llama2.c's run.c on the same files and beside the memory-bandwidth bound
// (read bandwidth / bytes of weights read per token).
import './blas-choice'; // first: before the addon loads
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { native } from '../lib/native';
import { Llama } from '../lib/model/llama';
import { generateTokens } from '../lib/generate/generate';
import { IdleGate } from './gemm';
import { BenchTable } from './table';
import { decodeWeightBytes, ModelShape } from './flops';

// ---- paths ------------------------------------------------------------------------------------

/** The repository root: the nearest folder above this file holding package.json. */
export const repoRoot: string = (() => {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('repository root not found above ' + __dirname);
    dir = up;
  }
  return dir;
})();
/** The shared assets (../shared/data beside the checkout, or $LLAMA_ADAPTER_DATA). */
export const dataDir: string = process.env.LLAMA_ADAPTER_DATA ?? path.resolve(repoRoot, '..', 'shared', 'data');
/** Git-ignored scratch space of the benchmarks. */
export const outDir: string = path.join(repoRoot, 'bench', 'out');
/** Where bench/fetch-runc.sh puts the run.c binaries. */
export const llama2cDir: string = process.env.LLAMA2C_DIR ?? path.join(outDir, 'llama2c');

// ---- the random-weight stories110M-shaped checkpoint -----------------------------------------

/** A llama2.c v0 header: the model's shape and its context length. */
export interface Llama2cShape extends ModelShape {
  seqLen: number;
}

/** llama2.c's stories15M shape (the LLaMA tokenizer's vocabulary). */
export const STORIES15M: Llama2cShape = {
  dim: 288,
  hiddenDim: 768,
  nLayers: 6,
  nHeads: 6,
  nKvHeads: 6,
  vocabSize: 32000,
  seqLen: 256,
};

export const STORIES110M: Llama2cShape = {
  dim: 768,
  hiddenDim: 2048,
  nLayers: 12,
  nHeads: 12,
  nKvHeads: 12,
  vocabSize: 32000,
  seqLen: 1024,
};

/** Float count of each tensor of a v0 file in run.c's order (shared classifier). */
function v0Tensors(s: Llama2cShape): { name: string; count: number; kind: 'normal' | 'ones' | 'cos' | 'sin' }[] {
  const C = s.dim;
  const F = s.hiddenDim;
  const L = s.nLayers;
  const d = C / s.nHeads;
  const kv = s.nKvHeads * d;
  return [
    { name: 'token_embedding', count: s.vocabSize * C, kind: 'normal' },
    { name: 'rms_att', count: L * C, kind: 'ones' },
    { name: 'wq', count: L * C * C, kind: 'normal' },
    { name: 'wk', count: L * kv * C, kind: 'normal' },
    { name: 'wv', count: L * kv * C, kind: 'normal' },
    { name: 'wo', count: L * C * C, kind: 'normal' },
    { name: 'rms_ffn', count: L * C, kind: 'ones' },
    { name: 'w1', count: L * F * C, kind: 'normal' },
    { name: 'w2', count: L * C * F, kind: 'normal' },
    { name: 'w3', count: L * F * C, kind: 'normal' },
    { name: 'rms_final', count: C, kind: 'ones' },
    { name: 'freq_cis_real', count: (s.seqLen * d) / 2, kind: 'cos' },
    { name: 'freq_cis_imag', count: (s.seqLen * d) / 2, kind: 'sin' },
  ];
}

export function v0FileBytes(s: Llama2cShape): number {
  return 28 + 4 * v0Tensors(s).reduce((a, t) => a + t.count, 0);
}

/** Seeded N(0, std) stream: xorshift128+ uniforms through Box-Muller. */
class Gaussian {
  private s0: number;
  private s1: number;
  private spare: number | undefined;
  constructor(seed: number, private readonly std: number) {
    // splitmix-style scrambling of the seed into two non-zero 32-bit states
    let z = (seed ^ 0x9e3779b9) >>> 0;
    const next = () => {
      z = (z + 0x6d2b79f5) >>> 0;
      let t = Math.imul(z ^ (z >>> 15), 1 | z);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return (t ^ (t >>> 14)) >>> 0;
    };
    this.s0 = next() || 1;
    this.s1 = next() || 2;
  }
  /** uniform in (0, 1) */
  private uniform(): number {
    let s1 = this.s0;
    const s0 = this.s1;
    this.s0 = s0;
    s1 ^= s1 << 23;
    s1 ^= s1 >>> 17;
    s1 ^= s0 ^ (s0 >>> 26);
    this.s1 = s1;
    return (((this.s0 + this.s1) >>> 0) + 0.5) / 4294967296;
  }
  next(): number {
    if (this.spare !== undefined) {
      const v = this.spare;
      this.spare = undefined;
      return v;
    }
    const r = Math.sqrt(-2 * Math.log(this.uniform())) * this.std;
    const a = 2 * Math.PI * this.uniform();
    this.spare = r * Math.sin(a);
    return r * Math.cos(a);
  }
}

/**
 * Writes a llama2.c v0 checkpoint of shape `s` with N(0, 0.02) weights (seeded), unit norms and
 * run.c's RoPE tables, streaming 4 MiB at a time (never the whole file in memory). Reuses an
 * existing file of the right size and header unless `force`. Returns the path.
 */
export function writeRandomLlama2c(file: string, s: Llama2cShape, seed: number, force = false): string {
  const expected = v0FileBytes(s);
  const header = Buffer.alloc(28);
  [s.dim, s.hiddenDim, s.nLayers, s.nHeads, s.nKvHeads, s.vocabSize, s.seqLen].forEach((v, i) =>
    header.writeInt32LE(v, 4 * i),
  );
  if (!force && fs.existsSync(file) && fs.statSync(file).size === expected) {
    const fd = fs.openSync(file, 'r');
    const head = Buffer.alloc(28);
    fs.readSync(fd, head, 0, 28, 0);
    fs.closeSync(fd);
    if (head.equals(header)) return file;
  }
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, header);
    const rng = new Gaussian(seed, 0.02);
    const chunk = new Float32Array(1 << 20);
    const bytes = new Uint8Array(chunk.buffer);
    const d = s.dim / s.nHeads;
    for (const t of v0Tensors(s)) {
      for (let done = 0; done < t.count; ) {
        const n = Math.min(chunk.length, t.count - done);
        for (let i = 0; i < n; i++) {
          const j = done + i;
          if (t.kind === 'normal') chunk[i] = rng.next();
          else if (t.kind === 'ones') chunk[i] = 1;
          else {
            // freq_cis[pos][i] = cos/sin(pos * 10000^(-2i/d)), as llama2.c's export wrote them
            const pos = Math.floor(j / (d / 2));
            const k = j % (d / 2);
            const ang = pos * Math.pow(10000, (-2 * k) / d);
            chunk[i] = t.kind === 'cos' ? Math.cos(ang) : Math.sin(ang);
          }
        }
        let off = 0;
        while (off < 4 * n) off += fs.writeSync(fd, bytes, off, 4 * n - off);
        done += n;
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  return file;
}

// ---- memory bandwidth -------------------------------------------------------------------------

const BANDWIDTH_WORKER = `
const { parentPort, workerData } = require('worker_threads');
const a = Buffer.from(workerData.a, workerData.offset, workerData.length);
const b = Buffer.from(workerData.b, workerData.offset, workerData.length);
parentPort.on('message', (m) => {
  if (m === 'stop') return process.exit(0);
  const r = Buffer.compare(a, b); // equal contents: memcmp reads both slices to the end
  parentPort.postMessage(r);
});
`;

/**
 * Read bandwidth in bytes/s: `threads` workers memcmp their slices of two equal buffers of
 * `mib` MiB each at the same time; best of `reps` (the first pass touches the pages and is
 * not timed).
 */
export async function measureReadBandwidth(threads: number, mib = 512, reps = 10): Promise<number> {
  const size = mib * 1024 * 1024;
  const a = new SharedArrayBuffer(size);
  const b = new SharedArrayBuffer(size);
  Buffer.from(a).fill(0x5a);
  Buffer.from(b).fill(0x5a);
  const slice = Math.floor(size / threads / 4096) * 4096;
  const workers = Array.from(
    { length: threads },
    (_, i) =>
      new Worker(BANDWIDTH_WORKER, {
        eval: true,
        workerData: { a, b, offset: i * slice, length: i === threads - 1 ? size - i * slice : slice },
      }),
  );
  const pass = () =>
    Promise.all(
      workers.map(
        (w) =>
          new Promise<void>((resolve, reject) => {
            const onError = (e: Error) => reject(e);
            w.once('error', onError);
            w.once('message', () => {
              w.off('error', onError);
              resolve();
            });
            w.postMessage('go');
          }),
      ),
    );
  try {
    await pass();
    let best = Infinity;
    for (let r = 0; r < reps; r++) {
      const t = process.hrtime.bigint();
      await pass();
      best = Math.min(best, Number(process.hrtime.bigint() - t) / 1e9);
    }
    return (2 * size) / best;
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

// ---- our decode -------------------------------------------------------------------------------

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/**
 * Tokens/s of greedy decoding from BOS for `steps` positions, measured as run.c does: the clock
 * starts when the first token (the prefill's) is out and stops at the last one.
 */
async function ourDecode(model: Llama, steps: number): Promise<number> {
  const stamps: bigint[] = [];
  // maxTokens = steps: forwards at positions 0 .. steps-1, the last `steps - 1` of them timed
  for await (const _ of generateTokens(model, [1], { temperature: 0, maxTokens: steps, stopTokens: [] }))
    stamps.push(process.hrtime.bigint());
  if (stamps.length < 2) throw new Error(`decode produced ${stamps.length} tokens`);
  return (stamps.length - 1) / (Number(stamps[stamps.length - 1] - stamps[0]) / 1e9);
}

// ---- run.c ------------------------------------------------------------------------------------

export function runcBinary(): string | undefined {
  const p = path.join(llama2cDir, 'run');
  return fs.existsSync(p) ? p : undefined;
}

/** One run of llama2.c's run.c: its own "achieved tok/s" report. */
function runcOnce(bin: string, model: string, tokenizer: string, steps: number, threads: number): number {
  const r = spawnSync(bin, [model, '-z', tokenizer, '-t', '0', '-n', String(steps)], {
    env: { ...process.env, OMP_NUM_THREADS: String(threads) },
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  if (r.error) throw r.error;
  const m = /achieved tok\/s:\s*([0-9.eE+-]+)/.exec(r.stderr ?? '');
  if (r.status !== 0 || !m)
    throw new Error(`${bin} ${model} failed (status ${r.status}): ${(r.stderr ?? '').trim().slice(-500)}`);
  return Number(m[1]);
}

// ---- the table ----------------------------------------------------------------------------------

export interface DecodeOptions {
  threads: number;
  /** positions decoded per run, BOS included (run.c's -n); >= 65 */
  steps?: number;
  /** timed runs per configuration (median reported), after one warm-up */
  runs?: number;
  seed?: number;
  /** rewrite the random checkpoint even if a matching one exists */
  regenerate?: boolean;
  dtypes?: ('f32' | 'bf16')[];
  /** before each timed run, wait up to this many seconds for an idle machine (0: never) */
  waitIdle?: number;
  /** which models: 'stories260K', '110M' */
  models?: string[];
  log?: (line: string) => void;
}

interface ModelCase {
  label: string;
  file: string;
  tokenizer: string;
  shape: Llama2cShape;
}

function readV0Shape(file: string): Llama2cShape {
  const fd = fs.openSync(file, 'r');
  const h = Buffer.alloc(28);
  fs.readSync(fd, h, 0, 28, 0);
  fs.closeSync(fd);
  const i = (k: number) => h.readInt32LE(4 * k);
  return {
    dim: i(0),
    hiddenDim: i(1),
    nLayers: i(2),
    nHeads: i(3),
    nKvHeads: i(4),
    vocabSize: Math.abs(i(5)),
    seqLen: i(6),
  };
}

export async function runDecode(opts: DecodeOptions): Promise<BenchTable> {
  const loadAtStart = os.loadavg()[0];
  const log = opts.log ?? (() => {});
  const threads = opts.threads;
  const steps = opts.steps ?? 256;
  const runs = opts.runs ?? 3;
  const seed = opts.seed ?? 1234;
  const dtypes = opts.dtypes ?? ['f32', 'bf16'];
  const which = opts.models ?? ['stories260K', '110M'];
  if (steps < 65) throw new RangeError('decode: steps must be >= 65 (64 timed tokens)');
  native.setThreads(threads);

  const cases: ModelCase[] = [];
  if (which.includes('stories260K')) {
    const file = path.join(dataDir, 'stories260K', 'stories260K.bin');
    cases.push({
      label: 'stories260K',
      file,
      tokenizer: path.join(dataDir, 'stories260K', 'tok512.bin'),
      shape: readV0Shape(file),
    });
  }
  if (which.includes('110M')) {
    const file = path.join(outDir, `random-stories110M-seed${seed}.bin`);
    log(`decode: writing/reusing ${path.relative(repoRoot, file)} (${(v0FileBytes(STORIES110M) / 2 ** 20).toFixed(0)} MiB) ...`);
    writeRandomLlama2c(file, STORIES110M, seed, opts.regenerate);
    cases.push({
      label: 'random 110M shape',
      file,
      tokenizer: path.join(dataDir, 'llama-tokenizer', 'tokenizer.bin'),
      shape: STORIES110M,
    });
  }

  const gate = new IdleGate(opts.waitIdle ?? 60);
  // Read bandwidth, best of a measurement before and one after the decode runs.
  let bwN = 0;
  let bw1 = 0;
  const measureBandwidth = async () => {
    await gate.wait();
    bwN = Math.max(bwN, await measureReadBandwidth(threads));
    if (threads > 1) {
      await gate.wait();
      bw1 = Math.max(bw1, await measureReadBandwidth(1));
    }
    log(`decode: read bandwidth so far ${(bwN / 1e9).toFixed(2)} GB/s (${threads} threads), ${(bw1 / 1e9).toFixed(2)} GB/s (1 thread)`);
  };
  log(`decode: measuring read bandwidth (${threads} threads and 1 thread, memcmp of 2 x 512 MiB) ...`);
  await measureBandwidth();

  const bin = runcBinary();
  const results: { c: ModelCase; dtype: 'f32' | 'bf16'; ours: number[]; runc?: number[] }[] = [];
  let runcFailed = false;
  for (const c of cases) {
    let runcRuns: number[] | undefined;
    if (bin) {
      try {
        runcOnce(bin, c.file, c.tokenizer, steps, threads); // warm-up (page cache)
        const xs: number[] = [];
        for (let r = 0; r < runs; r++) {
          await gate.wait();
          xs.push(runcOnce(bin, c.file, c.tokenizer, steps, threads));
        }
        runcRuns = xs;
        log(`decode: run.c ${c.label}: ${xs.map((x) => x.toFixed(1)).join(', ')} tok/s`);
      } catch (e) {
        runcFailed = true;
        log(`decode: run.c ${c.label} failed: ${(e as Error).message}`);
      }
    }
    for (const dtype of dtypes) {
      const model = await Llama.load(c.file, { dtype });
      try {
        await ourDecode(model, Math.min(steps, 65)); // warm-up
        const xs: number[] = [];
        for (let r = 0; r < runs; r++) {
          await gate.wait();
          xs.push(await ourDecode(model, steps));
        }
        log(`decode: ours ${c.label} ${dtype}: ${xs.map((x) => x.toFixed(1)).join(', ')} tok/s`);
        results.push({ c, dtype, ours: xs, runc: runcRuns });
      } finally {
        model.dispose();
      }
    }
  }
  await measureBandwidth();
  if (threads === 1) bw1 = bwN;
  const bw = Math.max(bwN, bw1);

  const rows: string[][] = [];
  const raw: { model: string; dtype: string; oursTokPerSec: number[]; runcTokPerSec?: number[]; boundTokPerSec: number }[] = [];
  for (const { c, dtype, ours: oursRuns, runc: runcRuns } of results) {
    const ours = median(oursRuns);
    const runc = runcRuns && median(runcRuns);
    const wbytes = decodeWeightBytes(c.shape, dtype === 'f32' ? 4 : 2);
    const bound = bw / wbytes;
    raw.push({ model: c.label, dtype, oursTokPerSec: oursRuns, runcTokPerSec: runcRuns, boundTokPerSec: bound });
    rows.push([
      c.label,
      dtype,
      (wbytes / 2 ** 20).toFixed(wbytes < 2 ** 24 ? 2 : 0),
      ours.toFixed(1),
      runc === undefined ? (bin ? 'failed' : 'n/a') : runc.toFixed(1) + (dtype === 'f32' ? '' : ' (f32)'),
      runc === undefined ? '–' : `${((100 * ours) / runc).toFixed(0)}%`,
      bound.toFixed(1),
      `${((100 * ours) / bound).toFixed(0)}%`,
      runc === undefined || dtype !== 'f32' ? '–' : `${((100 * runc) / bound).toFixed(0)}%`,
    ]);
  }

  const load = loadAtStart;
  const notes = [
    `Load average at the start: ${load.toFixed(2)} on ${os.cpus().length} CPUs. ${gate.note()}`,
    `Read bandwidth: ${(bw / 1e9).toFixed(2)} GB/s (memcmp of 2 x 512 MiB, best of 10 passes before and 10 after ` +
      `the runs; ${threads} threads: ${(bwN / 1e9).toFixed(2)} GB/s, 1 thread: ${(bw1 / 1e9).toFixed(2)} GB/s). ` +
      `Bound = bandwidth / weight bytes per token (all matrices, norms, classifier; KV-cache reads excluded).`,
    `Decode: greedy from BOS, ${steps} positions (run.c -n ${steps}); tok/s over the ${steps - 1} tokens after ` +
      `the first, as run.c times it; median of ${runs} runs after a warm-up; ${threads} threads (OMP_NUM_THREADS=${threads} for run.c).`,
  ];
  const tiny = cases.find((c) => c.label === 'stories260K');
  if (tiny)
    notes.push(
      `stories260K (${(fs.statSync(tiny.file).size / 2 ** 20).toFixed(1)} MiB) fits in the CPU caches: ` +
        `its DRAM bound is no real limit; per-token overhead (op dispatch, thread wake-ups, JS) is.`,
    );
  if (!bin)
    notes.push(
      `run.c column skipped: no binary at ${path.relative(repoRoot, path.join(llama2cDir, 'run'))}; ` +
        `build it with bench/fetch-runc.sh PATH_TO_LLAMA2C (see bench/README.md).`,
    );
  else
    notes.push(
      `run.c: llama2.c's run.c built by bench/fetch-runc.sh (gcc -Ofast -march=native -fopenmp), fp32 only; ` +
        `bf16 rows compare with its f32 rate.`,
    );
  if (runcFailed) notes.push('run.c failed on some models: its error is in the log (stderr).');
  return {
    title: `Decode: tokens/s after the prefill — ${threads} threads, ${os.cpus()[0]?.model.trim() ?? 'CPU'}`,
    columns: [
      'model',
      'dtype',
      'weights MiB/token',
      'ours tok/s',
      'run.c tok/s',
      'ours / run.c',
      'bound tok/s',
      'ours % of bound',
      'run.c % of bound',
    ],
    align: ['l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
    rows,
    notes,
    raw: { readBandwidth: { best: bw, threads: bwN, oneThread: bw1 }, runs: raw },
  };
}
