// The GPU check's benchmark at the LLaMA-7B shape (dim 4096, 32 layers, 32 heads, FFN 11008, vocab
// 32000) with random bf16 weights made on the device (native.randomUniform, no file), on the CUDA
// backend. Run by scripts/gpu-check-run.sh on the device machine; needs a GPU with ~70 GB free.
//
//   node dist/bench/gpu-7b.js gemm  [--json FILE] [--budget S]
//   node dist/bench/gpu-7b.js train --batches FILE [--micro 4,8,16] [--steps N] [--warmup N]
//        [--decode N] [--budget S] [--seed N] [--shape 7b|small] [--json FILE]
//
// gemm:  native.matmul (y = x·wᵀ) and native.matmulBackward (dx = dy·w) with x f32 and w bf16 (N, K)
//        at the 7B shapes, for M = 1 (decode), 512 and 4096 rows, in TFLOP/s = 2·M·N·K / time, and
//        the weight bytes read per second at M = 1. The engine is whatever the addon picked
//        (capabilities().cuda.gemm): cuBLASLt when LLAMA_ADAPTER_CUBLASLT loads, our own kernel with
//        LLAMA_ADAPTER_GEMM=own; run.sh runs this once with each.
// train: one optimiser step of LLaMA-Adapter (L = 30, K = 10, per-head gates; forward, backward to
//        the adapter, AdamW, the gradient norm read back) exactly as Trainer.run runs it, on the
//        pre-tokenised Alpaca micro-batches of --batches (gpu-check.ts writes them: the LLaMA
//        tokenizer, truncated to 512 tokens), for each micro-batch size: trained tokens/s, model
//        FLOP/s and MFU (bench/flops.ts: adapterStepFlops, over the GPU's dense bf16 peak from
//        bench/gpu-peaks.ts, looked up by the device's name), the peak of native.cudaMemory() over
//        the step (weights included); then greedy decoding at batch 1 with the adapter attached:
//        tokens/s against the bandwidth bound (decodeWeightBytes / the GPU's memory bandwidth).
//        A GPU whose peaks are unknown gets no MFU and no bound (null), its figures otherwise kept.
//
// The GEMM engine is recorded at the start and again at the end (gpu.gemmAtEnd): a cuBLASLt that
// failed on the way switched the process to our kernel, and the end says so.
//
// Every figure is measured here; what did not run is recorded as skipped with the reason. The
// JSON is rewritten after each measurement, so a run stopped by its time limit keeps what it got.
import * as fs from 'fs';
import { native, Tensor, Device } from '../lib/native';
import { LlamaConfig } from '../lib/model/config';
import { Checkpoint } from '../lib/model/weights';
import { generateTokens } from '../lib/generate/generate';
import { ADAPTER_STEP_FLOPS_FORMULA, adapterStepFlops, decodeWeightBytes } from './flops';
import { GpuPeaks, gpuPeaks } from './gpu-peaks';
import { TrainOptions } from './device-args';
import {
  ADAPTER_LEN, AdapterTraining, adaptedLayers, assembleCheckpoint, BatchesFile, DeviceBench, DeviceResult, errorMessage, gpuRecord,
  LLAMA_7B_CONFIG, loadModel, logToStderr, now, packJson, requireUsableCuda, runFromCommandLine, SMALL_CONFIG,
} from './device-bench';

/** std 0.02 (Hugging Face's initializer_range) as a uniform [-a, a): a = 0.02·√3 */
const WEIGHT_SCALE = 0.02 * Math.sqrt(3);

/** Random bf16 matrices (uniform, std 0.02) and unit f32 norms, made on the device. */
export function randomCheckpoint(c: LlamaConfig, seed: number, device: Device = 'cuda'): Checkpoint {
  let k = 0;
  const matrix = (rows: number, cols: number) => native.randomUniform([rows, cols], 'bf16', device, seed * 1000 + k++, WEIGHT_SCALE);
  return assembleCheckpoint(c, device, matrix, 'hf', `random LLaMA-7B shape (seed ${seed})`);
}

