// Evaluation metrics: exact match, multiple choice, the ScienceQA table, and the caption metrics
// (BLEU-4, CIDEr-D) against the independent Python reference's golden file and hand-worked cases.
import { expect } from 'chai';
import * as fs from 'fs';
import * as path from 'path';
import { bleu, captionScores, ciderD, tokenizeCaption } from '../lib/eval/caption';
import { choiceAccuracy, extractChoice } from '../lib/eval/choice';
import { exactAccuracy } from '../lib/eval/exact';
import { evaluateGenerative } from '../lib/eval/evaluate';
import { scienceqaGroups, scienceqaTable } from '../lib/eval/scienceqa';
import { loadDataset } from '../lib/data/dataset';
import type { ScienceQAProblem } from '../lib/data/scienceqa';
import { repoRoot } from './util/paths';

const FIX = (...p: string[]): string => path.join(repoRoot, 'test', 'fixtures', ...p);

function throwsWith(fn: () => unknown, ...parts: string[]): void {
  let err: Error | undefined;
  try {
    fn();
  } catch (e) {
    err = e as Error;
  }
  expect(err, 'expected an error').to.be.instanceOf(Error);
  for (const p of parts) expect(err!.message).to.include(p);
}

const close = (a: number, b: number, tol = 1e-12): void => {
  expect(Math.abs(a - b), `${a} vs ${b}`).to.be.at.most(tol * Math.max(1, Math.abs(b)));
};

describe('exact and choice', () => {
  it('exact: trimmed equality, as a share', () => {
    const r = exactAccuracy([' Paris\n', 'paris', 'Lyon', 'a  b'], ['Paris', 'Paris', ' Lyon ', 'a b']);
    expect(r).to.deep.equal({ accuracy: 0.25 * 2, correct: 2, examples: 4 });
    throwsWith(() => exactAccuracy(['a'], ['a', 'b']), '1 predictions for 2 records');
  });

  it('choice: the first "(X)" after "The answer is"', () => {
    expect(extractChoice('The answer is (B).')).to.equal('B');
    expect(extractChoice('(A) is wrong. The answer is (C), not (B).')).to.equal('C');
    expect(extractChoice('The answer is: probably (D)')).to.equal('D');
    expect(extractChoice('The answer is B.')).to.equal(null);
    expect(extractChoice('the answer is (B).')).to.equal(null); // case matters, as written in SPEC §8
    expect(extractChoice('I think (A).')).to.equal(null);
    expect(extractChoice('The answer is (b) or (E)')).to.equal('E');
    const r = choiceAccuracy(
      ['The answer is (B).', 'The answer is (A)', 'no idea', 'The answer is (C). The answer is (A).'],
      ['The answer is (B).', 'The answer is (B).', 'The answer is (A).', 'The answer is (C).'],
    );
    expect(r).to.deep.equal({ accuracy: 0.5, correct: 2, examples: 4, unanswered: 1, right: [true, false, false, true] });
    throwsWith(() => choiceAccuracy(['x'], ['Paris'], ['problem 7']), 'problem 7', 'no "(X)" after "The answer is"');
  });
});

