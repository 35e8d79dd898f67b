// eval --metric exact|choice|scienceqa|caption end to end on stories260K. The expected greedy
// outputs are computed here another way (a fresh full forward of the whole sequence per token and
// argmax, no KV cache reused, no lib/generate), so every figure is known in advance.
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { promptOf, AlpacaRecord } from '../lib/data/alpaca';
import { loadDataset } from '../lib/data/dataset';
import { captionScores } from '../lib/eval/caption';
import { Adapter } from '../lib/model/adapter';
import { Llama } from '../lib/model/llama';
import { repoRoot } from './util/paths';
import { stories } from './util/stories';

const cli = path.join(repoRoot, 'dist', 'lib', 'cli', 'main.js');
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
const model = ['--model', stories.v0, '--tokenizer', stories.tokenizer];
const FIX = (...p: string[]): string => path.join(repoRoot, 'test', 'fixtures', ...p);
const MAX = 8;

/** Greedy continuation of the record's prompt: at each step the whole sequence runs through a fresh cache. */
async function greedy(m: Llama, record: AlpacaRecord, maxTokens: number): Promise<string> {
  const tok = m.loadTokenizer(stories.tokenizer);
  const ids = tok.encode(promptOf(record), { bos: true });
  const promptText = tok.decode(ids);
  for (let n = 0; n < maxTokens; n++) {
    const cache = m.newCache(ids.length);
    const logits = m.forward(ids, cache);
    const v = (await logits.read()) as Float32Array;
    logits.dispose();
    cache.dispose();
    let best = 0;
    for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
    if (best === tok.eos || best === tok.bos) break;
    ids.push(best);
  }
  const full = tok.decode(ids);
  expect(full.startsWith(promptText)).to.equal(true);
  return full.slice(promptText.length);
}