// ---- results ----------------------------------------------------------------------------------

export interface TrainRow {
  B: number;
  steps: number;
  tokens: number;
  targets: number;
  /** share of a padded (B, longest) layout that would be padding (the PyTorch side's layout) */
  paddingShare: number;
  seconds: number;
  tokPerS: number;
  msPerStep: number;
  flopsPerStep: number;
  tflops: number;
  /** null when the GPU's bf16 peak is unknown */
  mfu: number | null;
  peakBytes: number;
  activationBytes: number;
  /** the adapted layers keep only their input and recompute the rest in the backward */
  checkpointing: boolean;
  losses: number[];
}

export interface DecodeRow {
  promptTokens: number;
  tokens: number;
  tokPerS: number;
  msPerToken: number;
  bytesPerToken: number;
  /** null when the GPU's bandwidth is unknown */
  boundTokPerS: number | null;
  pctOfBound: number | null;
}

export interface GemmRow {
  name: string;
  op: 'forward' | 'backward';
  M: number;
  N: number;
  K: number;
  ms: number;
  tflops: number;
  /** weight bytes / time (meaningful for M = 1) */
  weightGBs: number;
}

export interface Gpu7bResult extends DeviceResult {
  mode: 'gemm' | 'train';
  peaks: GpuPeaks;
  shape?: LlamaConfig & { adapterLayers: number; adapterLen: number };
  gemm?: GemmRow[];
  weights?: { bytes: number; seconds: number };
  train?: TrainRow[];
  decode?: DecodeRow;
  formula?: string;
}

// ---- gemm -------------------------------------------------------------------------------------

export const GEMM_SHAPES: [string, number, number][] = [
  ['wq/wk/wv/wo', 4096, 4096],
  ['w1/w3', 11008, 4096],
  ['w2', 4096, 11008],
  ['LM head', 32000, 4096],
];

async function timeCalls(call: () => Tensor, minSeconds: number): Promise<number> {
  for (let i = 0; i < 3; i++) call().dispose(); // warm-up (and the engine's first-call setup)
  await native.synchronize();
  let reps = 3;
  for (;;) {
    const t0 = now();
    for (let i = 0; i < reps; i++) call().dispose(); // queued back to back, awaited once
    await native.synchronize();
    const dt = now() - t0;
    if (dt >= minSeconds || reps >= 4096) return dt / reps;
    reps = Math.min(4096, Math.max(reps * 2, Math.ceil((reps * minSeconds * 1.2) / Math.max(dt, 1e-6))));
  }
}

async function runGemm(bench: DeviceBench<Gpu7bResult>, deadline: number): Promise<void> {
  const { res } = bench;
  res.gemm = [];
  for (const [name, N, K] of GEMM_SHAPES) {
    if (now() > deadline) {
      res.skipped.push(`gemm ${name}: out of time`);
      continue;
    }
    // enough copies of w to overflow the 60 MB L2 cache, each call reading the next one, so that
    // M = 1 streams its weights from memory as a decode step does
    const copies = Math.max(2, Math.ceil((512 << 20) / (2 * N * K)));
    const ws = Array.from({ length: copies }, (_, i) => native.randomUniform([N, K], 'bf16', 'cuda', N + K + 100 * i, WEIGHT_SCALE));
    let next = 0;
    const w = () => ws[next++ % copies];
    try {
      for (const M of [1, 512, 4096]) {
        for (const op of ['forward', 'backward'] as const) {
          if (op === 'backward' && M === 1) continue; // no backward at decode
          if (now() > deadline) {
            res.skipped.push(`gemm ${name} M=${M} ${op}: out of time`);
            continue;
          }
          const x = native.randomUniform(op === 'forward' ? [M, K] : [M, N], 'f32', 'cuda', 7 + M, 1);
          try {
            const s = await timeCalls(() => (op === 'forward' ? native.matmul(x, w()) : native.matmulBackward(x, w())), 0.15);
            res.gemm.push({ name, op, M, N, K, ms: s * 1e3, tflops: (2 * M * N * K) / s / 1e12, weightGBs: (2 * N * K) / s / 1e9 });
          } finally {
            x.dispose();
          }
          bench.save();
        }
      }
    } finally {
      for (const t of ws) t.dispose();
    }
  }
}

