// llama-adapter eval --model M [--tokenizer T] [--adapter A] --data D [--format alpaca|scienceqa|coco]
//                    [--split S] [--metric loss|exact|choice|scienceqa|caption] [--max-tokens N] ...
//   loss (default) -> {"loss": mean cross-entropy over all target tokens of the file, "tokens": their count}
//   others         -> {"metric": ..., "accuracy" or the metric's figures, "examples": records}
// llama-adapter eval --task classify --encoder DIR [--adapter A] --data D [--image-root DIR]
//   -> {"accuracy", "loss", "examples"} of labelled images (lib/tasks/classify.ts)
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as nodePath from 'path';
import { promptOf, tokenizeRecords } from '../data/alpaca';
import { DATA_FORMATS, DataFormat, loadDataset } from '../data/dataset';
import { evaluateGenerative, GENERATIVE_METRICS, GenerateFn, GenerativeMetric, Prediction } from '../eval/evaluate';
import { generate } from '../generate/generate';
import { Adapter } from '../model/adapter';
import { Llama } from '../model/llama';
import { Tokenizer } from '../tokenizer';
import { evaluateLoss } from '../train/trainer';
import { loadClassifyData } from '../data/classify';
import { ClassifyEncoder } from '../tasks/classify-encoder';
import { openClassifier, scoreImages } from '../tasks/classify';
import { deviceFlags } from './classify';
import * as squad from './squad';
import { Flags, numberFlag, parseFlags, requireString, stringFlag, UsageError } from './args';
import { modelFlagSpec, modelFlagUsage, openModel } from './model-flags';
import { imageFlagSpec, imageFlagUsage, openAdapterImages } from './image-flags';
import { checkImages } from '../data/dataset';
import { ImageFeatureSource } from '../train/image-features';

export const METRICS = ['loss', ...GENERATIVE_METRICS] as const;
export type Metric = (typeof METRICS)[number];

export const usage = `Usage: llama-adapter eval --model PATH --data FILE [--adapter FILE] [--metric M] [flags]
       llama-adapter eval --task classify --encoder DIR --data D [--adapter FILE] [flags]
       llama-adapter eval --task squad --encoder DIR --data FILE [--adapter FILE]  (--task squad --help)

--metric loss (the default) prints {"loss": <mean cross-entropy over all target tokens of the
file>, "tokens": <their count>}. The other metrics generate a greedy answer per record (temperature
0, to EOS or --max-tokens) and print one JSON object {"metric", the figures, "examples"}:
  exact      {"accuracy", "correct"}: output, white space trimmed, equals the record's (trimmed)
  choice     {"accuracy", "correct", "unanswered"}: the first "(X)" after "The answer is" equals
             the record's letter
  scienceqa  {"accuracy", "table", "counts"}: choice accuracy in percent overall (Avg) and per
             NAT/SOC/LAN, TXT/IMG/NO, G1-6/G7-12 (needs --format scienceqa)
  caption    {"BLEU-4", "CIDEr-D", "BLEU-1".."BLEU-3", "images"}: one greedy caption per image
             against all of its records' outputs (pycocoevalcap's definitions; tokenisation in the
             README)
Without --adapter: the frozen model. With an image-conditioned adapter (--image-features or
--encoder), each record's image conditions its prompts (SPEC §8); records without one use P_l.

  --model PATH         llama2.c .bin file, Hugging Face folder, Meta .pth folder (params.json) or
                       GGUF file (llama; F32/F16/BF16/Q8_0/Q4_0/Q4_K/Q5_K/Q6_K, quantized weights
                       kept quantized)
  --tokenizer PATH     tokenizer.model or tokenizer.bin (default: a GGUF's own vocabulary,
                       else found beside the model)
  --adapter FILE       adapter.safetensors, or an official LLaMA-Adapter .pth, to apply
  --data PATH          the data: an Alpaca JSON list or JSONL file (records may have "image");
                       for --format scienceqa the folder of problems.json and pid_splits.json
                       (or problems.json itself); for --format coco a captions_*.json
  --format F           alpaca (default), scienceqa or coco (converted as SPEC §8)
  --split S            --format scienceqa: which pid_splits.json list (train, val or test)
  --metric M           loss (default), exact, choice, scienceqa or caption
  --max-tokens N       generative metrics: most new tokens per answer (default 512, bounded by
                       the context length)
  --predictions FILE   generative metrics: also write one JSON line per generation
                       {"index", "name", "prediction", "correct"?}
  --batch-size N       loss: examples per forward pass (default 8)
  --max-seq-len N      loss: truncate examples to this many tokens (default 512)
  --skip-missing-images  leave out records whose image (file or features key) is missing, with a
                       count (default: such a record is an error naming it)
${imageFlagUsage}
${modelFlagUsage}

--task classify prints {"accuracy": <share classified right>, "loss": <mean cross-entropy>,
"examples": <images>}. Without --adapter, a ViTForImageClassification folder's own classifier.

  --encoder DIR        Hugging Face ViT or CLIP folder
  --data D             image-folder tree root/<class>/<file>, or a JSON/JSONL list of {"image", "label"}
  --image-root DIR     folder a list's image paths are relative to (default: the list's folder)
  --batch-size N       images per forward pass (default 32)`;

export const evalFlagSpec = {
  ...modelFlagSpec,
  data: { type: 'string' },
  format: { type: 'string' },
  split: { type: 'string' },
  metric: { type: 'string' },
  'max-tokens': { type: 'string' },
  predictions: { type: 'string' },
  'batch-size': { type: 'string' },
  'max-seq-len': { type: 'string' },
  task: { type: 'string' },
  ...imageFlagSpec,
  'skip-missing-images': { type: 'boolean' },
} as const;

