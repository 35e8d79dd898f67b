// Exact match (SPEC §8): the share of records whose greedy output (to EOS, white space trimmed at
// both ends) equals the record's output (trimmed).

/** Whether a generated text matches the record's output. */
export function exactMatch(generated: string, output: string): boolean {
  return generated.trim() === output.trim();
}

export interface AccuracyResult {
  accuracy: number;
  correct: number;
  examples: number;
}

/** Share of pairs that match; `predictions[i]` goes with `outputs[i]`. */
export function exactAccuracy(predictions: string[], outputs: string[]): AccuracyResult {
  if (predictions.length !== outputs.length)
    throw new RangeError(`exact: ${predictions.length} predictions for ${outputs.length} records`);
  if (outputs.length === 0) throw new RangeError('exact: no records');
  let correct = 0;
  predictions.forEach((p, i) => (correct += exactMatch(p, outputs[i]) ? 1 : 0));
  return { accuracy: correct / outputs.length, correct, examples: outputs.length };
}
