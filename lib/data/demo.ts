// A small instruction dataset that the 260K-parameter TinyStories model (vocabulary 512) can learn:
//
//   {"instruction": "Write a story about Sam who likes kites.", "input": "",
//    "output": "Once upon a time, there was a little boy named Sam. Sam liked kites very much. ..."}
//
// Every story is 3 short sentences in TinyStories words, names the character at least twice and
// mentions the thing. The story has to take its name from the instruction, and the validation
// and test splits use names the training split never contains, so a model that writes about
// the right character on them has learnt to copy the name, not memorised it.
//
// The names and things are words the tok512 tokenizer encodes in 1–3 tokens (after "named " /
// "likes "); a whole example (SPEC §3 prompt + story) stays under 200 tokens with it.
import { Random } from '../generate/random';
import type { AlpacaRecord } from './alpaca';

export interface DemoName {
  name: string;
  pronoun: 'he' | 'she';
}

const he = (...names: string[]): DemoName[] => names.map((name) => ({ name, pronoun: 'he' as const }));
const she = (...names: string[]): DemoName[] => names.map((name) => ({ name, pronoun: 'she' as const }));

/** Names of the training split (13 boys, 13 girls). */
export const DEMO_TRAIN_NAMES: readonly DemoName[] = Object.freeze([
  ...he('Tim', 'Tom', 'Ben', 'Sam', 'Ted', 'Max', 'Bob', 'Leo', 'Ron', 'Dan', 'Jim', 'Mike', 'Jay'),
  ...she('Lily', 'Sue', 'Mia', 'Sara', 'Amy', 'Lisa', 'Kim', 'Sally', 'Kay', 'Jen', 'Tina', 'Lin', 'Bea'),
]);

/** Held-out names of the validation split: never in the training split. */
export const DEMO_VAL_NAMES: readonly DemoName[] = Object.freeze([
  ...he('Sid', 'Milo', 'Ned'),
  ...she('Hana', 'Tess', 'Ida'),
]);

/** Held-out names of the test split: in neither the training nor the validation split. */
export const DEMO_TEST_NAMES: readonly DemoName[] = Object.freeze([
  ...he('Omar', 'Hal', 'Ivan'),
  ...she('Liz', 'Meg', 'Mae'),
]);

/** Things a character likes: plural or mass nouns, so "likes X" and "played with X" read right. */
export const DEMO_THINGS: readonly string[] = Object.freeze([
  'cats', 'dogs', 'balls', 'fish', 'kites', 'cars', 'hats', 'toys', 'stars', 'bears', 'dolls',
  'shells', 'bells', 'cows', 'pigs', 'bees', 'hens', 'sheep', 'pies', 'cakes', 'apples', 'books',
  'boats', 'birds', 'bikes', 'rocks', 'ducks',
]);

interface Words {
  N: string; // the name
  T: string; // the thing
  kid: string; // boy / girl
  p: string; // he / she
  P: string; // He / She
  pos: string; // his / her
}

/** Story templates: each uses N at least twice and T at least once. */
const STORIES: ((w: Words) => string)[] = [
  (w) =>
    `Once upon a time, there was a little ${w.kid} named ${w.N}. ${w.N} liked ${w.T} very much. ` +
    `Every day, ${w.p} played with ${w.T} in the park.`,
  (w) =>
    `${w.N} was a happy ${w.kid} who loved ${w.T}. One day, ${w.N} saw some ${w.T} near a big tree. ` +
    `${w.P} smiled and said, "I love ${w.T}!"`,
  (w) =>
    `One day, ${w.N} went to the park with ${w.pos} mom. ${w.N} saw many ${w.T} there. ` +
    `${w.P} was very happy and played all day.`,
  (w) =>
    `There was a little ${w.kid} named ${w.N}. ${w.N} wanted to play with ${w.T}. ` +
    `${w.P} asked ${w.pos} friend to play too, and they had a lot of fun.`,
  (w) =>
    `Once upon a time, ${w.N} found some ${w.T} under ${w.pos} bed. ${w.N} was so happy! ` +
    `${w.P} showed the ${w.T} to ${w.pos} mom, and she smiled.`,
  (w) =>
    `${w.N} had a good friend who also liked ${w.T}. Every day, ${w.N} and ${w.pos} friend played with ${w.T}. ` +
    `They were very happy together.`,
  (w) =>
    `Once upon a time, there was a ${w.kid} named ${w.N} who loved ${w.T}. One day, ${w.pos} mom gave ${w.N} ` +
    `a book about ${w.T}. ${w.N} read it all day and smiled.`,
];

