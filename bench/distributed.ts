// Data-parallel training throughput on the CPU: tokens/s of `llama-adapter train` with 1 and 2
// processes (Open MPI) on a random-weight model of the llama2.c 15M shape, the global batch fixed,
// and the scaling efficiency; then the time of one MPI all-reduce of an adapter's gradients.
//
//   node dist/bench/distributed.js [--steps N] [--batch B] [--procs 1,2] [--seed N]
//
// Needs mpirun (apt-get install openmpi-bin libopenmpi-dev, and an addon built with it). On a
// machine with P cores, 1 process uses P threads and each of N processes P/N threads, so with the
// cores fixed the best case is the same speed (efficiency ~1x of the cores' worth); the gain comes
// with more cores or machines than one process can use well.
import './blas-choice'; // first: before the addon loads
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native } from '../lib/native';
import { mpirunArgs, which } from '../lib/train/distributed';
import { dataDir, outDir, repoRoot, STORIES15M, writeRandomLlama2c } from './decode';
import { BenchTable } from './table';
import { formatTable } from './table';

/** llama2.c's stories15M shape (vocabulary of the LLaMA tokenizer). */

interface Args {
  steps: number;
  batch: number;
  procs: number[];
  seed: number;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { steps: 8, batch: 8, procs: [1, 2], seed: 1 };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    const num = () => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 1) throw new Error(`${x} expects a positive integer, got ${argv[i]}`);
      return v;
    };
    if (x === '--steps') a.steps = num();
    else if (x === '--batch') a.batch = num();
    else if (x === '--seed') a.seed = num();
    else if (x === '--procs') a.procs = argv[++i].split(',').map(Number);
    else if (x === '--help' || x === '-h') {
      console.log('usage: node dist/bench/distributed.js [--steps N] [--batch B] [--procs 1,2] [--seed N]');
      process.exit(0);
    } else throw new Error(`unknown argument ${x}`);
  }
  return a;
}

const cli = path.join(repoRoot, 'dist', 'lib', 'cli', 'main.js');

/** Runs `train` with `procs` processes; returns the steps' metrics (the first, warm-up, step dropped). */
function trainRun(procs: number, a: Args, modelFile: string, data: string): { tokens: number; ms: number; steps: number } {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'la-bench-dist-'));
  try {
    const args = [
      cli, 'train', '--model', modelFile, '--tokenizer', path.join(dataDir, 'llama-tokenizer', 'tokenizer.bin'),
      '--data', data, '--out', out, '--batch-size', String(a.batch), '--grad-accum', '1', '--max-steps', String(a.steps + 1),
      '--max-seq-len', '256', '--lr', '1e-3', '--warmup-steps', '0', '--seed', String(a.seed), '--devices', String(procs),
    ];
    const r = spawnSync(process.execPath, args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`train with ${procs} process(es) failed:\n${r.stderr}`);
    const steps = fs
      .readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
      .filter((m) => 'loss' in m)
      .slice(1);
    return { tokens: steps.reduce((s, m) => s + m.tokens, 0), ms: steps.reduce((s, m) => s + m.ms, 0), steps: steps.length };
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
}

/** Milliseconds of one MPI all-reduce of `n` floats between 2 processes (median of `reps`). */
function allreduceMs(mpirun: string, n: number, reps: number): number {
  const script = `const { native } = require(${JSON.stringify(path.join(repoRoot, 'dist', 'lib', 'native.js'))});
    (async () => {
      const w = native.commInit('mpi');
      const t = native.zeros([${n}]);
      const times = [];
      for (let i = 0; i < ${reps + 2}; i++) {
        await native.commBarrier();
        const t0 = process.hrtime.bigint();
        await native.allreduceSum([t]);
        times.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
      times.splice(0, 2);
      times.sort((a, b) => a - b);
      if (w.rank === 0) process.stdout.write('median ' + times[times.length >> 1]);
      await native.commFinalize();
    })();`;
  const out = execFileSync(mpirun, mpirunArgs(2, [process.execPath, '-e', script]), { encoding: 'utf8' });
  const m = /median ([\d.e+-]+)/.exec(out);
  if (!m) throw new Error(`the all-reduce timing printed nothing usable:\n${out}`);
  return Number(m[1]);
}