describe('the ScienceQA table', () => {
  const p = (subject: string, grade: string, hint: string, hasImage: boolean): ScienceQAProblem => ({
    pid: '0', subject, grade, hint, hasImage, answer: 0, choices: ['a', 'b'],
  });

  it('groups as evaluate_acc.py: subject, text/image/no context (TXT and IMG overlap), grade bands', () => {
    expect(scienceqaGroups(p('natural science', 'grade3', '', false))).to.deep.equal(['NAT', 'NO', 'G1-6', 'Avg']);
    expect(scienceqaGroups(p('social science', 'grade7', 'a map', true))).to.deep.equal(['SOC', 'TXT', 'IMG', 'G7-12', 'Avg']);
    expect(scienceqaGroups(p('language science', 'grade12', 'text', false))).to.deep.equal(['LAN', 'TXT', 'G7-12', 'Avg']);
    expect(scienceqaGroups(p('natural science', 'grade6', '', true))).to.deep.equal(['NAT', 'IMG', 'G1-6', 'Avg']);
  });

  it('percent per column over hand-counted problems; empty columns are null', () => {
    const problems = [
      p('natural science', 'grade3', '', false), // right
      p('natural science', 'grade8', 'x', true), // wrong
      p('social science', 'grade5', '', true), // right
      p('natural science', 'grade1', 'y', false), // right
    ];
    const t = scienceqaTable(problems, [true, false, true, true]);
    expect(t.counts).to.deep.equal({ NAT: 3, SOC: 1, LAN: 0, TXT: 2, IMG: 2, NO: 1, 'G1-6': 3, 'G7-12': 1, Avg: 4 });
    expect(t.table).to.deep.equal({ NAT: 200 / 3, SOC: 100, LAN: null, TXT: 50, IMG: 50, NO: 100, 'G1-6': 100, 'G7-12': 0, Avg: 75 });
  });

  it('evaluateGenerative on the ScienceQA fixture with scripted answers', async () => {
    const ds = loadDataset(FIX('scienceqa'), { format: 'scienceqa', split: 'test' });
    // gold: B, B, C, A; answers: right, wrong letter, no answer, right
    const answers = ['The answer is (B).', 'The answer is (A).', 'I do not know', ' The answer is (A)'];
    const seen: (string | undefined)[] = [];
    const r = await evaluateGenerative('scienceqa', ds, async (rec, i) => {
      seen.push(rec.image);
      return answers[i];
    });
    expect(seen).to.deep.equal(['test/30/image.png', undefined, 'test/32/image.png', undefined]);
    expect(r.summary).to.deep.equal({
      metric: 'scienceqa',
      accuracy: 0.5,
      table: { NAT: 100, SOC: 0, LAN: 0, TXT: 0, IMG: 50, NO: 100, 'G1-6': 50, 'G7-12': 50, Avg: 50 },
      counts: { NAT: 2, SOC: 1, LAN: 1, TXT: 2, IMG: 2, NO: 1, 'G1-6': 2, 'G7-12': 2, Avg: 4 },
      examples: 4,
    });
    expect(r.predictions.map((x) => x.correct)).to.deep.equal([true, false, false, true]);
    const c = await evaluateGenerative('choice', ds, async (_rec, i) => answers[i]);
    expect(c.summary).to.deep.equal({ metric: 'choice', accuracy: 0.5, correct: 2, unanswered: 1, examples: 4 });
    const coco = loadDataset(FIX('coco', 'annotations', 'captions_tiny2017.json'), { format: 'coco' });
    let failed = false;
    try {
      await evaluateGenerative('scienceqa', coco, async () => '');
    } catch (e) {
      failed = /needs ScienceQA problems/.test((e as Error).message);
    }
    expect(failed).to.equal(true);
    // a failing generation names the record
    let msg = '';
    try {
      await evaluateGenerative('exact', ds, async (_r, i) => {
        if (i === 2) throw new Error('boom');
        return '';
      });
    } catch (e) {
      msg = (e as Error).message;
    }
    expect(msg).to.include('problem 32').and.include('boom');
  });
});