// ---- train + decode ---------------------------------------------------------------------------

async function runTrain(bench: DeviceBench<Gpu7bResult>, o: Options, deadline: number): Promise<void> {
  const { res } = bench;
  const peakFlops = res.peaks.bf16Flops;
  const bandwidth = res.peaks.bandwidth;
  const file: BatchesFile = JSON.parse(fs.readFileSync(o.batches!, 'utf8'));
  const c = o.shape === 'small' ? SMALL_CONFIG : LLAMA_7B_CONFIG;
  const L = adaptedLayers(c);
  res.shape = { ...c, adapterLayers: L, adapterLen: ADAPTER_LEN };
  const { model, weights } = await loadModel(() => randomCheckpoint(c, o.seed), 'cuda');
  res.weights = weights;
  res.formula = ADAPTER_STEP_FLOPS_FORMULA;
  bench.save();
  const training = new AdapterTraining(model, c, L, o.seed, 'cuda');
  // every micro-batch size as is, then the smallest again with activation checkpointing (the
  // memory target is stated at 4 x 512)
  const plan = file.micro.filter((mb) => o.micro.includes(mb.B)).map((mb) => ({ mb, checkpointing: false }));
  if (plan.length) plan.push({ mb: plan[0].mb, checkpointing: true });
  res.train = [];
  try {
    for (const { mb, checkpointing } of plan) {
      const label = `B=${mb.B}${checkpointing ? ' (checkpointing)' : ''}`;
      await bench.timedRun({
        label,
        startBy: deadline - 20, // a step at B = 16 takes well under 20 s
        stopBy: deadline - 15,
        batches: () => ({ timed: mb.steps.slice(0, o.steps).map(packJson), warm: packJson(mb.warmup) }),
        warmup: o.warmup,
        step: (b) => training.step(b, checkpointing),
        record: ({ losses, steps, seconds, peakBytes }, used) => {
          const tokens = used.reduce((a, b) => a + b.tokens.length, 0);
          const targets = used.reduce((a, b) => a + b.targetCount, 0);
          const flops = used.reduce((a, b) => a + adapterStepFlops(c, L, ADAPTER_LEN, b.seqLens, b.targetCount).total, 0);
          const padded = used.reduce((a, b) => a + b.seqLens.length * Math.max(...b.seqLens), 0);
          res.train!.push({
            B: mb.B,
            steps,
            tokens,
            targets,
            paddingShare: 1 - tokens / padded,
            seconds,
            tokPerS: tokens / seconds,
            msPerStep: (1e3 * seconds) / steps,
            flopsPerStep: flops / steps,
            tflops: flops / seconds / 1e12,
            mfu: peakFlops ? flops / seconds / peakFlops : null,
            peakBytes,
            activationBytes: training.graph(checkpointing).activationBytes,
            checkpointing,
            losses,
          });
          bench.log(`gpu-7b: ${label}: ${(tokens / seconds).toFixed(0)} tok/s, ${((1e3 * seconds) / steps).toFixed(1)} ms/step, ` +
            `MFU ${peakFlops ? `${((100 * flops) / seconds / peakFlops).toFixed(1)}%` : 'unknown'}, peak ${(peakBytes / 2 ** 30).toFixed(1)} GiB`);
        },
      });
    }

    // decode at batch 1 with the (trained) adapter attached
    if (o.decode > 1 && now() < deadline - 5) {
      try {
        model.setAdapter(training.adapter);
        const prompt = file.decodePrompt;
        const stamps: number[] = [];
        // the clock starts when the prefill's token is out (as bench/decode.ts and run.c time it)
        for await (const _ of generateTokens(model, prompt, { temperature: 0, maxTokens: o.decode, stopTokens: [] })) {
          stamps.push(now());
          if (now() > deadline) break;
        }
        if (stamps.length < 2) throw new Error(`decode produced ${stamps.length} tokens`);
        const tokPerS = (stamps.length - 1) / (stamps[stamps.length - 1] - stamps[0]);
        const bytesPerToken = decodeWeightBytes(c, 2); // bf16 matrices
        const bound = bandwidth ? bandwidth / bytesPerToken : null;
        res.decode = {
          promptTokens: prompt.length,
          tokens: stamps.length,
          tokPerS,
          msPerToken: 1e3 / tokPerS,
          bytesPerToken,
          boundTokPerS: bound,
          pctOfBound: bound ? (100 * tokPerS) / bound : null,
        };
        bench.log(`gpu-7b: decode ${tokPerS.toFixed(1)} tok/s` +
          (bound ? ` (${((100 * tokPerS) / bound).toFixed(0)}% of the ${bound.toFixed(0)} tok/s bandwidth bound)` : ' (bandwidth unknown: no bound)'));
      } catch (e) {
        res.errors.push(`decode: ${errorMessage(e)}`);
      } finally {
        model.setAdapter(undefined);
      }
    } else if (o.decode > 1) res.skipped.push('decode: out of time');
    bench.save();
  } finally {
    training.dispose();
    model.dispose();
  }
}

