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
import { Adapter } from '../lib/model/adapter';
import { LlamaConfig } from '../lib/model/config';
import { Llama } from '../lib/model/llama';
import { Checkpoint, LayerWeights, LlamaWeights } from '../lib/model/weights';
import { generateTokens } from '../lib/generate/generate';
import { AdapterGrads, AdapterGraph, PackedBatch } from '../lib/train/graph';
import { AdamW, paperAdamW } from '../lib/train/optimizer';
import { ADAPTER_STEP_FLOPS_FORMULA, adapterStepFlops, decodeWeightBytes, LLAMA_7B } from './flops';
import { GpuPeaks, gpuPeaks } from './gpu-peaks';


export const ADAPTER_LAYERS = 30;
export const ADAPTER_LEN = 10;
/** std 0.02 (Hugging Face's initializer_range) as a uniform [-a, a): a = 0.02·√3 */
const WEIGHT_SCALE = 0.02 * Math.sqrt(3);

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

const now = () => Number(process.hrtime.bigint()) / 1e9;

/** Random bf16 matrices (uniform, std 0.02) and unit f32 norms, made on the device. */
export function randomCheckpoint(c: LlamaConfig, seed: number, device: Device = 'cuda'): Checkpoint {
  let k = 0;
  const made: Tensor[] = [];
  const mat = (rows: number, cols: number) => {
    const t = native.randomUniform([rows, cols], 'bf16', device, seed * 1000 + k++, WEIGHT_SCALE);
    made.push(t);
    return t;
  };
  const ones = () => {
    const t = native.fromArray(new Float32Array(c.dim).fill(1), [c.dim], 'f32', device);
    made.push(t);
    return t;
  };
  const d = c.dim / c.nHeads;
  const Ckv = c.nKvHeads * d;
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
      format: 'hf',
      path: `random LLaMA-7B shape (seed ${seed})`,
      device,
      dispose() {
        if (disposed) return;
        disposed = true;
        for (const t of made) t.dispose();
      },
    } as Checkpoint;
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
}

// ---- batches ----------------------------------------------------------------------------------

/** A micro-batch as the batches file stores it: per example its token ids and next-token labels
 *  (-1 = no loss), the convention of lib/data/alpaca.ts. */
export interface JsonBatch {
  ids: number[][];
  labels: number[][];
}

export interface BatchesFile {
  source: string;
  maxSeqLen: number;
  micro: { B: number; warmup: JsonBatch; steps: JsonBatch[] }[];
  /** a tokenised Alpaca prompt for the decode run */
  decodePrompt: number[];
}

export function packJson(b: JsonBatch): PackedBatch & { targetCount: number; seqLens: number[] } {
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

export interface Gpu7bResult {
  mode: 'gemm' | 'train';
  /** gemm: the engine before the first matmul; gemmAtEnd: after the last (a failure switches it) */
  gpu: { name: string; gemm: string; gemmAtEnd?: string; reason: string; allocator?: string };
  peaks: GpuPeaks;
  shape?: LlamaConfig & { adapterLayers: number; adapterLen: number };
  gemm?: GemmRow[];
  weights?: { bytes: number; seconds: number };
  train?: TrainRow[];
  decode?: DecodeRow;
  formula?: string;
  skipped: string[];
  errors: string[];
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

async function runGemm(res: Gpu7bResult, deadline: number, save: () => void): Promise<void> {
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
          save();
        }
      }
    } finally {
      for (const t of ws) t.dispose();
    }
  }
}

// ---- train + decode ---------------------------------------------------------------------------

