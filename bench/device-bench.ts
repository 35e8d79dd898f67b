// What the GPU check's device programs (bench/gpu-7b.ts, bench/gpu-mm.ts, bench/gpu-q4k.ts) share:
// the LLaMA-7B shape, a checkpoint assembled from matrices made in memory, the batches file, the
// text adapter's training step, a timed training run, the device's memory readings, and the frame of
// a program: the GPU it ran on, the JSON rewritten after each measurement (so a run stopped by its
// time limit keeps what it got), the GEMM engine at the end, the exit status. Like
// bench/device-args.ts, this runs on the lent machine from dist/ alone.
import * as fs from 'fs';
import { native, Capabilities, CudaDeviceAttributes, Device, Tensor } from '../lib/native';
import { Adapter } from '../lib/model/adapter';
import { LlamaConfig } from '../lib/model/config';
import { Llama } from '../lib/model/llama';
import { Checkpoint, CheckpointFormat, LayerWeights, LlamaWeights } from '../lib/model/weights';
import { AdapterGrads, AdapterGraph, PackedBatch } from '../lib/train/graph';
import { AdamW, paperAdamW } from '../lib/train/optimizer';
import { LLAMA_7B } from './flops';

/** seconds, for timing */
export const now = () => Number(process.hrtime.bigint()) / 1e9;
export const logToStderr = (s: string): void => void process.stderr.write(s + '\n');
export const errorMessage = (e: unknown): string => (e instanceof Error ? e.message : String(e));

// ---- the 7B shape -----------------------------------------------------------------------------

export const ADAPTER_LAYERS = 30;
export const ADAPTER_LEN = 10;

export const LLAMA_7B_CONFIG: LlamaConfig = {
  ...LLAMA_7B,
  maxSeqLen: 2048,
  normEps: 1e-5,
  ropeTheta: 10000,
  ropeLayout: 'half', // as Hugging Face's LlamaForCausalLM (the PyTorch side)
  tiedEmbeddings: false,
};

/** A small model of the same vocabulary, for a quick run of this code path (on the CUDA emulator,
 *  or a small GPU): --shape small. Its figures say nothing about the 7B shape. */
export const SMALL_CONFIG: LlamaConfig = { ...LLAMA_7B_CONFIG, dim: 64, hiddenDim: 172, nLayers: 4, nHeads: 4, nKvHeads: 4 };

/** the adapted layers at shape `c`: 30, or all but the lowest two of a smaller model */
export const adaptedLayers = (c: LlamaConfig) => Math.min(ADAPTER_LAYERS, c.nLayers - 2);

/**
 * A LLaMA of shape `c` on `device` whose matrices come from `matrix(rows, cols)`, called in a fixed
 * order (per layer wq, wk, wv, wo, w1, w2, w3; then the embedding and the LM head), with f32 unit
 * norms. Disposing the checkpoint disposes them all; a failure on the way disposes what was made.
 */
