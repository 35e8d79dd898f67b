// Records with images (SPEC §8): the optional "image" field through loading, tokenisation and
// packing; the ScienceQA and COCO converters on small hand-written files in the real layouts.
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { dataPath, repoRoot } from './util/paths';
import { loadTokenizer } from '../lib/tokenizer';
import { Batcher, loadAlpaca, packBatch, promptOf, tokenizeExample, tokenizeRecords } from '../lib/data/alpaca';
import { checkImages, defaultImageRoot, loadDataset } from '../lib/data/dataset';

const TOK512 = dataPath('stories260K', 'tok512.bin');

let tmp: string;
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llama-adapter-data-images-'));
});
after(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

function write(name: string, text: string): string {
  const p = path.join(tmp, name);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, text);
  return p;
}

function throwsWith(fn: () => unknown, ...parts: string[]): Error {
  let err: Error | undefined;
  try {
    fn();
  } catch (e) {
    err = e as Error;
  }
  expect(err, 'expected an error').to.be.instanceOf(Error);
  for (const p of parts) expect(err!.message).to.include(p);
  return err!;
}

describe('the "image" field of records', () => {
  it('is read when a string, absent when missing or null, in JSON and JSONL', () => {
    const recs = [
      { instruction: 'a', output: 'b', image: 'train/1/image.png' },
      { instruction: 'c', input: 'd', output: 'e' },
      { instruction: 'f', output: 'g', image: null },
    ];
    const want = [
      { instruction: 'a', output: 'b', image: 'train/1/image.png' },
      { instruction: 'c', input: 'd', output: 'e' },
      { instruction: 'f', output: 'g' },
    ];
    expect(loadAlpaca(write('img.json', JSON.stringify(recs)))).to.deep.equal(want);
    expect(loadAlpaca(write('img.jsonl', recs.map((r) => JSON.stringify(r)).join('\n')))).to.deep.equal(want);
    const r = loadAlpaca(write('img2.json', JSON.stringify(recs)));
    expect('image' in r[1] || 'image' in r[2], 'text-only records carry no image key').to.equal(false);
  });

  it('a non-string or empty image is an error naming the record', () => {
    throwsWith(() => loadAlpaca(write('bad1.json', '[{"instruction":"a","output":"b","image":3}]')), 'record at index 0', '"image" must be a string', 'a number');
    throwsWith(() => loadAlpaca(write('bad2.jsonl', '{"instruction":"a","output":"b"}\n{"instruction":"a","output":"b","image":" "}')), 'line 2', 'empty string');
    throwsWith(() => loadAlpaca(write('bad3.jsonl', '{"instruction":"a","output":"b","image":["x"]}')), 'line 1', 'an array');
  });

  it('tokenisation carries the image; the tokens are those of the same record without it', () => {
    const tok = loadTokenizer(TOK512);
    const withImg = tokenizeExample(tok, { instruction: 'Say hi', output: 'Hi.', image: 'a.png' }, 64);
    const without = tokenizeExample(tok, { instruction: 'Say hi', output: 'Hi.' }, 64);
    expect(withImg.image).to.equal('a.png');
    expect('image' in without).to.equal(false);
    const { image, ...rest } = withImg;
    expect(image).to.equal('a.png');
    expect(rest).to.deep.equal(without);
  });

  it('each packed segment knows its image key (null for text-only), through Batcher and tokenizeRecords', () => {
    const tok = loadTokenizer(TOK512);
    const recs = [
      { instruction: 'one', output: 'x', image: 'i1.png' },
      { instruction: 'two', output: 'y' },
      { instruction: 'three', output: 'z', image: 'i3.png' },
      { instruction: 'four', output: 'w', image: 'i1.png' },
    ];
    const { examples } = tokenizeRecords(tok, recs, { maxSeqLen: 200, warn: () => {} });
    const b = packBatch(examples, [2, 1, 0]);
    expect(b.images).to.deep.equal(['i3.png', null, 'i1.png']);
    expect(b.images!.length).to.equal(b.segments.length - 1);
    const batcher = new Batcher(examples, { batchSize: 3, seed: 5, shuffle: true });
    for (let i = 0; i < 4; i++) {
      const bb = batcher.next();
      expect(bb.images).to.deep.equal(bb.exampleIndices.map((k) => recs[k].image ?? null));
    }
    // text-only data: every segment null, tokens unchanged
    const plain = tokenizeRecords(tok, recs.map(({ instruction, output }) => ({ instruction, output })), { maxSeqLen: 200, warn: () => {} });
    const pb = packBatch(plain.examples, [0, 1, 2, 3]);
    expect(pb.images).to.deep.equal([null, null, null, null]);
    expect(Array.from(pb.tokens)).to.deep.equal(Array.from(packBatch(examples, [0, 1, 2, 3]).tokens));
  });
});

const FIX = (...p: string[]): string => path.join(repoRoot, 'test', 'fixtures', ...p);

