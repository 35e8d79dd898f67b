// The GPU check's image benchmarks (issue 10 item 7, issue 11 item 6), beside bench/gpu-7b.ts: its
// random weights made on the device (native.randomUniform, no file), on the CUDA backend, and the
// frame the device programs share (bench/device-bench.ts). Run by scripts/gpu-check-run.sh on the
// device machine.
//
//   node dist/bench/gpu-mm.js encode [--shape L/14|tiny] [--batch 32] [--runs N] [--dtype bf16|f32]
//        [--device cuda|cpu] [--budget S] [--seed N] [--json FILE]
//   node dist/bench/gpu-mm.js train --batches FILE [--shape 7b|small|tiny] [--micro 4,8,16]
//        [--steps N] [--warmup N] [--device cuda|cpu] [--budget S] [--seed N] [--json FILE]
//
// encode: the CLIP ViT-L/14 vision tower (224 x 224, patch 14, 257 tokens, 24 layers of 1024, FFN
//         4096, 16 heads, projection 768, quick_gelu; matrices bf16, biases and norms f32) through
//         ImageEncoder.forward: images/s over a batch of random normalised pixels (already
//         preprocessed: no decoding here), the best of --runs after one warm-up batch, and the peak
//         of native.cudaMemory().
// train:  one optimiser step of the image-conditioned adapter (SPEC §8) at the LLaMA-7B shape:
//         L = 30, K = 10, per-head gates, projection width R = 128 from one CLIP ViT-L/14 feature
//         (D = 1024, the [cls] hidden size) per image; per-segment prompts = base prompts + the
//         projected image feature (ImagePromptStep, as Trainer.run builds it), forward, backward to
//         the prompts, gates and projection, AdamW. The batches are gpu-7b's Alpaca micro-batches
//         (gpu-check.ts writes them); every example gets its own image whose features are random
//         (uniform in [-1, 1)), made on the host each step as a features file would give them.
//         Trained tokens/s and the peak of native.cudaMemory() over the steps (weights included).
//
// --shape tiny (and small) exist to run these code paths quickly on the CPU or the CUDA emulator
// (test/gpu-check.test.ts); their figures say nothing about the real shapes. --device cpu makes the
// weights on the CPU backend, where there is no device memory to report (peakBytes 0).
//
// Every figure is measured here; what did not run is recorded as skipped with the reason. The JSON
// is rewritten after each measurement, so a run stopped by its time limit keeps what it got.
import { native, Device, Tensor } from '../lib/native';
import { Adapter } from '../lib/model/adapter';
import { LlamaConfig } from '../lib/model/config';
import { ImagePromptStep } from '../lib/model/image-prompts';
import { EncoderConfig, EncoderLayerWeights, EncoderWeights, tokensPerImage } from '../lib/encoder/config';
import { ImageEncoder } from '../lib/encoder/encoder';
import { AdapterGrads, AdapterGraph } from '../lib/train/graph';
import { AdamW, paperAdamW } from '../lib/train/optimizer';
import { randomCheckpoint } from './gpu-7b';
import { DeviceArgs, TrainOptions } from './device-args';
import {
  ADAPTER_LEN, adaptedLayers, bytesInUse, DeviceBench, DeviceResult, gpuRecord, JsonBatch, LLAMA_7B_CONFIG, loadModel, logToStderr, now, packJson,
  peakBytes, readBatchesFile, requireUsableCuda, resetPeak, runFromCommandLine, SMALL_CONFIG,
} from './device-bench';

/** CLIP ViT-L/14's vision tower (openai/clip-vit-large-patch14), and a tiny one of the same kind. */
export const CLIP_L14: EncoderConfig = {
  family: 'clip',
  architecture: 'CLIPVisionModelWithProjection',
  dim: 1024,
  ffnDim: 4096,
  nHeads: 16,
  nLayers: 24,
  imageSize: 224,
  patchSize: 14,
  channels: 3,
  eps: 1e-5,
  act: 'quick_gelu',
  projectionDim: 768,
};
export const CLIP_TINY: EncoderConfig = { ...CLIP_L14, dim: 32, ffnDim: 64, nHeads: 4, nLayers: 2, imageSize: 28, patchSize: 14, projectionDim: 16 };

