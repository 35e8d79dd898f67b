// Extractive QA (SQuAD, SPEC §9): the metric on hand-worked cases, the data reader's errors, windows
// with a stride, span decoding, the loss gradient, g = 0 giving the frozen model's logits exactly,
// and the train / eval / answer commands end to end on a tiny random RoBERTa folder.
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { normalizeAnswer, exactMatchScore, f1Score, squadMetrics } from '../lib/eval/squad';
import { loadSquad, SquadExample } from '../lib/data/squad';
import { loadTextTokenizer } from '../lib/text/tokenizer';
import { TextEncoderModel } from '../lib/text/encoder';
import { writeRandomTextFolder } from '../lib/text/random-folder';
import {
  decodeAnswer, disposeParams, frozenParams, initParams, makeFeatures, scoreFeatures, spanLoss, squadOptimizer, squadStep, SquadFeature,
} from '../lib/tasks/squad';
import { native } from '../lib/native';
import { TextEncoderGraph } from '../lib/text/encoder';
import { repoRoot } from './util/paths';
import { capture } from './util/capture';

const tokDir = path.join(repoRoot, 'test', 'golden', 'text-tokenizers');
const CONTEXT =
  'The GNU General Public License is a free, copyleft license for software and other kinds of works. ' +
  'The licenses for most software are designed to take away your freedom to share and change the works. ' +
  'By contrast, the GPL is intended to guarantee your freedom to share and change all versions of a program.';

function squadJson(qas: { id: string; question: string; answers: { text: string; answer_start: number }[]; is_impossible?: boolean }[], context = CONTEXT) {
  return { version: 'v1.1', data: [{ title: 't', paragraphs: [{ context, qas }] }] };
}

describe('SQuAD metric (the official script, hand-worked)', () => {
  it('normalisation: lower case, punctuation, articles, white space', () => {
    expect(normalizeAnswer('The  Quick, brown fox!')).to.equal('quick brown fox');
    expect(normalizeAnswer('an apple a day')).to.equal('apple day');
    expect(normalizeAnswer('theatre')).to.equal('theatre');
  });
  it('exact match and token F1', () => {
    expect(exactMatchScore('Paris.', 'paris')).to.equal(1);
    expect(exactMatchScore('in Paris', 'Paris')).to.equal(0);
    // pred [cat, sat], gold [cat, sat, down]: precision 1, recall 2/3 -> 0.8
    expect(f1Score('the cat sat', 'a cat sat down')).to.be.closeTo(0.8, 1e-12);
    // repeated tokens count once per occurrence: pred [a1 a1 b] gold [a1 b b]: same 2, p = r = 2/3
    expect(f1Score('x x y', 'x y y')).to.be.closeTo(2 / 3, 1e-12);
    expect(f1Score('', 'Denver')).to.equal(0);
    expect(f1Score('', '')).to.equal(1);
  });
  it('the maximum over gold answers, averaged in percent; v2.0 no-answer', () => {
    const preds = new Map([['q1', 'Broncos'], ['q2', ''], ['q3', 'something']]);
    const golds = new Map([['q1', ['Denver Broncos', 'The Denver Broncos']], ['q2', []], ['q3', []]]);
    const m = squadMetrics(preds, golds);
    // q1: EM 0, F1 2/3; q2: 1, 1; q3: 0, 0
    expect(m.exact_match).to.be.closeTo(100 / 3, 1e-9);
    expect(m.f1).to.be.closeTo((100 * (2 / 3 + 1)) / 3, 1e-9);
    expect(() => squadMetrics(new Map(), golds)).to.throw(/no prediction for question q1/);
  });
});

