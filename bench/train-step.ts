// Training throughput: one optimiser step (forward, backward to the adapter, AdamW) on the CPU
// backend, in trained tokens/s, beside the same step in PyTorch float32 (bench/torch_train_step.py,
// run by this script on the same checkpoint, the same batches, the same thread count), at
// stories260K, a random-weight llama2.c 15M shape and the 110M shape; with the padding share a
// padded (B, longest) layout would have had, the FLOPs of a step, the effective GFLOP/s and its
// share of the BLAS sgemm peak measured in the same process.
//
//   node dist/bench/train-step.js [--models 260K,15M,110M[:T]] [--steps N] [--warmup N] [--repeats R]
//        [--wait-idle S] [--batch B] [--seq T] [--threads N] [--seed N] [--no-torch] [--torch-env best|auto|KEY=V,...]
//        [--torch-head targets|all] [--regenerate] [--json FILE]
//
// A model spec MODEL[:T] sets its max_seq_len (default --seq, capped at the model's own).
//
// Our step is the trainer's (lib/train/trainer.ts): grads.zero(); graph.run(batch, 1 / targets,
// grads) (AdapterGraph: packed rows, no padding, the LM head at the target positions only);
// opt.update(grads, lr) (the global gradient norm is read back, then the fused AdamW is queued).
import { benchCoreType } from './blas-choice'; // first: before the addon loads
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native } from '../lib/native';
import { Batch, Batcher, loadAlpaca, packStats, tokenizeRecords } from '../lib/data/alpaca';
import { Adapter } from '../lib/model/adapter';
import { LlamaConfig } from '../lib/model/config';
import { Llama } from '../lib/model/llama';
import { loadTokenizer } from '../lib/tokenizer';
import { AdapterGrads, AdapterGraph } from '../lib/train/graph';
import { AdamW, paperAdamW } from '../lib/train/optimizer';
import { dataDir, outDir, repoRoot, STORIES110M, STORIES15M, writeRandomLlama2c } from './decode';
import { IdleGate, measurePeak } from './gemm';
import { BenchTable } from './table';
import { adapterStepFlops, AdapterStepFlops } from './flops';

export const ADAPTER_LEN = 10; // K prompts per adapted layer (the paper's)

export interface TrainStepOptions {
  threads: number;
  /** which models: '260K', '15M', '110M', each optionally ':T' (its max_seq_len) */
  models?: string[];
  /** timed optimiser steps, each on its own batch (default: 8 at 260K, 6 at 15M, 3 at 110M) */
  steps?: number;
  /** untimed steps before them, on the longest of the timed batches (default 1) */
  warmup?: number;
  /** rounds of (ours, PyTorch), alternated; the best round of each side is reported (default 1) */
  repeats?: number;
  /**
   * Before each timed run, wait up to this many seconds for the CPUs to be >= 90% idle (gemm.ts's
   * IdleGate; default 60, 0 starts at once): on a shared machine another process on a core halves a
   * run's speed, and PyTorch's more than ours.
   */
  waitIdle?: number;
  /** examples per batch */
  batch?: number;
  /** max_seq_len: examples are truncated to it */
  seq?: number;
  /** seed of the random checkpoints, the batch order and the adapter */
  seed?: number;
  /** run the PyTorch side (default true) */
  torch?: boolean;
  /**
   * The PyTorch process's environment: 'best' (the fastest found on this kind of machine, see
   * bench/README.md), 'auto' (time each candidate on a short run of the shape and keep the
   * fastest), or an explicit list 'OPENBLAS_NUM_THREADS=2,OMP_WAIT_POLICY=PASSIVE,...'.
   */
  torchEnv?: string;
  /** PyTorch's LM head: 'targets' (gather the target rows first, like ours) or 'all' positions */
  torchHead?: 'targets' | 'all';
  regenerate?: boolean;
  log?: (line: string) => void;
}

interface ModelCase {
  label: string;
  file: string;
  tokenizer: string;
  /** max_seq_len asked for (capped at the model's) */
  seq?: number;
  /** default timed steps */
  steps: number;
}

const PYTHON = process.env.PYTHON ?? '/usr/bin/python3';
const TORCH_SCRIPT = path.join(repoRoot, 'bench', 'torch_train_step.py');

// ---- FLOPs ------------------------------------------------------------------------------------