/** The image-conditioned adapter's projection width and the feature size (ViT-L/14's hidden size). */
export const PROJ_WIDTH = 128;
export const L14_FEATURES = CLIP_L14.dim;
/** a tiny LLaMA for the CPU test: the real vocabulary (the batches' token ids), 3 layers */
export const TINY_LLAMA: LlamaConfig = { ...LLAMA_7B_CONFIG, dim: 32, hiddenDim: 64, nLayers: 3, nHeads: 4, nKvHeads: 4 };

/** Random CLIP weights on `device`: matrices uniform ±1/√fan_in in `dtype`, biases ±0.1, the class
 *  and position embeddings ±0.5, unit norms (as bench/embed-images.ts writes its random file). */
export function randomEncoderWeights(c: EncoderConfig, dtype: 'f32' | 'bf16', device: Device, seed: number): EncoderWeights {
  let k = 0;
  const made: Tensor[] = [];
  const keep = (t: Tensor) => (made.push(t), t);
  const mat = (rows: number, cols: number) => keep(native.randomUniform([rows, cols], dtype, device, seed * 1000 + k++, 1 / Math.sqrt(cols)));
  const vec = (shape: number[], scale: number) => keep(native.randomUniform(shape, 'f32', device, seed * 1000 + k++, scale));
  const ones = (n: number) => keep(native.fromArray(new Float32Array(n).fill(1), [n], 'f32', device));
  const { dim: C, ffnDim: F, channels: Cin, patchSize: P } = c;
  try {
    const layers: EncoderLayerWeights[] = [];
    for (let l = 0; l < c.nLayers; l++)
      layers.push({
        ln1w: ones(C), ln1b: vec([C], 0.1),
        wq: mat(C, C), bq: vec([C], 0.1),
        wk: mat(C, C), bk: vec([C], 0.1),
        wv: mat(C, C), bv: vec([C], 0.1),
        wo: mat(C, C), bo: vec([C], 0.1),
        ln2w: ones(C), ln2b: vec([C], 0.1),
        w1: mat(F, C), b1: vec([F], 0.1),
        w2: mat(C, F), b2: vec([C], 0.1),
      });
    return {
      patchW: mat(C, Cin * P * P), // (C, Cin*P*P)
      cls: vec([C], 0.5),
      pos: vec([tokensPerImage(c), C], 0.5), // (T, C)
      preNorm: { w: ones(C), b: vec([C], 0.1) },
      layers,
      postNorm: { w: ones(C), b: vec([C], 0.1) },
      projection: c.projectionDim ? mat(c.projectionDim, C) : undefined, // (Dp, C)
    };
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
}

/** Encoder FLOPs per image (multiply-adds x 2): patches, q/k/v/o, attention, MLP, projection. */
export function encoderFlopsPerImage(c: EncoderConfig): number {
  const N = (c.imageSize / c.patchSize) ** 2;
  const T = N + 1;
  const { dim: C, ffnDim: F, channels: Cin, patchSize: P } = c;
  return 2 * (N * Cin * P * P * C + c.nLayers * (T * 4 * C * C + 2 * T * T * C + 2 * T * C * F) + C * (c.projectionDim ?? 0));
}

// ---- results ----------------------------------------------------------------------------------

export interface EncodeRow {
  batch: number;
  runs: number;
  /** the best run: pixels uploaded, forward, features read back */
  seconds: number;
  imagesPerS: number;
  tflops: number;
  peakBytes: number;
  /** every run's images/s */
  all: number[];
}

export interface MmTrainRow {
  B: number;
  steps: number;
  tokens: number;
  images: number;
  seconds: number;
  tokPerS: number;
  msPerStep: number;
  peakBytes: number;
  losses: number[];
}

export interface GpuMmResult extends DeviceResult {
  mode: 'encode' | 'train';
  device: Device;
  encoder?: EncoderConfig & { dtype: string; flopsPerImage: number };
  shape?: LlamaConfig & { adapterLayers: number; adapterLen: number; projWidth: number; featureSize: number };
  weights?: { bytes: number; seconds: number };
  encode?: EncodeRow;
  train?: MmTrainRow[];
}

// ---- encode -----------------------------------------------------------------------------------

async function runEncode(bench: DeviceBench<GpuMmResult>, o: Options, deadline: number): Promise<void> {
  const { res } = bench;
  const c = o.shape === 'tiny' ? CLIP_TINY : CLIP_L14;
  res.encoder = { ...c, dtype: o.dtype, flopsPerImage: encoderFlopsPerImage(c) };
  const t0 = now();
  const enc = ImageEncoder.fromWeights(c, randomEncoderWeights(c, o.dtype, o.device, o.seed), o.device, `random CLIP ViT-${o.shape} (seed ${o.seed})`);
  try {
    await native.synchronize();
    res.weights = { bytes: bytesInUse(o.device), seconds: now() - t0 };
    bench.save();
    const S = c.imageSize;
    const B = o.batch;
    // normalised pixels in [-2, 2), made on the host as embed() would hand them over
    const px = native.randomUniform([B, c.channels, S, S], 'f32', 'cpu', o.seed + 7, 2);
    const host = (await px.read()) as Float32Array;
    px.dispose();
    const once = async () => {
      const x = native.fromArray(host, [B, c.channels, S, S], 'f32', o.device);
      const [f] = enc.forward(x);
      try {
        return (await f.read()) as Float32Array;
      } finally {
        x.dispose();
        f.dispose();
      }
    };
    resetPeak(o.device);
    const warm = await once(); // warm-up (allocation pools, the GEMM engine's first calls)
    if (!warm.every(Number.isFinite)) throw new Error('encode: the warm-up batch gave non-finite features');
    const times: number[] = [];
    for (let r = 0; r < o.runs; r++) {
      if (r > 0 && now() > deadline - 2 * Math.min(...times)) {
        res.skipped.push(`encode: ${o.runs - r} of ${o.runs} runs left out (out of time)`);
        break;
      }
      const s0 = now();
      await once();
      times.push(now() - s0);
    }
    const best = Math.min(...times);
    res.encode = {
      batch: B,
      runs: times.length,
      seconds: best,
      imagesPerS: B / best,
      tflops: (B * encoderFlopsPerImage(c)) / best / 1e12,
      peakBytes: peakBytes(o.device),
      all: times.map((t) => B / t),
    };
    bench.log(`gpu-mm: CLIP ViT-${o.shape} ${o.dtype}, batch ${B}: ${res.encode.imagesPerS.toFixed(1)} images/s (${res.encode.tflops.toFixed(1)} TFLOP/s), ` +
      `peak ${(res.encode.peakBytes / 2 ** 30).toFixed(2)} GiB`);
  } finally {
    enc.dispose();
  }
}

// ---- train ------------------------------------------------------------------------------------

async function runTrain(bench: DeviceBench<GpuMmResult>, o: Options, deadline: number): Promise<void> {
  const { res } = bench;
  const file = readBatchesFile(o.batches!);
  if (!Array.isArray(file?.micro)) throw new Error(`--batches ${o.batches}: no "micro" list (a batches file from scripts/gpu-check.ts)`);
  const c = o.shape === 'tiny' ? TINY_LLAMA : o.shape === 'small' ? SMALL_CONFIG : LLAMA_7B_CONFIG;
  const D = o.shape === 'tiny' ? CLIP_TINY.dim : L14_FEATURES;
  const R = o.shape === 'tiny' ? 8 : PROJ_WIDTH;
  const L = adaptedLayers(c);
  res.shape = { ...c, adapterLayers: L, adapterLen: ADAPTER_LEN, projWidth: R, featureSize: D };
  const { model, weights } = await loadModel(() => randomCheckpoint(c, o.seed, o.device), o.device);
  res.weights = weights;
  bench.save();
  // the projection starts at random (not zero) so that every path carries gradient, as mm-train-step
  const adapter = Adapter.init(c, { layers: L, len: ADAPTER_LEN, gate: 'per-head', image: { featureLayers: [-1], featureSize: D, width: R } }, o.seed, o.device, 'random');
  const opt = new AdamW(adapter.parameters(), paperAdamW, undefined, adapter.decayMask());
  const grads = new AdapterGrads(adapter);
  const graph = new AdapterGraph(model, adapter);
  res.train = [];
  let imageSeed = o.seed * 7919;
  // one image per example: keys img0..img{S-1}, unique within the step
  const withImages = (j: JsonBatch) => {
    const b = packJson(j);
    return { ...b, images: b.seqLens.map((_, s) => `img${s}`) };
  };
  /** one optimiser step of the image-conditioned adapter, as Trainer.run takes it: the mean loss per target */
  const step = async (b: ReturnType<typeof withImages>) => {
    const keys = b.images;
    // (S, D) features as a features file would hand them over (host f32)
    const f = native.randomUniform([keys.length, D], 'f32', 'cpu', imageSeed++, 1);
    const values = (await f.read()) as Float32Array;
    f.dispose();
    grads.zero(); // as Trainer.run
    const prompts = new ImagePromptStep(adapter.image!, keys, values, true);
    try {
      const r = await graph.run(b, 1 / b.targetCount, grads, prompts);
      prompts.backward(grads.image!);
      await opt.update(grads.all(), 1e-3);
      return r.lossSum / r.targets;
    } finally {
      prompts.dispose();
    }
  };
  try {
    for (const mb of file.micro.filter((m) => o.micro.includes(m.B))) {
      const label = `B=${mb.B}`;
      await bench.timedRun({
        label,
        startBy: deadline - 20,
        stopBy: deadline - 15,
        batches: () => ({ timed: mb.steps.slice(0, o.steps).map(withImages), warm: withImages(mb.warmup) }),
        warmup: o.warmup,
        step,
        record: ({ losses, steps, seconds, peakBytes }, used) => {
          const tokens = used.reduce((a, b) => a + b.tokens.length, 0);
          res.train!.push({
            B: mb.B,
            steps,
            tokens,
            images: used.reduce((a, b) => a + b.images.length, 0),
            seconds,
            tokPerS: tokens / seconds,
            msPerStep: (1e3 * seconds) / steps,
            peakBytes,
            losses,
          });
          bench.log(`gpu-mm: image-conditioned ${label}: ${(tokens / seconds).toFixed(0)} tok/s, ${((1e3 * seconds) / steps).toFixed(1)} ms/step, ` +
            `peak ${(peakBytes / 2 ** 30).toFixed(1)} GiB`);
        },
      });
    }
  } finally {
    grads.dispose();
    opt.dispose();
    adapter.dispose();
    model.dispose();
  }
}

// ---- main -------------------------------------------------------------------------------------

interface Options extends TrainOptions {
  mode: 'encode' | 'train';
  shape: 'L/14' | '7b' | 'small' | 'tiny';
  device: Device;
  dtype: 'f32' | 'bf16';
  /** encode: images per batch, and the timed batches */
  batch: number;
  runs: number;
}

export function parseArgs(argv: string[]): Options {
  const mode = argv[0];
  if (mode !== 'encode' && mode !== 'train') throw new Error(`usage: gpu-mm.js encode|train [options] (got ${mode ?? 'nothing'})`);
  const o: Options = {
    mode,
    shape: mode === 'encode' ? 'L/14' : '7b',
    device: 'cuda',
    dtype: 'bf16',
    batch: 32,
    runs: 3,
    micro: [4, 8, 16],
    steps: 4,
    warmup: 1,
    budget: 60,
    seed: 1234,
    log: logToStderr,
  };
  const args = new DeviceArgs(argv);
  for (let x = args.next(); x !== undefined; x = args.next()) {
    if (args.sharedFlag(o, '4,8,16')) continue;
    if (x === '--batch') o.batch = args.int(1);
    else if (x === '--runs') o.runs = args.int(1);
    else if (x === '--dtype') o.dtype = args.oneOf(['bf16', 'f32'] as const);
    else if (x === '--shape') o.shape = args.oneOf(mode === 'encode' ? (['L/14', 'tiny'] as const) : (['7b', 'small', 'tiny'] as const));
    else throw new Error(`gpu-mm: unknown argument ${x}`);
  }
  if (o.mode === 'train' && !o.batches) throw new Error('gpu-mm train needs --batches FILE (written by scripts/gpu-check.ts)');
  return o;
}

export async function main(argv: string[] = process.argv.slice(2)): Promise<GpuMmResult> {
  const o = parseArgs(argv);
  const deadline = now() + o.budget;
  const caps = native.capabilities().cuda;
  const res: GpuMmResult = { mode: o.mode, device: o.device, gpu: gpuRecord(caps, caps.deviceList?.[0]), skipped: [], errors: [] };
  if (o.device === 'cuda') requireUsableCuda(caps);
  const bench = new DeviceBench('gpu-mm', res, o.device, o);
  return bench.run(() => (o.mode === 'encode' ? runEncode(bench, o, deadline) : runTrain(bench, o, deadline)));
}

if (require.main === module) runFromCommandLine('gpu-mm', main);
