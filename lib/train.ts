#!/usr/bin/env node
// `node dist/lib/train.js --model M --data D --out DIR [flags]`: the train command on its own,
// the same as `llama-adapter train ...`.
import { main } from './cli/main';

if (require.main === module) {
  main(['train', ...process.argv.slice(2)]).then((code) => {
    process.exitCode = code;
  });
}

export { Trainer, evaluateLoss } from './train/trainer';
export type { StepMetrics, EvalResult, TrainResult } from './train/trainer';
export { resolveTrainConfig, trainDefaults } from './train/config';
export type { TrainConfig } from './train/config';
