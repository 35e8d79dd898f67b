// The GPU check's quantized-base benchmark (issue 13 item 5), beside bench/gpu-7b.ts and built from
// the pieces they share (bench/device-bench.ts): the LLaMA-Adapter training step on a LLaMA-7B-shape
// base whose every matrix (embedding, attention, FFN, LM head) is Q4_K, kept quantized on the device
// as a GGUF base is.
//
//   node dist/bench/gpu-q4k.js train --batches FILE [--shape 7b|tiny] [--micro 4,16] [--full B]
//        [--steps N] [--warmup N] [--device cuda|cpu] [--budget S] [--seed N] [--json FILE]
//
// Weights: random Q4_K blocks made directly (no f32 weights, no quantizer): per block a random fp16
// d near 7.8e-5 and dmin = 8·d, per 32-value sub-block a scale in 48..63 and min = round(15/16 ·
// scale) (so the values centre on 0), and random nibbles; values d·scale·q − dmin·min have std ≈ 0.02
// (as gpu-7b's bf16 weights). One host copy per distinct matrix shape is written to a temporary file,
// mapped, and uploaded once per layer: every layer has its own device copy (the real 7B Q4_K
// footprint, ~3.8 GB), holding the same values. Norms are f32 ones.
// Steps: one optimiser step of LLaMA-Adapter (L = 30, K = 10, per-head gates; forward, backward to
// the adapter, AdamW) exactly as Trainer.run runs it: for each --micro size on gpu-7b's Alpaca
// micro-batches (gpu-check.ts writes them), and --full B (default 4; 0 = none): B sequences of the
// file's maxSeqLen (512) random tokens, every position a target, with activation checkpointing —
// the memory target (≤ 8 GB at 4 × 512) is stated for that batch. Per run: trained tokens/s,
// ms/step and the peak of native.cudaMemory() over the steps (weights included).
//
// --shape tiny (dim 256, the smallest Q4_K row) runs this code path quickly on the CPU or the CUDA
// emulator (test/gpu-check.test.ts); its figures say nothing about the 7B shape. --device cpu has no
// device memory to report (peakBytes 0).
//
// Every figure is measured here; what did not run is recorded as skipped with the reason. The JSON
// is rewritten after each measurement, so a run stopped by its time limit keeps what it got.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native, Device, Tensor } from '../lib/native';
import { LlamaConfig } from '../lib/model/config';
import { Checkpoint } from '../lib/model/weights';
import { f32ToF16, packScales } from '../tools/gguf-writer';
import { DeviceArgs, TrainOptions } from './device-args';
import {
  ADAPTER_LEN, AdapterTraining, adaptedLayers, assembleCheckpoint, DeviceBench, DeviceResult, gpuRecord, JsonBatch, LLAMA_7B_CONFIG,
  loadModel, logToStderr, now, packJson, readBatchesFile, requireUsableCuda, runFromCommandLine,
} from './device-bench';

/** the target for the 7B Q4_K adapter step at 4 × 512 */
export const Q4K_TARGET_BYTES = 8e9;
/** Q4_K: 256 values in 144 bytes */
const QK = 256;
const BLOCK_BYTES = 144;
/** a tiny LLaMA for the CPU test: the real vocabulary (the batches' token ids), rows of 256 */
export const TINY_Q4K: LlamaConfig = { ...LLAMA_7B_CONFIG, dim: 256, hiddenDim: 512, nLayers: 3, nHeads: 4, nKvHeads: 4 };

/** (rows, K) random Q4_K blocks, as described above; a function of seed only. */
export function randomQ4kBytes(rows: number, K: number, seed: number): Uint8Array {
  if (!Number.isInteger(rows) || rows < 1 || !Number.isInteger(K) || K < QK || K % QK)
    throw new Error(`randomQ4kBytes: a (${rows}, ${K}) matrix: rows must be >= 1 and K a multiple of ${QK}`);
  const nb = (rows * K) / QK;
  const out = new Uint8Array(nb * BLOCK_BYTES);
  const u32 = new Uint32Array(out.buffer);
  // 64 fp16 d values in [0.9, 1.1) x 7.8e-5 (normal halves) and dmin = 8 d (exact: exponent + 3)
  const dH: number[] = [];
  const dminH: number[] = [];
  for (let i = 0; i < 64; i++) {
    const d = 7.8e-5 * (0.9 + (0.2 * i) / 64);
    dH.push(f32ToF16(d));
    dminH.push(f32ToF16(8 * d));
  }
  let s = (seed ^ 0x9e3779b9) | 0 || 1; // xorshift32
  const next = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return s >>> 0;
  };
  const ls = new Array<number>(8);
  const lm = new Array<number>(8);
  for (let b = 0; b < nb; b++) {
    const o = b * BLOCK_BYTES;
    const r = next();
    const k = r & 63;
    out[o] = dH[k] & 0xff;
    out[o + 1] = dH[k] >> 8;
    out[o + 2] = dminH[k] & 0xff;
    out[o + 3] = dminH[k] >> 8;
    const r2 = next();
    for (let j = 0; j < 8; j++) {
      ls[j] = 48 + ((r2 >>> (4 * j)) & 15);
      lm[j] = Math.round((ls[j] * 15) / 16);
    }
    packScales(ls, lm, out.subarray(o + 4, o + 16)); // the 12 bytes start zeroed
    for (let w = (o + 16) / 4, e = (o + BLOCK_BYTES) / 4; w < e; w++) u32[w] = next(); // 128 nibble bytes
  }
  return out;
}