export const DEMO_STORY_TEMPLATES = STORIES.length;

/** The instruction of a demo record. */
export function demoInstruction(name: string, thing: string): string {
  return `Write a story about ${name} who likes ${thing}.`;
}

/** The story of template `template` (0 .. DEMO_STORY_TEMPLATES-1) for one name and thing. */
export function demoStory(template: number, who: DemoName, thing: string): string {
  const make = STORIES[template];
  if (!make) throw new RangeError(`Expected a story template in 0..${STORIES.length - 1} but received ${template}`);
  const girl = who.pronoun === 'she';
  return make({ N: who.name, T: thing, kid: girl ? 'girl' : 'boy', p: girl ? 'she' : 'he', P: girl ? 'She' : 'He', pos: girl ? 'her' : 'his' });
}

export interface DemoOptions {
  count: number;
  seed: number;
  /** default DEMO_TRAIN_NAMES */
  names?: readonly DemoName[];
  /** default DEMO_THINGS */
  things?: readonly string[];
}

/**
 * `count` records {instruction, input: "", output}, each a seeded random choice of name, thing and
 * story template. The same options give the same records.
 */
export function makeDemoDataset(opts: DemoOptions): AlpacaRecord[] {
  const { count, seed, names = DEMO_TRAIN_NAMES, things = DEMO_THINGS } = opts;
  if (!Number.isInteger(count) || count < 0) throw new RangeError(`Expected non-negative integer for count but received ${count}`);
  if (names.length === 0) throw new RangeError('makeDemoDataset needs at least one name');
  if (things.length === 0) throw new RangeError('makeDemoDataset needs at least one thing');
  for (const n of names) {
    if (!n || typeof n.name !== 'string' || !/^\S+$/.test(n.name) || (n.pronoun !== 'he' && n.pronoun !== 'she'))
      throw new TypeError(`Expected names as {name: one word, pronoun: 'he' | 'she'} but received ${JSON.stringify(n)}`);
  }
  const rng = new Random(seed);
  const pick = (n: number): number => Math.floor(rng.next() * n);
  const out: AlpacaRecord[] = [];
  for (let i = 0; i < count; i++) {
    const who = names[pick(names.length)];
    const thing = things[pick(things.length)];
    const template = pick(STORIES.length);
    out.push({ instruction: demoInstruction(who.name, thing), input: '', output: demoStory(template, who, thing) });
  }
  return out;
}

export interface DemoSplits {
  train: AlpacaRecord[];
  val: AlpacaRecord[];
  test: AlpacaRecord[];
}

/**
 * Train / validation / test splits with disjoint names (DEMO_TRAIN_NAMES, DEMO_VAL_NAMES,
 * DEMO_TEST_NAMES); the things are shared. Deterministic from the seed.
 */
export function makeDemoSplits(opts: { seed: number; train?: number; val?: number; test?: number }): DemoSplits {
  const { seed, train = 2000, val = 200, test = 200 } = opts;
  const rng = new Random(seed); // one independent seed per split
  const seeds = [rng.nextUint32(), rng.nextUint32(), rng.nextUint32()];
  return {
    train: makeDemoDataset({ count: train, seed: seeds[0], names: DEMO_TRAIN_NAMES }),
    val: makeDemoDataset({ count: val, seed: seeds[1], names: DEMO_VAL_NAMES }),
    test: makeDemoDataset({ count: test, seed: seeds[2], names: DEMO_TEST_NAMES }),
  };
}

function nameRegExp(name: string): RegExp {
  const escaped = name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  // A whole word, case-sensitive: "Tim" is not in "Timmy", "Kay" is not in "okay".
  return new RegExp(`(?<![\\p{L}\\p{N}_])${escaped}(?![\\p{L}\\p{N}_])`, 'gu');
}

/** How often `name` occurs in `text` as a whole word (case-sensitive). */
export function countName(text: string, name: string): number {
  if (name === '') return 0;
  return (text.match(nameRegExp(name)) ?? []).length;
}

/** Whether `text` uses `name` as a whole word (case-sensitive) at least `minTimes` times (default 1). */
export function storyUsesName(text: string, name: string, minTimes = 1): boolean {
  return countName(text, name) >= minTimes;
}
