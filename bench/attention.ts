// The fused gated attention on the CPU at an image encoder's shape (ViT-B/16 at 224²: 197 tokens per
// image, 12 heads of 64, a batch of 32 images = 32 packed segments): forward and backward time per
// call, images/s and GFLOP/s, for the encoder's bidirectional attention ({ causal: false }) without a
// prompt, with one shared prompt and with per-segment prompts (K = 10), and the causal mode beside
// it; beside each row PyTorch float32 running the same math (bench/torch_attention.py, Debian's
// python3-torch, the same threads; --no-torch skips it). A measurement, not a test: random inputs,
// nothing asserted.
//
//   node dist/bench/attention.js [--threads N] [--runs N] [--segments S] [--tokens L] [--prompt K]
//                                [--wait-idle S] [--no-torch] [--json FILE]
//
// Timing: each call is queued and its last output read back (the executor's round trip included);
// one untimed warm-up round, then --runs rounds (default 5), each timing every row once (so a busy
// spell on a shared machine hits all rows alike); the best time of each row is reported, wall clock
// and the process's CPU time (user + system, all threads: less sensitive to other processes on a
// shared machine; with several threads it includes the pool's brief spinning). FLOPs count the
// matrix products of the word branch only (the prompt branch is ~K/L of it): forward 4·S·H·L²·d
// bidirectional (2 products: Q Kᵀ, P V), backward 10·S·H·L²·d (5 products: Q Kᵀ recomputed,
// dout Vᵀ, Pᵀ dout, dSᵀ Q, dS K); causal about half of each.
import './blas-choice'; // first: before the addon loads
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native, Tensor } from '../lib/native';
import { fillUniform, IdleGate } from './gemm';
import { BenchTable } from './table';
import { formatTable } from './table';

