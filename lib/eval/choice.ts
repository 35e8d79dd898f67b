// Multiple-choice accuracy (SPEC §8): the share of greedy answers whose first "(X)" after
// "The answer is" equals the gold letter. The gold letter is read from the record's output the
// same way (ScienceQA's outputs are "The answer is (B).").
import type { AccuracyResult } from './exact';

const ANSWER = 'The answer is';

/**
 * The letter of the first "(X)" (X one capital letter A-Z) after the first "The answer is" in
 * `text`, or null when there is none.
 */
export function extractChoice(text: string): string | null {
  const at = text.indexOf(ANSWER);
  if (at < 0) return null;
  const m = /\(([A-Z])\)/.exec(text.slice(at + ANSWER.length));
  return m ? m[1] : null;
}

/** The gold letter of a record's output; an output without one is an error naming the record. */
export function goldChoice(output: string, name: string): string {
  const g = extractChoice(output);
  if (g === null)
    throw new Error(`${name}: its output ${JSON.stringify(output.slice(0, 80))} has no "(X)" after "${ANSWER}", so it has no gold answer for --metric choice`);
  return g;
}

export interface ChoiceResult extends AccuracyResult {
  /** predictions with no "(X)" after "The answer is" (counted wrong) */
  unanswered: number;
  /** per prediction: right or not */
  right: boolean[];
}

/** Multiple-choice accuracy of `predictions` against the records' outputs (names for errors). */
export function choiceAccuracy(predictions: string[], outputs: string[], names?: string[]): ChoiceResult {
  if (predictions.length !== outputs.length)
    throw new RangeError(`choice: ${predictions.length} predictions for ${outputs.length} records`);
  if (outputs.length === 0) throw new RangeError('choice: no records');
  let correct = 0;
  let unanswered = 0;
  const right = predictions.map((p, i) => {
    const gold = goldChoice(outputs[i], names?.[i] ?? `record ${i}`);
    const got = extractChoice(p);
    if (got === null) unanswered++;
    const ok = got === gold;
    if (ok) correct++;
    return ok;
  });
  return { accuracy: correct / outputs.length, correct, examples: outputs.length, unanswered, right };
}