async function runTrain(res: Gpu7bResult, o: Options, deadline: number, save: () => void): Promise<void> {
  const peakFlops = res.peaks.bf16Flops;
  const bandwidth = res.peaks.bandwidth;
  const file: BatchesFile = JSON.parse(fs.readFileSync(o.batches!, 'utf8'));
  const c = o.shape === 'small' ? SMALL_CONFIG : LLAMA_7B_CONFIG;
  const L = Math.min(ADAPTER_LAYERS, c.nLayers - 2);
  res.shape = { ...c, adapterLayers: L, adapterLen: ADAPTER_LEN };
  const t0 = now();
  const ckpt = randomCheckpoint(c, o.seed);
  await native.synchronize();
  const model = Llama.fromCheckpoint(ckpt);
  res.weights = { bytes: native.cudaMemory().inUse, seconds: now() - t0 };
  res.formula = ADAPTER_STEP_FLOPS_FORMULA;
  save();
  const adapter = Adapter.init(c, { layers: L, len: ADAPTER_LEN, gate: 'per-head' }, o.seed, 'cuda');
  const opt = new AdamW(adapter.parameters(), paperAdamW);
  const grads = new AdapterGrads(adapter);
  const graphs = { plain: new AdapterGraph(model, adapter), checkpointing: new AdapterGraph(model, adapter, { checkpointing: true }) };
  // every micro-batch size as is, then the smallest again with activation checkpointing (the
  // memory target is stated at 4 x 512)
  const plan = file.micro.filter((mb) => o.micro.includes(mb.B)).map((mb) => ({ mb, checkpointing: false }));
  if (plan.length) plan.push({ mb: plan[0].mb, checkpointing: true });
  res.train = [];
  try {
    for (const { mb, checkpointing } of plan) {
      const graph = checkpointing ? graphs.checkpointing : graphs.plain;
      const label = `B=${mb.B}${checkpointing ? ' (checkpointing)' : ''}`;
      // a batch size is started only with 20 s left (a step at B = 16 takes well under that)
      if (now() > deadline - 20) {
        res.skipped.push(`train ${label}: out of time`);
        continue;
      }
      const timed = mb.steps.slice(0, o.steps).map(packJson);
      const warm = packJson(mb.warmup);
      try {
        native.cudaResetPeak();
        const losses: number[] = [];
        const step = async (b: ReturnType<typeof packJson>) => {
          grads.zero();
          const r = await graph.run(b, 1 / b.targetCount, grads);
          await opt.update(grads.all(), 1e-3);
          return r.lossSum / r.targets;
        };
        for (let i = 0; i < o.warmup; i++) await step(warm);
        await native.synchronize();
        const s0 = now();
        let done = 0;
        for (const b of timed) {
          losses.push(await step(b));
          done++;
          if (now() > deadline - 15) break; // keep what was timed
        }
        await native.synchronize();
        const seconds = now() - s0;
        const used = timed.slice(0, done);
        const tokens = used.reduce((a, b) => a + b.tokens.length, 0);
        const targets = used.reduce((a, b) => a + b.targetCount, 0);
        const flops = used.reduce((a, b) => a + adapterStepFlops(c, L, ADAPTER_LEN, b.seqLens, b.targetCount).total, 0);
        const padded = used.reduce((a, b) => a + b.seqLens.length * Math.max(...b.seqLens), 0);
        res.train.push({
          B: mb.B,
          steps: done,
          tokens,
          targets,
          paddingShare: 1 - tokens / padded,
          seconds,
          tokPerS: tokens / seconds,
          msPerStep: (1e3 * seconds) / done,
          flopsPerStep: flops / done,
          tflops: flops / seconds / 1e12,
          mfu: peakFlops ? flops / seconds / peakFlops : null,
          peakBytes: native.cudaMemory().peak,
          activationBytes: graph.activationBytes,
          checkpointing,
          losses,
        });
        if (done < timed.length) res.skipped.push(`train ${label}: ${timed.length - done} of ${timed.length} timed steps left out (out of time)`);
        o.log(`gpu-7b: ${label}: ${(tokens / seconds).toFixed(0)} tok/s, ${((1e3 * seconds) / done).toFixed(1)} ms/step, ` +
          `MFU ${peakFlops ? `${((100 * flops) / seconds / peakFlops).toFixed(1)}%` : 'unknown'}, peak ${(native.cudaMemory().peak / 2 ** 30).toFixed(1)} GiB`);
      } catch (e) {
        res.errors.push(`train ${label}: ${e instanceof Error ? e.message : String(e)}`);
        o.log(`gpu-7b: ${label} failed: ${e instanceof Error ? e.message : String(e)}`);
      }
      save();
    }

    // decode at batch 1 with the (trained) adapter attached
    if (o.decode > 1 && now() < deadline - 5) {
      try {
        model.setAdapter(adapter);
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
        o.log(`gpu-7b: decode ${tokPerS.toFixed(1)} tok/s` +
          (bound ? ` (${((100 * tokPerS) / bound).toFixed(0)}% of the ${bound.toFixed(0)} tok/s bandwidth bound)` : ' (bandwidth unknown: no bound)'));
      } catch (e) {
        res.errors.push(`decode: ${e instanceof Error ? e.message : String(e)}`);
      } finally {
        model.setAdapter(undefined);
      }
    } else if (o.decode > 1) res.skipped.push('decode: out of time');
    save();
  } finally {
    grads.dispose();
    opt.dispose();
    adapter.dispose();
    model.dispose();
  }
}