// ---- main -------------------------------------------------------------------------------------

interface Options extends TrainOptions {
  mode: 'gemm' | 'train';
  shape: '7b' | 'small';
  /** tokens to decode after the training runs */
  decode: number;
}

export function parseArgs(argv: string[]): Options {
  const mode = argv[0];
  if (mode !== 'gemm' && mode !== 'train') throw new Error(`usage: gpu-7b.js gemm|train [options] (got ${mode ?? 'nothing'})`);
  const o: Options = { mode, shape: '7b', micro: [4, 8, 16], steps: 4, warmup: 1, decode: 128, budget: 150, seed: 1234, log: logToStderr };
  for (let i = 1; i < argv.length; i++) {
    const x = argv[i];
    const num = () => {
      const v = Number(argv[++i]);
      if (!Number.isFinite(v) || v < 0) throw new Error(`${x} expects a non-negative number, got ${argv[i]}`);
      return v;
    };
    if (x === '--batches') o.batches = argv[++i];
    else if (x === '--micro') o.micro = argv[++i].split(',').map(Number);
    else if (x === '--steps') o.steps = Math.max(1, num());
    else if (x === '--warmup') o.warmup = num();
    else if (x === '--decode') o.decode = num();
    else if (x === '--budget') o.budget = num();
    else if (x === '--seed') o.seed = num();
    else if (x === '--shape') {
      const v = argv[++i];
      if (v !== '7b' && v !== 'small') throw new Error(`--shape expects 7b or small, got ${v}`);
      o.shape = v;
    }
    else if (x === '--json') o.json = argv[++i];
    else throw new Error(`gpu-7b: unknown argument ${x}`);
  }
  if (o.mode === 'train' && !o.batches) throw new Error('gpu-7b train needs --batches FILE (written by scripts/gpu-check.ts)');
  return o;
}

export async function main(argv: string[] = process.argv.slice(2)): Promise<Gpu7bResult> {
  const o = parseArgs(argv);
  const deadline = now() + o.budget;
  const caps = native.capabilities().cuda;
  const dev = caps.deviceList?.[Number(process.env.LLAMA_ADAPTER_CUDA_DEVICE || 0)]; // the device the backend uses
  const res: Gpu7bResult = { mode: o.mode, gpu: gpuRecord(caps, dev), peaks: gpuPeaks(dev?.name ?? '', dev), skipped: [], errors: [] };
  requireUsableCuda(caps);
  o.log(`gpu-7b: ${res.gpu.name || 'unnamed GPU'}; peaks: ${res.peaks.note}; GEMM engine ${caps.gemm}`);
  const bench = new DeviceBench('gpu-7b', res, 'cuda', o);
  return bench.run(() => (o.mode === 'gemm' ? runGemm(bench, deadline) : runTrain(bench, o, deadline)));
}

if (require.main === module) runFromCommandLine('gpu-7b', main);