describe('SQuAD data and windows', () => {
  let tmp: string;
  before(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'squad-'))));
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const write = (name: string, j: unknown) => {
    const p = path.join(tmp, name);
    fs.writeFileSync(p, typeof j === 'string' ? j : JSON.stringify(j));
    return p;
  };

  it('reads v1.1 and v2.0; answer_start counts code points', () => {
    const ctx = 'smile \u{1F600} then the answer here';
    const d = loadSquad(write('a.json', squadJson([{ id: 'x', question: 'Q?', answers: [{ text: 'answer', answer_start: 17 }] }], ctx)));
    expect(d.v2).to.equal(false);
    expect(d.examples[0].answers[0].start).to.equal(18); // the emoji is 2 UTF-16 units
    expect(ctx.slice(18, 24)).to.equal('answer');
    const v2 = loadSquad(write('b.json', squadJson([{ id: 'y', question: 'Q?', answers: [], is_impossible: true }])));
    expect(v2.v2).to.equal(true);
    expect(v2.examples[0].isImpossible).to.equal(true);
  });

  it('malformed files and answers outside the context are clear errors', () => {
    expect(() => loadSquad(write('c.json', '{"data": [}'))).to.throw(/c\.json is not valid JSON/);
    expect(() => loadSquad(write('d.json', { version: 'v1.1' }))).to.throw(/d\.json: the top level has no "data" list/);
    expect(() => loadSquad(write('e.json', { data: [{ paragraphs: [{ qas: [] }] }] }))).to.throw(/data\[0\]\.paragraphs\[0\] has no "context" string/);
    expect(() => loadSquad(write('f.json', squadJson([{ id: 'z', question: 'Q?', answers: [{ text: 'free', answer_start: 9999 }] }]))))
      .to.throw(/f\.json: data\[0\]\.paragraphs\[0\]\.qas\[0\]\.answers\[0\] \(id z\): the answer "free" at answer_start 9999 is outside the context/);
    expect(() => loadSquad(write('g.json', squadJson([{ id: 'z', question: 'Q?', answers: [{ text: 'free', answer_start: -1 }] }])))).to.throw(/answer_start": integer >= 0/);
    expect(() => loadSquad(write('h.json', squadJson([{ id: 'z', question: 'Q?', answers: [] }])))).to.throw(/has no answers \(and is not marked is_impossible\)/);
    expect(() => loadSquad(write('i.json', squadJson([{ id: 'z', question: 'Q?', answers: [{ text: 'free', answer_start: 41 }] }, { id: 'z', question: 'R?', answers: [{ text: 'free', answer_start: 41 }] }])))).to.throw(/repeats the id "z"/);
    expect(() => loadSquad(path.join(tmp, 'missing.json'))).to.throw(/cannot read SQuAD file .*missing\.json/);
  });

  for (const [family, dir] of [['roberta', 'roberta'], ['bert', 'bert-uncased']] as const)
    it(`${family}: windows overlap by the stride and every window holding the answer points at it`, () => {
      const tok = loadTextTokenizer(path.join(tokDir, dir), family);
      const start = CONTEXT.indexOf('guarantee your freedom');
      const ex: SquadExample = { id: 'a', question: 'What is the GPL intended to do?', context: CONTEXT, answers: [{ text: 'guarantee your freedom', start }], isImpossible: false };
      const win = { maxSeqLen: 40, docStride: 8, maxQueryLen: 64 };
      const fs2 = makeFeatures([ex], tok, win);
      expect(fs2.length).to.be.above(3);
      const q = tok.encode(ex.question).ids.length;
      let holding = 0;
      fs2.forEach((f, i) => {
        expect(f.ids.length).to.be.at.most(40);
        expect(f.ctxStart).to.equal(q + (family === 'roberta' ? 3 : 2));
        expect(f.ids[0]).to.equal(tok.clsId);
        if (i > 0) {
          // the next window starts (avail - stride) context tokens later: its first 8 overlap
          const prev = fs2[i - 1];
          expect(f.offsets.slice(0, 8)).to.deep.equal(prev.offsets.slice(prev.offsets.length - 8));
        }
        if (f.startPos > 0) {
          holding++;
          const text = CONTEXT.slice(f.offsets[f.startPos - f.ctxStart][0], f.offsets[f.endPos - f.ctxStart][1]);
          expect(text.toLowerCase()).to.equal('guarantee your freedom');
        } else expect(f.endPos).to.equal(0);
      });
      expect(holding).to.be.at.least(1);
      expect(fs2[fs2.length - 1].offsets[fs2[fs2.length - 1].offsets.length - 1][1]).to.equal(CONTEXT.length); // up to the final "."
      expect(() => makeFeatures([ex], tok, { maxSeqLen: 20, docStride: 19, maxQueryLen: 64 })).to.throw(/--doc-stride 19 must be below/);
      // v2.0: an unanswerable question points at CLS in every window
      const none = makeFeatures([{ ...ex, answers: [], isImpossible: true }], tok, win);
      expect(none.length).to.equal(fs2.length);
      expect(none.every((f) => f.startPos === 0 && f.endPos === 0)).to.equal(true);
    });
});

