// Image-encoder throughput at the CLIP ViT-B/16 shape (224 x 224, patch 16, 12 layers of 768,
// random weights), batch 32, beside PyTorch float32 on the same weights and pixels
// (bench/torch_embed_images.py). Prints a markdown table on stdout, progress on stderr. A
// measurement, not a test.
//
//   node dist/bench/embed-images.js [--shape B/16|L/14] [--device cpu|cuda] [--dtype f32|bf16] [--threads N]
//                                   [--batch B] [--runs N] [--wait-idle S] [--no-torch] [--regenerate]
// On a GPU: node dist/bench/embed-images.js --shape L/14 --device cuda --dtype bf16 (PyTorch is compared
// on the CPU only).
import { blasChoiceNote } from './blas-choice'; // first: before the addon loads
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { native, MatmulPrecision } from '../lib/native';
import { ImageEncoder } from '../lib/encoder/encoder';
import { writeSafetensors, SafetensorsTensor } from '../lib/model/safetensors';
import { outDir, dataDir, repoRoot } from './decode';
import { IdleGate, fillUniform } from './gemm';
import { bestTorchEnv, describeEnv } from './train-step';
import { formatTable } from './table';

const PYTHON = process.env.PYTHON ?? '/usr/bin/python3';
/** bench/torch_embed_images.py's configurations; the comparison is against the fastest. */
const TORCH_CONFIGS = [
  { key: 'hf', label: 'float32, HF-style ops (quick_gelu)', bf16: false },
  { key: 'fastpath', label: 'float32, nn.TransformerEncoderLayer fast path (gelu)', bf16: false },
  { key: 'jit', label: 'float32, HF-style, TorchScript frozen + optimize_for_inference (oneDNN)', bf16: false },
  { key: 'autocast_bf16', label: 'bf16 autocast (oneDNN bf16 matmuls), HF-style', bf16: true },
];
const TORCH_SCRIPT = path.join(repoRoot, 'bench', 'torch_embed_images.py');

/** CLIP vision towers: ViT-B/16 (openai/clip-vit-base-patch16) and ViT-L/14 (openai/clip-vit-large-patch14). */
const SHAPES = {
  'B/16': { hidden_size: 768, intermediate_size: 3072, num_attention_heads: 12, num_hidden_layers: 12, image_size: 224, patch_size: 16, projection_dim: 512 },
  'L/14': { hidden_size: 1024, intermediate_size: 4096, num_attention_heads: 16, num_hidden_layers: 24, image_size: 224, patch_size: 14, projection_dim: 768 },
};
type ShapeName = keyof typeof SHAPES;
let SHAPE = SHAPES['B/16'];

/** Encoder FLOPs per image (multiply-adds x 2): patches, q/k/v/o, attention, MLP, projection. */
function flopsPerImage(): number {
  const { hidden_size: C, intermediate_size: F, num_hidden_layers: L, image_size: S, patch_size: P, projection_dim: Dp } = SHAPE;
  const N = (S / P) ** 2;
  const T = N + 1;
  return 2 * (N * 3 * P * P * C + L * (T * 4 * C * C + 2 * T * T * C + 2 * T * C * F) + C * Dp);
}

