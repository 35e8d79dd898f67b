// llama-adapter eval --model M [--tokenizer T] [--adapter A] --data D [--batch-size B] [--device cuda|cpu]
//   -> {"loss": mean cross-entropy over all target tokens of the file, "tokens": their count}
import { loadAlpaca, tokenizeRecords } from '../data/alpaca';
import { evaluateLoss } from '../train/trainer';
import { numberFlag, parseFlags, requireString, stringFlag } from './args';
import { modelFlagSpec, modelFlagUsage, openModel } from './model-flags';
import { imageFlagSpec, imageFlagUsage, openAdapterImages } from './image-flags';
import { checkImages } from '../data/dataset';

export const usage = `Usage: llama-adapter eval --model PATH --data FILE [--adapter FILE] [flags]

Prints {"loss": <mean cross-entropy over all target tokens of the file>, "tokens": <their count>}.
Without --adapter: the frozen model.

  --model PATH         llama2.c .bin file or Hugging Face folder
  --tokenizer PATH     tokenizer.model or tokenizer.bin (default: found beside the model)
  --adapter FILE       adapter.safetensors to apply
  --data FILE          Alpaca JSON list or JSONL
  --batch-size N       examples per forward pass (default 8)
  --max-seq-len N      truncate examples to this many tokens (default 512)
${imageFlagUsage}
${modelFlagUsage}`;

export async function run(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const { values } = parseFlags(
    argv,
    {
      ...modelFlagSpec,
      data: { type: 'string' },
      'batch-size': { type: 'string' },
      'max-seq-len': { type: 'string' },
      ...imageFlagSpec,
    },
    usage,
  );
  if (values.help) {
    out.write(usage + '\n');
    return;
  }
  requireString(values, 'model', usage);
  const dataPath = requireString(values, 'data', usage);
  const batchSize = numberFlag(values, 'batch-size', { integer: true, min: 1 }) ?? 8;
  const maxSeqLen = numberFlag(values, 'max-seq-len', { integer: true, min: 2 }) ?? 512;
  const records = loadAlpaca(dataPath); // fail on bad data before loading the model
  const { model, tokenizer, adapter, close } = await openModel(values, usage);
  const images = await openAdapterImages(values, adapter, stringFlag(values, 'adapter'), dataPath, model.device).catch((err) => {
    close();
    throw err;
  });
  try {
    if (images) checkImages({ format: 'alpaca', records, names: records.map((_, i) => `record ${i}`), source: dataPath }, images.imageSource);
    else if (records.some((r) => r.image !== undefined))
      throw new Error(`${dataPath}: records have an "image" but the adapter is text-only (or none): evaluate them with an image-conditioned --adapter and --image-features or --encoder`);
    const { examples } = tokenizeRecords(tokenizer, records, {
      maxSeqLen: Math.min(maxSeqLen, model.config.maxSeqLen),
      source: dataPath,
      warn: (m) => process.stderr.write(m + '\n'),
    });
    if (!examples.length) throw new Error(`${dataPath}: no example has a target token`);
    const r = await evaluateLoss(model, adapter, examples, batchSize, images);
    out.write(JSON.stringify({ loss: r.loss, tokens: r.tokens }) + '\n');
  } finally {
    images?.close();
    close();
  }
}
