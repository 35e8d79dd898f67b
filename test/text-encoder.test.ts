// The text encoders (BERT, RoBERTa; SPEC §9) against the float64 reference of
// tools/reference/text_encoder_reference.py (its own post-norm forward, itself checked against
// torch.nn.TransformerEncoderLayer), on the tiny random folders of test/golden/text-encoders; the
// post-norm training graph by central finite differences; load errors.
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native } from '../lib/native';
import { TextBatchIndex, TextEncoderModel, TextEncoderGraph, spanLogits } from '../lib/text/encoder';
import { Random } from '../lib/generate/random';
import { repoRoot } from './util/paths';

const goldenDir = path.join(repoRoot, 'test', 'golden', 'text-encoders');
const golden = JSON.parse(fs.readFileSync(path.join(goldenDir, 'golden.json'), 'utf8'));
const floats = (b64: string) => {
  const b = Buffer.from(b64, 'base64');
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
};
const offsets = [0];
for (const n of golden.lengths as number[]) offsets.push(offsets[offsets.length - 1] + n);
const N = offsets[offsets.length - 1];

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).to.equal(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function normals(n: number, seed: number, scale = 1): Float32Array {
  const r = new Random(seed);
  return Float32Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(1 - r.next())) * Math.cos(2 * Math.PI * r.next()) * scale);
}

function promptTensors(key: string, C: number, H: number) {
  const p = golden.prompts[key];
  const [L, K] = p.shape;
  const P = floats(p.values);
  const G = floats(p.gates);
  return {
    prompts: Array.from({ length: L }, (_, l) => native.fromArray(P.slice(l * K * C, (l + 1) * K * C), [K, C])),
    gates: Array.from({ length: L }, (_, l) => native.fromArray(G.slice(l * H, (l + 1) * H), [H])),
  };
}

for (const name of Object.keys(golden.folders))
  describe(`text encoder ${name} against the float64 reference`, () => {
    const g = golden.folders[name];
    let enc: TextEncoderModel;
    let idx: TextBatchIndex;
    before(async () => {
      enc = await TextEncoderModel.load(path.join(goldenDir, name), { device: 'cpu', tokenizer: false });
      idx = new TextBatchIndex({ ids: Int32Array.from(g.ids), types: Int32Array.from(g.types), offsets }, enc.config);
    });
    after(() => {
      idx.dispose();
      enc.dispose();
    });

    it('config: family, positions, QA head', () => {
      const c = enc.config;
      expect(c.family).to.equal(g.family);
      expect(c.posOffset).to.equal(g.family === 'roberta' ? 2 : 0);
      expect(c.maxTokens).to.equal(12);
      expect(c.hasQaHead).to.equal(g.architecture.endsWith('QuestionAnswering'));
    });

    it('packed last hidden states (and QA logits) equal the reference per text', async () => {
      const h = enc.forward(idx);
      const v = (await h.read()) as Float32Array;
      expect(maxDiff(v, floats(g.hidden))).to.be.below(5e-5);
      if (g.logits) {
        const lg = spanLogits(h, enc.weights.qa!);
        expect(maxDiff((await lg.read()) as Float32Array, floats(g.logits))).to.be.below(5e-5);
        lg.dispose();
      }
      h.dispose();
    });

    it('bf16 storage of the matrices stays close to the reference', async () => {
      const e2 = await TextEncoderModel.load(path.join(goldenDir, name), { device: 'cpu', tokenizer: false, dtype: 'bf16' });
      const h = e2.forward(idx);
      expect(maxDiff((await h.read()) as Float32Array, floats(g.hidden))).to.be.below(0.15);
      h.dispose();
      e2.dispose();
    });

    for (const key of ['L1', 'L2'])
      it(`prompts in the top ${key.slice(1)} layer(s) with tanh gates`, async () => {
        const p = promptTensors(key, enc.config.dim, enc.config.nHeads);
        const h = enc.forward(idx, p);
        expect(maxDiff((await h.read()) as Float32Array, floats(g.prompted[key]))).to.be.below(5e-5);
        [h, ...p.prompts, ...p.gates].forEach((t) => t.dispose());
      });

    it('at gates = 0 the output is the frozen encoder bit for bit', async () => {
      const C = enc.config.dim;
      const H = enc.config.nHeads;
      const prompts = [native.fromArray(normals(3 * C, 1), [3, C]), native.fromArray(normals(3 * C, 2), [3, C])];
      const gates = [native.zeros([H]), native.zeros([H])];
      const a = enc.forward(idx, { prompts, gates });
      const b = enc.forward(idx);
      const [va, vb] = (await Promise.all([a.read(), b.read()])) as Float32Array[];
      expect(Buffer.from(va.buffer).equals(Buffer.from(vb.buffer))).to.equal(true);
      [a, b, ...prompts, ...gates].forEach((t) => t.dispose());
    });
  });