/** Greedy generation (temperature 0, to EOS) of a record's prompt (SPEC §3 template); with `images`
 *  (an image-conditioned adapter), the prompts of the record's image (SPEC §8), computed once per record. */
export function textGenerator(model: Llama, tokenizer: Tokenizer, adapter: Adapter | undefined, maxTokens: number, images?: ImageFeatureSource): GenerateFn {
  return async (record) => {
    model.setAdapter(adapter, images && record.image !== undefined ? { imageFeatures: await images.get(record.image) } : {});
    let text = '';
    try {
      for await (const piece of generate(model, tokenizer, promptOf(record), { temperature: 0, maxTokens })) text += piece;
    } finally {
      model.setAdapter(undefined);
    }
    return text;
  };
}

export async function run(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  if (squad.wantsSquad(argv)) return squad.evaluate(argv, out); // --task squad: extractive QA on a text encoder (lib/cli/squad.ts)
  const { values } = parseFlags(argv, { ...evalFlagSpec }, usage);
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
  const metric = (stringFlag(values, 'metric') ?? 'loss') as Metric;
  if (!(METRICS as readonly string[]).includes(metric)) throw new UsageError(`--metric must be one of ${METRICS.join(', ')}, got '${metric}'`);
  const format = (stringFlag(values, 'format') ?? 'alpaca') as DataFormat;
  if (!(DATA_FORMATS as readonly string[]).includes(format))
    throw new UsageError(`--format must be one of ${DATA_FORMATS.join(', ')}, got '${format}'`);
  const split = stringFlag(values, 'split');
  if (format === 'scienceqa' && split === undefined) throw new UsageError('--format scienceqa needs --split (train, val or test)');
  if (format !== 'scienceqa' && split !== undefined) throw new UsageError('--split is only for --format scienceqa');
  if (metric === 'scienceqa' && format !== 'scienceqa') throw new UsageError('--metric scienceqa needs --format scienceqa');
  const batchSize = numberFlag(values, 'batch-size', { integer: true, min: 1 }) ?? 8;
  const maxSeqLen = numberFlag(values, 'max-seq-len', { integer: true, min: 2 }) ?? 512;
  const maxTokens = numberFlag(values, 'max-tokens', { integer: true, min: 1 }) ?? 512;
  const predictionsPath = stringFlag(values, 'predictions');
  if (predictionsPath !== undefined && metric === 'loss') throw new UsageError('--predictions is for the generative metrics');

  let ds = loadDataset(dataPath, { format, split }); // fail on bad data before loading the model
  const { model, tokenizer, adapter, close } = await openModel(values, usage);
  let images: ImageFeatureSource | undefined;
  try {
    images = await openAdapterImages(values, adapter, stringFlag(values, 'adapter'), dataPath, model.device, ds.imageRoot);
    if (images) ds = checkImages(ds, images.imageSource, { skipMissing: values['skip-missing-images'] === true, warn: (m) => process.stderr.write(m + '\n') });
    if (metric === 'loss') {
      const withImages = ds.records.filter((r) => r.image !== undefined).length;
      if (withImages && !images)
        process.stderr.write(`note: ${withImages} of ${ds.records.length} records have an image; without an image-conditioned adapter they are not seen\n`);
      const { examples } = tokenizeRecords(tokenizer, ds.records, {
        maxSeqLen: Math.min(maxSeqLen, model.config.maxSeqLen),
        source: dataPath,
        warn: (m) => process.stderr.write(m + '\n'),
      });
      if (!examples.length) throw new Error(`${dataPath}: no example has a target token`);
      const r = await evaluateLoss(model, adapter, examples, batchSize, images);
      out.write(JSON.stringify({ loss: r.loss, tokens: r.tokens }) + '\n');
      return;
    }
    const withImages = ds.records.filter((r) => r.image !== undefined).length;
    if (withImages && !images)
      process.stderr.write(`note: ${withImages} of ${ds.records.length} records have an image; this text-only evaluation does not see them\n`);
    const gen = textGenerator(model, tokenizer, adapter, maxTokens, images);
    const { summary, predictions } = await evaluateGenerative(metric as GenerativeMetric, ds, gen, { onProgress: progressLine(metric) });
    if (predictionsPath !== undefined) writePredictions(predictionsPath, predictions);
    out.write(JSON.stringify(summary) + '\n');
  } finally {
    images?.close();
    close();
  }
}

/** Progress on stderr: a line about every 10% (and at the end), with the elapsed time. */
function progressLine(metric: string): (done: number, total: number) => void {
  const started = Date.now();
  let shown = 0;
  return (done, total) => {
    if (done < total && done - shown < Math.max(1, Math.ceil(total / 10))) return;
    shown = done;
    const s = (Date.now() - started) / 1000;
    process.stderr.write(`eval ${metric}: ${done}/${total} generated, ${s.toFixed(1)} s\n`);
  };
}

/** One JSON line per prediction, written to a temporary file renamed into place. */
function writePredictions(path: string, predictions: Prediction[]): void {
  const tmp = nodePath.join(nodePath.dirname(path), `.${nodePath.basename(path)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`);
  try {
    fs.writeFileSync(tmp, predictions.map((p) => JSON.stringify(p)).join('\n') + '\n', { flag: 'wx' });
    fs.renameSync(tmp, path);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw new Error(`cannot write predictions file "${path}": ${(e as Error).message}`);
  }
}

async function evalClassify(values: Flags, out: NodeJS.WritableStream): Promise<void> {
  for (const k of ['model', 'tokenizer', 'dtype', 'max-seq-len', 'format', 'split', 'metric', 'max-tokens', 'predictions'])
    if (values[k] !== undefined) throw new UsageError(`--${k} does not apply to --task classify`);
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
