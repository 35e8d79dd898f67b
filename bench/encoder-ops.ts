// CPU throughput of the image-encoder ops (layerNorm, gelu / quick_gelu, bias, the matmul weight
// gradient, patches) at the CLIP / ViT-B/16 shapes of a batch of 32 images (T = 197 · 32 rows,
// C = 768, F = 3072), beside PyTorch float32 on the same shapes and thread count
// (bench/torch_encoder_ops.py, Debian's python3-torch) and, for scale, the matmul of one ViT-B
// feed-forward projection. Not a test: it prints a markdown table and asserts nothing.
//
//   node dist/bench/encoder-ops.js [--threads N] [--seconds S] [--no-torch] [--wait-idle S]
import './blas-choice'; // first: before the addon loads
import { spawnSync } from 'child_process';
import * as os from 'os';
import * as path from 'path';
import { native, Tensor } from '../lib/native';
import { fillUniform, IdleGate } from './gemm';
import { formatTable } from './table';

const now = () => Number(process.hrtime.bigint()) / 1e9;

interface Args {
  threads: number;
  seconds: number;
  torch: boolean;
  waitIdle: number;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { threads: os.cpus().length, seconds: 1, torch: true, waitIdle: 30 };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    const v = () => {
      const n = Number(argv[++i]);
      if (!(n >= 0)) throw new Error(`${x} expects a number >= 0, got ${argv[i]}`);
      return n;
    };
    if (x === '--threads') a.threads = Math.max(1, Math.round(v()));
    else if (x === '--seconds') a.seconds = v();
    else if (x === '--wait-idle') a.waitIdle = v();
    else if (x === '--no-torch') a.torch = false;
    else throw new Error(`unknown argument ${x} (see the top of bench/encoder-ops.ts)`);
  }
  return a;
}

/** Best seconds per call of `call` (queues one op), in batches queued back to back and awaited once. */
async function bestTime(call: () => Tensor | Tensor[] | void, seconds: number, gate: IdleGate): Promise<number> {
  const drop = (r: Tensor | Tensor[] | void) => (Array.isArray(r) ? r.forEach((t) => t.dispose()) : r?.dispose());
  drop(call()); // warm-up: page faults, thread wake-up
  await native.synchronize();
  let t0 = now();
  drop(call());
  await native.synchronize();
  const est = Math.max(now() - t0, 1e-7);
  const batch = Math.max(1, Math.min(1000, Math.round(0.03 / est)));
  const times: number[] = [];
  let spent = 0;
  await gate.wait();
  while (times.length < 3 || (spent < seconds && times.length < 50)) {
    if (est * batch > 0.1) await gate.pause();
    t0 = now();
    for (let i = 0; i < batch; i++) drop(call());
    await native.synchronize();
    const dt = now() - t0;
    spent += dt;
    times.push(dt / batch);
  }
  return Math.min(...times);
}