describe('eval --metric (stories260K)', function () {
  this.timeout(120_000);
  let dir: string;
  let m: Llama;
  const recs: AlpacaRecord[] = [
    { instruction: 'Tell me about a cat.', output: '' },
    { instruction: 'Write a story.', input: 'Tom and a dog', output: '' },
    { instruction: 'What did Lily see?', output: '' },
  ];
  let outs: string[];

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-eval-'));
    m = await Llama.load(stories.v0, { device: 'cpu' });
    outs = [];
    for (const r of recs) outs.push(await greedy(m, r, MAX));
    expect(new Set(outs.map((o) => o.trim())).size, 'three different greedy outputs').to.equal(3);
  });
  after(() => {
    m?.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('exact: 2 of 3 records whose output is the greedy one (white space around it ignored)', () => {
    const data = path.join(dir, 'exact.jsonl');
    const withOut = [
      { ...recs[0], output: `  ${outs[0].trim()}\n` },
      { ...recs[1], output: outs[1].trim() + ' and more' },
      { ...recs[2], output: outs[2] },
    ];
    fs.writeFileSync(data, withOut.map((r) => JSON.stringify(r)).join('\n'));
    const pred = path.join(dir, 'pred.jsonl');
    const r = run('eval', ...model, '--data', data, '--metric', 'exact', '--max-tokens', String(MAX), '--predictions', pred);
    expect(r.status, r.stderr).to.equal(0);
    expect(JSON.parse(r.stdout)).to.deep.equal({ metric: 'exact', accuracy: 2 / 3, correct: 2, examples: 3 });
    expect(r.stdout.trim().split('\n')).to.have.length(1);
    const lines = fs.readFileSync(pred, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => [l.index, l.name, l.prediction, l.correct])).to.deep.equal([
      [0, 'record 0', outs[0], true],
      [1, 'record 1', outs[1], false],
      [2, 'record 2', outs[2], true],
    ]);
    // the default metric is still the loss, with its own output
    const loss = JSON.parse(run('eval', ...model, '--data', data).stdout);
    expect(Object.keys(loss)).to.deep.equal(['loss', 'tokens']);
  });

  it("exact with --adapter: the adapted model's greedy outputs (an adapter with open gates changes them)", async () => {
    const config = m.config;
    const init = Adapter.init(config, { layers: 3, len: 5, gate: 'per-head' }, 7);
    const v = await init.values();
    init.dispose();
    const open = Adapter.fromValues(config, init.config, { prompts: v.prompts, gates: v.gates.fill(1) });
    const file = path.join(dir, 'open.safetensors');
    await open.save(file);
    m.setAdapter(open);
    let adapted: string[];
    try {
      adapted = [];
      for (const r of recs) adapted.push(await greedy(m, r, MAX));
    } finally {
      m.setAdapter(undefined);
      open.dispose();
    }
    expect(adapted).to.not.deep.equal(outs);
    const data = path.join(dir, 'exact-adapted.json');
    // records 0 and 2 hold the adapted outputs, record 1 the frozen one (right only if they agree)
    fs.writeFileSync(data, JSON.stringify([{ ...recs[0], output: adapted[0] }, { ...recs[1], output: outs[1] }, { ...recs[2], output: adapted[2] }]));
    const want = 2 + (adapted[1].trim() === outs[1].trim() ? 1 : 0);
    const r = run('eval', ...model, '--data', data, '--adapter', file, '--metric', 'exact', '--max-tokens', String(MAX));
    expect(r.status, r.stderr).to.equal(0);
    expect(JSON.parse(r.stdout)).to.deep.equal({ metric: 'exact', accuracy: want / 3, correct: want, examples: 3 });
  });

  it('choice: the story model never says "The answer is (X)": accuracy 0, every answer unanswered', () => {
    const data = path.join(dir, 'choice.json');
    fs.writeFileSync(data, JSON.stringify(recs.map((r, i) => ({ ...r, output: `The answer is (${'ABC'[i]}).` }))));
    const r = run('eval', ...model, '--data', data, '--metric', 'choice', '--max-tokens', String(MAX));
    expect(r.status, r.stderr).to.equal(0);
    expect(outs.some((o) => o.includes('The answer is'))).to.equal(false);
    expect(JSON.parse(r.stdout)).to.deep.equal({ metric: 'choice', accuracy: 0, correct: 0, unanswered: 3, examples: 3 });
    // outputs without a gold letter are a clear error naming the record
    const bad = path.join(dir, 'nogold.json');
    fs.writeFileSync(bad, JSON.stringify([{ instruction: 'x', output: 'Paris' }]));
    const e = run('eval', ...model, '--data', bad, '--metric', 'choice', '--max-tokens', '2');
    expect(e.status).to.equal(1);
    expect(e.stderr).to.include('record 0').and.include('no "(X)" after "The answer is"');
  });

  it('scienceqa and caption on the fixtures (text-only: images are not seen)', async () => {
    const sqa = run('eval', ...model, '--data', FIX('scienceqa'), '--format', 'scienceqa', '--split', 'test', '--metric', 'scienceqa', '--max-tokens', '4');
    expect(sqa.status, sqa.stderr).to.equal(0);
    expect(sqa.stderr).to.include('2 of 4 records have an image');
    const s = JSON.parse(sqa.stdout);
    expect(s).to.deep.equal({
      metric: 'scienceqa',
      accuracy: 0,
      table: { NAT: 0, SOC: 0, LAN: 0, TXT: 0, IMG: 0, NO: 0, 'G1-6': 0, 'G7-12': 0, Avg: 0 },
      counts: { NAT: 2, SOC: 1, LAN: 1, TXT: 2, IMG: 2, NO: 1, 'G1-6': 2, 'G7-12': 2, Avg: 4 },
      examples: 4,
    });
    const caps = FIX('coco', 'annotations', 'captions_tiny2017.json');
    const c = run('eval', ...model, '--data', caps, '--format', 'coco', '--metric', 'caption', '--max-tokens', String(MAX));
    expect(c.status, c.stderr).to.equal(0);
    // text-only: the same prompt for every image, so the same caption for all four
    const ds = loadDataset(caps, { format: 'coco' });
    const caption = await greedy(m, ds.records[0], MAX);
    const byImage = new Map<string, string[]>();
    for (const r of ds.records) byImage.set(r.image!, [...(byImage.get(r.image!) ?? []), r.output]);
    const want = captionScores([...byImage.values()].map((references) => ({ candidate: caption, references })));
    const got = JSON.parse(c.stdout);
    expect(got).to.include({ metric: 'caption', images: 4, examples: 6 });
    expect(got['BLEU-4']).to.equal(want.bleu4);
    expect(got['CIDEr-D']).to.equal(want.ciderD);
  });

  it('bad flags are clear usage errors', () => {
    const data = FIX('scienceqa');
    const cases: [string[], RegExp][] = [
      [['--metric', 'bleu'], /--metric must be one of loss, exact, choice, scienceqa, caption/],
      [['--format', 'csv'], /--format must be one of alpaca, scienceqa, coco/],
      [['--format', 'scienceqa'], /--format scienceqa needs --split/],
      [['--format', 'scienceqa', '--split', 'dev', '--metric', 'exact'], /no split "dev"/],
      [['--metric', 'scienceqa'], /--metric scienceqa needs --format scienceqa/],
      [['--split', 'test'], /--split is only for --format scienceqa/],
      [['--format', 'scienceqa', '--split', 'test', '--predictions', 'x.jsonl'], /--predictions is for the generative metrics/],
      [['--format', 'scienceqa', '--split', 'test', '--metric', 'exact', '--max-tokens', '0'], /--max-tokens must be an integer >= 1/],
    ];
    for (const [flags, msg] of cases) {
      const r = run('eval', ...model, '--data', data, ...flags);
      expect(r.status, flags.join(' ')).to.not.equal(0);
      expect(r.stderr, flags.join(' ')).to.match(msg);
    }
  });
});

describe('train --format (stories260K)', function () {
  this.timeout(120_000);
  it('trains on a ScienceQA split; --split needs --format scienceqa', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-train-sqa-'));
    try {
      const small = ['--adapter-layers', '1', '--adapter-len', '2', '--batch-size', '1', '--grad-accum', '1', '--epochs', '2'];
      // the val split of the fixture: one problem, without an image
      const r = run('train', ...model, '--data', FIX('scienceqa'), '--format', 'scienceqa', '--split', 'val', '--out', path.join(dir, 'run'), ...small);
      expect(r.status, r.stderr).to.equal(0);
      expect(r.stderr).to.include('1 training and 0 validation examples');
      expect(r.stderr).to.match(/step 2\/2 \|/);
      const e = run('train', ...model, '--data', FIX('scienceqa'), '--split', 'val', '--out', path.join(dir, 'run2'), ...small);
      expect(e.status).to.not.equal(0);
      expect(e.stderr).to.include('--split is only for --format scienceqa');
      const n = run('train', ...model, '--data', FIX('scienceqa'), '--format', 'scienceqa', '--split', 'nope', '--out', path.join(dir, 'run3'), ...small);
      expect(n.status).to.not.equal(0);
      expect(n.stderr).to.include('no split "nope"');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