interface Options {
  threads: number;
  runs: number;
  segments: number;
  tokens: number;
  prompt: number;
  waitIdle: number;
  torch: boolean;
  json?: string;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { threads: os.cpus().length, runs: 5, segments: 32, tokens: 197, prompt: 10, waitIdle: 30, torch: true };
  const int = (i: number, name: string, min: number) => {
    const v = Number(argv[i]);
    if (!Number.isInteger(v) || v < min) throw new Error(`${name} expects an integer >= ${min}, got ${argv[i]}`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    if (x === '--threads') o.threads = int(++i, x, 1);
    else if (x === '--runs') o.runs = int(++i, x, 1);
    else if (x === '--segments') o.segments = int(++i, x, 1);
    else if (x === '--tokens') o.tokens = int(++i, x, 1);
    else if (x === '--prompt') o.prompt = int(++i, x, 1);
    else if (x === '--wait-idle') o.waitIdle = int(++i, x, 0);
    else if (x === '--json') o.json = argv[++i];
    else if (x === '--no-torch') o.torch = false;
    else throw new Error(`unknown argument ${x} (see the header of bench/attention.ts)`);
  }
  return o;
}


/** PyTorch's best [forward, backward, CPU of both] seconds per row name, or why there are none. */
function torchTimes(o: Options): Record<string, [number, number, number]> | string {
  const script = path.resolve(__dirname, '..', '..', 'bench', 'torch_attention.py');
  const args = ['--segments', o.segments, '--tokens', o.tokens, '--prompt', o.prompt, '--threads', o.threads, '--runs', o.runs];
  const r = spawnSync('/usr/bin/python3', [script, ...args.map(String)], {
    encoding: 'utf8',
    env: { ...process.env, OMP_NUM_THREADS: `${o.threads}`, OPENBLAS_NUM_THREADS: `${o.threads}`, OMP_WAIT_POLICY: 'PASSIVE' },
  });
  if (r.status !== 0) return `PyTorch run failed: ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}`;
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, [number, number, number]>;
}

export async function runAttention(o: Options): Promise<BenchTable> {
  native.setThreads(o.threads);
  const S = o.segments, L = o.tokens, H = 12, d = 64, K = o.prompt, N = S * L;
  const rand = (n: number, seed: number, shape: number[]) => native.fromArray(fillUniform(new Float32Array(n), seed), shape);
  const q = rand(N * H * d, 1, [N, H, d]);
  const k = rand(N * H * d, 2, [N, H, d]);
  const v = rand(N * H * d, 3, [N, H, d]);
  const dout = rand(N * H * d, 4, [N, H, d]);
  const seg = native.fromArray(Int32Array.from({ length: S + 1 }, (_, s) => s * L), [S + 1]);
  const shared = { pk: rand(K * H * d, 5, [K, H, d]), pv: rand(K * H * d, 6, [K, H, d]) };
  const perSeg = { pk: rand(S * K * H * d, 7, [S, K, H, d]), pv: rand(S * K * H * d, 8, [S, K, H, d]) };
  const gate = rand(H, 9, [H]);
  const rows: Array<{ causal: boolean; prompt: string; pk: Tensor | null; pv: Tensor | null }> = [
    { causal: false, prompt: 'none', pk: null, pv: null },
    { causal: false, prompt: `shared (K = ${K})`, ...shared },
    { causal: false, prompt: `per segment (K = ${K})`, ...perSeg },
    { causal: true, prompt: `shared (K = ${K})`, ...shared },
  ];
  const gate_ = new IdleGate(o.waitIdle);
  const table: BenchTable = {
    title: `Gated attention on the CPU, ViT-B/16 shape: ${S} segments of ${L} tokens, ${H} heads of ${d} (${o.threads} threads)`,
    columns: ['mask', 'prompt', 'forward ms', 'backward ms', 'fwd+bwd ms', 'images/s', 'fwd GFLOP/s', 'bwd GFLOP/s', 'CPU ms', 'PyTorch ms', 'PyTorch CPU ms', 'vs PyTorch (wall, CPU)'],
    align: ['l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
    rows: [],
    notes: [],
    raw: [] as unknown[],
  };
  const times = rows.map(() => ({ fwd: [] as number[], bwd: [] as number[], cpu: [] as number[] }));
  const cpuMs = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  for (let run = 0; run <= o.runs; run++)
    for (let i = 0; i < rows.length; i++) {
      const r = rows[i], g = r.pk ? gate : null, opts = { causal: r.causal };
      await gate_.wait();
      process.stderr.write(`\rround ${run}/${o.runs} (0: warm-up): ${r.causal ? 'causal' : 'bidirectional'}, prompt ${r.prompt}      `);
      const c0 = cpuMs();
      let t0 = performance.now();
      const [out, stats] = native.gatedAttention(q, k, v, seg, r.pk, r.pv, g, opts);
      await stats.read();
      const tf = performance.now() - t0;
      t0 = performance.now();
      const grads = native.gatedAttentionBackward(dout, q, k, v, seg, r.pk, r.pv, g, out, stats, opts);
      await grads[0].read();
      await native.synchronize();
      const tb = performance.now() - t0;
      const tc = cpuMs() - c0;
      if (run > 0) {
        times[i].fwd.push(tf);
        times[i].bwd.push(tb);
        times[i].cpu.push(tc);
      }
      for (const t of [out, stats, ...grads]) t?.dispose();
    }
  process.stderr.write(o.torch ? '\rPyTorch ...                                                        ' : '');
  const torch = o.torch ? torchTimes(o) : 'PyTorch not run (--no-torch)';
  rows.forEach((r, i) => {
    const f = Math.min(...times[i].fwd), b = Math.min(...times[i].bwd), c = Math.min(...times[i].cpu);
    const key = `${r.causal ? 'causal' : 'bidirectional'}, ${r.prompt.split(' (')[0]}`;
    const t = typeof torch === 'string' ? undefined : torch[key];
    const tms = t ? (t[0] + t[1]) * 1000 : undefined;
    const flops = S * H * L * L * d * (r.causal ? 0.5 : 1); // one L x L x d product = 2 of these
    table.rows.push([
      r.causal ? 'causal' : 'bidirectional',
      r.prompt,
      f.toFixed(1),
      b.toFixed(1),
      (f + b).toFixed(1),
      ((S * 1000) / (f + b)).toFixed(1),
      ((4 * flops) / f / 1e6).toFixed(1),
      ((10 * flops) / b / 1e6).toFixed(1),
      c.toFixed(1),
      tms === undefined ? '-' : tms.toFixed(1),
      t ? (t[2] * 1000).toFixed(1) : '-',
      tms === undefined ? '-' : `${(tms / (f + b)).toFixed(2)}x, ${((t![2] * 1000) / c).toFixed(2)}x`,
    ]);
    (table.raw as unknown[]).push({ causal: r.causal, prompt: r.prompt, forwardMs: times[i].fwd, backwardMs: times[i].bwd, cpuMs: times[i].cpu, torchSeconds: t });
  });
  process.stderr.write('\n');
  table.notes.push(
    `Best of ${o.runs} timed calls per row (rounds over all rows, after a warm-up round); each time includes queueing and reading the result back; images/s and CPU ms are of forward + backward.`,
    'GFLOP/s counts the word branch\'s matrix products only (forward 2, backward 5 of L x L x d per segment and head; causal half).',
    `Machine: ${os.cpus()[0]?.model ?? 'unknown CPU'}, ${os.cpus().length} CPUs; load average at the start ${os.loadavg()[0].toFixed(2)}.`,
    gate_.note(),
    typeof torch === 'string'
      ? torch
      : 'PyTorch: bench/torch_attention.py, float32, (B, H, L, d) layout, softmax(Q Kᵀ/sqrt(d)) V and the gated prompt branch with autograd (1.13 has no fused CPU attention), best of the same number of rounds, same threads, run after ours; "vs PyTorch" = its time / ours (wall clock, CPU time).',
  );
  return table;
}

if (require.main === module) {
  const o = parseArgs(process.argv.slice(2));
  runAttention(o)
    .then((t) => {
      process.stdout.write(formatTable(t));
      if (o.json) fs.writeFileSync(o.json, JSON.stringify(t, null, 2));
    })
    .catch((e) => {
      process.stderr.write(`bench/attention: ${e instanceof Error ? e.message : e}\n`);
      process.exit(1);
    });
}
