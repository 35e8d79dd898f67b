// Quantized bases at the 110M shape (random N(0, 0.02) weights, llama2.c's stories110M shape with
// the LLaMA tokenizer's 32000 vocabulary): greedy decode tok/s and adapter training-step tok/s for
// F32 and BF16 (the llama2.c .bin loaded as f32 / bf16) and Q8_0 and Q4_K (GGUF files written by
// tools/to-gguf from the same .bin), side by side, with the resident memory of each. Each variant
// runs in its own child process, so that its RSS (peak, VmHWM, and after the load) is its own.
//
//   node dist/bench/gguf.js [--threads N] [--steps N] [--runs N] [--train-steps N] [--seed N] [--regenerate]
//                           [--simd avx2,avx512] [--variants F32,BF16,BF16-medium,Q8_0,Q4_K]
//
// BF16-medium is BF16 under matmul precision "medium" (native.setMatmulPrecision: the training
// step's products with the frozen weights in bf16, on AVX512-BF16; decoding is unchanged by it).
//
// Decode is timed as bench/decode.ts (from BOS, the clock starts at the first token), the best of
// --runs runs (default 3: on a shared machine the best run is the least disturbed one); beside it,
// llama.cpp's own decode of the same GGUF file, its runs alternating with ours: llama.cpp built
// from source for this CPU (bench/build-llama-cpp.sh: `llama-bench -m FILE -p 0 -n STEPS -t N`,
// STEPS single-token decodes from an empty context) and node-llama-cpp's prebuilt llama.cpp
// (bench/fetch-llama-cpp.sh, bench/llama-cpp-decode.mjs), each when installed; "ours / llama.cpp"
// is against the source build when there is one. --simd runs every variant once per listed
// instruction set of our kernels (LLAMA_ADAPTER_SIMD; default: the best the CPU has), llama.cpp
// with the first only. A training step is the trainer's (AdapterGraph forward/backward to 10
// prompts x 8 layers, AdamW), over a fixed batch of 4 Alpaca records of up to 128 tokens, after
// one warm-up step.
import './blas-choice'; // first: before the addon loads
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { native } from '../lib/native';
import { Batcher, loadAlpaca, tokenizeRecords } from '../lib/data/alpaca';
import { Adapter } from '../lib/model/adapter';
import { Llama } from '../lib/model/llama';
import { loadTokenizer } from '../lib/tokenizer';
import { generateTokens } from '../lib/generate/generate';
import { AdapterGrads, AdapterGraph } from '../lib/train/graph';
import { AdamW, paperAdamW } from '../lib/train/optimizer';
import { dataDir, outDir, STORIES110M, writeRandomLlama2c } from './decode';
import { BenchTable } from './table';
import { formatTable } from './table';
import { toGguf } from '../tools/to-gguf';

// BF16-medium: the BF16 weights under matmul precision "medium" (bf16 products on AVX512-BF16)
const VARIANTS = ['F32', 'BF16', 'BF16-medium', 'Q8_0', 'Q4_K'] as const;
type Variant = (typeof VARIANTS)[number];
const TOKENIZER = path.join(dataDir, 'llama-tokenizer', 'tokenizer.model');

function rssMiB(): { now: number; peak: number } {
  const s = fs.readFileSync('/proc/self/status', 'utf8');
  const kb = (k: string) => Number(new RegExp(`${k}:\\s*(\\d+)`).exec(s)?.[1] ?? NaN) / 1024;
  return { now: kb('VmRSS'), peak: kb('VmHWM') };
}

const now = () => Number(process.hrtime.bigint()) / 1e9;

const NODE_LLAMA_CPP_DIR = process.env.NODE_LLAMA_CPP_DIR ?? path.join(outDir, 'node-llama-cpp');
const hasNodeLlamaCpp = () => fs.existsSync(path.join(NODE_LLAMA_CPP_DIR, 'node_modules', 'node-llama-cpp'));
const LLAMA_BENCH = path.join(process.env.LLAMA_CPP_DIR ?? path.join(outDir, 'llama.cpp'), 'build', 'bin', 'llama-bench');
const hasLlamaBench = () => fs.existsSync(LLAMA_BENCH);

