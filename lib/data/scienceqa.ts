// ScienceQA (Lu et al. 2022) as instruction records (SPEC §8). The dataset's own layout:
//
//   problems.json     {pid: {question, choices[], answer (index), hint, image ("image.png" | null),
//                            subject, grade ("grade1".."grade12"), split, ...}}
//   pid_splits.json   {train: [pid...], val: [...], test: [...], (minitrain, minival, ...)}
//   {split}/{pid}/image.png   the problem's image, under the image root
//
// One record per problem of the split, in pid_splits.json's order:
//   instruction "Question: {question}\nContext: {hint or N/A}\nOptions: (A) {c0} (B) {c1} ..."
//   output      "The answer is ({letter})."
//   image       "{split}/{pid}/image.png" when the problem has an image
import * as fs from 'fs';
import * as path from 'path';
import type { AlpacaRecord } from './alpaca';

/** What the ScienceQA table (lib/eval/scienceqa.ts) needs of a problem. */
export interface ScienceQAProblem {
  pid: string;
  subject: string;
  /** "grade1" .. "grade12" */
  grade: string;
  /** the text context ("" when none) */
  hint: string;
  hasImage: boolean;
  /** index of the correct choice */
  answer: number;
  choices: string[];
}

export interface ScienceQAData {
  records: AlpacaRecord[];
  /** parallel to records */
  problems: ScienceQAProblem[];
  /** where `{split}/{pid}/image.png` lives by default: the folder of problems.json, or its images/ subfolder when it has one */
  imageRoot: string;
  /** the problems.json path read */
  source: string;
}

/** Option letters: (A), (B), ... as in the dataset's prompts. */
export const CHOICE_LETTERS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';

/** The SPEC §8 instruction of a problem. */
export function scienceqaInstruction(question: string, hint: string, choices: string[]): string {
  const context = hint.trim() === '' ? 'N/A' : hint.trim();
  const options = choices.map((c, i) => `(${CHOICE_LETTERS[i]}) ${c}`).join(' ');
  return `Question: ${question}\nContext: ${context}\nOptions: ${options}`;
}

/** The SPEC §8 output for the answer index. */
export function scienceqaOutput(answer: number): string {
  return `The answer is (${CHOICE_LETTERS[answer]}).`;
}

/**
 * Where `{split}/{pid}/image.png` is found by default: the folder of problems.json, or its images/
 * subfolder when it has one (the official download layout). `dataPath` as for loadScienceQA.
 */
export function scienceqaImageRoot(dataPath: string): string {
  let dir = path.resolve(dataPath);
  if (fs.existsSync(dir) && fs.statSync(dir).isFile()) dir = path.dirname(dir);
  const images = path.join(dir, 'images');
  return fs.existsSync(images) && fs.statSync(images).isDirectory() ? images : dir;
}

function readJson(file: string, what: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`ScienceQA: cannot read ${what} "${file}": ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`ScienceQA: ${what} "${file}" is not valid JSON: ${(e as Error).message}`);
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Reads the problems of one split. `dataPath` is the folder holding problems.json and
 * pid_splits.json, or the problems.json file itself (pid_splits.json beside it). `split` is a key
 * of pid_splits.json (train, val, test, or the mini splits); the image folder of a problem is its
 * own "split" field (so minival problems point into val/), else `split`.
 */
export function loadScienceQA(dataPath: string, split: string): ScienceQAData {
  let dir = dataPath;
  let problemsFile = path.join(dataPath, 'problems.json');
  try {
    if (fs.statSync(dataPath).isFile()) {
      problemsFile = dataPath;
      dir = path.dirname(dataPath);
    }
  } catch (e) {
    throw new Error(`ScienceQA: cannot read "${dataPath}": ${(e as Error).message}`);
  }
  const splitsFile = path.join(dir, 'pid_splits.json');
  const problems = readJson(problemsFile, 'problems file');
  const splits = readJson(splitsFile, 'splits file');
  if (!isObject(problems)) throw new Error(`ScienceQA: "${problemsFile}" must be a JSON object {pid: problem}`);
  if (!isObject(splits)) throw new Error(`ScienceQA: "${splitsFile}" must be a JSON object {split: [pid, ...]}`);
  if (typeof split !== 'string' || !(split in splits))
    throw new Error(`ScienceQA: no split ${JSON.stringify(split)} in "${splitsFile}" (it has ${Object.keys(splits).join(', ')})`);
  const pids = splits[split];
  if (!Array.isArray(pids)) throw new Error(`ScienceQA: split "${split}" of "${splitsFile}" must be a list of problem ids`);
  if (pids.length === 0) throw new Error(`ScienceQA: split "${split}" of "${splitsFile}" is empty`);

  const out: ScienceQAData = { records: [], problems: [], imageRoot: scienceqaImageRoot(dir), source: problemsFile };
  for (const rawPid of pids) {
    const pid = String(rawPid);
    const fail = (why: string): Error => new Error(`ScienceQA: problem ${pid} of "${problemsFile}": ${why}`);
    const p = problems[pid];
    if (p === undefined) throw new Error(`ScienceQA: problem ${pid} of split "${split}" is not in "${problemsFile}"`);
    if (!isObject(p)) throw fail('is not an object');
    const str = (key: string, optional = false): string => {
      const v = p[key];
      if (optional && (v === undefined || v === null)) return '';
      if (typeof v !== 'string') throw fail(`"${key}" must be a string`);
      return v;
    };
    const question = str('question');
    const hint = str('hint', true);
    const subject = str('subject');
    const grade = str('grade');
    const choices = p.choices;
    if (!Array.isArray(choices) || choices.length < 2 || choices.length > CHOICE_LETTERS.length || !choices.every((c) => typeof c === 'string'))
      throw fail(`"choices" must be a list of 2 to ${CHOICE_LETTERS.length} strings`);
    const answer = p.answer;
    if (!Number.isInteger(answer) || (answer as number) < 0 || (answer as number) >= choices.length)
      throw fail(`"answer" must be an index into the ${choices.length} choices, got ${JSON.stringify(answer)}`);
    const image = p.image;
    if (image !== null && image !== undefined && typeof image !== 'string') throw fail('"image" must be a file name or null');
    const hasImage = typeof image === 'string' && image !== '';
    const folder = typeof p.split === 'string' && p.split ? p.split : split;

    const record: AlpacaRecord = {
      instruction: scienceqaInstruction(question, hint, choices as string[]),
      output: scienceqaOutput(answer as number),
    };
    if (hasImage) record.image = `${folder}/${pid}/image.png`;
    out.records.push(record);
    out.problems.push({ pid, subject, grade, hint, hasImage, answer: answer as number, choices: choices as string[] });
  }
  return out;
}