describe('--format scienceqa', () => {
  it('converts a split as SPEC §8 says, in pid_splits order, images as {split}/{pid}/image.png', () => {
    const ds = loadDataset(FIX('scienceqa'), { format: 'scienceqa', split: 'test' });
    expect(ds.records).to.deep.equal([
      {
        instruction: 'Question: Which is warmer?\nContext: N/A\nOptions: (A) ice (B) soup',
        output: 'The answer is (B).',
        image: 'test/30/image.png',
      },
      {
        instruction: 'Question: Which sentence is a question?\nContext: Read both sentences.\nOptions: (A) I like tea. (B) Do you like tea?',
        output: 'The answer is (B).',
      },
      {
        instruction: 'Question: Which country is shown in red?\nContext: This map shows part of Europe.\nOptions: (A) France (B) Spain (C) Italy',
        output: 'The answer is (C).',
        image: 'test/32/image.png',
      },
      {
        instruction: 'Question: Which tool measures length?\nContext: N/A\nOptions: (A) ruler (B) clock',
        output: 'The answer is (A).',
      },
    ]);
    expect(ds.names).to.deep.equal(['problem 30', 'problem 31', 'problem 32', 'problem 33']);
    expect(ds.imageRoot).to.equal(FIX('scienceqa'));
    expect(ds.problems!.map((p) => [p.subject, p.grade, p.hint !== '', p.hasImage])).to.deep.equal([
      ['natural science', 'grade4', false, true],
      ['language science', 'grade7', true, false],
      ['social science', 'grade6', true, true],
      ['natural science', 'grade9', false, false],
    ]);
    // the problems.json path works too; the mini splits point into their problem's own split folder
    const mini = loadDataset(FIX('scienceqa', 'problems.json'), { format: 'scienceqa', split: 'minitest' });
    expect(mini.records.map((r) => r.image)).to.deep.equal(['test/32/image.png', 'test/30/image.png']);
    // the prompt the model sees (the Alpaca no-input template)
    expect(promptOf(ds.records[3])).to.equal(
      'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' +
        '### Instruction:\nQuestion: Which tool measures length?\nContext: N/A\nOptions: (A) ruler (B) clock\n\n### Response:',
    );
  });

  it('every record with an image has it on disk (or is a clear error naming problem and path)', () => {
    const test = loadDataset(FIX('scienceqa'), { format: 'scienceqa', split: 'test' });
    expect(checkImages(test, {})).to.equal(test);
    const train = loadDataset(FIX('scienceqa'), { format: 'scienceqa', split: 'train' });
    throwsWith(() => checkImages(train, {}), 'problem 13', 'train/13/image.png', path.join(FIX('scienceqa'), 'train', '13', 'image.png'), '--skip-missing-images');
    const warnings: string[] = [];
    const kept = checkImages(train, {}, { skipMissing: true, warn: (m) => warnings.push(m) });
    expect(kept.names).to.deep.equal(['problem 10', 'problem 11', 'problem 12']);
    expect(kept.problems!.map((p) => p.pid)).to.deep.equal(['10', '11', '12']);
    expect(warnings).to.deep.equal([`1 of 4 records of "${FIX('scienceqa', 'problems.json')}" have a missing image; skipped (problem 13: train/13/image.png)`]);
    // against a features file: keys instead of files
    const features = { path: 'f.safetensors', has: (k: string) => k === 'train/11/image.png' };
    throwsWith(() => checkImages(train, { features }), 'problem 13', 'not in features file "f.safetensors"');
    // an explicit root that lacks the images
    throwsWith(() => checkImages(test, { root: tmp }), 'problem 30', path.join(tmp, 'test', '30', 'image.png'));
  });

  it("the official download layout: images under images/{split}/{pid}/ are found", () => {
    const dir = path.join(tmp, 'sqa-official');
    fs.mkdirSync(path.join(dir, 'images', 'test', '30'), { recursive: true });
    fs.copyFileSync(FIX('scienceqa', 'problems.json'), path.join(dir, 'problems.json'));
    fs.writeFileSync(path.join(dir, 'pid_splits.json'), JSON.stringify({ test: ['30', '31'] }));
    fs.copyFileSync(FIX('scienceqa', 'test', '30', 'image.png'), path.join(dir, 'images', 'test', '30', 'image.png'));
    const ds = loadDataset(dir, { format: 'scienceqa', split: 'test' });
    expect(ds.imageRoot).to.equal(path.join(dir, 'images'));
    expect(defaultImageRoot(dir, 'scienceqa')).to.equal(path.join(dir, 'images'));
    expect(defaultImageRoot(path.join(dir, 'problems.json'), 'scienceqa')).to.equal(path.join(dir, 'images'));
    expect(defaultImageRoot(FIX('scienceqa'), 'scienceqa')).to.equal(FIX('scienceqa'));
    expect(defaultImageRoot(FIX('coco', 'annotations', 'captions_tiny2017.json'), 'coco')).to.equal(FIX('coco', 'tiny2017'));
    expect(defaultImageRoot(path.join(tmp, 'data.jsonl'))).to.equal(tmp);
    expect(checkImages(ds, {})).to.equal(ds);
  });

  it('bad splits and bad problems are clear errors', () => {
    throwsWith(() => loadDataset(FIX('scienceqa'), { format: 'scienceqa' }), 'needs a split');
    throwsWith(() => loadDataset(FIX('scienceqa'), { format: 'scienceqa', split: 'dev' }), 'no split "dev"', 'train, val, test, minitest');
    throwsWith(() => loadDataset(FIX('scienceqa'), { format: 'alpaca' as never, split: 'test' }), 'only for --format scienceqa');
    throwsWith(() => loadDataset(tmp, { format: 'scienceqa', split: 'test' }), 'problems.json');
    const dir = path.join(tmp, 'sqa-bad');
    fs.mkdirSync(dir, { recursive: true });
    const base = { question: 'q', choices: ['a', 'b'], answer: 0, hint: '', image: null, grade: 'grade1', subject: 'natural science' };
    const cases: [Record<string, unknown>, string][] = [
      [{ ...base, answer: 2 }, '"answer" must be an index into the 2 choices'],
      [{ ...base, choices: ['a'] }, '"choices"'],
      [{ ...base, question: 5 }, '"question" must be a string'],
      [{ ...base, image: 3 }, '"image"'],
    ];
    for (const [p, msg] of cases) {
      fs.writeFileSync(path.join(dir, 'problems.json'), JSON.stringify({ 7: p }));
      fs.writeFileSync(path.join(dir, 'pid_splits.json'), JSON.stringify({ test: ['7'] }));
      throwsWith(() => loadDataset(dir, { format: 'scienceqa', split: 'test' }), 'problem 7', msg);
    }
    fs.writeFileSync(path.join(dir, 'pid_splits.json'), JSON.stringify({ test: ['8'] }));
    throwsWith(() => loadDataset(dir, { format: 'scienceqa', split: 'test' }), 'problem 8 of split "test" is not in');
  });
});

