// Image-conditioned training throughput (SPEC §8): one optimiser step (I_p once per image of the
// step, per-segment prompt keys/values, forward, backward to prompts, gates and the projection,
// AdamW) on the CPU backend, in trained tokens/s, beside the same step in PyTorch float32
// (bench/torch_mm_train_step.py: per-example prompts on a padded batch) on the same checkpoint,
// the same batches and the same thread count; and, in the same rounds, both engines' text step on
// those batches (images ignored: shared prompts, no projection), for what the images cost.
//
// Batches: the Alpaca sample (../shared/data/alpaca/alpaca_small.json), seeded shuffle, truncated
// to T tokens; record i gets the Fashion-MNIST training photo i mod 6000 (its 1280 MobileNetV2
// features), except every fourth record, which stays text-only (a mixed batch). The adapter: top
// N - 2 layers, K = 10, per-head gates drawn N(0, 1) (--gate-init random: every path carries
// gradient), projection width R = 128.
//
//   node dist/bench/mm-train-step.js [--models 260K,15M] [--steps N] [--batch B] [--seq T]
//        [--threads N] [--repeats R] [--wait-idle S] [--seed N] [--no-torch] [--json FILE]
import './blas-choice'; // first: before the addon loads
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native } from '../lib/native';
import { Batch, Batcher, loadAlpaca, tokenizeRecords } from '../lib/data/alpaca';
import { Adapter } from '../lib/model/adapter';
import { Llama } from '../lib/model/llama';
import { loadTokenizer } from '../lib/tokenizer';
import { AdapterGrads, AdapterGraph } from '../lib/train/graph';
import { AdamW, paperAdamW } from '../lib/train/optimizer';
import { FeaturesFileSource } from '../lib/train/image-features';
import { imagePromptsFor } from '../lib/train/trainer';
import { dataDir, outDir, repoRoot, STORIES15M, writeRandomLlama2c } from './decode';
import { bestTorchEnv, describeEnv } from './train-step';
import { IdleGate } from './gemm';

const PYTHON = process.env.PYTHON ?? '/usr/bin/python3';
const TORCH_SCRIPT = path.join(repoRoot, 'bench', 'torch_mm_train_step.py');
const FEATURES = path.join(dataDir, 'fashion-mnist', 'features-mobilenetv2.safetensors');
const K = 10;
const R = 128;

interface Case {
  label: string;
  file: string;
  tokenizer: string;
  steps: number;
}

function cases(which: string[], seed: number): Case[] {
  return which.map((m) => {
    if (m === '260K')
      return { label: 'stories260K', file: path.join(dataDir, 'stories260K', 'stories260K.bin'), tokenizer: path.join(dataDir, 'stories260K', 'tok512.bin'), steps: 8 };
    if (m === '15M') {
      const file = path.join(outDir, `random-15M-seed${seed}.bin`);
      writeRandomLlama2c(file, STORIES15M, seed);
      return { label: 'random 15M shape', file, tokenizer: path.join(dataDir, 'llama-tokenizer', 'tokenizer.model'), steps: 6 };
    }
    throw new Error(`mm-train-step: unknown model ${m} (expected 260K or 15M)`);
  });
}

function makeBatches(tokenizer: string, T: number, B: number, count: number, seed: number): Batch[] {
  const tok = loadTokenizer(tokenizer);
  const photos = fs
    .readFileSync(path.join(dataDir, 'fashion-mnist', 'train.jsonl'), 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => (JSON.parse(l) as { image: string }).image);
  const records = loadAlpaca(path.join(dataDir, 'alpaca', 'alpaca_small.json')).map((r, i) => (i % 4 === 3 ? r : { ...r, image: photos[i % photos.length] }));
  const { examples } = tokenizeRecords(tok, records, { maxSeqLen: T, warn: () => {} });
  const batcher = new Batcher(examples, { batchSize: B, seed, shuffle: true });
  return Array.from({ length: count }, () => batcher.next());
}

const now = () => Number(process.hrtime.bigint()) / 1e9;

