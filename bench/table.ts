// The markdown table every benchmark prints: a title, columns, rows, and notes under it.

export interface BenchTable {
  title: string;
  columns: string[];
  /** 'l' or 'r' per column */
  align: ('l' | 'r')[];
  rows: string[][];
  notes: string[];
  /** unformatted measurements, for --json */
  raw?: unknown;
}

export function formatTable(t: BenchTable): string {
  const widths = t.columns.map((c, i) => Math.max(c.length, ...t.rows.map((r) => r[i].length), 3));
  const cell = (s: string, i: number) => (t.align[i] === 'r' ? s.padStart(widths[i]) : s.padEnd(widths[i]));
  const line = (cells: string[]) => `| ${cells.map(cell).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (t.align[i] === 'r' ? '-'.repeat(w + 1) + ':' : '-'.repeat(w + 2))).join('|')}|`;
  return [
    `### ${t.title}`,
    '',
    line(t.columns),
    rule,
    ...t.rows.map(line),
    '',
    ...t.notes.map((n) => `- ${n}`),
    '',
  ].join('\n');
}