for (const name of ['roberta-qa-f32', 'bert-f32'])
  describe(`text encoder training graph (post-norm backward): ${name}`, () => {
    const g = golden.folders[name];
    let enc: TextEncoderModel;
    let idx: TextBatchIndex;
    const K = 3;
    const L = 2;
    before(async () => {
      enc = await TextEncoderModel.load(path.join(goldenDir, name), { device: 'cpu', tokenizer: false });
      idx = new TextBatchIndex({ ids: Int32Array.from(g.ids), types: Int32Array.from(g.types), offsets }, enc.config);
    });
    after(() => {
      idx.dispose();
      enc.dispose();
    });

    async function loss(P: Float32Array[], G: Float32Array[], R: Float32Array): Promise<number> {
      const C = enc.config.dim;
      const prompts = P.map((p) => native.fromArray(p, [K, C]));
      const gates = G.map((x) => native.fromArray(x, [enc.config.nHeads]));
      const h = enc.forward(idx, { prompts, gates });
      const v = (await h.read()) as Float32Array;
      [h, ...prompts, ...gates].forEach((t) => t.dispose());
      let s = 0;
      for (let i = 0; i < v.length; i++) s += v[i] * R[i];
      return s;
    }

    it('dPrompts and dGates match central finite differences; the forward is the inference one', async () => {
      const C = enc.config.dim;
      const H = enc.config.nHeads;
      const P = [normals(K * C, 1), normals(K * C, 2)];
      const G = [normals(H, 3, 0.7), normals(H, 4, 0.7)];
      const R = normals(N * C, 5);
      const prompts = P.map((p) => native.fromArray(p, [K, C]));
      const gates = G.map((x) => native.fromArray(x, [H]));
      const graph = new TextEncoderGraph(enc, L);
      const hid = graph.forward(idx, { prompts, gates });
      const ref = enc.forward(idx, { prompts, gates });
      const [vh, vr] = (await Promise.all([hid.read(), ref.read()])) as Float32Array[];
      expect(Buffer.from(vh.buffer).equals(Buffer.from(vr.buffer))).to.equal(true);
      const dP = prompts.map(() => native.zeros([K, C]));
      const dG = gates.map(() => native.zeros([H]));
      const dH = native.fromArray(R, [N, C]);
      graph.backward(dH, { prompts: dP, gates: dG });
      const aP = (await Promise.all(dP.map((t) => t.read()))) as Float32Array[];
      const aG = (await Promise.all(dG.map((t) => t.read()))) as Float32Array[];
      [hid, ref, dH, ...prompts, ...gates, ...dP, ...dG].forEach((t) => t.dispose());

      const h = 1e-2;
      const check = async (an: number, set: (v: number) => void, v0: number, what: string) => {
        set(v0 + h);
        const up = await loss(P, G, R);
        set(v0 - h);
        const down = await loss(P, G, R);
        set(v0);
        const fd = (up - down) / (2 * h);
        expect(Math.abs(fd - an), `${what}: fd ${fd} analytic ${an}`).to.be.at.most(3e-3 + 1e-2 * Math.abs(an));
      };
      for (let l = 0; l < L; l++) {
        for (let j = 0; j < H; j++) await check(aG[l][j], (v) => (G[l][j] = v), G[l][j], `gate[${l}][${j}]`);
        for (const j of [0, 5, C + 3, 2 * C + C - 1]) await check(aP[l][j], (v) => (P[l][j] = v), P[l][j], `prompt[${l}][${j}]`);
      }
      expect(Math.max(...aG.flatMap((x) => [...x].map(Math.abs)))).to.be.above(1e-2);
      expect(Math.max(...aP.flatMap((x) => [...x].map(Math.abs)))).to.be.above(1e-3);
    });
  });