/** A random CLIPVisionModelWithProjection folder at SHAPE (F32, uniform ±1/sqrt(fan_in)). */
function writeRandomClip(dir: string, seed: number, force: boolean): void {
  if (!force && fs.existsSync(path.join(dir, 'model.safetensors'))) return;
  fs.mkdirSync(dir, { recursive: true });
  const { hidden_size: C, intermediate_size: F, num_hidden_layers: L, image_size: S, patch_size: P, projection_dim: Dp } = SHAPE;
  const T = (S / P) ** 2 + 1;
  let s = seed;
  const rand = (shape: number[], scale: number) => () => {
    const a = fillUniform(new Float32Array(shape.reduce((x, y) => x * y, 1)), s++);
    for (let i = 0; i < a.length; i++) a[i] *= scale;
    return a;
  };
  const ones = (n: number) => () => new Float32Array(n).fill(1);
  const t = (name: string, shape: number[], data: () => Float32Array): SafetensorsTensor => ({ name, dtype: 'F32', shape, data });
  const p = 'vision_model.';
  const list: SafetensorsTensor[] = [
    t(p + 'embeddings.class_embedding', [C], rand([C], 0.5)),
    t(p + 'embeddings.patch_embedding.weight', [C, 3, P, P], rand([C, 3 * P * P], 1 / Math.sqrt(3 * P * P))),
    t(p + 'embeddings.position_embedding.weight', [T, C], rand([T, C], 0.5)),
    t(p + 'pre_layrnorm.weight', [C], ones(C)),
    t(p + 'pre_layrnorm.bias', [C], rand([C], 0.1)),
  ];
  for (let l = 0; l < L; l++) {
    const q = `${p}encoder.layers.${l}.`;
    for (const n of ['layer_norm1', 'layer_norm2']) list.push(t(q + n + '.weight', [C], ones(C)), t(q + n + '.bias', [C], rand([C], 0.1)));
    for (const n of ['q', 'k', 'v', 'out'])
      list.push(t(`${q}self_attn.${n}_proj.weight`, [C, C], rand([C, C], 1 / Math.sqrt(C))), t(`${q}self_attn.${n}_proj.bias`, [C], rand([C], 0.1)));
    list.push(
      t(q + 'mlp.fc1.weight', [F, C], rand([F, C], 1 / Math.sqrt(C))),
      t(q + 'mlp.fc1.bias', [F], rand([F], 0.1)),
      t(q + 'mlp.fc2.weight', [C, F], rand([C, F], 1 / Math.sqrt(F))),
      t(q + 'mlp.fc2.bias', [C], rand([C], 0.1)),
    );
  }
  list.push(t(p + 'post_layernorm.weight', [C], ones(C)), t(p + 'post_layernorm.bias', [C], rand([C], 0.1)));
  list.push(t('visual_projection.weight', [Dp, C], rand([Dp, C], 1 / Math.sqrt(C))));
  writeSafetensors(path.join(dir, 'model.safetensors'), list);
  const config = { ...SHAPE, architectures: ['CLIPVisionModelWithProjection'], model_type: 'clip_vision_model', hidden_act: 'quick_gelu', layer_norm_eps: 1e-5, num_channels: 3 };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
}

/** One configuration of ours: weight storage and CPU matmul precision. */
interface Variant {
  dtype: 'f32' | 'bf16';
  precision: MatmulPrecision;
}

interface Args {
  shape: ShapeName;
  device: 'cpu' | 'cuda';
  /** ours, each timed in every run (default on the CPU: f32 highest and bf16 medium) */
  variants: Variant[];
  threads: number;
  batch: number;
  runs: number;
  waitIdle: number;
  torch: boolean;
  regenerate: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { shape: 'B/16', device: 'cpu', variants: [], threads: os.cpus().length, batch: 32, runs: 3, waitIdle: 60, torch: true, regenerate: false };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    const num = () => {
      const v = Number(argv[++i]);
      if (!(Number.isInteger(v) && v >= (x === '--wait-idle' ? 0 : 1))) throw new Error(`${x} expects a positive integer, got ${argv[i]}`);
      return v;
    };
    if (x === '--shape') {
      const v = argv[++i];
      if (!(v in SHAPES)) throw new Error(`--shape expects B/16 or L/14, got ${v}`);
      a.shape = v as ShapeName;
    } else if (x === '--device') {
      const v = argv[++i];
      if (v !== 'cpu' && v !== 'cuda') throw new Error(`--device expects cpu or cuda, got ${v}`);
      a.device = v;
    } else if (x === '--ours') {
      // e.g. f32,bf16-medium: dtype, then the CPU matmul precision (default highest)
      for (const v of (argv[++i] ?? '').split(',')) {
        const [dtype, precision = 'highest'] = v.split('-');
        if ((dtype !== 'f32' && dtype !== 'bf16') || (precision !== 'highest' && precision !== 'medium'))
          throw new Error(`--ours expects a list of f32|bf16[-highest|-medium], got ${v}`);
        a.variants.push({ dtype, precision });
      }
    } else if (x === '--dtype') {
      const v = argv[++i];
      if (v !== 'f32' && v !== 'bf16') throw new Error(`--dtype expects f32 or bf16, got ${v}`);
      a.variants.push({ dtype: v, precision: 'highest' });
    } else if (x === '--threads') a.threads = num();
    else if (x === '--batch') a.batch = num();
    else if (x === '--runs') a.runs = num();
    else if (x === '--wait-idle') a.waitIdle = num();
    else if (x === '--no-torch') a.torch = false;
    else if (x === '--regenerate') a.regenerate = true;
    else throw new Error(`embed-images bench: unknown argument ${x}`);
  }
  if (!a.variants.length)
    a.variants = a.device === 'cpu' ? [{ dtype: 'f32', precision: 'highest' }, { dtype: 'bf16', precision: 'medium' }] : [{ dtype: 'bf16', precision: 'highest' }];
  return a;
}

