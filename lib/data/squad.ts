// SQuAD v1.1 / v2.0 JSON (SPEC §9): {"version", "data": [{"title", "paragraphs": [{"context",
// "qas": [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}.
// answer_start counts Unicode code points (Python's str indices); here every offset is converted to
// UTF-16 code units (JS string indices) on load.
import * as fs from 'fs';

export interface SquadAnswer {
  text: string;
  /** UTF-16 offset of the answer in the context */
  start: number;
}

export interface SquadExample {
  id: string;
  question: string;
  context: string;
  /** the gold answers (empty for a v2.0 unanswerable question) */
  answers: SquadAnswer[];
  isImpossible: boolean;
}

export interface SquadData {
  path: string;
  /** true when the file has v2.0 unanswerable questions (is_impossible keys or version "v2.0") */
  v2: boolean;
  examples: SquadExample[];
  /** answers whose text differs from the context at answer_start (kept for scoring, not trained on) */
  mismatched: number;
}

/** UTF-16 offset of code point `cp` of `s` (or undefined past the end). */
function utf16Offset(s: string, cp: number): number | undefined {
  let u = 0;
  let i = 0;
  for (const ch of s) {
    if (i === cp) return u;
    u += ch.length;
    i++;
  }
  return i === cp ? u : undefined;
}

/** Reads and checks a SQuAD file; errors name the file and the JSON path of the problem. */
export function loadSquad(path: string): SquadData {
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (e) {
    throw new Error(`cannot read SQuAD file ${path}: ${(e as Error).message}`);
  }
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path} is not valid JSON: ${(e as Error).message}`);
  }
  const bad = (where: string, what: string) => new Error(`${path}: ${where} ${what} (expected SQuAD v1.1/v2.0 JSON)`);
  const isObj = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null && !Array.isArray(x);
  if (!isObj(j) || !Array.isArray(j.data)) throw bad('the top level', 'has no "data" list');
  let v2 = j.version === 'v2.0';
  const examples: SquadExample[] = [];
  const ids = new Set<string>();
  let mismatched = 0;
  j.data.forEach((article, a) => {
    if (!isObj(article) || !Array.isArray(article.paragraphs)) throw bad(`data[${a}]`, 'has no "paragraphs" list');
    article.paragraphs.forEach((para, p) => {
      const at = `data[${a}].paragraphs[${p}]`;
      if (!isObj(para) || typeof para.context !== 'string') throw bad(at, 'has no "context" string');
      if (!Array.isArray(para.qas)) throw bad(at, 'has no "qas" list');
      const context = para.context;
      para.qas.forEach((qa, q) => {
        const where = `${at}.qas[${q}]`;
        if (!isObj(qa)) throw bad(where, 'is not an object');
        if (typeof qa.id !== 'string' && typeof qa.id !== 'number') throw bad(where, 'has no "id"');
        const id = String(qa.id);
        if (ids.has(id)) throw bad(where, `repeats the id ${JSON.stringify(id)}`);
        ids.add(id);
        if (typeof qa.question !== 'string' || qa.question.trim() === '') throw bad(where, `(id ${id}) has no "question" string`);
        if (qa.is_impossible !== undefined) {
          if (typeof qa.is_impossible !== 'boolean') throw bad(where, `(id ${id}) "is_impossible" must be true or false`);
          v2 = true;
        }
        const impossible = qa.is_impossible === true;
        if (!Array.isArray(qa.answers)) throw bad(where, `(id ${id}) has no "answers" list`);
        const answers: SquadAnswer[] = [];
        qa.answers.forEach((an, k) => {
          const w = `${where}.answers[${k}] (id ${id})`;
          if (!isObj(an) || typeof an.text !== 'string' || typeof an.answer_start !== 'number' || !Number.isInteger(an.answer_start) || an.answer_start < 0)
            throw bad(w, 'must be {"text": string, "answer_start": integer >= 0}');
          const start = utf16Offset(context, an.answer_start);
          if (start === undefined || start + an.text.length > context.length || an.text.length === 0)
            throw new Error(
              `${path}: ${w}: the answer ${JSON.stringify(an.text.slice(0, 40))} at answer_start ${an.answer_start} is outside the context ` +
                `(${Array.from(context).length} characters)`,
            );
          if (context.slice(start, start + an.text.length) !== an.text) mismatched++;
          answers.push({ text: an.text, start });
        });
        if (impossible && answers.length) throw bad(where, `(id ${id}) is_impossible but has answers`);
        if (!impossible && !answers.length) throw bad(where, `(id ${id}) has no answers (and is not marked is_impossible)`);
        examples.push({ id, question: qa.question, context, answers, isImpossible: impossible });
      });
    });
  });
  if (!examples.length) throw new Error(`${path}: no questions`);
  return { path, v2, examples, mismatched };
}
