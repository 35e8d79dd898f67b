// llama-adapter eval --model M [--tokenizer T] [--adapter A] --data D [--batch-size B] [--device cuda|cpu]
//   -> {"loss": mean cross-entropy over all target tokens of the file, "tokens": their count}
import { loadAlpaca, tokenizeRecords } from '../data/alpaca';
import { loadClassifyData } from '../data/classify';
import { ClassifyEncoder } from '../tasks/classify-encoder';
import { openClassifier, scoreImages } from '../tasks/classify';
import { deviceFlags } from './classify';
import { evaluateLoss } from '../train/trainer';
import { Flags, numberFlag, parseFlags, requireString, stringFlag, UsageError } from './args';
import { modelFlagSpec, modelFlagUsage, openModel } from './model-flags';

export const usage = `Usage: llama-adapter eval --model PATH --data FILE [--adapter FILE] [flags]
       llama-adapter eval --task classify --encoder DIR --data D [--adapter FILE] [flags]

Prints {"loss": <mean cross-entropy over all target tokens of the file>, "tokens": <their count>}.
Without --adapter: the frozen model.

  --model PATH         llama2.c .bin file or Hugging Face folder
  --tokenizer PATH     tokenizer.model or tokenizer.bin (default: found beside the model)
  --adapter FILE       adapter.safetensors to apply
  --data FILE          Alpaca JSON list or JSONL
  --batch-size N       examples per forward pass (default 8)
  --max-seq-len N      truncate examples to this many tokens (default 512)
${modelFlagUsage}

--task classify prints {"accuracy": <share classified right>, "loss": <mean cross-entropy>,
"examples": <images>}. Without --adapter, a ViTForImageClassification folder's own classifier.

  --encoder DIR        Hugging Face ViT or CLIP folder
  --data D             image-folder tree root/<class>/<file>, or a JSON/JSONL list of {"image", "label"}
  --image-root DIR     folder a list's image paths are relative to (default: the list's folder)
  --batch-size N       images per forward pass (default 32)`;

export async function run(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const { values } = parseFlags(
    argv,
    {
      ...modelFlagSpec,
      data: { type: 'string' },
      'batch-size': { type: 'string' },
      'max-seq-len': { type: 'string' },
      task: { type: 'string' },
      encoder: { type: 'string' },
      'image-root': { type: 'string' },
    },
    usage,
  );
  if (values.help) {
    out.write(usage + '\n');
    return;
  }
  const task = stringFlag(values, 'task') ?? 'lm';
  if (task !== 'lm' && task !== 'classify') throw new UsageError(`--task must be lm or classify, got '${task}'`);
  if (task === 'classify') return evalClassify(values, out);
  for (const k of ['encoder', 'image-root']) if (values[k] !== undefined) throw new UsageError(`--${k} applies to --task classify only`);
  requireString(values, 'model', usage);
  const dataPath = requireString(values, 'data', usage);
  const batchSize = numberFlag(values, 'batch-size', { integer: true, min: 1 }) ?? 8;
  const maxSeqLen = numberFlag(values, 'max-seq-len', { integer: true, min: 2 }) ?? 512;
  const records = loadAlpaca(dataPath); // fail on bad data before loading the model
  const { model, tokenizer, adapter, close } = await openModel(values, usage);
  try {
    const { examples } = tokenizeRecords(tokenizer, records, {
      maxSeqLen: Math.min(maxSeqLen, model.config.maxSeqLen),
      source: dataPath,
      warn: (m) => process.stderr.write(m + '\n'),
    });
    if (!examples.length) throw new Error(`${dataPath}: no example has a target token`);
    const r = await evaluateLoss(model, adapter, examples, batchSize);
    out.write(JSON.stringify({ loss: r.loss, tokens: r.tokens }) + '\n');
  } finally {
    close();
  }
}

async function evalClassify(values: Flags, out: NodeJS.WritableStream): Promise<void> {
  for (const k of ['model', 'tokenizer', 'dtype', 'max-seq-len']) if (values[k] !== undefined) throw new UsageError(`--${k} does not apply to --task classify`);
  const encoderDir = requireString(values, 'encoder', usage);
  const dataPath = requireString(values, 'data', usage);
  const batchSize = numberFlag(values, 'batch-size', { integer: true, min: 1 }) ?? 32;
  const device = deviceFlags(values);
  loadClassifyData(dataPath, { imageRoot: stringFlag(values, 'image-root') }); // fail on bad data before loading the encoder
  const enc = await ClassifyEncoder.load(encoderDir, device);
  try {
    const classifier = await openClassifier(enc, encoderDir, stringFlag(values, 'adapter'));
    try {
      // the head's labels fix the class indices; a label it does not know is an error naming the record
      const data = loadClassifyData(dataPath, { imageRoot: stringFlag(values, 'image-root'), labels: classifier.config.labels });
      const r = await scoreImages(enc, classifier, data.examples, batchSize);
      out.write(JSON.stringify({ accuracy: r.accuracy, loss: r.loss, examples: r.examples }) + '\n');
    } finally {
      classifier.dispose();
    }
  } finally {
    enc.dispose();
  }
}