describe('span decoding and the loss', () => {
  const ex: SquadExample = { id: 'd', question: 'q', context: 'aa bb cc dd', answers: [], isImpossible: false };
  // window: [CLS] q [SEP] aa bb cc dd [SEP] -> context tokens 3..6
  const f: SquadFeature = {
    example: 0, ids: new Int32Array(8), types: new Int32Array(8), ctxStart: 3, ctxEnd: 7,
    offsets: [[0, 2], [3, 5], [6, 8], [9, 11]], startPos: 4, endPos: 5,
  };
  const logits = (start: number[], end: number[]) => Float32Array.from(start.flatMap((s, i) => [s, end[i]]));

  it('the best start <= end over context tokens; the text from the first to the last character', () => {
    // the question token (1) scores highest but is not context; end before start is not allowed
    const lg = logits([0, 9, 0, 0, 5, 1, 0, 0], [0, 9, 0, 3, 0, 0, 2, 0]);
    expect(decodeAnswer(ex, [f], [lg], false)).to.deep.include({ text: 'bb cc dd', score: 7 });
  });
  it('v2.0: no answer when the CLS score beats the best span', () => {
    const lg = logits([4, 0, 0, 0, 1, 0, 0, 0], [4, 0, 0, 0, 1, 0, 0, 0]);
    expect(decodeAnswer(ex, [f], [lg], true).text).to.equal('');
    expect(decodeAnswer(ex, [f], [lg], false).text).to.equal('bb');
  });
  it('at most 30 tokens', () => {
    const n = 40;
    const ctx = Array.from({ length: n }, (_, i) => `w${i}`).join(' ');
    const offs: [number, number][] = [];
    let p = 0;
    for (let i = 0; i < n; i++) {
      offs.push([p, p + `w${i}`.length]);
      p += `w${i}`.length + 1;
    }
    const g: SquadFeature = { ...f, ids: new Int32Array(n + 1), ctxStart: 1, ctxEnd: n + 1, offsets: offs };
    const st = new Array(n + 1).fill(0);
    const en = new Array(n + 1).fill(0);
    st[1] = 5;
    en[n] = 5; // a 40-token span: too long
    en[30] = 4; // the longest allowed: tokens 1..30
    const r = decodeAnswer({ ...ex, context: ctx }, [g], [logits(st, en)], false);
    expect(r.text).to.equal(Array.from({ length: 30 }, (_, i) => `w${i}`).join(' '));
  });
  it('the loss gradient matches finite differences', () => {
    const lg = Float32Array.from([0.3, -1, 2, 0.5, -0.7, 1.1, 0.2, 0.9, 1.5, -0.4, 0, 0.1]);
    const fs2 = [{ ...f, startPos: 1, endPos: 2 }, { ...f, startPos: 0, endPos: 0 }];
    const offsets = [0, 3, 6];
    const { dlogits } = spanLoss(lg, offsets, fs2);
    for (let i = 0; i < lg.length; i++) {
      const h = 1e-3;
      const up = Float32Array.from(lg);
      up[i] += h;
      const dn = Float32Array.from(lg);
      dn[i] -= h;
      const fd = (spanLoss(up, offsets, fs2).loss - spanLoss(dn, offsets, fs2).loss) / (2 * h);
      expect(Math.abs(fd - dlogits[i])).to.be.below(1e-4);
    }
  });
});