const now = () => Number(process.hrtime.bigint()) / 1e9;

export async function runEmbedImages(args: Args, log: (s: string) => void = (s) => process.stderr.write(s + '\n')): Promise<string> {
  native.setThreads(args.threads);
  SHAPE = SHAPES[args.shape];
  const tag = args.shape.replace('/', '').toLowerCase();
  const dir = path.join(outDir, `clip-vit-${tag}-random`);
  log(`embed-images bench: writing/reusing ${path.relative(repoRoot, dir)} (random CLIP ViT-${args.shape} vision tower, F32) ...`);
  // PyTorch here is the CPU build: it is compared on the CPU only
  if (args.device !== 'cpu') args.torch = false;
  writeRandomClip(dir, 1234, args.regenerate);
  const S = SHAPE.image_size;
  const B = args.batch;
  const pixels = fillUniform(new Float32Array(B * 3 * S * S), 99).map((v) => 2 * v); // normalised pixels in [-2, 2)
  const pixFile = path.join(outDir, `clip-pixels-${B}.f32`);
  fs.writeFileSync(pixFile, Buffer.from(pixels.buffer));
  const gate = new IdleGate(args.waitIdle);
  const rows: string[][] = [];
  const flops = flopsPerImage();
  const row = (what: string, s: number, cpu?: number) => [
    what,
    (B / s).toFixed(2),
    (s * 1000).toFixed(0),
    ((flops * B) / s / 1e9).toFixed(1),
    cpu === undefined ? '' : (cpu / B).toFixed(3),
  ];

  const env = bestTorchEnv(args.threads);
  /** One PyTorch process: both configurations once each, after its own warm-up. */
  const torchRun = () => {
    const base: NodeJS.ProcessEnv = { ...process.env };
    for (const k of ['OPENBLAS_CORETYPE', 'OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'OMP_WAIT_POLICY', 'GOTO_NUM_THREADS', 'MKL_NUM_THREADS']) delete base[k];
    const r = spawnSync(PYTHON, [TORCH_SCRIPT, dir, pixFile, '--threads', String(args.threads)], {
      env: { ...base, ...env },
      encoding: 'utf8',
      maxBuffer: 64 * 1024 * 1024,
    });
    const last = (r.stdout ?? '').trim().split('\n').pop() ?? '';
    if (r.status !== 0 || !last.startsWith('{')) throw new Error(`${TORCH_SCRIPT} failed (status ${r.status}): ${(r.stderr ?? '').slice(-1500)}`);
    return JSON.parse(last) as { torch: string; blas: string; configs: Record<string, { seconds: number; cpu_seconds: number }>; features: number[][]; features_bf16: number[][] };
  };

  const variantName = (v: Variant) => (args.device === 'cpu' ? `${v.dtype} weights, matmul precision ${v.precision}` : `${v.dtype} weights`);
  const encs = await Promise.all(args.variants.map((v) => ImageEncoder.load(dir, { device: args.device, dtype: v.dtype })));
  const enc = encs[0];
  const ours: Float32Array[] = [];
  const oursTimes: number[][] = args.variants.map(() => []);
  const oursCpu: number[][] = args.variants.map(() => []);
  const torchTimes: Record<string, number[]> = Object.fromEntries(TORCH_CONFIGS.map((c) => [c.key, []]));
  const torchCpu: Record<string, number[]> = Object.fromEntries(TORCH_CONFIGS.map((c) => [c.key, []]));
  let torchInfo: ReturnType<typeof torchRun> | undefined;
  try {
    // warm-up on 2 images, then the timed batches, alternating with PyTorch's (the machine's load
    // drifts: alternating gives both the same conditions; the best run of each is reported)
    for (const [i, e] of encs.entries()) {
      if (args.device === 'cpu') native.setMatmulPrecision(args.variants[i].precision);
      const warm = native.fromArray(pixels.subarray(0, 2 * 3 * S * S), [2, 3, S, S], 'f32', args.device);
      await Promise.all(e.forward(warm).map((t) => t.read()));
      warm.dispose();
    }
    for (let r = 0; r < args.runs; r++) {
      for (const [i, e] of encs.entries()) {
        const v = args.variants[i];
        if (args.device === 'cpu') native.setMatmulPrecision(v.precision);
        await gate.wait();
        log(`embed-images bench: ours (${variantName(v)}), batch ${B} (run ${r + 1}/${args.runs}) ...`);
        const t0 = now();
        const c0 = process.cpuUsage();
        const x = native.fromArray(pixels, [B, 3, S, S], 'f32', args.device);
        const [f] = e.forward(x);
        ours[i] = (await f.read()) as Float32Array;
        oursTimes[i].push(now() - t0);
        const c = process.cpuUsage(c0);
        oursCpu[i].push((c.user + c.system) / 1e6);
        [x, f].forEach((t) => t.dispose());
      }
      if (args.device === 'cpu') native.setMatmulPrecision('highest');
      if (args.torch) {
        await gate.wait();
        log(`embed-images bench: PyTorch (${describeEnv(env)}) (run ${r + 1}/${args.runs}) ...`);
        torchInfo = torchRun();
        for (const k of Object.keys(torchTimes)) {
          torchTimes[k].push(torchInfo.configs[k].seconds);
          torchCpu[k].push(torchInfo.configs[k].cpu_seconds);
        }
      }
    }
    const caps = native.capabilities();
    for (const [i, v] of args.variants.entries()) {
      const engine = args.device === 'cuda' ? `cuda, ${caps.cuda.gemm}` : `${args.threads} threads, ${v.dtype === 'bf16' && v.precision === 'medium' ? `bf16 GEMM ${caps.bf16Gemm}` : caps.blas}`;
      rows.push(row(`llama-adapter (${engine}; ${variantName(v)})`, Math.min(...oursTimes[i]), Math.min(...oursCpu[i])));
    }
    if (torchInfo) {
      for (const c of TORCH_CONFIGS)
        rows.push(row(`PyTorch ${torchInfo.torch} ${c.label}`, Math.min(...torchTimes[c.key]), Math.min(...torchCpu[c.key])));
    }

    // end to end: decode + preprocess real photos (JPEG crops of the shared test images) + forward
    const imgDir = path.join(outDir, 'bench-images');
    fs.mkdirSync(imgDir, { recursive: true });
    const files: string[] = [];
    const srcs = ['bird.rgb', 'sunflower.rgb'].map((f) => fs.readFileSync(path.join(dataDir, 'vision', f)));
    for (let i = 0; i < B; i++) {
      const f = path.join(imgDir, `img${i}.jpg`);
      if (!fs.existsSync(f))
        await sharp(srcs[i % 2], { raw: { width: 224, height: 224, channels: 3 } })
          .extract({ left: i % 20, top: (3 * i) % 30, width: 200 - (i % 7), height: 160 })
          .resize(320 + i, 256)
          .jpeg()
          .toFile(f);
      files.push(f);
    }
    await gate.wait();
    log(`embed-images bench: embed() of ${B} JPEG files (decode + resize + forward) ...`);
    let t0 = now();
    await enc.embed(files, { batchSize: B });
    rows.push(row('llama-adapter embed() of JPEG files: decode + preprocess + forward', now() - t0));
    t0 = now();
    await enc.pixelsOf(files);
    const prep = now() - t0;
    rows.push([`(of which decode + preprocess alone, JS main thread)`, (B / prep).toFixed(1), (prep * 1000).toFixed(0), '', '']);
  } finally {
    encs.forEach((e) => e.dispose());
  }

  const fmt = (ts: number[]) => ts.map((t) => (B / t).toFixed(2)).join(', ');
  const notes = [
    `CLIP ViT-${args.shape} vision tower with random weights (bench/out/clip-vit-${tag}-random, F32 file): ${S} x ${S}, ` +
      `${(S / SHAPE.patch_size) ** 2 + 1} tokens, ${SHAPE.num_hidden_layers} layers of ${SHAPE.hidden_size}, ` +
      `${(flops / 1e9).toFixed(2)} GFLOP per image; batch ${B}; the best of ${args.runs} timed run(s) each (ours after a 2-image warm-up, ` +
      `PyTorch's after its own), ours and PyTorch's alternating.`,
    'images/s and ms are for the whole batch, pixels (already preprocessed) to features; the embed() row adds decoding and resizing. ' +
      'CPU s/image: the process\'s CPU time (user + system, all threads; the least over the runs) per image: what the work cost, ' +
      'less sensitive than wall time to other processes on the machine (spinning threads count too).',
    ...args.variants.map(
      (v, i) => `Every run, ours (${variantName(v)}): images/s ${fmt(oursTimes[i])}; CPU s/image ${oursCpu[i].map((c) => (c / B).toFixed(3)).join(', ')}.`,
    ),
    ...(torchInfo
      ? TORCH_CONFIGS.map((c) => `Every run, PyTorch ${c.key}: images/s ${fmt(torchTimes[c.key])}; CPU s/image ${torchCpu[c.key].map((t) => (t / B).toFixed(3)).join(', ')}.`)
      : []),
  ];
  if (torchInfo) {
    const bestOf = (configs: typeof TORCH_CONFIGS) => Math.min(...configs.flatMap((c) => torchTimes[c.key]));
    const best32 = bestOf(TORCH_CONFIGS.filter((c) => !c.bf16));
    const best16 = bestOf(TORCH_CONFIGS.filter((c) => c.bf16));
    const maxDiff = (theirs: number[][], mine: Float32Array) => {
      let d = 0;
      let top = 0;
      theirs.forEach((f, b) => f.forEach((v, i) => ((d = Math.max(d, Math.abs(v - mine[b * f.length + i]))), (top = Math.max(top, Math.abs(v))))));
      return `max |diff| ${d.toExponential(2)} (largest |feature| ${top.toFixed(2)})`;
    };
    for (const [i, v] of args.variants.entries()) {
      const s = Math.min(...oursTimes[i]);
      const bf16 = v.dtype === 'bf16' && v.precision === 'medium';
      notes.push(
        `Ours (${variantName(v)}) vs PyTorch's best float32: **${(best32 / s).toFixed(2)}x** (${(B / s).toFixed(2)} vs ${(B / best32).toFixed(2)} images/s)` +
          (bf16 ? `; vs PyTorch bf16 autocast: ${(best16 / s).toFixed(2)}x (${(B / best16).toFixed(2)} images/s)` : '') +
          `. Features vs PyTorch's HF-style float32 forward: ${maxDiff(torchInfo.features, ours[i])}` +
          (bf16 ? `; vs PyTorch bf16 autocast: ${maxDiff(torchInfo.features_bf16, ours[i])}.` : '.'),
      );
    }
    notes.push(`PyTorch environment: ${describeEnv(env)}, torch.set_num_threads(${args.threads}), BLAS ${torchInfo.blas}, inference_mode.`);
  }
  notes.push(`OpenBLAS for both: ${blasChoiceNote}.`, gate.note(), `Load average at the end: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}.`);
  return formatTable({
    title: `Image encoder throughput, CLIP ViT-${args.shape} shape, batch ${B}, ${args.device === 'cuda' ? 'CUDA' : 'CPU'}`,
    columns: ['engine', 'images/s', 'ms per batch', 'GFLOP/s', 'CPU s/image'],
    align: ['l', 'r', 'r', 'r', 'r'],
    rows,
    notes,
  });
}

if (require.main === module) {
  runEmbedImages(parseArgs(process.argv.slice(2)))
    .then((t) => process.stdout.write(t + '\n'))
    .catch((e) => {
      process.stderr.write(`embed-images bench: ${(e as Error).message}\n`);
      process.exitCode = 1;
    });
}
