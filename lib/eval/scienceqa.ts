// The ScienceQA table (Lu et al. 2022; the columns of LLaMA-Adapter's Table 3), as the dataset's
// tools/evaluate_acc.py computes it: accuracy in percent over all problems and per group —
//   NAT / SOC / LAN   subject natural / social / language science
//   TXT               problems with a text context (non-empty hint)
//   IMG               problems with an image
//   NO                problems with neither
//   G1-6 / G7-12      grade1..grade6 / grade7..grade12
// (TXT and IMG overlap: a problem with both counts in both.) A group with no problem is null.
import type { ScienceQAProblem } from '../data/scienceqa';

export const SCIENCEQA_COLUMNS = ['NAT', 'SOC', 'LAN', 'TXT', 'IMG', 'NO', 'G1-6', 'G7-12', 'Avg'] as const;
export type ScienceQAColumn = (typeof SCIENCEQA_COLUMNS)[number];

const GRADE = /^grade(\d+)$/;

/** The groups a problem belongs to (Avg always). */
export function scienceqaGroups(p: ScienceQAProblem): ScienceQAColumn[] {
  const g: ScienceQAColumn[] = [];
  if (p.subject === 'natural science') g.push('NAT');
  else if (p.subject === 'social science') g.push('SOC');
  else if (p.subject === 'language science') g.push('LAN');
  const hasText = p.hint !== '';
  if (hasText) g.push('TXT');
  if (p.hasImage) g.push('IMG');
  if (!hasText && !p.hasImage) g.push('NO');
  const m = GRADE.exec(p.grade);
  if (m) {
    const n = Number(m[1]);
    if (n >= 1 && n <= 6) g.push('G1-6');
    else if (n >= 7 && n <= 12) g.push('G7-12');
  }
  g.push('Avg');
  return g;
}

export interface ScienceQATable {
  /** accuracy in percent per column; null for a column with no problem */
  table: Record<ScienceQAColumn, number | null>;
  /** problems per column */
  counts: Record<ScienceQAColumn, number>;
}

/** The table from per-problem correctness (`right[i]` for `problems[i]`). */
export function scienceqaTable(problems: ScienceQAProblem[], right: boolean[]): ScienceQATable {
  if (problems.length !== right.length) throw new RangeError(`scienceqa: ${right.length} results for ${problems.length} problems`);
  const hit = Object.fromEntries(SCIENCEQA_COLUMNS.map((c) => [c, 0])) as Record<ScienceQAColumn, number>;
  const counts = Object.fromEntries(SCIENCEQA_COLUMNS.map((c) => [c, 0])) as Record<ScienceQAColumn, number>;
  problems.forEach((p, i) => {
    for (const c of scienceqaGroups(p)) {
      counts[c]++;
      if (right[i]) hit[c]++;
    }
  });
  const table = Object.fromEntries(SCIENCEQA_COLUMNS.map((c) => [c, counts[c] ? (100 * hit[c]) / counts[c] : null])) as Record<
    ScienceQAColumn,
    number | null
  >;
  return { table, counts };
}
