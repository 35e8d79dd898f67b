// `npm run bench` (node dist/bench/run.js): the GEMM and decode benchmarks, printed as markdown
// tables on stdout (progress on stderr). Not a test: it asserts nothing, it measures.
//
//   node dist/bench/run.js [gemm] [decode] [train-step] [--threads N] [--runs N] [--steps N] [--seed N]
//                          [--quick] [--wait-idle S] [--regenerate] [--json FILE]
import './blas-choice'; // first: before the addon loads
import * as fs from 'fs';
import * as os from 'os';
import { native } from '../lib/native';
import { runGemm } from './gemm';
import { BenchTable, formatTable } from './table';
import { runDecode } from './decode';
import { runTrainStep } from './train-step';


interface Args {
  which: Set<string>;
  threads: number;
  runs?: number;
  steps?: number;
  seed?: number;
  quick: boolean;
  waitIdle?: number;
  regenerate: boolean;
  json?: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { which: new Set(), threads: os.cpus().length, quick: false, regenerate: false };
  const num = (i: number, name: string) => {
    const v = Number(argv[i]);
    if (!Number.isInteger(v) || v < 1) throw new Error(`${name} expects a positive integer, got ${argv[i]}`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    if (x === 'gemm' || x === 'decode' || x === 'train-step') a.which.add(x);
    else if (x === '--threads') a.threads = num(++i, x);
    else if (x === '--runs') a.runs = num(++i, x);
    else if (x === '--steps') a.steps = num(++i, x);
    else if (x === '--seed') a.seed = num(++i, x);
    else if (x === '--quick') a.quick = true;
    else if (x === '--wait-idle') {
      const v = Number(argv[++i]);
      if (!(v >= 0)) throw new Error(`--wait-idle expects seconds >= 0, got ${argv[i]}`);
      a.waitIdle = v;
    }
    else if (x === '--regenerate') a.regenerate = true;
    else if (x === '--json') a.json = argv[++i];
    else if (x === '--help' || x === '-h') {
      console.log(
        'usage: node dist/bench/run.js [gemm] [decode] [train-step] [--threads N] [--runs N] [--steps N] [--seed N] ' +
          '[--quick] [--wait-idle S] [--regenerate] [--json FILE]\n(see bench/README.md)',
      );
      process.exit(0);
    } else throw new Error(`unknown argument ${x} (try --help)`);
  }
  if (a.which.size === 0) a.which = new Set(['gemm', 'decode']);
  return a;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const log = (line: string) => process.stderr.write(line + '\n');
  const caps = native.capabilities();
  const cpu = os.cpus()[0]?.model.trim() ?? 'unknown CPU';
  console.log(
    `llama-adapter ${caps.version} bench — ${cpu}, ${os.cpus().length} CPUs, SIMD ${caps.simd.join('+') || 'none'}, ` +
      `${caps.blas}${process.env.OPENBLAS_CORETYPE ? ` (OPENBLAS_CORETYPE=${process.env.OPENBLAS_CORETYPE})` : ''}, ` +
      `node ${process.version}\n`,
  );
  const tables: BenchTable[] = [];
  if (args.which.has('gemm')) {
    const t = await runGemm({
      threads: args.threads,
      seconds: args.quick ? 0.1 : 0.5,
      ms: args.quick ? [1, 128] : undefined,
      waitIdle: args.waitIdle,
      log,
    });
    console.log(formatTable(t));
    tables.push(t);
  }
  if (args.which.has('decode')) {
    const t = await runDecode({
      threads: args.threads,
      runs: args.runs ?? (args.quick ? 1 : 3),
      steps: args.steps ?? (args.quick ? 65 : 256),
      seed: args.seed,
      regenerate: args.regenerate,
      waitIdle: args.waitIdle,
      log,
    });
    console.log(formatTable(t));
    tables.push(t);
  }
  if (args.which.has('train-step')) {
    // ours vs PyTorch (bench/torch_train_step.py); --runs N: the best of N alternated rounds
    const t = await runTrainStep({
      threads: args.threads,
      models: args.quick ? ['260K', '15M'] : undefined,
      steps: args.quick ? 2 : undefined,
      repeats: args.runs,
      seed: args.seed,
      regenerate: args.regenerate,
      waitIdle: args.waitIdle,
      log,
    });
    console.log(formatTable(t));
    tables.push(t);
  }
  if (args.json) fs.writeFileSync(args.json, JSON.stringify({ date: new Date().toISOString(), cpu, caps, tables }, null, 2));
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e instanceof Error ? e.stack ?? e.message : e);
    process.exit(1);
  });
}
