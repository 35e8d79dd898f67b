// llama-adapter eval --model M [--tokenizer T] [--adapter A] --data D [--batch-size B]
//   -> {"loss": mean cross-entropy over all target tokens of the file, "tokens": their count}
import { native } from '../native';
import { loadAlpaca, tokenizeRecords } from '../data/alpaca';
import { Adapter } from '../model/adapter';
import { Llama } from '../model/llama';
import { loadTokenizer } from '../tokenizer';
import { evaluateLoss } from '../train/trainer';
import { numberFlag, parseFlags, requireString, stringFlag, UsageError } from './args';

export const usage = `Usage: llama-adapter eval --model PATH --data FILE [--adapter FILE] [flags]

Prints {"loss": <mean cross-entropy over all target tokens of the file>, "tokens": <their count>}.
Without --adapter: the frozen model.

  --model PATH         llama2.c .bin file or Hugging Face folder
  --tokenizer PATH     tokenizer.model or tokenizer.bin (default: found beside the model)
  --adapter FILE       adapter.safetensors to apply
  --data FILE          Alpaca JSON list or JSONL
  --batch-size N       examples per forward pass (default 8)
  --max-seq-len N      truncate examples to this many tokens (default 512)
  --dtype f32|bf16     storage of the frozen weights (default f32)
  --threads N          CPU threads (default: all cores)`;

export async function run(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const { values } = parseFlags(
    argv,
    {
      model: { type: 'string' },
      tokenizer: { type: 'string' },
      adapter: { type: 'string' },
      data: { type: 'string' },
      'batch-size': { type: 'string' },
      'max-seq-len': { type: 'string' },
      dtype: { type: 'string' },
      threads: { type: 'string' },
    },
    usage,
  );
  if (values.help) {
    out.write(usage + '\n');
    return;
  }
  const modelPath = requireString(values, 'model', usage);
  const dataPath = requireString(values, 'data', usage);
  const batchSize = numberFlag(values, 'batch-size', { integer: true, min: 1 }) ?? 8;
  const maxSeqLen = numberFlag(values, 'max-seq-len', { integer: true, min: 2 }) ?? 512;
  const threads = numberFlag(values, 'threads', { integer: true, min: 1 });
  const dtype = stringFlag(values, 'dtype') ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'bf16') throw new UsageError(`--dtype must be f32 or bf16, got '${dtype}'`);
  if (threads) native.setThreads(threads);
  const records = loadAlpaca(dataPath); // fail on bad data before loading the model
  const model = await Llama.load(modelPath, { dtype });
  let adapter: Adapter | undefined;
  try {
    const tokPath = stringFlag(values, 'tokenizer') ?? model.checkpoint.tokenizerPath;
    if (!tokPath) throw new UsageError(`no tokenizer found beside ${modelPath}; pass --tokenizer PATH`);
    const tokenizer = loadTokenizer(tokPath);
    const adapterPath = stringFlag(values, 'adapter');
    if (adapterPath) adapter = Adapter.load(adapterPath, model.config);
    const { examples } = tokenizeRecords(tokenizer, records, {
      maxSeqLen: Math.min(maxSeqLen, model.config.maxSeqLen),
      source: dataPath,
      warn: (m) => process.stderr.write(m + '\n'),
    });
    if (!examples.length) throw new Error(`${dataPath}: no example has a target token`);
    const r = await evaluateLoss(model, adapter, examples, batchSize);
    out.write(JSON.stringify({ loss: r.loss, tokens: r.tokens }) + '\n');
  } finally {
    adapter?.dispose();
    model.dispose();
  }
}
