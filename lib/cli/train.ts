// llama-adapter train --model M --data D --out DIR [flags]  (see lib/train/config.ts)
import { parseFlags, UsageError } from './args';
import { attachProgress } from './progress';
import { resolveTrainConfig, trainFlagSpec, trainUsage } from '../train/config';
import { Trainer } from '../train/trainer';

export const usage = trainUsage();

export async function run(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const { values, positionals } = parseFlags(argv, trainFlagSpec(), usage);
  if (values.help) {
    out.write(usage + '\n');
    return;
  }
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}'\n\n${usage}`);
  const cfg = resolveTrainConfig(values);
  const trainer = await Trainer.create(cfg, (m) => process.stderr.write(m + '\n'));
  try {
    attachProgress(trainer);
    const r = await trainer.run();
    out.write(`${r.adapterPath}\n`);
  } finally {
    trainer.dispose();
  }
}