/** The FLOPs of the CPU step for `batch` (packed, no padding): flops.ts's adapterStepFlops over
 *  its sequences' lengths and target count (the formulas are written out there). */
export function stepFlops(c: LlamaConfig, L: number, K: number, batch: Batch): AdapterStepFlops {
  const lens = Array.from({ length: batch.segments.length - 1 }, (_, s) => batch.segments[s + 1] - batch.segments[s]);
  return adapterStepFlops(c, L, K, lens, batch.targetCount);
}

// ---- data -------------------------------------------------------------------------------------

/** The first `count` batches of a seeded Batcher over the Alpaca sample, tokenised for `model`. */
function makeBatches(tokenizerPath: string, seq: number, batch: number, count: number, seed: number): Batch[] {
  const tok = loadTokenizer(tokenizerPath);
  const records = loadAlpaca(path.join(dataDir, 'alpaca', 'alpaca_small.json'));
  const { examples } = tokenizeRecords(tok, records, { maxSeqLen: seq, warn: () => {} });
  const batcher = new Batcher(examples, { batchSize: batch, seed, shuffle: true });
  return Array.from({ length: count }, () => batcher.next());
}

// ---- our step ---------------------------------------------------------------------------------

const now = () => Number(process.hrtime.bigint()) / 1e9;

interface StepRun {
  seconds: number;
  tokens: number;
  losses: number[];
}

async function ourSteps(model: Llama, L: number, batches: Batch[], warmup: number, seed: number): Promise<StepRun> {
  const adapter = Adapter.init(model.config, { layers: L, len: ADAPTER_LEN, gate: 'per-head' }, seed);
  const opt = new AdamW(adapter.parameters(), paperAdamW);
  const grads = new AdapterGrads(adapter);
  const graph = new AdapterGraph(model, adapter);
  const losses: number[] = [];
  let t0 = now();
  let tokens = 0;
  try {
    for (let i = 0; i < batches.length; i++) {
      if (i === warmup) {
        await native.synchronize();
        t0 = now();
      }
      const b = batches[i];
      // as Trainer.run: the step's loss is the mean over its targets
      grads.zero();
      const r = await graph.run(b, 1 / b.targetCount, grads);
      await opt.update(grads.all(), 1e-3);
      losses.push(r.lossSum / r.targets);
      if (i >= warmup) tokens += b.tokens.length;
    }
    await native.synchronize();
    return { seconds: now() - t0, tokens, losses };
  } finally {
    grads.dispose();
    opt.dispose();
    adapter.dispose();
  }
}

// ---- PyTorch ----------------------------------------------------------------------------------

/** Environments tried by 'auto' (each added to the thread variables). */
function torchCandidates(threads: number): Record<string, string>[] {
  const out: Record<string, string>[] = [];
  const cores = [...new Set([benchCoreType() ?? '', 'Haswell', 'Zen', ''])]; // '' = OpenBLAS's own detection; never a family beyond this CPU's best
  for (const core of cores)
    for (const blasThreads of [threads, 1])
      for (const wait of ['PASSIVE', '']) {
        const e: Record<string, string> = { OPENBLAS_NUM_THREADS: String(blasThreads), OMP_NUM_THREADS: String(threads) };
        if (core) e.OPENBLAS_CORETYPE = core;
        if (wait) e.OMP_WAIT_POLICY = wait;
        out.push(e);
      }
  return out;
}

/** The fastest environment found on the 2-core machines of bench/README.md: the same OpenBLAS kernels
 *  as ours (benchCoreType: this CPU's best), as many BLAS and OpenMP threads as ours, passive waits. */
export function bestTorchEnv(threads: number): Record<string, string> {
  return {
    ...(benchCoreType() ? { OPENBLAS_CORETYPE: benchCoreType() as string } : {}),
    OPENBLAS_NUM_THREADS: String(threads),
    OMP_NUM_THREADS: String(threads),
    OMP_WAIT_POLICY: 'PASSIVE',
  };
}