describe('SQuAD on a tiny random RoBERTa: g = 0 and the commands', function () {
  this.timeout(120000);
  let tmp: string;
  let qaDir: string;
  let baseDir: string;
  let dataPath: string;
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'squad-cli-'));
    qaDir = path.join(tmp, 'roberta-qa');
    baseDir = path.join(tmp, 'roberta');
    const o = { family: 'roberta' as const, tokenizerDir: path.join(tokDir, 'roberta'), hidden: 32, layers: 2, heads: 4, ffn: 64, maxTokens: 64, seed: 1 };
    writeRandomTextFolder(qaDir, { ...o, qaHead: true });
    writeRandomTextFolder(baseDir, { ...o, qaHead: false });
    const words = ['software', 'freedom', 'license', 'program', 'works'];
    const qas = words.map((w, i) => ({ id: `q${i}`, question: `Where is ${w}?`, answers: [{ text: w, answer_start: CONTEXT.indexOf(w) }] }));
    dataPath = path.join(tmp, 'train.json');
    fs.writeFileSync(dataPath, JSON.stringify(squadJson(qas)));
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('prompts with gates 0 and the checkpoint head give the frozen model logits exactly', async () => {
    const enc = await TextEncoderModel.load(qaDir, { device: 'cpu' });
    const data = loadSquad(dataPath);
    const feats = makeFeatures(data.examples, enc.tokenizer!, { maxSeqLen: 48, docStride: 16, maxQueryLen: 16 });
    const frozen = await frozenParams(enc);
    const zeroInit = await initParams(enc, 2, 5, 'zero', 3);
    const a = await scoreFeatures(enc, frozen, feats, 3);
    const b = await scoreFeatures(enc, zeroInit, feats, 3);
    expect(a.length).to.equal(feats.length);
    a.forEach((x, i) => expect(Buffer.from(x.buffer).equals(Buffer.from(b[i].buffer))).to.equal(true));
    const rand = await initParams(enc, 2, 5, 'random', 3);
    const c = await scoreFeatures(enc, rand, feats, 3);
    expect(c.some((x, i) => x.some((v, j) => v !== a[i][j]))).to.equal(true);
    [frozen, zeroInit, rand].forEach(disposeParams);
    enc.dispose();
  });

  it('train --task squad, then eval and answer with the adapter; the frozen head without one', async () => {
    const out = path.join(tmp, 'run');
    const common = ['--encoder', qaDir, '--device', 'cpu', '--max-seq-len', '48', '--doc-stride', '16'];
    const t = await capture(['train', '--task', 'squad', ...common, '--data', dataPath, '--out', out, '--layers', '2', '--prompt-len', '4', '--epochs', '30', '--batch-size', '4', '--lr', '2e-2', '--eval-data', dataPath]);
    expect(t.code, t.err).to.equal(0);
    expect(t.out.trim()).to.equal(path.join(out, 'adapter.safetensors'));
    const steps = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(steps.length).to.be.above(20);
    const first = steps.slice(0, 3).reduce((a, s) => a + s.loss, 0) / 3;
    const last = steps.slice(-3).reduce((a, s) => a + s.loss, 0) / 3;
    expect(last, `loss ${first} -> ${last}`).to.be.below(first * 0.8);
    const e = await capture(['eval', '--task', 'squad', ...common, '--data', dataPath, '--adapter', path.join(out, 'adapter.safetensors')]);
    expect(e.code, e.err).to.equal(0);
    const m = JSON.parse(e.out);
    expect(m).to.have.keys(['exact_match', 'f1', 'total']);
    expect(m.total).to.equal(5);
    expect(m).to.deep.equal({ ...JSON.parse(fs.readFileSync(path.join(out, 'eval.json'), 'utf8')) });
    const a = await capture(['answer', ...common, '--adapter', path.join(out, 'adapter.safetensors'), '--question', 'Where is software?', '--context', CONTEXT]);
    expect(a.code, a.err).to.equal(0);
    expect(CONTEXT).to.contain(a.out.trim());
    expect(a.out.trim().length).to.be.above(0);
    // the frozen model's own head
    const f = await capture(['answer', ...common, '--question', 'Where?', '--context', CONTEXT]);
    expect(f.code, f.err).to.equal(0);
    expect(CONTEXT).to.contain(f.out.trim());
    // a rerun into the same folder is refused
    const again = await capture(['train', '--task', 'squad', ...common, '--data', dataPath, '--out', out]);
    expect(again.code).to.equal(1);
    expect(again.err).to.match(/already holds a run \(adapter\.safetensors, config\.yaml, metrics\.jsonl\): continue it with --resume auto, or pass --overwrite/);
  });

  it('head-only and random-gate runs; errors: no QA head, malformed data', async () => {
    const common = ['--encoder', qaDir, '--device', 'cpu', '--max-seq-len', '48', '--doc-stride', '16'];
    const h = await capture(['train', '--task', 'squad', ...common, '--data', dataPath, '--out', path.join(tmp, 'head'), '--head-only', '--max-steps', '3', '--batch-size', '4']);
    expect(h.code, h.err).to.equal(0);
    expect(h.err).to.match(/head only/);
    const r = await capture(['train', '--task', 'squad', ...common, '--data', dataPath, '--out', path.join(tmp, 'rand'), '--gate-init', 'random', '--max-steps', '3', '--layers', '1']);
    expect(r.code, r.err).to.equal(0);
    const noHead = await capture(['answer', '--encoder', baseDir, '--device', 'cpu', '--question', 'Where?', '--context', CONTEXT]);
    expect(noHead.code).to.equal(1);
    expect(noHead.err).to.match(/has no QA head \(qa_outputs; a RobertaModel\): pass --adapter/);
    const bad = path.join(tmp, 'bad.json');
    fs.writeFileSync(bad, '{"data": [{"paragraphs": 3}]}');
    const b = await capture(['eval', '--task', 'squad', ...common, '--data', bad]);
    expect(b.code).to.equal(1);
    expect(b.err).to.match(/bad\.json: data\[0\] has no "paragraphs" list/);
    expect(fs.existsSync(path.join(tmp, 'never'))).to.equal(false);
    const wrongAdapter = await capture(['eval', '--task', 'squad', '--encoder', baseDir, '--device', 'cpu', '--data', dataPath, '--adapter', path.join(qaDir, 'model.safetensors')]);
    expect(wrongAdapter.code).to.equal(1);
    expect(wrongAdapter.err).to.match(/not a SQuAD adapter/);
  });
});