function torchTimes(T: number, C: number, F: number, threads: number, seconds: number): Record<string, number> | string {
  const script = path.resolve(__dirname, '..', '..', 'bench', 'torch_encoder_ops.py');
  const r = spawnSync('/usr/bin/python3', [script, '--T', `${T}`, '--C', `${C}`, '--F', `${F}`, '--threads', `${threads}`, '--seconds', `${seconds}`], {
    encoding: 'utf8',
    env: { ...process.env, OMP_NUM_THREADS: `${threads}` },
  });
  if (r.status !== 0) return `PyTorch run failed: ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}`;
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, number>;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  native.setThreads(args.threads);
  const B = 32, T = 197 * B, C = 768, F = 3072, image = 224, P = 16;
  const gate = new IdleGate(args.waitIdle);
  const f = (n: number, shape: number[], seed: number, scale = 1) => native.fromArray(fillUniform(new Float32Array(n), seed).map((v) => v * scale), shape);
  const x = f(T * C, [T, C], 1), w = f(C, [C], 2), b = f(C, [C], 3), dyC = f(T * C, [T, C], 4);
  const h = f(T * F, [T, F], 5, 3), dyF = f(T * F, [T, F], 6), biasF = f(F, [F], 7);
  const img = f(B * 3 * image * image, [B, 3, image, image], 8);
  const w2 = f(C * F, [C, F], 9);
  const MB = 1e6;
  // [op, shape, call, bytes moved per call (reads + writes), flops or 0, torch key]
  const rows: Array<[string, string, () => Tensor | Tensor[] | void, number, number, string]> = [
    ['layerNorm', `(${T}, ${C})`, () => native.layerNorm(x, w, b, 1e-5), 8 * T * C, 0, 'layerNorm'],
    ['layerNormBackward', `(${T}, ${C})`, () => native.layerNormBackward(dyC, x, w, 1e-5), 12 * T * C, 0, 'layerNormBackward'],
    ['gelu (exact)', `(${T}, ${F})`, () => native.gelu(h, 'gelu'), 8 * T * F, 0, 'gelu'],
    ['gelu (quick_gelu)', `(${T}, ${F})`, () => native.gelu(h, 'quick_gelu'), 8 * T * F, 0, 'quick_gelu'],
    ['geluBackward (exact)', `(${T}, ${F})`, () => native.geluBackward(dyF, h, 'gelu'), 12 * T * F, 0, 'geluBackward'],
    ['geluBackward (quick_gelu)', `(${T}, ${F})`, () => native.geluBackward(dyF, h, 'quick_gelu'), 12 * T * F, 0, 'quick_geluBackward'],
    ['addBias', `(${T}, ${F})`, () => native.addBias(h, biasF), 8 * T * F, 0, 'addBias'],
    ['biasGrad', `(${T}, ${F})`, () => native.biasGrad(dyF), 4 * T * F, 0, 'biasGrad'],
    ['matmulWeightGrad', `(${T}, ${C})ᵀ (${T}, ${F})`, () => native.matmulWeightGrad(dyC, h), 4 * (T * C + T * F + C * F), 2 * T * C * F, 'matmulWeightGrad'],
    ['patches', `(${B}, 3, ${image}, ${image}) P=${P}`, () => native.patches(img, P), 8 * B * 3 * image * image, 0, 'patches'],
    ['matmul (for scale: fc2 forward)', `(${T}, ${F}) · (${C}, ${F})ᵀ`, () => native.matmul(h, w2), 4 * (T * F + C * F + T * C), 2 * T * C * F, ''],
  ];
  const table = {
    title: `Image-encoder ops on the CPU, ViT-B/16 shapes (batch ${B}: T = ${T}, C = ${C}, F = ${F}), ${args.threads} threads`,
    columns: ['op', 'shape', 'ms/call', 'GB/s', 'GFLOP/s', 'PyTorch ms', 'PyTorch / ours'],
    align: ['l', 'l', 'r', 'r', 'r', 'r', 'r'] as ('l' | 'r')[],
    rows: [] as string[][],
    notes: [] as string[],
  };
  const ours: number[] = [];
  for (const [name, , call] of rows) {
    process.stderr.write(`  ${name}...\n`);
    ours.push(await bestTime(call, args.seconds, gate));
  }
  let torch: Record<string, number> | string = 'PyTorch not run (--no-torch)';
  if (args.torch) {
    process.stderr.write('  PyTorch...\n');
    await gate.wait();
    torch = torchTimes(T, C, F, args.threads, args.seconds);
  }
  rows.forEach(([name, shape, , bytes, flops, key], i) => {
    const t = ours[i];
    const pt = typeof torch === 'object' && key ? torch[key] : undefined;
    table.rows.push([
      name,
      shape,
      (t * 1e3).toFixed(2),
      ((bytes / t) / (1e3 * MB)).toFixed(1),
      flops ? (flops / t / 1e9).toFixed(1) : '',
      pt !== undefined ? (pt * 1e3).toFixed(2) : '',
      pt !== undefined ? (pt / t).toFixed(2) + '×' : '',
    ]);
  });
  const caps = native.capabilities();
  table.notes.push(
    `Best time per call over batches of calls queued back to back; GB/s counts each tensor read or written once. BLAS: ${caps.blas}; CPU: ${os.cpus()[0]?.model ?? '?'}.`,
    typeof torch === 'string' ? torch : `PyTorch ${'float32'} (bench/torch_encoder_ops.py): F.layer_norm, aten native_layer_norm_backward, F.gelu, x·sigmoid(1.702x) (HF QuickGELU), aten gelu_backward, autograd of quick_gelu, add_, sum(0), mm(dyᵀ, x), F.unfold + transpose; torch.set_num_threads(${args.threads}).`,
    gate.note(),
  );
  process.stdout.write(formatTable(table));
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