export async function runDistributed(a: Args): Promise<BenchTable[]> {
  const mpirun = which('mpirun');
  if (!mpirun || !native.commInfo().mpi.compiled)
    throw new Error(`needs mpirun and an addon built with MPI (${native.commInfo().mpi.library})`);
  const modelFile = writeRandomLlama2c(path.join(outDir, `random-15M-seed${a.seed}.bin`), STORIES15M, a.seed);
  const data = path.join(dataDir, 'alpaca', 'alpaca_small.json');
  const cores = os.cpus().length;
  const load = os.loadavg()[0];
  const rows: string[][] = [];
  let base: number | undefined;
  for (const p of a.procs) {
    process.stderr.write(`training with ${p} process(es)...\n`);
    const r = trainRun(p, a, modelFile, data);
    const tps = (r.tokens * 1000) / r.ms;
    base ??= p === 1 ? tps : undefined;
    rows.push([
      String(p),
      String(Math.max(1, Math.floor(cores / p))),
      (r.ms / r.steps).toFixed(0),
      (r.tokens / r.steps).toFixed(0),
      tps.toFixed(0),
      base ? `${(tps / base).toFixed(2)}x` : '-',
      base ? `${((100 * tps) / (base * p)).toFixed(0)}%` : '-',
    ]);
  }
  const train: BenchTable = {
    title: `Data-parallel training, 15M shape (dim 288, 6 layers, vocab 32000), global batch ${a.batch}, CPU`,
    columns: ['processes', 'threads each', 'ms/step', 'tokens/step', 'tokens/s', 'speed-up', 'efficiency'],
    align: ['r', 'r', 'r', 'r', 'r', 'r', 'r'],
    rows,
    notes: [
      `${cores} cores, load average ${load.toFixed(2)} at the start; ${a.steps} timed steps after one warm-up step; records of alpaca_small.json, at most 256 tokens, random weights; other load on the machine skews the numbers`,
      'speed-up = tokens/s with N processes / tokens/s with 1; efficiency = speed-up / N (strong scaling: the global batch is fixed)',
      'here N processes share the same cores (threads each = cores / N), so ~1x speed-up (50% efficiency for 2) is what a 2-core machine can show: data parallelism pays with more cores, machines or GPUs than one process uses well; the all-reduce below is its cost per step',
    ],
  };
  process.stderr.write('timing the all-reduce...\n');
  const sizes: [string, number][] = [
    ['15M adapter (4 layers x 10 x 288 + gates)', 4 * 10 * 288 + 4 * 6],
    ['7B adapter (30 layers x 10 x 4096 + gates)', 30 * 10 * 4096 + 30 * 32],
  ];
  const ar: BenchTable = {
    title: 'MPI all-reduce of the adapter gradients, 2 processes on this machine',
    columns: ['gradients', 'floats', 'ms', 'GB/s (algorithmic)'],
    align: ['l', 'r', 'r', 'r'],
    rows: sizes.map(([name, n]) => {
      const ms = allreduceMs(mpirun, n, 20);
      return [name, String(n), ms.toFixed(3), ((4 * n) / (ms * 1e6)).toFixed(2)];
    }),
    notes: ['median of 20, each after a barrier; one all-reduce per optimiser step, whatever grad-accum'],
  };
  return [train, ar];
}

if (require.main === module) {
  runDistributed(parseArgs(process.argv.slice(2)))
    .then((tables) => {
      for (const t of tables) console.log(formatTable(t));
    })
    .catch((err) => {
      console.error(err instanceof Error ? err.message : err);
      process.exitCode = 1;
    });
}