/** A LLaMA of shape `c` with every matrix Q4_K (random blocks) and f32 unit norms, on `device`. */
export function randomQ4kCheckpoint(c: LlamaConfig, seed: number, device: Device): Checkpoint {
  const d = c.dim / c.nHeads;
  const Ckv = c.nKvHeads * d;
  const shapes: [number, number][] = [[c.dim, c.dim], [Ckv, c.dim], [c.hiddenDim, c.dim], [c.dim, c.hiddenDim], [c.vocabSize, c.dim]];
  const key = (r: number, k: number) => `${r}x${k}`;
  // one host copy per distinct shape: written to a temporary file, mapped (copied), the file removed
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-q4k-'));
  const host = new Map<string, Tensor>();
  try {
    const file = path.join(dir, 'weights.q4k');
    const fd = fs.openSync(file, 'w');
    const offsets = new Map<string, number>();
    try {
      let off = 0;
      for (const [r, k] of shapes) {
        if (offsets.has(key(r, k))) continue;
        const bytes = randomQ4kBytes(r, k, seed * 1000 + offsets.size);
        fs.writeSync(fd, bytes);
        offsets.set(key(r, k), off);
        off += bytes.length;
      }
    } finally {
      fs.closeSync(fd);
    }
    const map = native.mapFile(file, true);
    try {
      for (const [r, k] of shapes)
        if (!host.has(key(r, k))) host.set(key(r, k), native.fromFile(map, offsets.get(key(r, k))!, [r, k], 'q4_k', 'q4_k', `random Q4_K (${r}, ${k})`));
    } finally {
      map.close(); // the tensors keep what they need
    }
    const deviceCopy = (r: number, k: number) => native.toDevice(host.get(key(r, k))!, device); // the device's own copy (cpu: a new handle)
    return assembleCheckpoint(c, device, deviceCopy, 'gguf', `random Q4_K LLaMA (dim ${c.dim}, ${c.nLayers} layers, seed ${seed})`);
  } finally {
    for (const t of host.values()) t.dispose(); // queued uploads keep their source until they ran
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** B sequences of `T` random token ids in [3, V), every position a target (the last: none). */
export function fullBatch(B: number, T: number, V: number, seed: number): JsonBatch {
  let s = seed * 48271 + 1;
  const id = () => 3 + ((s = (s * 48271) % 2147483647) % (V - 3));
  const ids = Array.from({ length: B }, () => Array.from({ length: T }, id));
  return { ids, labels: ids.map((x) => [...x.slice(1), -1]) };
}

// ---- results ----------------------------------------------------------------------------------

export interface Q4kTrainRow {
  /** 'alpaca' (gpu-7b's micro-batches) or 'full' (B x maxSeqLen random tokens) */
  batch: 'alpaca' | 'full';
  B: number;
  checkpointing: boolean;
  steps: number;
  tokens: number;
  seconds: number;
  tokPerS: number;
  msPerStep: number;
  peakBytes: number;
  losses: number[];
}

export interface GpuQ4kResult extends DeviceResult {
  mode: 'train';
  device: Device;
  shape?: LlamaConfig & { adapterLayers: number; adapterLen: number; weights: 'q4_k'; maxSeqLen: number };
  weights?: { bytes: number; seconds: number };
  targetBytes: number;
  train: Q4kTrainRow[];
}

async function runTrain(bench: DeviceBench<GpuQ4kResult>, o: Options, deadline: number): Promise<void> {
  const { res } = bench;
  const file = readBatchesFile(o.batches!);
  if (!Array.isArray(file?.micro) || !(Number.isInteger(file.maxSeqLen) && file.maxSeqLen >= 2))
    throw new Error(`--batches ${o.batches}: no "micro" list or "maxSeqLen" (a batches file from scripts/gpu-check.ts)`);
  const c = o.shape === 'tiny' ? TINY_Q4K : LLAMA_7B_CONFIG;
  const L = adaptedLayers(c);
  res.shape = { ...c, adapterLayers: L, adapterLen: ADAPTER_LEN, weights: 'q4_k', maxSeqLen: file.maxSeqLen };
  const { model, weights } = await loadModel(() => randomQ4kCheckpoint(c, o.seed, o.device), o.device);
  res.weights = weights;
  bench.log(`gpu-q4k: Q4_K weights ${(weights.bytes / 1e9).toFixed(2)} GB on ${o.device} in ${weights.seconds.toFixed(1)} s`);
  bench.save();
  const training = new AdapterTraining(model, c, L, o.seed, o.device);
  // the smallest Alpaca size, then the full-length batch (the memory target), then the larger sizes
  type Run = { label: string; batch: 'alpaca' | 'full'; B: number; checkpointing: boolean; warm: JsonBatch; timed: JsonBatch[] };
  const alpaca: Run[] = file.micro
    .filter((m) => o.micro.includes(m.B))
    .map((m) => ({ label: `B=${m.B}`, batch: 'alpaca' as const, B: m.B, checkpointing: false, warm: m.warmup, timed: m.steps.slice(0, o.steps) }));
  const plan = alpaca.slice(0, 1);
  if (o.full > 0) {
    const fb = fullBatch(o.full, file.maxSeqLen, c.vocabSize, o.seed);
    plan.push({ label: `B=${o.full} x ${file.maxSeqLen} (checkpointing)`, batch: 'full', B: o.full, checkpointing: true, warm: fb, timed: Array(o.steps).fill(fb) });
  }
  plan.push(...alpaca.slice(1));
  try {
    for (const run of plan) {
      await bench.timedRun({
        label: run.label,
        startBy: deadline - 10, // the timed steps stop 5 s before the deadline
        stopBy: deadline - 5,
        batches: () => ({ timed: run.timed.map(packJson), warm: packJson(run.warm) }),
        warmup: o.warmup,
        step: (b) => training.step(b, run.checkpointing),
        record: ({ losses, steps, seconds, peakBytes }, used) => {
          const tokens = used.reduce((a, b) => a + b.tokens.length, 0);
          const row: Q4kTrainRow = {
            batch: run.batch,
            B: run.B,
            checkpointing: run.checkpointing,
            steps,
            tokens,
            seconds,
            tokPerS: tokens / seconds,
            msPerStep: (1e3 * seconds) / steps,
            peakBytes,
            losses,
          };
          res.train.push(row);
          bench.log(`gpu-q4k: ${run.label}: ${row.tokPerS.toFixed(0)} tok/s, ${row.msPerStep.toFixed(1)} ms/step, ` +
            `peak ${(row.peakBytes / 1e9).toFixed(2)} GB` + (run.batch === 'full' ? ` (target <= ${(Q4K_TARGET_BYTES / 1e9).toFixed(0)} GB)` : ''));
        },
      });
    }
  } finally {
    training.dispose();
    model.dispose();
  }
}

// ---- main -------------------------------------------------------------------------------------

interface Options extends TrainOptions {
  mode: 'train';
  shape: '7b' | 'tiny';
  device: Device;
  /** the full-length batch's size (0: none) */
  full: number;
}

export function parseArgs(argv: string[]): Options {
  const mode = argv[0];
  if (mode !== 'train') throw new Error(`usage: gpu-q4k.js train --batches FILE [options] (got ${mode ?? 'nothing'})`);
  const o: Options = { mode, shape: '7b', device: 'cuda', micro: [4, 16], full: 4, steps: 3, warmup: 1, budget: 60, seed: 1234, log: logToStderr };
  const args = new DeviceArgs(argv);
  for (let x = args.next(); x !== undefined; x = args.next()) {
    if (args.sharedFlag(o, '4,16')) continue;
    if (x === '--full') o.full = args.int(0);
    else if (x === '--shape') o.shape = args.oneOf(['7b', 'tiny'] as const);
    else throw new Error(`gpu-q4k: unknown argument ${x}`);
  }
  if (!o.batches) throw new Error('gpu-q4k train needs --batches FILE (written by scripts/gpu-check.ts)');
  return o;
}

export async function main(argv: string[] = process.argv.slice(2)): Promise<GpuQ4kResult> {
  const o = parseArgs(argv);
  const deadline = now() + o.budget;
  const caps = native.capabilities().cuda;
  const res: GpuQ4kResult = { mode: o.mode, device: o.device, gpu: gpuRecord(caps, caps.deviceList?.[0]), targetBytes: Q4K_TARGET_BYTES, train: [], skipped: [], errors: [] };
  if (o.device === 'cuda') requireUsableCuda(caps);
  const bench = new DeviceBench('gpu-q4k', res, o.device, o);
  return bench.run(() => runTrain(bench, o, deadline));
}

if (require.main === module) runFromCommandLine('gpu-q4k', main);
