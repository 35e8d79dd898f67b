// A SQuAD v1.1 set built from real text that ships in a Debian package (the licence texts of
// base-files, /usr/share/common-licenses): every paragraph of 150..1500 characters is a context; up
// to two sentences of it become cloze questions (a word of >= 5 letters replaced by "what", the word
// the answer); contexts split 85/15 into train / held-out eval by a seeded shuffle. Used by
// scripts/squad-measure.ts (the issue-14 measurement) and bench/squad-step.ts.
import * as fs from 'fs';
import { Random } from '../lib/generate/random';

const SOURCES = ['GPL-3', 'GPL-2', 'Apache-2.0', 'MPL-2.0'].map((f) => `/usr/share/common-licenses/${f}`);

export function buildClozeSquad(seed: number): { train: unknown; eval: unknown; counts: { contexts: number; train: number; eval: number } } {
  const rng = new Random(seed);
  const paragraphs: string[] = [];
  for (const f of SOURCES)
    for (const p of fs.readFileSync(f, 'utf8').split(/\n\s*\n/)) {
      const t = p.replace(/\s+/g, ' ').trim();
      if (t.length >= 150 && t.length <= 1500) paragraphs.push(t);
    }
  for (let i = paragraphs.length - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    [paragraphs[i], paragraphs[j]] = [paragraphs[j], paragraphs[i]];
  }
  let qid = 0;
  const article = (ps: string[]) => ({
    title: 'licences',
    paragraphs: ps.map((context) => {
      const qas: unknown[] = [];
      const sentences = [...context.matchAll(/[^.;:!?]+[.;:!?]/g)].filter((m) => m[0].length > 40);
      for (const m of sentences.slice(0, 2)) {
        const words = [...m[0].matchAll(/[A-Za-z]{5,}/g)].slice(1);
        if (!words.length) continue;
        const w = words[Math.floor(rng.next() * words.length)];
        const start = m.index! + w.index!;
        const question = (m[0].slice(0, w.index!) + 'what' + m[0].slice(w.index! + w[0].length)).trim().replace(/[.;:!?]$/, '?');
        qas.push({ id: `c${qid++}`, question, answers: [{ text: w[0], answer_start: start }] });
      }
      return { context, qas };
    }).filter((p) => p.qas.length),
  });
  const nEval = Math.round(paragraphs.length * 0.15);
  const ev = article(paragraphs.slice(0, nEval));
  const tr = article(paragraphs.slice(nEval));
  const count = (a: { paragraphs: { qas: unknown[] }[] }) => a.paragraphs.reduce((s, p) => s + p.qas.length, 0);
  return { train: { version: 'v1.1', data: [tr] }, eval: { version: 'v1.1', data: [ev] }, counts: { contexts: paragraphs.length, train: count(tr), eval: count(ev) } };
}