describe('SQuAD training steps against PyTorch float32', () => {
  it('five steps (forward, span loss, post-norm backward, AdamW) give the losses of bench/torch_squad_step.py', async () => {
    // test/golden/squad-step: written by bench/squad-step.ts (a random RoBERTa 2x32 with a QA head,
    // 5 batches of 4 windows of the cloze set) and bench/torch_squad_step.py (autograd, padded)
    const dir = path.join(repoRoot, 'test', 'golden', 'squad-step');
    const job = JSON.parse(fs.readFileSync(path.join(dir, 'batches.json'), 'utf8'));
    const torch = JSON.parse(fs.readFileSync(path.join(dir, 'torch.json'), 'utf8'));
    const enc = await TextEncoderModel.load(path.join(dir, 'encoder'), { device: 'cpu' });
    const C = enc.config.dim;
    const H = enc.config.nHeads;
    const L = job.adapt;
    const v = job.params.map((a: number[]) => Float32Array.from(a));
    const p = {
      prompts: Array.from({ length: L }, (_, l) => native.fromArray(v[l], [job.K, C])),
      gates: Array.from({ length: L }, (_, l) => native.fromArray(v[L + l], [H])),
      headW: native.fromArray(v[2 * L], [2, C]),
      headB: native.fromArray(v[2 * L + 1], [2]),
    };
    const graph = new TextEncoderGraph(enc, L);
    const opt = squadOptimizer(p, job.weightDecay);
    const losses: number[] = [];
    for (const [s, b] of (job.batches as { ids: number[]; types: number[]; offsets: number[]; start: number[]; end: number[] }[]).entries()) {
      const feats = b.start.map((_, w) => ({
        example: 0, ids: Int32Array.from(b.ids.slice(b.offsets[w], b.offsets[w + 1])), types: Int32Array.from(b.types.slice(b.offsets[w], b.offsets[w + 1])),
        ctxStart: 0, ctxEnd: 0, offsets: [], startPos: b.start[w], endPos: b.end[w],
      }));
      losses.push((await squadStep(enc, p, graph, opt, feats, job.lr)).loss);
    }
    expect(losses.length).to.equal(torch.losses.length);
    losses.forEach((l, i) => expect(Math.abs(l - torch.losses[i]), `step ${i + 1}: ${l} vs ${torch.losses[i]}`).to.be.below(2e-5 * Math.abs(l)));
    expect(losses[4]).to.be.below(losses[0]);
    opt.dispose();
    disposeParams(p);
    enc.dispose();
  });
});