/** node-llama-cpp's (prebuilt llama.cpp) decode tok/s of `file` (one run). */
function nodeLlamaCppDecode(file: string, steps: number, threads: number): number {
  const script = path.join(__dirname, '..', '..', 'bench', 'llama-cpp-decode.mjs');
  const r = spawnSync(process.execPath, [script, NODE_LLAMA_CPP_DIR, file, String(steps), String(threads)], { encoding: 'utf8', timeout: 300_000 });
  if (r.status !== 0) throw new Error(`llama.cpp decode of ${file} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!).tokPerS;
}

/** llama.cpp built from source (llama-bench, one repetition): decode tok/s of `file`. */
function llamaBenchDecode(file: string, steps: number, threads: number): number {
  const args = ['-m', file, '-p', '0', '-n', String(steps), '-t', String(threads), '-r', '1', '-o', 'json'];
  const r = spawnSync(LLAMA_BENCH, args, { encoding: 'utf8', timeout: 300_000 });
  if (r.status !== 0) throw new Error(`llama-bench on ${file} failed: ${r.stderr}`);
  return Math.max(...(JSON.parse(r.stdout) as { samples_ts: number[] }[])[0].samples_ts);
}

/** The child: load one variant, decode, train; one JSON line. */
async function child(variant: Variant, file: string, threads: number, steps: number, trainSteps: number, runs: number, withLlamaCpp: boolean): Promise<void> {
  native.setThreads(threads);
  if (variant === 'BF16-medium') native.setMatmulPrecision('medium');
  const model = await Llama.load(file, { device: 'cpu', dtype: variant.startsWith('BF16') ? 'bf16' : 'f32' });
  const afterLoad = rssMiB().now;
  let decode = 0, llamaCpp = 0, llamaCppNpm = 0;
  for (let run = 0; run < runs; run++) {
    const stamps: number[] = [];
    for await (const _ of generateTokens(model, [1], { temperature: 0, maxTokens: steps, stopTokens: [] })) stamps.push(now());
    decode = Math.max(decode, (stamps.length - 1) / (stamps[stamps.length - 1] - stamps[0]));
    if (file.endsWith('.gguf') && withLlamaCpp) {
      if (hasLlamaBench()) llamaCpp = Math.max(llamaCpp, llamaBenchDecode(file, steps, threads));
      if (hasNodeLlamaCpp()) llamaCppNpm = Math.max(llamaCppNpm, nodeLlamaCppDecode(file, steps, threads));
    }
  }
  const afterDecode = rssMiB().now;

  const tok = loadTokenizer(TOKENIZER);
  const records = loadAlpaca(path.join(dataDir, 'alpaca', 'alpaca_small.json'));
  const { examples } = tokenizeRecords(tok, records, { maxSeqLen: 128, warn: () => {} });
  const batch = new Batcher(examples, { batchSize: 4, seed: 1, shuffle: true }).next();
  const adapter = Adapter.init(model.config, { layers: 8, len: 10, gate: 'per-head' }, 1);
  const opt = new AdamW(adapter.parameters(), paperAdamW);
  const grads = new AdapterGrads(adapter);
  const graph = new AdapterGraph(model, adapter);
  let t0 = 0;
  const losses: number[] = [];
  for (let i = 0; i <= trainSteps; i++) {
    if (i === 1) {
      await native.synchronize();
      t0 = now();
    }
    grads.zero();
    const r = await graph.run(batch, 1 / batch.targetCount, grads);
    await opt.update(grads.all(), 1e-3);
    losses.push(r.lossSum / r.targets);
  }
  await native.synchronize();
  const train = (trainSteps * batch.tokens.length) / (now() - t0);
  const { peak } = rssMiB();
  const simd = native.capabilities().simdLevel;
  process.stdout.write(JSON.stringify({ variant, simd, decode, llamaCpp, llamaCppNpm, train, tokens: batch.tokens.length, afterLoad, afterDecode, peak, fileBytes: fs.statSync(file).size, losses }) + '\n');
  grads.dispose();
  opt.dispose();
  adapter.dispose();
  model.dispose();
}

async function main(argv: string[]): Promise<void> {
  const arg = (name: string, def: number) => {
    const i = argv.indexOf(name);
    return i >= 0 ? Number(argv[i + 1]) : def;
  };
  if (argv[0] === '--child') return child(argv[1] as Variant, argv[2], Number(argv[3]), Number(argv[4]), Number(argv[5]), Number(argv[6]), argv[7] === '1');
  const threads = arg('--threads', native.capabilities().threads), steps = arg('--steps', 48), trainSteps = arg('--train-steps', 3);
  const runs = arg('--runs', 3);
  const si = argv.indexOf('--simd');
  const levels = si >= 0 ? argv[si + 1].split(',') : [native.capabilities().simdLevel];
  for (const l of levels) if (!['avx512', 'avx2', 'scalar'].includes(l)) throw new Error(`--simd: ${l} is not one of avx512, avx2, scalar`);
  const seed = arg('--seed', 1), regenerate = argv.includes('--regenerate');
  const dir = path.join(outDir, 'gguf');
  fs.mkdirSync(dir, { recursive: true });
  const bin = writeRandomLlama2c(path.join(dir, `random110M-${seed}.bin`), STORIES110M, seed, regenerate);
  const files: Record<Variant, string> = { F32: bin, BF16: bin, 'BF16-medium': bin, Q8_0: path.join(dir, `random110M-${seed}-Q8_0.gguf`), Q4_K: path.join(dir, `random110M-${seed}-Q4_K.gguf`) };
  for (const v of ['Q8_0', 'Q4_K'] as const)
    if (regenerate || !fs.existsSync(files[v]) || fs.statSync(files[v]).mtimeMs < fs.statSync(bin).mtimeMs) {
      process.stderr.write(`converting to ${v} ...\n`);
      await toGguf(bin, files[v], { type: v, tokenizer: TOKENIZER, overwrite: true });
    }
  const rows: string[][] = [];
  const raw: unknown[] = [];
  const f32Decode: Record<string, number> = {};
  const llama: Record<string, { src: number; npm: number }> = {};
  const vi = argv.indexOf('--variants');
  const chosen = vi >= 0 ? argv[vi + 1].split(',') : [...VARIANTS];
  for (const v of chosen) if (!(VARIANTS as readonly string[]).includes(v)) throw new Error(`--variants: ${v} is not one of ${VARIANTS.join(', ')}`);
  for (const v of chosen as Variant[])
    for (const [li, level] of levels.entries()) {
      process.stderr.write(`${v} (${level}) ...\n`);
      const args = [__filename, '--child', v, files[v], String(threads), String(steps), String(trainSteps), String(runs), li === 0 ? '1' : '0'];
      const r = spawnSync(process.execPath, args, { encoding: 'utf8', maxBuffer: 1 << 24, env: { ...process.env, LLAMA_ADAPTER_SIMD: level } });
      if (r.status !== 0) throw new Error(`${v} failed: ${r.stderr}`);
      const m = JSON.parse(r.stdout.trim().split('\n').pop()!);
      if (m.simd !== level) throw new Error(`${v}: asked for ${level}, the kernels ran ${m.simd}`);
      raw.push(m);
      if (li === 0) llama[v] = { src: m.llamaCpp, npm: m.llamaCppNpm };
      const { src, npm } = llama[v];
      if (v === 'F32') f32Decode[level] = m.decode;
      const versus = src || npm;
      rows.push([
        v,
        level,
        (m.fileBytes / 2 ** 20).toFixed(0),
        m.decode.toFixed(2),
        f32Decode[level] ? `${(m.decode / f32Decode[level]).toFixed(2)}x` : '-',
        src ? src.toFixed(2) : '-',
        npm ? npm.toFixed(2) : '-',
        versus ? `${((100 * m.decode) / versus).toFixed(0)}%` : '-',
        m.train.toFixed(1),
        m.afterDecode.toFixed(0),
        m.peak.toFixed(0),
      ]);
    }
  const table: BenchTable = {
    title: `Quantized bases at the 110M shape (random weights; CPU, ${threads} threads)`,
    columns: ['weights', 'ours SIMD', 'file MiB', 'decode tok/s', 'vs F32', 'llama.cpp (source) tok/s', 'llama.cpp (npm) tok/s', 'ours / llama.cpp', 'train tok/s', 'RSS after decode MiB', 'peak RSS MiB'],
    align: ['l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
    rows,
    notes: [
      hasLlamaBench()
        ? `llama.cpp (source): ${LLAMA_BENCH} (bench/build-llama-cpp.sh, -DGGML_NATIVE=ON), llama-bench -p 0 -n ${steps} -t ${threads}, the same GGUF file, best of ${runs} runs alternating with ours`
        : 'llama.cpp (source) column empty: run bench/build-llama-cpp.sh first',
      hasNodeLlamaCpp()
        ? `llama.cpp (npm): node-llama-cpp's prebuilt llama.cpp (bench/fetch-llama-cpp.sh), ${threads} threads, timed from the first token, best of ${runs} runs alternating with ours`
        : 'llama.cpp (npm) column empty: run bench/fetch-llama-cpp.sh first',
      'ours / llama.cpp: against the source build when present, else the npm build',
      `decode: greedy from BOS, ${steps} positions, timed from the first token, best of ${runs} runs; train: ${trainSteps} adapter steps (10 prompts x 8 layers) on one batch of 4 Alpaca records (<= 128 tokens), after a warm-up step`,
      'F32 and BF16 load the llama2.c .bin (BF16 converted on load); Q8_0 and Q4_K are GGUF files from tools/to-gguf (mapped, kept quantized)',
      'peak RSS includes the training step\'s activations and the dequantised f32 panels of the backward',
    ],
    raw,
  };
  console.log(formatTable(table));
}

if (require.main === module)
  main(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