describe('text encoder loading errors', () => {
  let tmp: string;
  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'text-enc-'));
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const copyFolder = (name: string) => {
    for (const f of fs.readdirSync(path.join(goldenDir, name))) fs.copyFileSync(path.join(goldenDir, name, f), path.join(tmp, f));
  };
  const editConfig = (f: (c: Record<string, unknown>) => void) => {
    const p = path.join(tmp, 'config.json');
    const c = JSON.parse(fs.readFileSync(p, 'utf8'));
    f(c);
    fs.writeFileSync(p, JSON.stringify(c));
  };

  it('a tensor that does not match config.json is named', async () => {
    copyFolder('roberta-qa-f32');
    editConfig((c) => (c.intermediate_size = 20));
    let err: Error | undefined;
    await TextEncoderModel.load(tmp, { device: 'cpu', tokenizer: false }).catch((e) => (err = e));
    expect(err?.message).to.match(/roberta\.encoder\.layer\.0\.intermediate\.dense\.weight has shape \[24, 16\] but config\.json implies \[20, 16\]/);
  });
  it('sizes above the bounds, other architectures and missing tensors are clear errors', async () => {
    copyFolder('bert-qa-bf16');
    editConfig((c) => (c.vocab_size = 2 ** 30));
    await TextEncoderModel.load(tmp, { device: 'cpu', tokenizer: false }).then(
      () => expect.fail('loaded'),
      (e) => expect(e.message).to.match(/vocab_size 1073741824 is above the supported maximum/),
    );
    editConfig((c) => ((c.vocab_size = 40), (c.architectures = ['GPT2LMHeadModel']), (c.model_type = 'gpt2')));
    await TextEncoderModel.load(tmp, { device: 'cpu', tokenizer: false }).then(
      () => expect.fail('loaded'),
      (e) => expect(e.message).to.match(/not a text encoder this project loads/),
    );
    editConfig((c) => ((c.architectures = ['BertForQuestionAnswering']), (c.num_hidden_layers = 3)));
    await TextEncoderModel.load(tmp, { device: 'cpu', tokenizer: false }).then(
      () => expect.fail('loaded'),
      (e) => expect(e.message).to.match(/missing tensor bert\.encoder\.layer\.2\.attention\.self\.query\.weight/),
    );
  });
  it('a batch with an id outside the vocabulary or a text longer than the positions is refused', async () => {
    const enc = await TextEncoderModel.load(path.join(goldenDir, 'roberta-f16'), { device: 'cpu', tokenizer: false });
    expect(() => new TextBatchIndex({ ids: Int32Array.from([1, 40]), types: new Int32Array(2), offsets: [0, 2] }, enc.config)).to.throw(/token 1 has id 40, outside the vocabulary of 40/);
    expect(() => new TextBatchIndex({ ids: new Int32Array(13), types: new Int32Array(13), offsets: [0, 13] }, enc.config)).to.throw(/13 tokens, the encoder takes at most 12/);
    expect(() => new TextBatchIndex({ ids: new Int32Array(2), types: Int32Array.from([0, 1]), offsets: [0, 2] }, enc.config)).to.throw(/type 1, the encoder has 1/);
    enc.dispose();
  });
});