describe('caption metrics (BLEU-4, CIDEr-D)', () => {
  const golden = JSON.parse(fs.readFileSync(path.join(repoRoot, 'test', 'golden', 'caption-metrics.json'), 'utf8'));

  it('tokenises as the Python reference (golden) and the hand-worked cases', () => {
    for (const { text, tokens } of golden.tokenCases) expect(tokenizeCaption(text), text).to.deep.equal(tokens);
    golden.cases.forEach((c: { candidate: string; references: string[] }, i: number) => {
      expect(tokenizeCaption(c.candidate)).to.deep.equal(golden.tokens[i].candidate);
      expect(c.references.map(tokenizeCaption)).to.deep.equal(golden.tokens[i].references);
    });
  });

  it('BLEU-1..4 and CIDEr-D equal the independent Python reference on the fixed set', () => {
    const cases = golden.tokens as { candidate: string[]; references: string[][] }[];
    const b = bleu(cases);
    expect([b.testLength, b.refLength]).to.deep.equal([golden.testLength, golden.refLength]);
    b.bleu.forEach((x, k) => close(x, golden.bleu[k]));
    const c = ciderD(cases);
    c.perImage.forEach((x, i) => close(x, golden.ciderPerImage[i]));
    close(c.cider, golden.ciderD);
    // the short subset, where the brevity penalty and the 1e-15 smoothing of empty 4-gram matches act
    const sub = golden.shortSubset;
    const bs = bleu(sub.indices.map((i: number) => cases[i]));
    expect([bs.testLength, bs.refLength]).to.deep.equal([sub.testLength, sub.refLength]);
    bs.bleu.forEach((x, k) => close(x, sub.bleu[k]));
    close(ciderD(sub.indices.map((i: number) => cases[i])).cider, sub.ciderD);
    // and from the text
    const s = captionScores(golden.cases);
    close(s.bleu4, golden.bleu[3]);
    close(s.ciderD, golden.ciderD);
  });

  it('hand-worked cases', () => {
    const t = (s: string): string[] => s.split(' ');
    // identical: BLEU-4 = 1 (up to the 1e-9 smoothing)
    close(bleu([{ candidate: t('the cat sat on the mat'), references: [t('the cat sat on the mat')] }]).bleu[3], 1, 1e-9);
    // 5 of 6 words: precisions 5/5, 3/4, 2/3, 1/2; brevity penalty exp(1 - 6/5)
    close(
      bleu([{ candidate: t('the cat sat on mat'), references: [t('the cat sat on the mat')] }]).bleu[3],
      (1 * 0.75 * (2 / 3) * 0.5) ** 0.25 * Math.exp(1 - 6 / 5),
      1e-9,
    );
    // clipping: "the" x4 against a reference holding it twice: p1 = 2/4
    close(bleu([{ candidate: t('the the the the'), references: [t('the cat on the mat')] }]).bleu[0], 0.5 * Math.exp(1 - 5 / 4), 1e-9);
    // closest reference length, ties to the shorter: candidate of 3 against references of 2 and 4
    expect(bleu([{ candidate: t('a b c'), references: [t('a b'), t('a b c d')] }]).refLength).to.equal(2);
    // CIDEr-D: two images with one reference each; candidate = first reference:
    // n = 1, 2 similarities 1, n = 3, 4 empty (0); mean 0.5, x10 = 5; the other image 0; corpus 2.5
    const c = ciderD([
      { candidate: ['a', 'b'], references: [['a', 'b']] },
      { candidate: ['a', 'b'], references: [['c', 'd']] },
    ]);
    expect(c.perImage.map((x) => Math.round(x * 1e12) / 1e12)).to.deep.equal([5, 0]);
    close(c.cider, 2.5);
    // one image only: idf = log(1) - log(df) = 0 everywhere, so the score is 0
    expect(ciderD([{ candidate: ['a'], references: [['a']] }]).cider).to.equal(0);
    // delta = 3 bigrams: exp(-9 / 72) on every n; image 2 keeps idf nonzero
    const d = ciderD([
      { candidate: t('x y z w v'), references: [t('x y')] },
      { candidate: t('q'), references: [t('r')] },
    ]);
    // unigrams: candidate x,y,z,w,v each idf log 2 (df of z,w,v is 0 -> log(max(1,0)) = 0); reference x,y
    // sim_1 = (2 (log2)^2) / (sqrt(5) log2 · sqrt(2) log2) = 2 / sqrt(10); bigrams: "x y" matches of 4:
    // sim_2 = 1 / (2 · 1) = 1/2; n = 3, 4: reference empty -> 0
    close(d.perImage[0], ((2 / Math.sqrt(10) + 0.5) / 4) * Math.exp(-9 / 72) * 10, 1e-12);
  });

  it('evaluateGenerative caption: one generation per image, all of its captions as references', async () => {
    const ds = loadDataset(FIX('coco', 'annotations', 'captions_tiny2017.json'), { format: 'coco' });
    const calls: string[] = [];
    const r = await evaluateGenerative('caption', ds, async (rec) => {
      calls.push(rec.image!);
      return rec.image === '000000000001.jpg' ? 'A blue square on a plain background.' : 'a square';
    });
    expect(calls).to.deep.equal(['000000000001.jpg', '000000000002.jpg', '000000000003.jpg', '000000000004.jpg']);
    const want = captionScores([
      { candidate: 'A blue square on a plain background.', references: ['A blue square on a plain background.', 'a blue box'] },
      { candidate: 'a square', references: ['A yellow square.', 'Yellow colour fills the whole picture.'] },
      { candidate: 'a square', references: ['A grey square.'] },
      { candidate: 'a square', references: ['An image whose file is missing.'] },
    ]);
    expect(r.summary).to.include({ metric: 'caption', 'BLEU-4': want.bleu4, 'CIDEr-D': want.ciderD, images: 4, examples: 6 });
    expect(r.predictions.map((p) => p.name)).to.deep.equal(['annotation 101 (image 1)', 'annotation 102 (image 2)', 'annotation 104 (image 3)', 'annotation 106 (image 4)']);
  });
});