async function ourSteps(model: Llama, adapter: Adapter, images: FeaturesFileSource | undefined, batches: Batch[], warmup: number) {
  const opt = new AdamW(adapter.parameters(), paperAdamW, undefined, adapter.decayMask());
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
      const b = images ? batches[i] : { ...batches[i], images: undefined };
      grads.zero(); // as Trainer.run
      const prompts = await imagePromptsFor(adapter, images, [b], true);
      const r = await graph.run(b, 1 / b.targetCount, grads, prompts);
      if (prompts) prompts.backward(grads.image!);
      prompts?.dispose();
      await opt.update(grads.all(), 1e-3);
      losses.push(r.lossSum / r.targets);
      if (i >= warmup) tokens += b.tokens.length;
    }
    await native.synchronize();
    return { seconds: now() - t0, tokens, losses };
  } finally {
    grads.dispose();
    opt.dispose();
  }
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const o = { models: ['260K', '15M'], steps: 0, batch: 8, seq: 256, threads: os.cpus().length, repeats: 3, waitIdle: 60, seed: 1234, torch: true, json: '' };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    const num = () => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 1) throw new Error(`${x} expects a positive integer, got ${argv[i]}`);
      return v;
    };
    if (x === '--models') o.models = argv[++i].split(',');
    else if (x === '--steps') o.steps = num();
    else if (x === '--batch') o.batch = num();
    else if (x === '--seq') o.seq = num();
    else if (x === '--threads') o.threads = num();
    else if (x === '--repeats') o.repeats = num();
    else if (x === '--seed') o.seed = num();
    else if (x === '--wait-idle') o.waitIdle = Number(argv[++i]);
    else if (x === '--no-torch') o.torch = false;
    else if (x === '--json') o.json = argv[++i];
    else throw new Error(`mm-train-step: unknown argument ${x}`);
  }
  native.setThreads(o.threads);
  fs.mkdirSync(outDir, { recursive: true });
  const images = new FeaturesFileSource(FEATURES);
  const rows: Record<string, unknown>[] = [];
  const env = bestTorchEnv(o.threads);
  const warmup = 1;
  // on a shared machine, each timed run waits for idle CPUs (bench/gemm.ts)
  const gate = new IdleGate(o.waitIdle);
  console.log(`| model | step | T | tokens/step | images/step | ours tok/s | PyTorch f32 tok/s | ours / PyTorch | max loss diff (rel) |`);
  console.log('|---|---|---|---|---|---|---|---|---|');
  try {
    for (const mc of cases(o.models, o.seed)) {
      const model = await Llama.load(mc.file, { dtype: 'f32', device: 'cpu' });
      try {
        const c = model.config;
        const L = Math.max(1, c.nLayers - 2);
        const T = Math.min(o.seq, c.maxSeqLen);
        const steps = o.steps || mc.steps;
        const timed = makeBatches(mc.tokenizer, T, o.batch, steps, o.seed);
        const longest = timed.reduce((a, b) => (b.tokens.length > a.tokens.length ? b : a));
        const batches = [...Array.from({ length: warmup }, () => longest), ...timed];
        const cfg = { layers: L, len: K, gate: 'per-head' as const, image: { featureLayers: [-1], featureSize: images.D, width: R } };
        const mk = () => Adapter.init(c, cfg, o.seed, 'cpu', 'random');
        const init = await (async () => {
          const a = mk();
          const v = await a.values();
          a.dispose();
          return v;
        })();
        const job = path.join(outDir, `mm-train-step-${mc.label.replace(/\W+/g, '_')}-T${T}.json`);
        if (o.torch) {
          const jobBatches = [];
          for (const b of batches) {
            const S = b.segments.length - 1;
            const keys = [...new Set((b.images ?? []).filter((k): k is string => k !== null))];
            const feats: number[] = [];
            for (const k of keys) feats.push(...(await images.get(k)));
            const ids = [];
            const labels = [];
            for (let s = 0; s < S; s++) {
              ids.push(Array.from(b.tokens.subarray(b.segments[s], b.segments[s + 1])));
              labels.push(Array.from(b.labels.subarray(b.segments[s], b.segments[s + 1])));
            }
            jobBatches.push({ ids, labels, features: feats, imageOf: (b.images ?? []).map((k) => (k === null ? -1 : keys.indexOf(k))) });
          }
          fs.writeFileSync(
            job,
            JSON.stringify({
              model: mc.file,
              adapterLayers: L,
              adapterLen: K,
              projWidth: R,
              featureValues: images.M * images.D,
              lr: 1e-3,
              optimizer: { betas: [paperAdamW.beta1, paperAdamW.beta2], eps: paperAdamW.eps, weightDecay: paperAdamW.weightDecay },
              warmup,
              init: { prompts: Array.from(init.prompts), gates: Array.from(init.gates), ...Object.fromEntries(Object.entries(init.image!).map(([k, v]) => [k, Array.from(v)])) },
              batches: jobBatches,
            }),
          );
        }
        // per variant (image step, text step on the same batches) the best round of each engine
        type Ours = { seconds: number; tokens: number; losses: number[] };
        type Torch = { tokens_per_s: number; losses: number[] };
        const best: Record<'image' | 'text', { ours?: Ours; torch?: Torch }> = { image: {}, text: {} };
        const base: NodeJS.ProcessEnv = { ...process.env };
        for (const k of ['OPENBLAS_CORETYPE', 'OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'OMP_WAIT_POLICY']) delete base[k];
        for (let round = 0; round < o.repeats; round++)
          for (const variant of ['image', 'text'] as const) {
            const b = best[variant];
            // the text step starts from the same prompts and gates
            const a = variant === 'image' ? mk() : Adapter.fromValues(c, { ...cfg, image: undefined }, { prompts: init.prompts, gates: init.gates }, 'cpu');
            await gate.wait();
            try {
              const r = await ourSteps(model, a, variant === 'image' ? images : undefined, batches, warmup);
              if (!b.ours || r.tokens / r.seconds > b.ours.tokens / b.ours.seconds) b.ours = r;
            } finally {
              a.dispose();
            }
            if (o.torch) {
              await gate.wait();
              const args = [TORCH_SCRIPT, job, '--threads', String(o.threads), ...(variant === 'text' ? ['--text'] : [])];
              const p = spawnSync(PYTHON, args, { env: { ...base, ...env }, encoding: 'utf8', maxBuffer: 64 << 20 });
              const last = (p.stdout ?? '').trim().split('\n').pop() ?? '';
              if (p.status !== 0 || !last.startsWith('{')) throw new Error(`${TORCH_SCRIPT} failed (status ${p.status}): ${(p.stderr ?? '').slice(-1500)}`);
              const t = JSON.parse(last) as Torch;
              if (!b.torch || t.tokens_per_s > b.torch.tokens_per_s) b.torch = t;
            }
          }
        const imagesPerStep = timed.reduce((n, b) => n + new Set((b.images ?? []).filter((k) => k !== null)).size, 0) / steps;
        for (const variant of ['image', 'text'] as const) {
          const { ours: us, torch } = best[variant];
          const ours = us!.tokens / us!.seconds;
          let worst = 0;
          if (torch) for (let i = 0; i < us!.losses.length; i++) worst = Math.max(worst, Math.abs(us!.losses[i] - torch.losses[i]) / Math.abs(torch.losses[i]));
          const row = {
            model: mc.label,
            step: variant,
            T,
            tokensPerStep: us!.tokens / steps,
            imagesPerStep: variant === 'image' ? imagesPerStep : 0,
            ours,
            torch: torch?.tokens_per_s,
            ratio: torch ? ours / torch.tokens_per_s : undefined,
            lossDiff: torch ? worst : undefined,
          };
          rows.push(row);
          console.log(
            `| ${mc.label} | ${variant === 'image' ? 'image-conditioned' : 'text (same batches)'} | ${T} | ${row.tokensPerStep.toFixed(0)} | ${row.imagesPerStep.toFixed(1)} | ${ours.toFixed(0)} | ` +
              `${torch ? torch.tokens_per_s.toFixed(0) : '–'} | ${row.ratio ? row.ratio.toFixed(2) + 'x' : '–'} | ${torch ? worst.toExponential(1) : '–'} |`,
          );
        }
      } finally {
        model.dispose();
      }
    }
  } finally {
    images.close();
  }
  console.log(
    `\n${o.threads} threads (${os.cpus()[0].model}), batch ${o.batch}, best of ${o.repeats} alternated rounds; PyTorch ${describeEnv(env)}; ` +
      `K ${K}, R ${R}, top N-2 layers adapted, gates N(0,1), 1280 MobileNetV2 features per image, one text-only record in four. ${gate.note()}`,
  );
  if (o.json) fs.writeFileSync(o.json, JSON.stringify(rows, null, 2) + '\n');
}

main().catch((err) => {
  console.error(`mm-train-step: error: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