// ---- main -------------------------------------------------------------------------------------

interface Options {
  mode: 'gemm' | 'train';
  shape: '7b' | 'small';
  batches?: string;
  micro: number[];
  steps: number;
  warmup: number;
  decode: number;
  budget: number;
  seed: number;
  json?: string;
  log: (s: string) => void;
}

export function parseArgs(argv: string[]): Options {
  const mode = argv[0];
  if (mode !== 'gemm' && mode !== 'train') throw new Error(`usage: gpu-7b.js gemm|train [options] (got ${mode ?? 'nothing'})`);
  const o: Options = { mode, shape: '7b', micro: [4, 8, 16], steps: 4, warmup: 1, decode: 128, budget: 150, seed: 1234, log: (s) => process.stderr.write(s + '\n') };
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

export async function main(argv: string[] = process.argv.slice(2)): Promise<void> {
  const o = parseArgs(argv);
  const deadline = now() + o.budget;
  const caps = native.capabilities().cuda;
  const dev = caps.deviceList?.[Number(process.env.LLAMA_ADAPTER_CUDA_DEVICE || 0)]; // the device the backend uses
  const res: Gpu7bResult = {
    mode: o.mode,
    gpu: { name: dev?.name ?? '', gemm: caps.gemm, reason: caps.reason },
    peaks: gpuPeaks(dev?.name ?? '', dev),
    skipped: [],
    errors: [],
  };
  const save = () => o.json && fs.writeFileSync(o.json, JSON.stringify(res, null, 1) + '\n');
  if (!caps.available) throw new Error(`CUDA is not available: ${caps.reason}`);
  // a forced engine that cannot run: stop here, loudly, rather than time anything
  if (caps.gemm.startsWith('error: ')) throw new Error(`the GEMM engine cannot run: ${caps.gemm.slice(7)}`);
  o.log(`gpu-7b: ${res.gpu.name || 'unnamed GPU'}; peaks: ${res.peaks.note}; GEMM engine ${caps.gemm}`);
  save();
  try {
    if (o.mode === 'gemm') await runGemm(res, deadline, save);
    else await runTrain(res, o, deadline, save);
  } finally {
    res.gpu.gemmAtEnd = native.capabilities().cuda.gemm;
    res.gpu.allocator = native.cudaMemory().allocator;
    o.log(`gpu-7b: GEMM engine at the end: ${res.gpu.gemmAtEnd}`);
    save();
  }
  if (res.errors.length) {
    console.error(`gpu-7b: ${res.errors.length} error(s):\n  ${res.errors.join('\n  ')}`);
    process.exitCode = 1;
  }
}

if (require.main === module) {
  main().catch((e) => {
    console.error(`gpu-7b: FAILED: ${e instanceof Error ? (e.stack ?? e.message).split('\n').slice(0, 5).join('\n') : String(e)}`);
    process.exit(1);
  });
}
