// llama-adapter train --model M --data D --out DIR [flags]  (see lib/train/config.ts)
import * as squad from './squad';
import { parseFlags, UsageError } from './args';
import { attachProgress } from './progress';
import { resolveTrainConfig, trainFlagSpec, trainUsage } from '../train/config';
import { Trainer } from '../train/trainer';
import { detectLaunch, initWorld, launchDevices, World } from '../train/distributed';
import { native } from '../native';
import { resolveDevice } from '../device';
import { ClassifyTrainer } from '../tasks/classify';

export const usage = `${trainUsage()}

Extractive QA on a RoBERTa/BERT encoder: llama-adapter train --task squad --help`;

export async function run(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  if (squad.wantsSquad(argv)) return squad.train(argv, out); // --task squad: extractive QA on a text encoder (lib/cli/squad.ts)
  const { values, positionals } = parseFlags(argv, trainFlagSpec(), usage);
  if (values.help) {
    out.write(usage + '\n');
    return;
  }
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}'\n\n${usage}`);
  const cfg = resolveTrainConfig(values);
  cfg.device = resolveDevice(cfg.device, '--device'); // fail before starting any process
  if (cfg.task === 'classify') {
    const trainer = await ClassifyTrainer.create(cfg, (m) => process.stderr.write(m + '\n'));
    try {
      attachProgress(trainer);
      const r = await trainer.run();
      out.write(`${r.adapterPath}\n`);
    } finally {
      trainer.dispose();
    }
    return;
  }

  // data parallelism: --devices N starts N processes of this command under mpirun
  const launch = detectLaunch();
  if (cfg.devices !== undefined && launch && cfg.devices !== launch.size)
    throw new UsageError(`--devices ${cfg.devices}, but mpirun started ${launch.size} processes: give one or the other`);
  if (cfg.devices !== undefined && cfg.devices > 1 && !launch) {
    const status = await launchDevices(cfg.devices, argv);
    if (status !== 0) throw new Error(`the ${cfg.devices} training processes failed (mpirun exit status ${status}; see the messages above)`);
    return;
  }
  let world: World;
  try {
    world = initWorld({ comm: cfg.comm, timeoutS: cfg['comm-timeout'], threads: cfg.threads });
  } catch (err) {
    if (launch && launch.size > 1) {
      // joining may be stuck inside MPI (a peer hangs): leave at once, mpirun then stops the rest
      process.stderr.write(`llama-adapter train: error on rank ${launch.rank} of ${launch.size}: ${err instanceof Error ? err.message : String(err)}\n`);
      native.commAbort(1);
    }
    throw err;
  }
  const log = world.isRoot ? (m: string) => process.stderr.write(m + '\n') : () => {};

  try {
    const trainer = await Trainer.create(cfg, log);
    try {
      if (world.isRoot) attachProgress(trainer);
      const r = await trainer.run();
      if (world.isRoot) out.write(`${r.adapterPath}\n`);
    } finally {
      trainer.dispose();
    }
    await world.finalize();
  } catch (err) {
    if (world.size > 1) {
      // Stop every rank now rather than leave them waiting for this one. A failure that all ranks
      // share (a non-finite loss, say) is reported by rank 0, whose abort ends the others first.
      if (!world.isRoot) await new Promise((r) => setTimeout(r, 1000));
      const msg = err instanceof Error ? err.message : String(err);
      process.stderr.write(`llama-adapter train: error on rank ${world.rank} of ${world.size}: ${msg}\n`);
      world.abort(1);
    }
    throw err;
  }
}
