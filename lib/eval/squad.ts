// SQuAD metrics as the official evaluation scripts define them (SPEC §9): answers are normalised
// (lower-case, ASCII punctuation removed, the articles a/an/the removed, white space collapsed);
// exact match and token F1 against every gold answer, the maximum taken; both averaged over the
// questions and given in percent. An unanswerable question (v2.0) has the gold answer "" and a
// prediction scores 1 on it only when it is empty too.

const PUNCT = new Set('!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~'); // Python's string.punctuation

export function normalizeAnswer(s: string): string {
  let t = s.toLowerCase();
  t = Array.from(t).filter((c) => !PUNCT.has(c)).join('');
  t = t.replace(/\b(a|an|the)\b/g, ' ');
  return t.split(/\s+/).filter(Boolean).join(' ');
}

export function exactMatchScore(prediction: string, gold: string): number {
  return normalizeAnswer(prediction) === normalizeAnswer(gold) ? 1 : 0;
}

export function f1Score(prediction: string, gold: string): number {
  const p = normalizeAnswer(prediction).split(' ').filter(Boolean);
  const g = normalizeAnswer(gold).split(' ').filter(Boolean);
  if (p.length === 0 || g.length === 0) return p.length === g.length ? 1 : 0; // v2.0: no-answer vs no-answer
  const counts = new Map<string, number>();
  for (const w of g) counts.set(w, (counts.get(w) ?? 0) + 1);
  let same = 0;
  for (const w of p) {
    const n = counts.get(w) ?? 0;
    if (n > 0) {
      same++;
      counts.set(w, n - 1);
    }
  }
  if (same === 0) return 0;
  const precision = same / p.length;
  const recall = same / g.length;
  return (2 * precision * recall) / (precision + recall);
}

/** {exact_match, f1} in percent over `golds` (question id -> gold answer texts; [] = no answer). */
export function squadMetrics(predictions: Map<string, string>, golds: Map<string, string[]>): { exact_match: number; f1: number; total: number } {
  let em = 0;
  let f1 = 0;
  for (const [id, answers] of golds) {
    const pred = predictions.get(id);
    if (pred === undefined) throw new Error(`squad metrics: no prediction for question ${id}`);
    // v2.0's script keeps the gold answers that normalise to something; none left means no answer
    let g = answers.filter((a) => normalizeAnswer(a) !== '');
    if (g.length === 0) g = [''];
    em += Math.max(...g.map((a) => exactMatchScore(pred, a)));
    f1 += Math.max(...g.map((a) => f1Score(pred, a)));
  }
  const n = golds.size;
  return { exact_match: (100 * em) / n, f1: (100 * f1) / n, total: n };
}