function parseEnvList(s: string): Record<string, string> {
  const e: Record<string, string> = {};
  for (const kv of s.split(',').filter(Boolean)) {
    const i = kv.indexOf('=');
    if (i < 1) throw new Error(`--torch-env: expected KEY=VALUE, got ${kv}`);
    e[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return e;
}

export const describeEnv = (e: Record<string, string>) =>
  Object.entries(e)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ') + (e.OPENBLAS_CORETYPE ? '' : ' (OPENBLAS_CORETYPE unset)') + (e.OMP_WAIT_POLICY ? '' : ' (OMP_WAIT_POLICY unset)');

export interface TorchResult {
  tokens_per_s: number;
  ms_per_step: number;
  tokens: number;
  padded_tokens: number;
  losses: number[];
  head: string;
  torch: string;
  threads: number;
  blas: { library: string; core: string; threads: number };
}

function runTorch(job: string, env: Record<string, string>, threads: number, head: string, steps?: number): TorchResult {
  // variables that would override the candidate's choice are removed, then the candidate's set
  const base: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['OPENBLAS_CORETYPE', 'OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'OMP_WAIT_POLICY', 'GOTO_NUM_THREADS', 'MKL_NUM_THREADS'])
    delete base[k];
  const args = [TORCH_SCRIPT, job, '--threads', String(threads), '--head', head];
  if (steps !== undefined) args.push('--steps', String(steps));
  const r = spawnSync(PYTHON, args, { env: { ...base, ...env }, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw r.error;
  const last = (r.stdout ?? '').trim().split('\n').pop() ?? '';
  if (r.status !== 0 || !last.startsWith('{'))
    throw new Error(`${PYTHON} ${TORCH_SCRIPT} failed (status ${r.status}): ${(r.stderr ?? '').trim().slice(-1500)}`);
  return JSON.parse(last) as TorchResult;
}

// ---- the table --------------------------------------------------------------------------------

function modelCases(which: string[], seed: number, regenerate: boolean, log: (s: string) => void): ModelCase[] {
  const cases: ModelCase[] = [];
  for (const spec of which) {
    const [m, t] = spec.split(':');
    const seq = t === undefined ? undefined : Number(t);
    if (seq !== undefined && !(Number.isInteger(seq) && seq >= 2)) throw new Error(`train-step: bad max_seq_len in ${spec}`);
    if (m === '260K' || m === 'stories260K') {
      cases.push({
        label: 'stories260K',
        file: path.join(dataDir, 'stories260K', 'stories260K.bin'),
        tokenizer: path.join(dataDir, 'stories260K', 'tok512.bin'),
        seq,
        steps: 8,
      });
    } else if (m === '15M' || m === '110M') {
      const shape = m === '15M' ? STORIES15M : STORIES110M;
      const file = path.join(outDir, m === '15M' ? `random-15M-seed${seed}.bin` : `random-stories110M-seed${seed}.bin`);
      log(`train-step: writing/reusing ${path.relative(repoRoot, file)} ...`);
      writeRandomLlama2c(file, shape, seed, regenerate);
      cases.push({
        label: `random ${m} shape`,
        file,
        tokenizer: path.join(dataDir, 'llama-tokenizer', 'tokenizer.model'),
        seq,
        steps: m === '15M' ? 6 : 3,
      });
    } else throw new Error(`train-step: unknown model ${spec} (expected 260K, 15M or 110M, optionally :T)`);
  }
  return cases;
}

export async function runTrainStep(opts: TrainStepOptions): Promise<BenchTable> {
  const loadAtStart = os.loadavg()[0];
  const log = opts.log ?? (() => {});
  const threads = opts.threads;
  const warmup = opts.warmup ?? 1;
  const repeats = opts.repeats ?? 1;
  const gate = new IdleGate(opts.waitIdle ?? 60);
  const B = opts.batch ?? 8;
  const seq = opts.seq ?? 256;
  const seed = opts.seed ?? 1234;
  const withTorch = opts.torch ?? true;
  const torchEnvMode = opts.torchEnv ?? 'best';
  const head = opts.torchHead ?? 'targets';
  native.setThreads(threads);
  const caps = native.capabilities();
  const cases = modelCases(opts.models ?? ['260K', '15M', '110M'], seed, !!opts.regenerate, log);

  log(`train-step: measuring the BLAS peak (f32 2048^3, ${threads} threads) ...`);
  let peak = await measurePeak(2048, 1, () => gate.pause());
  log(`train-step: peak ${peak.gflops.toFixed(1)} GFLOP/s`);
  const perModel: { mc: ModelCase; cells: (peakGflops: number) => string[] }[] = [];

  fs.mkdirSync(outDir, { recursive: true });
  const envsUsed = new Map<string, string[]>();
  const lossNotes: string[] = [];
  for (const mc of cases) {
    const model = await Llama.load(mc.file, { dtype: 'f32' });
    try {
      const c = model.config;
      const L = Math.max(1, c.nLayers - 2);
      const T = Math.min(mc.seq ?? seq, c.maxSeqLen);
      const steps = opts.steps ?? mc.steps;
      const timed = makeBatches(mc.tokenizer, T, B, steps, seed);
      // warm-up on the longest timed batch: our allocation cache then holds blocks for every timed
      // step, as in a long run (PyTorch gets the same warm-up steps)
      const longest = timed.reduce((a, b) => (b.tokens.length > a.tokens.length ? b : a));
      const batches = [...Array.from({ length: warmup }, () => longest), ...timed];
      const st = packStats(timed);
      const flops = timed.map((b) => stepFlops(c, L, ADAPTER_LEN, b));
      const flopsPerStep = flops.reduce((a, f) => a + f.total, 0) / steps;
      const share = (k: keyof AdapterStepFlops) => flops.reduce((a, f) => a + f[k], 0) / steps / flopsPerStep;
      log(
        `train-step: ${mc.label}: ${steps} timed steps of ${B} x <= ${T} tokens (${(st.tokens / steps).toFixed(0)} tokens, ` +
          `${(st.targets / steps).toFixed(0)} targets per step), ${(flopsPerStep / 1e9).toFixed(1)} GFLOP per step ` +
          `(matmul fwd ${(100 * share('forwardMatmul')).toFixed(0)}%, bwd ${(100 * share('backwardMatmul')).toFixed(0)}%, ` +
          `attention ${(100 * share('attention')).toFixed(0)}%, head ${(100 * share('head')).toFixed(0)}%)`,
      );

      // the job file of the PyTorch side: the checkpoint, the adapter's shape and initial values, the batches
      const job = path.join(outDir, `train-step-${mc.label.replace(/\W+/g, '_')}-T${T}.json`);
      let env: Record<string, string> = bestTorchEnv(threads);
      if (withTorch) {
        const adapter = Adapter.init(c, { layers: L, len: ADAPTER_LEN, gate: 'per-head' }, seed);
        const init = await adapter.values();
        adapter.dispose();
        fs.writeFileSync(
          job,
          JSON.stringify({
            model: mc.file,
            adapterLayers: L,
            adapterLen: ADAPTER_LEN,
            gate: 'per-head',
            lr: 1e-3,
            optimizer: { betas: [paperAdamW.beta1, paperAdamW.beta2], eps: paperAdamW.eps, weightDecay: paperAdamW.weightDecay },
            warmup,
            init: { prompts: Array.from(init.prompts), gates: Array.from(init.gates) },
            batches: batches.map((b) => {
              const S = b.segments.length - 1;
              const seqs = Array.from({ length: S }, (_, k) => [b.segments[k], b.segments[k + 1]]);
              return {
                ids: seqs.map(([s, e]) => Array.from(b.tokens.subarray(s, e))),
                labels: seqs.map(([s, e]) => Array.from(b.labels.subarray(s, e))),
              };
            }),
          }),
        );
        if (torchEnvMode === 'auto') {
          // one short run per candidate (the warm-up steps + 1 timed step), keep the fastest
          let best = { env, tps: 0 };
          for (const e of torchCandidates(threads)) {
            await gate.pause();
            const r = runTorch(job, e, threads, head, 1);
            log(`train-step: torch ${mc.label} [${describeEnv(e)}]: ${r.tokens_per_s.toFixed(1)} tok/s (core ${r.blas.core})`);
            if (r.tokens_per_s > best.tps) best = { env: e, tps: r.tokens_per_s };
          }
          env = best.env;
        } else if (torchEnvMode !== 'best') env = { OMP_NUM_THREADS: String(threads), ...parseEnvList(torchEnvMode) };
      }

      // rounds of ours then PyTorch; the best round of each
      let ours: StepRun | undefined;
      let torch: TorchResult | undefined;
      for (let round = 1; round <= repeats; round++) {
        await gate.wait();
        const o = await ourSteps(model, L, batches, warmup, seed);
        log(
          `train-step: ours ${mc.label} (round ${round}): ${(o.tokens / o.seconds).toFixed(1)} tok/s, ` +
            `${((1e3 * o.seconds) / steps).toFixed(0)} ms/step, ${((flopsPerStep * steps) / o.seconds / 1e9).toFixed(1)} GFLOP/s`,
        );
        if (!ours || o.seconds < ours.seconds) ours = o;
        if (!withTorch) continue;
        await gate.wait();
        const r = runTorch(job, env, threads, head);
        log(
          `train-step: torch ${mc.label} (round ${round}) [${describeEnv(env)}]: ${r.tokens_per_s.toFixed(1)} tok/s, ${r.ms_per_step.toFixed(0)} ms/step ` +
            `(torch ${r.torch}, ${r.blas.library} core ${r.blas.core}, ${r.blas.threads} BLAS threads)`,
        );
        if (!torch || r.tokens_per_s > torch.tokens_per_s) torch = r;
      }
      ours = ours!;
      const oursTps = ours.tokens / ours.seconds;
      const oursGflops = (flopsPerStep * steps) / ours.seconds / 1e9;
      let torchCells = ['–', '–', '–'];
      if (torch) {
        const tGflops = (torch.tokens_per_s * flopsPerStep * steps) / st.tokens / 1e9;
        const key = `${describeEnv(env)}; BLAS core ${torch.blas.core}, head over ${torch.head}`;
        envsUsed.set(key, [...(envsUsed.get(key) ?? []), mc.label]);
        torchCells = [torch.tokens_per_s.toFixed(1), `${(oursTps / torch.tokens_per_s).toFixed(2)}x`, tGflops.toFixed(1)];
        const n = Math.min(ours.losses.length, torch.losses.length);
        let worst = 0;
        for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(ours.losses[i] - torch.losses[i]) / Math.abs(torch.losses[i]));
        lossNotes.push(`${mc.label} ${(worst * 100).toPrecision(2)}%`);
      }
      const shape = `${c.dim}/${c.nLayers}/${c.nHeads}${c.nKvHeads !== c.nHeads ? `(${c.nKvHeads})` : ''}/${c.hiddenDim}/${c.vocabSize}`;
      perModel.push({
        mc,
        cells: (peakGflops) => [
          mc.label,
          shape,
          `${B}x${T}`,
          `${L}x${ADAPTER_LEN}`,
          String(steps),
          (st.tokens / steps).toFixed(0),
          `${(100 * st.paddingShare).toFixed(0)}%`,
          oursTps.toFixed(1),
          torchCells[0],
          torchCells[1],
          (flopsPerStep / 1e9).toFixed(2),
          oursGflops.toFixed(1),
          torchCells[2],
          `${((100 * oursGflops) / peakGflops).toFixed(0)}%`,
        ],
      });
    } finally {
      model.dispose();
    }
  }
  // the peak again at the end: the better of the two (another process may have held a core)
  const peak2 = await measurePeak(2048, 1, () => gate.pause());
  log(`train-step: peak at the end ${peak2.gflops.toFixed(1)} GFLOP/s`);
  if (peak2.gflops > peak.gflops) peak = peak2;
  const rows = perModel.map((p) => p.cells(peak.gflops));

  const notes = [
    `One optimiser step = forward + backward to the adapter (L = layers - 2 adapted layers, K = ${ADAPTER_LEN} prompts, per-head tanh gates) ` +
      `+ AdamW, as Trainer.run runs it; ${warmup} warm-up step(s) on the longest timed batch, then the timed steps, each on its own batch of ${B} Alpaca examples ` +
      `(../shared/data/alpaca/alpaca_small.json, seeded shuffle, truncated to T tokens; tok512 for stories260K, the LLaMA tokenizer otherwise); ` +
      `${threads} threads on both sides; ` +
      (repeats > 1 ? `the best of ${repeats} alternated rounds of each side. ` : 'one round of each side. ') +
      gate.note(),
    `tok/s = real (unpadded) tokens of the timed steps / their wall time. Ours packs the batch (no padding); ` +
      `"padding" is the share of a padded (B, longest example) layout that would be padding — PyTorch computes on that layout.`,
    `GFLOP/step counts the useful work of the packed step: forward matmuls 2·N·(C² + 2C·Ckv + C² + 3C·F) per layer (all layers); ` +
      `the input-gradient matmuls of the adapted layers (the lowest skips wq/wk/wv); causal attention pairs within each sequence ` +
      `(forward 4·d per pair and head, backward 10·d) and the prompt branch; the LM head 4·M·C·V at the M target positions. ` +
      `Elementwise ops are not counted. Both GFLOP/s columns divide the same count by each side's time.`,
    `BLAS peak = ${peak.gflops.toFixed(1)} GFLOP/s: best f32 sgemm 2048^3 through native.matmul, ${threads} threads (${caps.blas}), ` +
      `the better of a measurement before and one after the runs.`,
  ];
  if (withTorch) {
    notes.push(
      `PyTorch (bench/torch_train_step.py, float32, ${head === 'targets' ? 'LM head on the target rows only' : 'LM head over all positions'}): ` +
        `padded (B, longest) batch with a causal + padding mask, plain matmul + softmax attention, adapter prompts and tanh gates as ` +
        `leaf tensors, frozen weights requires_grad=False, torch.optim.AdamW; environment ` +
        [...envsUsed].map(([k, v]) => `${k} (${v.join(', ')})`).join('; ') +
        (torchEnvMode === 'auto' ? ' — the fastest of the candidates timed on each shape (log on stderr).' : '.'),
    );
    notes.push(`Loss agreement (same batches, same initial adapter), worst relative difference per step: ${lossNotes.join(', ')}.`);
  }
  notes.push(
    `Load average at the start: ${loadAtStart.toFixed(2)} on ${os.cpus().length} CPUs` +
      (loadAtStart > 0.5 ? ' — other processes competed for the cores: numbers are noisy.' : '.'),
  );
  return {
    title: `Training step: trained tokens/s, ours vs PyTorch — ${threads} threads, ${os.cpus()[0]?.model.trim() ?? 'CPU'}`,
    columns: [
      'model',
      'C/layers/heads/F/V',
      'B x T',
      'L x K',
      'steps',
      'tokens/step',
      'padding',
      'ours tok/s',
      'PyTorch tok/s',
      'speed-up',
      'GFLOP/step',
      'ours GFLOP/s',
      'PyTorch GFLOP/s',
      'ours % of peak',
    ],
    align: ['l', 'l', 'l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
    rows,
    notes,
  };
}

// ---- standalone -------------------------------------------------------------------------------

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const o: TrainStepOptions & { json?: string } = { threads: os.cpus().length, log: (l) => process.stderr.write(l + '\n') };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    const num = () => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 0) throw new Error(`${x} expects a non-negative integer, got ${argv[i]}`);
      return v;
    };
    if (x === '--models') o.models = argv[++i].split(',');
    else if (x === '--steps') o.steps = Math.max(1, num());
    else if (x === '--warmup') o.warmup = num();
    else if (x === '--repeats') o.repeats = Math.max(1, num());
    else if (x === '--wait-idle') o.waitIdle = num();
    else if (x === '--batch') o.batch = Math.max(1, num());
    else if (x === '--seq') o.seq = Math.max(2, num());
    else if (x === '--threads') o.threads = Math.max(1, num());
    else if (x === '--seed') o.seed = num();
    else if (x === '--no-torch') o.torch = false;
    else if (x === '--torch-env') o.torchEnv = argv[++i];
    else if (x === '--torch-head') {
      const h = argv[++i];
      if (h !== 'targets' && h !== 'all') throw new Error(`--torch-head expects targets or all, got ${h}`);
      o.torchHead = h;
    } else if (x === '--regenerate') o.regenerate = true;
    else if (x === '--json') o.json = argv[++i];
    else if (x === '--help' || x === '-h') {
      console.log(
        'usage: node dist/bench/train-step.js [--models 260K,15M,110M[:T]] [--steps N] [--warmup N] [--repeats R] [--wait-idle S] [--batch B] [--seq T] ' +
          '[--threads N] [--seed N] [--no-torch] [--torch-env best|auto|KEY=V,...] [--torch-head targets|all] [--regenerate] [--json FILE]\n' +
          '(see bench/README.md)',
      );
      return;
    } else throw new Error(`unknown argument ${x} (try --help)`);
  }
  const { formatTable } = await import('./table');
  const t = await runTrainStep(o);
  console.log(formatTable(t));
  if (o.json) fs.writeFileSync(o.json, JSON.stringify({ date: new Date().toISOString(), table: t }, null, 2));
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e instanceof Error ? e.stack ?? e.message : e);
    process.exit(1);
  });
}