describe('--format coco', () => {
  const CAPS = FIX('coco', 'annotations', 'captions_tiny2017.json');

  it('one record per caption (trimmed), the image folder found beside annotations/', () => {
    const ds = loadDataset(CAPS, { format: 'coco' });
    expect(ds.records.map((r) => [r.instruction, r.output, r.image])).to.deep.equal([
      ['Generate caption of this image', 'A blue square on a plain background.', '000000000001.jpg'],
      ['Generate caption of this image', 'A yellow square.', '000000000002.jpg'],
      ['Generate caption of this image', 'a blue box', '000000000001.jpg'],
      ['Generate caption of this image', 'A grey square.', '000000000003.jpg'],
      ['Generate caption of this image', 'Yellow colour fills the whole picture.', '000000000002.jpg'],
      ['Generate caption of this image', 'An image whose file is missing.', '000000000004.jpg'],
    ]);
    expect(ds.records.every((r) => r.input === undefined)).to.equal(true);
    expect(ds.names[5]).to.equal('annotation 106 (image 4)');
    expect(ds.imageRoot).to.equal(FIX('coco', 'tiny2017'));
    throwsWith(() => checkImages(ds, {}), 'annotation 106 (image 4)', path.join(FIX('coco', 'tiny2017'), '000000000004.jpg'));
    const warnings: string[] = [];
    expect(checkImages(ds, {}, { skipMissing: true, warn: (m) => warnings.push(m) }).records).to.have.length(5);
    expect(warnings[0]).to.include('1 of 6 records').and.include('annotation 106 (image 4): 000000000004.jpg');
  });

  it('a captions file elsewhere needs an image root; bad files are clear errors', () => {
    const moved = path.join(tmp, 'captions_other.json');
    fs.copyFileSync(CAPS, moved);
    const ds = loadDataset(moved, { format: 'coco' });
    expect(ds.imageRoot).to.equal(undefined);
    throwsWith(() => checkImages(ds, {}), 'annotation 101 (image 1)', '--image-root');
    expect(checkImages(ds, { root: FIX('coco', 'tiny2017') }, { skipMissing: true, warn: () => {} }).records).to.have.length(5);
    const bad = (doc: unknown, ...parts: string[]): void => {
      fs.writeFileSync(moved, JSON.stringify(doc));
      throwsWith(() => loadDataset(moved, { format: 'coco' }), moved, ...parts);
    };
    bad([], '"images" and "annotations"');
    bad({ images: [{ id: 1 }], annotations: [] }, 'image 1', 'file_name');
    bad({ images: [{ id: 1, file_name: 'a.jpg' }], annotations: [{ id: 9, image_id: 2, caption: 'x' }] }, 'annotation 9', 'image 2');
    bad({ images: [{ id: 1, file_name: 'a.jpg' }], annotations: [{ id: 9, image_id: 1 }] }, 'annotation 9', '"caption"');
    bad({ images: [{ id: 1, file_name: 'a.jpg' }], annotations: [] }, 'no annotations');
  });
});