export function assembleCheckpoint(c: LlamaConfig, device: Device, matrix: (rows: number, cols: number) => Tensor, format: CheckpointFormat, description: string): Checkpoint {
  const made: Tensor[] = [];
  const mat = (rows: number, cols: number) => {
    const t = matrix(rows, cols);
    made.push(t);
    return t;
  };
  const ones = () => {
    const t = native.fromArray(new Float32Array(c.dim).fill(1), [c.dim], 'f32', device);
    made.push(t);
    return t;
  };
  const Ckv = c.nKvHeads * (c.dim / c.nHeads);
  try {
    const layers: LayerWeights[] = [];
    for (let l = 0; l < c.nLayers; l++)
      layers.push({
        attnNorm: ones(),
        wq: mat(c.dim, c.dim),
        wk: mat(Ckv, c.dim),
        wv: mat(Ckv, c.dim),
        wo: mat(c.dim, c.dim),
        ffnNorm: ones(),
        w1: mat(c.hiddenDim, c.dim),
        w2: mat(c.dim, c.hiddenDim),
        w3: mat(c.hiddenDim, c.dim),
      });
    const weights: LlamaWeights = { embedding: mat(c.vocabSize, c.dim), layers, finalNorm: ones(), classifier: mat(c.vocabSize, c.dim) };
    let disposed = false;
    return {
      config: c,
      weights,
      format,
      path: description,
      device,
      dispose() {
        if (disposed) return;
        disposed = true;
        for (const t of made) t.dispose();
      },
    };
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
}

/** The model of the checkpoint `make` gives, and its weights: the device bytes in use after them
 *  (0 on the CPU) and the seconds to the device's end of work. */
export async function loadModel(make: () => Checkpoint, device: Device): Promise<{ model: Llama; weights: { bytes: number; seconds: number } }> {
  const t0 = now();
  const ckpt = make();
  await native.synchronize();
  const model = Llama.fromCheckpoint(ckpt);
  return { model, weights: { bytes: bytesInUse(device), seconds: now() - t0 } };
}

// ---- device memory (the CPU backend has none to report: 0) ----------------------------------------

export const peakBytes = (device: Device) => (device === 'cuda' ? native.cudaMemory().peak : 0);
export const bytesInUse = (device: Device) => (device === 'cuda' ? native.cudaMemory().inUse : 0);
export const resetPeak = (device: Device) => device === 'cuda' && native.cudaResetPeak();

// ---- batches ----------------------------------------------------------------------------------

/** A micro-batch as the batches file stores it: per example its token ids and next-token labels
 *  (-1 = no loss), the convention of lib/data/alpaca.ts. */
export interface JsonBatch {
  ids: number[][];
  labels: number[][];
}

/** The batches file scripts/gpu-check.ts writes (.gpu-check/data/batches-7b.json). */
export interface BatchesFile {
  source: string;
  maxSeqLen: number;
  micro: { B: number; warmup: JsonBatch; steps: JsonBatch[] }[];
  /** a tokenised Alpaca prompt for the decode run */
  decodePrompt: number[];
}

export type PackedJsonBatch = PackedBatch & { targetCount: number; seqLens: number[] };

/** The examples end to end (positions restarting at 0 per example), their targets counted. */
export function packJson(b: JsonBatch): PackedJsonBatch {
  const S = b.ids.length;
  const segments = new Int32Array(S + 1);
  for (let s = 0; s < S; s++) segments[s + 1] = segments[s] + b.ids[s].length;
  const N = segments[S];
  const tokens = new Int32Array(N);
  const labels = new Int32Array(N);
  const positions = new Int32Array(N);
  let targetCount = 0;
  for (let s = 0; s < S; s++) {
    tokens.set(b.ids[s], segments[s]);
    labels.set(b.labels[s], segments[s]);
    for (let t = 0; t < b.ids[s].length; t++) positions[segments[s] + t] = t;
    for (const y of b.labels[s]) if (y >= 0) targetCount++;
  }
  return { tokens, labels, positions, segments, targetCount, seqLens: b.ids.map((x) => x.length) };
}

/** The batches file at `file`, a read or parse failure naming the flag and the file. */
export function readBatchesFile(file: string): BatchesFile {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`--batches ${file}: ${(e as Error).message}`);
  }
}

// ---- the text adapter's training --------------------------------------------------------------

/** LLaMA-Adapter's training on `model` as Trainer.run sets it up: K = 10 prompts in each of the top
 *  `layers` layers, per-head gates, the paper's AdamW; a graph without activation checkpointing and
 *  one with it. Disposing it leaves the model. */
export class AdapterTraining {
  readonly adapter: Adapter;
  readonly opt: AdamW;
  readonly grads: AdapterGrads;
  private readonly graphs: { plain: AdapterGraph; checkpointing: AdapterGraph };

  constructor(model: Llama, c: LlamaConfig, layers: number, seed: number, device: Device) {
    this.adapter = Adapter.init(c, { layers, len: ADAPTER_LEN, gate: 'per-head' }, seed, device);
    this.opt = new AdamW(this.adapter.parameters(), paperAdamW);
    this.grads = new AdapterGrads(this.adapter);
    this.graphs = { plain: new AdapterGraph(model, this.adapter), checkpointing: new AdapterGraph(model, this.adapter, { checkpointing: true }) };
  }

  graph(checkpointing: boolean): AdapterGraph {
    return checkpointing ? this.graphs.checkpointing : this.graphs.plain;
  }

  /** One optimiser step on `b` (forward, backward to the adapter, AdamW): its mean loss per target. */
  async step(b: PackedJsonBatch, checkpointing: boolean): Promise<number> {
    this.grads.zero();
    const r = await this.graph(checkpointing).run(b, 1 / b.targetCount, this.grads);
    await this.opt.update(this.grads.all(), 1e-3);
    return r.lossSum / r.targets;
  }

  dispose(): void {
    this.grads.dispose();
    this.opt.dispose();
    this.adapter.dispose();
  }
}

// ---- the program's frame ----------------------------------------------------------------------

/** The GPU a program ran on. gemm: the engine at the start; gemmAtEnd: after the last matmul (a
 *  cuBLASLt failure on the way switches the process to our kernel, and the end says so). */
export interface GpuRecord {
  name: string;
  gemm: string;
  gemmAtEnd?: string;
  reason: string;
  allocator?: string;
}

export interface DeviceResult {
  gpu: GpuRecord;
  skipped: string[];
  errors: string[];
}

