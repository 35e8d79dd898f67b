// Generative evaluation: greedy outputs for the records of a dataset, scored by one metric. The
// generation is a function passed in (text-only from the CLI; an image-aware one sees
// record.image), so the metrics know nothing about models.
import { AlpacaRecord, promptOf } from '../data/alpaca';
import type { Dataset } from '../data/dataset';
import { captionScores } from './caption';
import { choiceAccuracy } from './choice';
import { exactAccuracy } from './exact';
import { scienceqaTable } from './scienceqa';

export const GENERATIVE_METRICS = ['exact', 'choice', 'scienceqa', 'caption'] as const;
export type GenerativeMetric = (typeof GENERATIVE_METRICS)[number];

/** The greedy output (to EOS) for a record: its prompt (SPEC §3 template) and, when it has one, its image. */
export type GenerateFn = (record: AlpacaRecord, index: number) => Promise<string>;

export interface Prediction {
  /** index of the record in the dataset (for caption: the first record of its image) */
  index: number;
  name: string;
  prediction: string;
  /** exact / choice / scienceqa: whether it counts as right */
  correct?: boolean;
}

export interface EvaluateOptions {
  /** called after each generation */
  onProgress?: (done: number, total: number) => void;
}

export interface EvaluateResult {
  /** the JSON object the CLI prints: {"metric", figures..., "examples"} */
  summary: Record<string, unknown>;
  predictions: Prediction[];
}

/**
 * Runs `generate` over the dataset and scores it:
 *  - exact:     {accuracy, correct, examples}
 *  - choice:    {accuracy, correct, unanswered, examples}
 *  - scienceqa: {accuracy, table (percent per column, SCIENCEQA_COLUMNS), counts, examples} — needs
 *               a ScienceQA dataset (dataset.problems)
 *  - caption:   {"BLEU-4", "CIDEr-D", "BLEU-1".."BLEU-3", images, examples}: one generation per
 *               distinct (image, prompt), scored against the outputs of all its records
 */
export async function evaluateGenerative(
  metric: GenerativeMetric,
  ds: Dataset,
  generate: GenerateFn,
  opts: EvaluateOptions = {},
): Promise<EvaluateResult> {
  if (!(GENERATIVE_METRICS as readonly string[]).includes(metric))
    throw new RangeError(`Expected a metric ${GENERATIVE_METRICS.join(', ')} but received ${JSON.stringify(metric)}`);
  if (ds.records.length === 0) throw new RangeError(`${ds.source}: no records to evaluate`);
  if (metric === 'scienceqa' && !ds.problems)
    throw new Error(`--metric scienceqa needs ScienceQA problems (--format scienceqa); "${ds.source}" is ${ds.format}`);
  const run = async (i: number, done: number, total: number): Promise<string> => {
    let text: string;
    try {
      text = await generate(ds.records[i], i);
    } catch (e) {
      throw new Error(`${ds.names[i]} of "${ds.source}": ${(e as Error).message}`);
    }
    opts.onProgress?.(done + 1, total);
    return text;
  };

  if (metric === 'caption') {
    // One greedy caption per distinct (image, prompt): the output depends on nothing else.
    const groups = new Map<string, number[]>();
    ds.records.forEach((r, i) => {
      const key = JSON.stringify([r.image ?? null, promptOf(r)]);
      const g = groups.get(key);
      if (g) g.push(i);
      else groups.set(key, [i]);
    });
    const items: { candidate: string; references: string[] }[] = [];
    const predictions: Prediction[] = [];
    let done = 0;
    for (const members of groups.values()) {
      const first = members[0];
      const candidate = await run(first, done++, groups.size);
      items.push({ candidate, references: members.map((i) => ds.records[i].output) });
      predictions.push({ index: first, name: ds.names[first], prediction: candidate });
    }
    const s = captionScores(items);
    return {
      summary: {
        metric,
        'BLEU-4': s.bleu4,
        'CIDEr-D': s.ciderD,
        'BLEU-1': s.bleu[0],
        'BLEU-2': s.bleu[1],
        'BLEU-3': s.bleu[2],
        images: items.length,
        examples: ds.records.length,
      },
      predictions,
    };
  }

  const outputs: string[] = [];
  const texts: string[] = [];
  for (let i = 0; i < ds.records.length; i++) {
    texts.push(await run(i, i, ds.records.length));
    outputs.push(ds.records[i].output);
  }
  const predictions: Prediction[] = texts.map((prediction, index) => ({ index, name: ds.names[index], prediction }));
  if (metric === 'exact') {
    const r = exactAccuracy(texts, outputs);
    texts.forEach((t, i) => (predictions[i].correct = t.trim() === outputs[i].trim()));
    return { summary: { metric, accuracy: r.accuracy, correct: r.correct, examples: r.examples }, predictions };
  }
  const c = choiceAccuracy(texts, outputs, ds.names);
  c.right.forEach((ok, i) => (predictions[i].correct = ok));
  if (metric === 'choice')
    return { summary: { metric, accuracy: c.accuracy, correct: c.correct, unanswered: c.unanswered, examples: c.examples }, predictions };
  const t = scienceqaTable(ds.problems!, c.right);
  return { summary: { metric, accuracy: c.accuracy, table: t.table, counts: t.counts, examples: c.examples }, predictions };
}
