// Records with images (SPEC §8): the optional "image" field through loading, tokenisation and
// packing; the ScienceQA and COCO converters on small hand-written files in the real layouts.
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { dataPath } from './util/paths';
import { loadTokenizer } from '../lib/tokenizer';
import { Batcher, loadAlpaca, packBatch, tokenizeExample, tokenizeRecords } from '../lib/data/alpaca';

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

export function throwsWith(fn: () => unknown, ...parts: string[]): Error {
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