export function gpuRecord(cuda: Capabilities['cuda'], device: CudaDeviceAttributes | undefined): GpuRecord {
  return { name: device?.name ?? '', gemm: cuda.gemm, reason: cuda.reason };
}

/** Refuses to time anything without CUDA, or with a forced GEMM engine that cannot run: loudly. */
export function requireUsableCuda(cuda: Capabilities['cuda']): void {
  if (!cuda.available) throw new Error(`CUDA is not available: ${cuda.reason}`);
  if (cuda.gemm.startsWith('error: ')) throw new Error(`the GEMM engine cannot run: ${cuda.gemm.slice(7)}`);
}

/** What a timed training run measured. */
export interface TimedSteps {
  /** each timed step's loss */
  losses: number[];
  /** the timed steps run: fewer than asked for when the time ran out */
  steps: number;
  seconds: number;
  /** the device's peak over the warm-up and the timed steps (0 on the CPU) */
  peakBytes: number;
}

export interface TimedRun<B> {
  /** names the run in the log, skipped and errors: "B=4", "B=4 (checkpointing)" */
  label: string;
  /** the run starts only before this time (else it is skipped: out of time) */
  startBy: number;
  /** no timed step starts after this time: what was timed is kept */
  stopBy: number;
  /** the warm-up batch and the timed ones, made once the run starts */
  batches: () => { warm: B; timed: B[] };
  warmup: number;
  step: (b: B) => Promise<number>;
  /** records the run's row from what was measured and the batches timed, and logs it */
  record: (t: TimedSteps, used: B[]) => void;
}

/** One program's results, written to --json after each measurement, and its runs. */
export class DeviceBench<R extends DeviceResult> {
  constructor(
    /** the program's name, starting its log lines: "gpu-7b" */
    readonly program: string,
    readonly res: R,
    readonly device: Device,
    private readonly out: { json?: string; log: (s: string) => void },
  ) {}

  log(s: string): void {
    this.out.log(s);
  }

  save(): void {
    if (this.out.json) fs.writeFileSync(this.out.json, JSON.stringify(this.res, null, 1) + '\n');
  }

  /** Runs the program's phase: the GEMM engine and the allocator recorded at the end (on CUDA),
   *  the JSON saved before and after; errors recorded on the way set the exit status to 1. */
  async run(phase: () => Promise<void>): Promise<R> {
    const { res } = this;
    this.save();
    try {
      await phase();
    } finally {
      if (this.device === 'cuda') {
        res.gpu.gemmAtEnd = native.capabilities().cuda.gemm;
        res.gpu.allocator = native.cudaMemory().allocator;
        this.log(`${this.program}: GEMM engine at the end: ${res.gpu.gemmAtEnd}`);
      }
      this.save();
    }
    if (res.errors.length) {
      console.error(`${this.program}: ${res.errors.length} error(s):\n  ${res.errors.join('\n  ')}`);
      process.exitCode = 1;
    }
    return res;
  }

  /** A training run: `warmup` untimed steps on the warm-up batch, then the timed batches in order
   *  (awaited to the device's end of work on both sides of the clock). A run that throws is recorded
   *  as an error and the next one goes on; the JSON is saved after each. */
  async timedRun<B>(run: TimedRun<B>): Promise<void> {
    const { res, device } = this;
    if (now() > run.startBy) {
      res.skipped.push(`train ${run.label}: out of time`);
      return;
    }
    const { warm, timed } = run.batches();
    try {
      resetPeak(device);
      const losses: number[] = [];
      for (let i = 0; i < run.warmup; i++) await run.step(warm);
      await native.synchronize();
      const s0 = now();
      for (const b of timed) {
        losses.push(await run.step(b));
        if (now() > run.stopBy) break; // keep what was timed
      }
      await native.synchronize();
      const seconds = now() - s0;
      const done = losses.length;
      run.record({ losses, steps: done, seconds, peakBytes: peakBytes(device) }, timed.slice(0, done));
      if (done < timed.length) res.skipped.push(`train ${run.label}: ${timed.length - done} of ${timed.length} timed steps left out (out of time)`);
    } catch (e) {
      res.errors.push(`train ${run.label}: ${errorMessage(e)}`);
      this.log(`${this.program}: ${run.label} failed: ${errorMessage(e)}`);
    }
    this.save();
  }
}

/** Runs a program's main from the command line: a failure prints the first lines of its stack
 *  and exits with status 1. */
export function runFromCommandLine(program: string, main: () => Promise<unknown>): void {
  main().catch((e) => {
    console.error(`${program}: FAILED: ${e instanceof Error ? (e.stack ?? e.message).split('\n').slice(0, 5).join('\n') : String(e)}`);
    process.exit(1);
  });
}
