// The NCCL part of the GPU check: `node dist/scripts/nccl-check.js [--json FILE]` on a machine with
// a GPU and NCCL (e.g. the pip wheel nvidia-nccl-cu13; found through python3, LD_LIBRARY_PATH or
// LLAMA_ADAPTER_NCCL). With one rank (or under mpirun, one per GPU) it
//   1. trains one optimiser step of stories260K whose gradients are summed through NCCL, and
//   2. times the all-reduce of a LLaMA-7B adapter's gradients (30 layers x 10 prompts x 4096 + 30 x
//      32 gates = 1,229,760 fp32 values) as the trainer does it once per step: host tensors staged
//      through the GPU (the CPU backend's case), and the collective alone.
// Prints one line per result and exits non-zero when anything fails.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { makeDemoDataset } from '../lib/data/demo';
import { native } from '../lib/native';
import { resolveTrainConfig } from '../lib/train/config';
import { initWorld } from '../lib/train/distributed';
import { Trainer } from '../lib/train/trainer';
import { AllreduceTiming, timeAllreduce } from './allreduce-timing';

async function main(): Promise<void> {
  const jsonOut = process.argv.indexOf('--json') >= 0 ? process.argv[process.argv.indexOf('--json') + 1] : undefined;
  const root = path.resolve(__dirname, '..', '..');
  const data = process.env.LLAMA_ADAPTER_DATA ?? path.resolve(root, '..', 'shared', 'data');
  const world = initWorld({ comm: 'nccl', timeoutS: 120 });
  const say = (s: string) => world.isRoot && console.log(s);
  const info = native.commInfo();
  say(`nccl: joined rank ${world.rank} of ${world.size}: ${info.library}`);

  // 1. one training step through NCCL
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-nccl-check-'));
  const result: Record<string, unknown> = { library: info.library, size: world.size };
  try {
    const file = path.join(dir, 'train.jsonl');
    fs.writeFileSync(file, makeDemoDataset({ count: 8, seed: 1 }).map((r) => JSON.stringify(r)).join('\n') + '\n');
    const cfg = resolveTrainConfig({
      model: path.join(data, 'stories260K', 'stories260K.bin'),
      tokenizer: path.join(data, 'stories260K', 'tok512.bin'),
      data: file,
      out: path.join(dir, 'run'),
      'batch-size': '8',
      'grad-accum': '1',
      'max-steps': '1',
      comm: 'nccl',
    });
    const before = native.commInfo().stats.allreduces;
    const trainer = await Trainer.create(cfg);
    let loss = NaN;
    try {
      trainer.on('step', (m) => (loss = m.loss));
      await trainer.run();
    } finally {
      trainer.dispose();
    }
    const reduces = native.commInfo().stats.allreduces - before;
    if (!(reduces >= 1) || !Number.isFinite(loss)) throw new Error(`the training step did not go through NCCL (all-reduces ${reduces}, loss ${loss})`);
    say(`nccl: one stories260K training step through NCCL: loss ${loss.toFixed(4)}, ${reduces} all-reduce`);
    Object.assign(result, { trainStepLoss: loss });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }

  // 2. the 7B adapter's gradients: 30 prompts (10, 4096) and 30 per-head gates (32)
  const grads = [...Array.from({ length: 30 }, () => native.zeros([10, 4096])), ...Array.from({ length: 30 }, () => native.zeros([32]))];
  let timing: AllreduceTiming;
  try {
    timing = await timeAllreduce(grads);
  } finally {
    for (const g of grads) g.dispose();
  }
  Object.assign(result, { allreduceFloats: timing.floats, allreduceMs: timing.allreduceMs, allreduceWallMs: timing.allreduceWallMs });
  say(
    `nccl: all-reduce of the 7B adapter's gradients (${timing.floats} fp32, host tensors staged through the GPU): ` +
      `${timing.allreduceMs.toFixed(3)} ms per step (${timing.allreduceWallMs.toFixed(3)} ms awaited from JavaScript), median of 20`,
  );
  if (jsonOut && world.isRoot) fs.writeFileSync(jsonOut, JSON.stringify(result, null, 2) + '\n');
  await world.finalize();
}

main().catch((err) => {
  console.error(`nccl: FAILED: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
