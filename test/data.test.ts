import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { dataPath } from './util/paths';
import { loadTokenizer, Tokenizer } from '../lib/tokenizer';
import {
  AlpacaRecord,
  Batch,
  Batcher,
  Example,
  loadAlpaca,
  packBatch,
  packStats,
  promptOf,
  splitValidation,
  tokenizeExample,
  tokenizeRecords,
} from '../lib/data/alpaca';
import {
  countName,
  DEMO_STORY_TEMPLATES,
  DEMO_TEST_NAMES,
  DEMO_THINGS,
  DEMO_TRAIN_NAMES,
  DEMO_VAL_NAMES,
  demoStory,
  makeDemoDataset,
  makeDemoSplits,
  storyUsesName,
} from '../lib/data/demo';
import { writeDemoData } from '../tools/make-demo-data';

const ALPACA = (f: string): string => dataPath('alpaca', f);
const LLAMA_TOK = dataPath('llama-tokenizer', 'tokenizer.model');
const TOK512 = dataPath('stories260K', 'tok512.bin');

let tmp: string;
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llama-adapter-data-'));
});
after(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

function write(name: string, text: string): string {
  const p = path.join(tmp, name);
  fs.writeFileSync(p, text);
  return p;
}

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

/** A hand-made example of `len` tokens (ids 100 + 10 * tag + t) whose prompt is `promptLen` tokens. */
function fakeExample(tag: number, len: number, promptLen: number): Example {
  const ids = new Int32Array(len).map((_, t) => 100 + 10 * tag + t);
  const labels = new Int32Array(len).fill(-1);
  for (let i = promptLen; i < len; i++) labels[i - 1] = ids[i];
  return { ids, inputs: ids, labels, promptLen, targets: len - promptLen, fullLength: len, truncated: false };
}

const drain = (b: Batcher, n: number): Batch[] => Array.from({ length: n }, () => b.next());
const sig = (bs: Batch[]): string => JSON.stringify(bs.map((b) => [b.exampleIndices, Array.from(b.tokens)]));

describe('data: Alpaca prompt templates (SPEC §3)', () => {
  it('the without-input template, byte for byte', () => {
    const expected =
      'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' +
      '### Instruction:\nName a color.\n\n### Response:';
    expect(promptOf({ instruction: 'Name a color.', output: 'Red.' })).to.equal(expected);
    // An empty input is no input.
    expect(promptOf({ instruction: 'Name a color.', input: '', output: 'Red.' })).to.equal(expected);
  });

  it('the with-input template, byte for byte', () => {
    expect(promptOf({ instruction: 'Identify the odd one out.', input: 'Twitter, Instagram, Telegram', output: 'Telegram' })).to.equal(
      'Below is an instruction that describes a task, paired with an input that provides further context. ' +
        'Write a response that appropriately completes the request.\n\n' +
        '### Instruction:\nIdentify the odd one out.\n\n### Input:\nTwitter, Instagram, Telegram\n\n### Response:',
    );
  });

  it('inserts the text literally (no $-patterns, no {placeholders} expanded inside the text)', () => {
    const p = promptOf({ instruction: "Say $& and $1 and {input}", input: "{instruction} $'", output: '' });
    expect(p).to.include("### Instruction:\nSay $& and $1 and {input}\n\n### Input:\n{instruction} $'\n\n### Response:");
  });
});

describe('data: tokenization and the loss mask', function () {
  let tok: Tokenizer;
  let sample: AlpacaRecord[];
  before(() => {
    tok = loadTokenizer(LLAMA_TOK);
    sample = loadAlpaca(ALPACA('alpaca_data_sample.json'));
  });

  it('ids = [BOS] + encode(prompt + output) + [EOS], promptLen = len([BOS] + encode(prompt))', () => {
    for (const r of sample) {
      const e = tokenizeExample(tok, r, 2048);
      const p = promptOf(r);
      expect(Array.from(e.ids)).to.deep.equal([1, ...tok.encode(p + r.output), 2]);
      expect(e.inputs).to.equal(e.ids);
      expect(e.promptLen).to.equal(1 + tok.encode(p).length);
      expect(e.targets).to.equal(e.ids.length - e.promptLen);
      expect(e.truncated).to.equal(false);
    }
    // Lengths cross-checked with the sentencepiece Python package on the same tokenizer.model.
    const shape = sample.map((r) => {
      const e = tokenizeExample(tok, r, 2048);
      return [e.ids.length, e.promptLen, e.targets];
    });
    expect(shape).to.deep.equal([
      [98, 45, 53],
      [55, 42, 13],
      [71, 67, 4],
      [118, 69, 49],
    ]);
  });

  it('one record in full: ids, and labels masking exactly the first promptLen - 1 predictions', () => {
    const r = sample[2]; // "Identify the odd one out." / "Twitter, Instagram, Telegram" -> "Telegram"
    expect(r.output).to.equal('Telegram');
    const e = tokenizeExample(tok, r, 512);
    // from sentencepiece (Python) on tokenizer.model: [1] + sp.encode(prompt + output) + [2]
    // prettier-ignore
    const ids = [1, 13866, 338, 385, 15278, 393, 16612, 263, 3414, 29892, 3300, 2859, 411, 385, 1881, 393, 8128,
      4340, 3030, 29889, 14350, 263, 2933, 393, 7128, 2486, 1614, 2167, 278, 2009, 29889, 13, 13, 2277, 29937, 2799,
      4080, 29901, 13, 7648, 1598, 278, 7736, 697, 714, 29889, 13, 13, 2277, 29937, 10567, 29901, 13, 27418, 5171,
      29892, 2799, 14442, 29892, 9699, 1393, 13, 13, 2277, 29937, 13291, 29901, 29911, 6146, 1393, 2];
    expect(Array.from(e.ids)).to.deep.equal(ids);
    expect(e.promptLen).to.equal(67); // ... "###", " Response", ":" = ids[0..67)
    expect(e.targets).to.equal(4); // "T", "eleg", "ram", EOS
    expect(e.labels.length).to.equal(71);
    expect(Array.from(e.labels.subarray(0, 66))).to.deep.equal(new Array(66).fill(-1));
    expect(Array.from(e.labels.subarray(66))).to.deep.equal([29911, 6146, 1393, 2, -1]);
    expect(tok.decode(Array.from(e.ids.subarray(67, 70)))).to.equal('Telegram');
  });

  it('labels[i] = ids[i+1] exactly when i+1 >= promptLen, for every sample record', () => {
    for (const r of sample) {
      const e = tokenizeExample(tok, r, 2048);
      const n = e.ids.length;
      for (let i = 0; i < n; i++) expect(e.labels[i]).to.equal(i + 1 >= e.promptLen && i + 1 < n ? e.ids[i + 1] : -1);
      expect(e.labels.filter((v) => v !== -1).length).to.equal(e.targets);
      expect(e.labels.subarray(0, n - 1).filter((v) => v === -1).length).to.equal(e.promptLen - 1);
    }
  });

  it('truncates to maxSeqLen: the EOS goes, the last position predicts nothing', () => {
    const full = tokenizeExample(tok, sample[0], 2048); // 98 tokens, prompt 45
    const e = tokenizeExample(tok, sample[0], 50);
    expect(Array.from(e.ids)).to.deep.equal(Array.from(full.ids.subarray(0, 50)));
    expect(e.ids[49]).to.not.equal(2);
    expect(e).to.include({ promptLen: 45, targets: 5, fullLength: 98, truncated: true });
    expect(Array.from(e.labels.subarray(44))).to.deep.equal([...Array.from(full.ids.subarray(45, 50)), -1]);
    // exactly full: nothing cut
    expect(tokenizeExample(tok, sample[0], 98)).to.include({ truncated: false, targets: 53 });
    // the prompt fills the window: no targets
    expect(tokenizeExample(tok, sample[0], 45)).to.include({ promptLen: 45, targets: 0 });
    const cut = tokenizeExample(tok, sample[0], 30);
    expect(cut).to.include({ promptLen: 30, targets: 0 });
    expect(Array.from(cut.labels)).to.deep.equal(new Array(30).fill(-1));
  });

  it("onTooLong 'truncate' keeps and cuts, always skipping (and reporting) zero-target examples", () => {
    // lengths 98, 55, 71, 118; prompts 45, 42, 67, 69
    const warnings: string[] = [];
    const res = tokenizeRecords(tok, sample, { maxSeqLen: 60, source: 'sample.json', warn: (m) => warnings.push(m) });
    expect(res.recordIndices).to.deep.equal([0, 1]);
    expect(res).to.include({ truncated: 1, skippedTooLong: 0, skippedNoTargets: 2 });
    expect(res.skippedRecords).to.deep.equal([2, 3]);
    expect(res.examples.map((e) => e.targets)).to.deep.equal([15, 13]);
    expect(warnings.join('\n')).to.include('2 of 4 records of "sample.json" have no target tokens').and.include('records 2, 3');
    expect(warnings.join('\n')).to.include('1 of 4 records of "sample.json" are longer than maxSeqLen 60; truncated');
  });

  it("onTooLong 'skip' leaves out every long record; 'error' names the record and its length", () => {
    const warnings: string[] = [];
    const res = tokenizeRecords(tok, sample, { maxSeqLen: 60, onTooLong: 'skip', warn: (m) => warnings.push(m) });
    expect(res.recordIndices).to.deep.equal([1]);
    expect(res).to.include({ truncated: 0, skippedTooLong: 3, skippedNoTargets: 0 });
    expect(warnings).to.have.length(1);
    throwsWith(
      () => tokenizeRecords(tok, sample, { maxSeqLen: 60, onTooLong: 'error', source: 'sample.json' }),
      'record 0 of "sample.json"',
      '98 tokens is longer than maxSeqLen 60',
    );
    // every record fits: no warning at all
    const quiet: string[] = [];
    expect(tokenizeRecords(tok, sample, { maxSeqLen: 118, onTooLong: 'error', warn: (m) => quiet.push(m) }).examples).to.have.length(4);
    expect(quiet).to.deep.equal([]);
    throwsWith(() => tokenizeRecords(tok, sample, { maxSeqLen: 40, warn: () => {} }), 'no usable records');
    throwsWith(() => tokenizeExample(tok, sample[0], 1), 'maxSeqLen');
    throwsWith(() => tokenizeRecords(tok, sample, { maxSeqLen: 60, onTooLong: 'cut' as never }), 'onTooLong');
  });
});

describe('data: loading JSON and JSONL', () => {
  it('reads the JSON list files', () => {
    const sample = loadAlpaca(ALPACA('alpaca_data_sample.json'));
    expect(sample).to.have.length(4);
    expect(sample[0]).to.deep.equal({
      instruction: 'Give three tips for staying healthy.',
      input: '',
      output: sample[0].output,
    });
    expect(sample[0].output).to.match(/^1\.Eat a balanced diet/);
    const small = loadAlpaca(ALPACA('alpaca_small.json'));
    expect(small).to.have.length(2000);
    expect(small.filter((r) => r.input).length).to.equal(753);
    const pretty = loadAlpaca(ALPACA('alpaca_sample_pretty.json'));
    expect(pretty).to.have.length(200);
    expect(pretty.filter((r) => r.input).length).to.equal(73);
  });

  it('reads JSONL: blank lines, CRLF, absent input, extra keys ignored', () => {
    const sample = loadAlpaca(ALPACA('alpaca_data_sample.json'));
    const lines = sample.map((r, i) => JSON.stringify({ id: i, ...r, extra: [1, 2] }));
    const p = write('sample.jsonl', '\n' + lines.slice(0, 2).join('\r\n') + '\r\n\r\n' + lines.slice(2).join('\n') + '\n\n');
    expect(loadAlpaca(p)).to.deep.equal(sample);
    const q = write('noinput.jsonl', '{"instruction": "Hi.", "output": "Hello."}\n');
    const recs = loadAlpaca(q);
    expect(recs).to.deep.equal([{ instruction: 'Hi.', output: 'Hello.' }]);
    expect('input' in recs[0]).to.equal(false);
    // A list on one line after whitespace and a byte order mark is still a JSON list.
    const r = write('bom.json', '\ufeff  \n[{"instruction": "a", "input": "b", "output": "c", "more": null}]');
    expect(loadAlpaca(r)).to.deep.equal([{ instruction: 'a', input: 'b', output: 'c' }]);
  });

  it('names the file and the position of malformed JSON', () => {
    const p = write('bad.json', '[\n  {"instruction": "a", "output": "b",}\n]');
    throwsWith(() => loadAlpaca(p), `data file "${p}"`, 'malformed JSON', 'at position 39', 'line 2', 'column 38');
    const q = write('bad.jsonl', '{"instruction": "a", "output": "b"}\n\n{"instruction": "a" "output": "b"}\n');
    throwsWith(() => loadAlpaca(q), `data file "${q}"`, 'line 3: malformed JSON', 'column 21');
    const t = write('truncated.json', '[{"instruction": "a", "output": "b"}');
    throwsWith(() => loadAlpaca(t), `data file "${t}"`, 'malformed JSON');
    const o = write('object.json', '{\n  "instruction": "a",\n  "output": "b"\n}\n');
    throwsWith(() => loadAlpaca(o), 'line 1: malformed JSON', 'a single JSON object');
  });

  it('rejects records that are not objects', () => {
    const p = write('notobj.json', '[{"instruction": "a", "output": "b"}, ["a", "b"]]');
    throwsWith(() => loadAlpaca(p), `data file "${p}"`, 'record at index 1', 'expected an object', 'an array');
    const q = write('notobj.jsonl', '{"instruction": "a", "output": "b"}\n"text"\n');
    throwsWith(() => loadAlpaca(q), 'line 2', 'a string');
    const n = write('null.json', '[null]');
    throwsWith(() => loadAlpaca(n), 'record at index 0', 'null');
  });

  it('rejects missing or non-string fields', () => {
    const cases: [string, string[]][] = [
      ['[{"output": "b"}]', ['record at index 0', 'missing "instruction"']],
      ['[{"instruction": "a", "output": "b"}, {"instruction": "a"}]', ['record at index 1', 'missing "output"']],
      ['[{"instruction": 3, "output": "b"}]', ['"instruction" must be a string but is a number']],
      ['[{"instruction": "a", "output": ["b"]}]', ['"output" must be a string but is an array']],
      ['[{"instruction": "a", "input": null, "output": "b"}]', ['"input" must be a string but is null']],
      ['{"instruction": "a", "output": "b"}\n{"instruction": "a", "input": 5, "output": "b"}', ['line 2', '"input" must be a string but is a number']],
      ['{"instruction": "a", "output": "b"}\n\n\n{"output": "b"}\n', ['line 4', 'missing "instruction"']],
    ];
    cases.forEach(([text, parts], i) => throwsWith(() => loadAlpaca(write(`field${i}.json`, text)), ...parts));
  });

  it('rejects empty files and empty lists', () => {
    throwsWith(() => loadAlpaca(write('empty.json', '')), 'no records');
    throwsWith(() => loadAlpaca(write('blank.jsonl', ' \n\n  \n')), 'no records');
    throwsWith(() => loadAlpaca(write('emptylist.json', ' [ ] ')), 'no records');
    throwsWith(() => loadAlpaca(path.join(tmp, 'missing.json')), 'cannot read data file', 'missing.json');
    throwsWith(() => loadAlpaca(tmp), 'not a regular file');
  });
});

describe('data: validation split', () => {
  const items = Array.from({ length: 100 }, (_, i) => i);

  it('is deterministic per seed, keeps order, and partitions the items', () => {
    const a = splitValidation(items, { valSplit: 0.1, seed: 5 });
    expect(splitValidation(items, { valSplit: 0.1, seed: 5 })).to.deep.equal(a);
    expect(a.val).to.have.length(10);
    expect(a.train).to.have.length(90);
    expect([...a.train, ...a.val].sort((x, y) => x - y)).to.deep.equal(items);
    expect(a.val).to.deep.equal([...a.val].sort((x, y) => x - y));
    expect(a.val).to.not.deep.equal(items.slice(0, 10));
    expect(splitValidation(items, { valSplit: 0.1, seed: 6 }).val).to.not.deep.equal(a.val);
  });

  it('keeps at least one item on each side and checks its arguments', () => {
    expect(splitValidation([1, 2], { valSplit: 0.01, seed: 0 }).val).to.have.length(1);
    expect(splitValidation([1, 2, 3], { valSplit: 0.99, seed: 0 }).train).to.have.length(1);
    throwsWith(() => splitValidation(items, { valSplit: 0, seed: 0 }), 'valSplit');
    throwsWith(() => splitValidation(items, { valSplit: 1, seed: 0 }), 'valSplit');
    throwsWith(() => splitValidation([1], { valSplit: 0.5, seed: 0 }), 'cannot split');
  });
});

describe('data: Batcher', () => {
  // 10 examples of lengths 5..14, prompts of 3
  const examples = Array.from({ length: 10 }, (_, i) => fakeExample(i, 5 + i, 3));

  it('covers every example exactly once per epoch, the last batch partial', () => {
    const b = new Batcher(examples, { batchSize: 3, seed: 1, shuffle: true });
    expect(b.batchesPerEpoch).to.equal(4);
    for (let epoch = 0; epoch < 3; epoch++) {
      expect(b.epoch).to.equal(epoch);
      const batches = drain(b, 4);
      expect(batches.map((x) => x.exampleIndices.length)).to.deep.equal([3, 3, 3, 1]);
      const seen = batches.flatMap((x) => x.exampleIndices).sort((x, y) => x - y);
      expect(seen).to.deep.equal([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    }
    expect(b.epoch).to.equal(3);
    expect(b.index).to.equal(0);
  });

  it('shuffles deterministically per seed, differently each epoch', () => {
    const order = (seed: number): number[][] => {
      const b = new Batcher(examples, { batchSize: 3, seed, shuffle: true });
      return [0, 1, 2].map(() => drain(b, 4).flatMap((x) => x.exampleIndices));
    };
    const a = order(42);
    expect(order(42)).to.deep.equal(a);
    expect(a[0]).to.not.deep.equal(a[1]);
    expect(a[1]).to.not.deep.equal(a[2]);
    expect(a[0]).to.not.deep.equal([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(order(43)[0]).to.not.deep.equal(a[0]);
  });

  it('keeps file order without shuffle', () => {
    const b = new Batcher(examples, { batchSize: 4, seed: 1, shuffle: false });
    for (let epoch = 0; epoch < 2; epoch++)
      expect(drain(b, 3).map((x) => x.exampleIndices)).to.deep.equal([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]);
  });

  it('packs tokens, labels, positions and segments consistently', () => {
    const b = new Batcher(examples, { batchSize: 3, seed: 9, shuffle: true });
    for (const batch of drain(b, 8)) {
      const S = batch.exampleIndices.length;
      const N = batch.tokens.length;
      expect(batch.segments.length).to.equal(S + 1);
      expect(batch.segments[0]).to.equal(0);
      expect(batch.segments[S]).to.equal(N);
      expect(batch.labels.length).to.equal(N);
      expect(batch.positions.length).to.equal(N);
      let targets = 0;
      batch.exampleIndices.forEach((ix, k) => {
        const ex = examples[ix];
        const [s, e] = [batch.segments[k], batch.segments[k + 1]];
        expect(Array.from(batch.tokens.subarray(s, e))).to.deep.equal(Array.from(ex.inputs));
        expect(Array.from(batch.labels.subarray(s, e))).to.deep.equal(Array.from(ex.labels));
        expect(Array.from(batch.positions.subarray(s, e))).to.deep.equal(Array.from({ length: e - s }, (_, t) => t));
        expect(batch.labels[e - 1]).to.equal(-1); // never predicts across a segment boundary
        for (let t = s; t < e - 1; t++) if (batch.labels[t] !== -1) expect(batch.labels[t]).to.equal(batch.tokens[t + 1]);
        targets += ex.targets;
      });
      expect(batch.targetCount).to.equal(targets);
      expect(batch.labels.filter((v) => v !== -1).length).to.equal(targets);
    }
  });

  it('restores mid-epoch (through JSON) to the identical batch sequence', () => {
    for (const shuffle of [true, false]) {
      const a = new Batcher(examples, { batchSize: 3, seed: 7, shuffle });
      drain(a, 6); // one and a half epochs
      const saved = JSON.parse(JSON.stringify(a.state()));
      expect(saved).to.include({ epoch: 1, index: 2 });
      expect(saved.rng.every((v: number) => Number.isInteger(v) && v >= 0 && v <= 0xffffffff)).to.equal(true);
      const rest = drain(a, 11);
      const b = new Batcher(examples, { batchSize: 3, seed: 123, shuffle }); // the seed comes from the state
      drain(b, 2);
      b.restore(saved);
      expect(b.epoch).to.equal(1);
      expect(sig(drain(b, 11))).to.equal(sig(rest));
    }
    // restored right at an epoch boundary
    const c = new Batcher(examples, { batchSize: 5, seed: 3, shuffle: true });
    drain(c, 2);
    const s = c.state();
    expect(s).to.include({ epoch: 1, index: 0 });
    const rest = drain(c, 5);
    const d = new Batcher(examples, { batchSize: 5, seed: 3, shuffle: true });
    d.restore(s);
    expect(sig(drain(d, 5))).to.equal(sig(rest));
  });

  it('refuses a state saved for other data or settings, and bad options', () => {
    const s = new Batcher(examples, { batchSize: 3, seed: 7, shuffle: true }).state();
    throwsWith(() => new Batcher(examples.slice(1), { batchSize: 3, seed: 7, shuffle: true }).restore(s), 'saved for 10 examples');
    throwsWith(() => new Batcher(examples, { batchSize: 2, seed: 7, shuffle: true }).restore(s), 'batchSize 3');
    throwsWith(() => new Batcher(examples, { batchSize: 3, seed: 7, shuffle: false }).restore(s), 'shuffle true');
    throwsWith(() => new Batcher(examples, { batchSize: 3, seed: 7, shuffle: true }).restore({ ...s, index: 4 }), 'batch index 4');
    throwsWith(() => new Batcher(examples, { batchSize: 0, seed: 7, shuffle: true }), 'batchSize');
    throwsWith(() => new Batcher([], { batchSize: 1, seed: 7, shuffle: true }), 'at least one example');
    throwsWith(() => new Batcher(examples, { batchSize: 1, seed: -1, shuffle: true }), 'seed');
  });

  it('packStats: tokens, targets and the padding a padded layout would waste', () => {
    // lengths 5, 6, 7 | 8 ; prompts 3
    const batches = [packBatch(examples, [0, 1, 2]), packBatch(examples, [3])];
    const st = packStats(batches, { padTo: 10 });
    expect(st).to.include({ batches: 2, examples: 4, tokens: 26, targets: 14, paddedTokens: 29, fixedPaddedTokens: 40 });
    expect(st.paddingShare).to.be.closeTo(3 / 29, 1e-12);
    expect(st.fixedPaddingShare).to.be.closeTo(14 / 40, 1e-12);
  });

  it('works end to end on real records (alpaca_small, LLaMA tokenizer)', function () {
    const tok = loadTokenizer(LLAMA_TOK);
    const recs = loadAlpaca(ALPACA('alpaca_small.json')).slice(0, 300);
    const { examples: exs } = tokenizeRecords(tok, recs, { maxSeqLen: 256, warn: () => {} });
    const { train, val } = splitValidation(exs, { valSplit: 0.05, seed: 0 });
    expect(val).to.have.length(15);
    const b = new Batcher(train, { batchSize: 8, seed: 0, shuffle: true });
    const epoch = drain(b, b.batchesPerEpoch);
    const st = packStats(epoch);
    expect(st.examples).to.equal(train.length);
    expect(st.tokens).to.equal(train.reduce((s, e) => s + e.ids.length, 0));
    expect(st.targets).to.equal(train.reduce((s, e) => s + e.targets, 0));
    expect(st.paddingShare).to.be.greaterThan(0).and.lessThan(1);
  });
});

describe('data: demo dataset', () => {
  const allNames = (names: readonly { name: string }[]): string[] => names.map((n) => n.name);

  it('is deterministic from the seed', () => {
    const a = makeDemoDataset({ count: 50, seed: 1 });
    expect(makeDemoDataset({ count: 50, seed: 1 })).to.deep.equal(a);
    expect(makeDemoDataset({ count: 50, seed: 2 })).to.not.deep.equal(a);
    expect(makeDemoSplits({ seed: 3, train: 30, val: 5, test: 5 })).to.deep.equal(makeDemoSplits({ seed: 3, train: 30, val: 5, test: 5 }));
  });

  it('every story names its character at least twice and mentions the thing', () => {
    const { train, val, test } = makeDemoSplits({ seed: 0, train: 500, val: 100, test: 100 });
    for (const r of [...train, ...val, ...test]) {
      const m = /^Write a story about (\S+) who likes (\w+)\.$/.exec(r.instruction);
      expect(m, r.instruction).to.not.equal(null);
      const [, name, thing] = m!;
      expect(storyUsesName(r.output, name, 2), r.output).to.equal(true);
      expect(r.output).to.include(thing);
      expect(DEMO_THINGS).to.include(thing);
      expect(r.input).to.equal('');
    }
    // all templates are in use
    const firstWords = new Set(train.map((r) => r.output.slice(0, 20).replace(/\b[A-Z][a-z]+\b/g, 'X')));
    expect(firstWords.size).to.be.at.least(5);
    for (let t = 0; t < DEMO_STORY_TEMPLATES; t++) {
      const s = demoStory(t, { name: 'Zed', pronoun: 'he' }, 'kites');
      expect(countName(s, 'Zed'), s).to.be.at.least(2);
      expect(s).to.include('kites');
    }
  });

  it('held-out names never appear in the training split, and each split uses its own names', () => {
    const { train, val, test } = makeDemoSplits({ seed: 0, train: 2000, val: 200, test: 200 });
    const heldOut = [...allNames(DEMO_VAL_NAMES), ...allNames(DEMO_TEST_NAMES)];
    const trainNames = allNames(DEMO_TRAIN_NAMES);
    expect(new Set([...trainNames, ...heldOut]).size).to.equal(trainNames.length + heldOut.length);
    const nameOf = (r: AlpacaRecord): string => /about (\S+) who/.exec(r.instruction)![1];
    for (const r of train) {
      expect(trainNames).to.include(nameOf(r));
      for (const n of heldOut) expect(storyUsesName(r.instruction + '\n' + r.output, n), n).to.equal(false);
    }
    for (const r of val) {
      expect(allNames(DEMO_VAL_NAMES)).to.include(nameOf(r));
      for (const n of [...trainNames, ...allNames(DEMO_TEST_NAMES)]) expect(storyUsesName(r.output, n), n).to.equal(false);
    }
    for (const r of test) expect(allNames(DEMO_TEST_NAMES)).to.include(nameOf(r));
    // every name shows up
    expect(new Set(train.map(nameOf)).size).to.equal(trainNames.length);
    expect(new Set(val.map(nameOf)).size).to.equal(DEMO_VAL_NAMES.length);
    expect(new Set(test.map(nameOf)).size).to.equal(DEMO_TEST_NAMES.length);
  });

  it('fits the tok512 tokenizer: names of 1-3 tokens, examples under 200 tokens', () => {
    const tok = loadTokenizer(TOK512);
    const base = tok.encode('named').length;
    for (const n of [...DEMO_TRAIN_NAMES, ...DEMO_VAL_NAMES, ...DEMO_TEST_NAMES])
      expect(tok.encode('named ' + n.name).length - base, n.name).to.be.within(1, 3);
    for (const t of DEMO_THINGS) expect(tok.encode('likes ' + t).length - tok.encode('likes').length, t).to.be.at.most(4);
    const { train, val, test } = makeDemoSplits({ seed: 0, train: 300, val: 50, test: 50 });
    const res = tokenizeRecords(tok, [...train, ...val, ...test], { maxSeqLen: 200, onTooLong: 'error' });
    expect(Math.max(...res.examples.map((e) => e.ids.length))).to.be.lessThan(200);
    expect(Math.min(...res.examples.map((e) => e.targets))).to.be.greaterThan(20);
  });

  it('storyUsesName matches whole words, case-sensitively', () => {
    expect(storyUsesName('Timmy went home.', 'Tim')).to.equal(false);
    expect(storyUsesName('It was okay.', 'Kay')).to.equal(false);
    expect(storyUsesName('"Tim!" said Tim.', 'Tim', 2)).to.equal(true);
    expect(storyUsesName('Tim, Tim.', 'Tim', 3)).to.equal(false);
    expect(storyUsesName('tim ran.', 'Tim')).to.equal(false);
    expect(countName("Sid's ball. Sid ran.", 'Sid')).to.equal(2);
  });

  it('the tool writes the same three JSONL files for the same seed, readable by loadAlpaca', () => {
    const a = path.join(tmp, 'demo-a');
    const b = path.join(tmp, 'demo-b');
    const ra = writeDemoData(a, { seed: 11, train: 40, val: 8, test: 8 });
    writeDemoData(b, { seed: 11, train: 40, val: 8, test: 8 });
    for (const f of ['train.jsonl', 'val.jsonl', 'test.jsonl'])
      expect(fs.readFileSync(path.join(a, f), 'utf8')).to.equal(fs.readFileSync(path.join(b, f), 'utf8'));
    expect(loadAlpaca(path.join(a, 'train.jsonl'))).to.deep.equal(ra.splits.train);
    expect(loadAlpaca(path.join(a, 'test.jsonl'))).to.have.length(8);
    throwsWith(() => writeDemoData(a, { seed: 11 }), 'already exist', '--force');
    writeDemoData(a, { seed: 12, train: 5, val: 1, test: 1, overwrite: true });
    expect(loadAlpaca(path.join(a, 'train.jsonl'))).to.have.length(5);
  });
});
