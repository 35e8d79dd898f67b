// llama-adapter classify --encoder DIR [--adapter A] [--top-k 5] IMAGE...
//   -> one JSON line per image: {"image": path as given, "top": [{"index", "label", "logit"}, ...]}
import { classifyLogits, openClassifier, topK } from '../tasks/classify';
import { ClassifyEncoder } from '../tasks/classify-encoder';
import { numberFlag, parseFlags, requireString, stringFlag, UsageError } from './args';
import { resolveDevice, DEVICES } from '../device';
import { native } from '../native';

export const usage = `Usage: llama-adapter classify --encoder DIR [--adapter FILE] [--top-k 5] IMAGE...

Prints one JSON line per image, in the order given:
  {"image": <path as given>, "top": [{"index": i, "label": name, "logit": x}, ...]} (highest first).
Without --adapter, a ViTForImageClassification folder's own classifier (and its id2label) is used.

  --encoder DIR        Hugging Face ViT or CLIP folder
  --adapter FILE       an adapter trained with \`llama-adapter train --task classify\`
  --top-k N            classes per image (default 5)
  --batch-size N       images per forward pass (default 32)
  --device cuda|cpu    where to compute (default: cuda when a GPU is available, else cpu)
  --threads N          CPU threads (default: all cores)`;

/** --device and --threads, shared with eval --task classify. */
export function deviceFlags(values: Record<string, string | boolean | undefined>): 'cpu' | 'cuda' {
  const requested = stringFlag(values, 'device');
  if (requested !== undefined && !(DEVICES as string[]).includes(requested)) throw new UsageError(`--device must be cuda or cpu, got '${requested}'`);
  const threads = numberFlag(values, 'threads', { integer: true, min: 1 });
  if (threads) native.setThreads(threads);
  return resolveDevice(requested, '--device');
}

export async function run(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const { values, positionals } = parseFlags(
    argv,
    {
      encoder: { type: 'string' },
      adapter: { type: 'string' },
      'top-k': { type: 'string' },
      'batch-size': { type: 'string' },
      device: { type: 'string' },
      threads: { type: 'string' },
    },
    usage,
  );
  if (values.help) {
    out.write(usage + '\n');
    return;
  }
  const encoderDir = requireString(values, 'encoder', usage);
  const k = numberFlag(values, 'top-k', { integer: true, min: 1 }) ?? 5;
  const batchSize = numberFlag(values, 'batch-size', { integer: true, min: 1 }) ?? 32;
  if (positionals.length === 0) throw new UsageError(`no image given\n\n${usage}`);
  const device = deviceFlags(values);
  const enc = await ClassifyEncoder.load(encoderDir, device);
  try {
    const classifier = await openClassifier(enc, encoderDir, stringFlag(values, 'adapter'));
    try {
      // in batches, so that the first lines come before the last image is read
      for (let s = 0; s < positionals.length; s += batchSize) {
        const part = positionals.slice(s, s + batchSize).map((image) => ({ image, file: image, label: -1 }));
        const logits = await classifyLogits(enc, classifier, part, batchSize);
        const tops = topK(logits, classifier.numClasses, k, classifier.config.labels);
        out.write(part.map((p, i) => JSON.stringify({ image: p.image, top: tops[i] }) + '\n').join(''));
      }
    } finally {
      classifier.dispose();
    }
  } finally {
    enc.dispose();
  }
}
