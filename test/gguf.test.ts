// GGUF checkpoints end to end: files written by tools/to-gguf from stories260K (and from a random
// model of dim 256, whose rows are whole K-quant super-blocks) load, generate and train like the
// .bin; the vocabulary in the metadata tokenizes like tok512 and like llama.cpp's own test vectors;
// hostile headers are clear errors naming the file.
//
// Tolerances (logits of 10 tokens against the f32 .bin, relative RMS error = rms(diff) / rms(logits)),
// set about 1.5x above what was measured on the dim-256 random model (N(0, 0.02) weights, the hardest
// case for a quantizer: no outliers to spend the range on): F16 2e-3 (measured 5.0e-4), BF16 1e-2
// (4.0e-3), Q8_0 3e-2 (1.3e-2), Q6_K 8e-2 (4.4e-2), Q5_K 0.15 (8.4e-2), Q4_K 0.3 (0.17), Q4_0 0.3 (0.19).
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Llama } from '../lib/model/llama';
import { GGUF_LIMITS, GgmlTypeName, ggufSentencePiece, readGgufHeader } from '../lib/model/gguf';
import { SentencePieceTokenizer, loadTokenizer } from '../lib/tokenizer';
import { toGguf } from '../tools/to-gguf';
import { writeGguf } from '../tools/gguf-writer';
import { writeRandomLlama2c } from '../bench/decode';
import { generateTokens } from '../lib/generate/generate';
import { makeDemoDataset } from '../lib/data/demo';
import { dataPath, repoRoot } from './util/paths';
import { cudaBackend, withBinding } from './util/backends';
import { stories } from './util/stories';

const cli = path.join(repoRoot, 'dist', 'lib', 'cli', 'main.js');
const IDS = [1, 403, 407, 261, 378, 30, 99, 500, 7, 8];
const TOL: Record<GgmlTypeName, number> = { F32: 0, F16: 2e-3, BF16: 1e-2, Q8_0: 3e-2, Q6_K: 8e-2, Q5_K: 0.15, Q4_K: 0.3, Q4_0: 0.3 };
const TYPES = Object.keys(TOL) as GgmlTypeName[];

async function logits(file: string, tokenizer?: string): Promise<Float32Array> {
  const m = await Llama.load(file, { device: 'cpu' });
  const c = m.newCache(16);
  try {
    return (await m.forward(IDS, c, { allLogits: true }).read()) as Float32Array;
  } finally {
    c.dispose();
    m.dispose();
  }
}

function relRms(a: Float32Array, e: Float32Array): number {
  let se = 0, s = 0;
  for (let i = 0; i < e.length; i++) {
    se += (a[i] - e[i]) ** 2;
    s += e[i] * e[i];
  }
  return Math.sqrt(se / s);
}

async function greedy(file: string, tokenizer?: string, n = 48): Promise<string> {
  const m = await Llama.load(file, { device: 'cpu' });
  try {
    const tok = m.loadTokenizer(tokenizer);
    const out: number[] = [];
    for await (const id of generateTokens(m, tok.encode('Once upon a time', { bos: true }), { maxTokens: n, temperature: 0 })) out.push(id);
    return tok.decode(out);
  } finally {
    m.dispose();
  }
}

describe('GGUF checkpoints', function () {
  this.timeout(120_000);
  let dir: string;
  const storiesFile = (t: GgmlTypeName) => path.join(dir, `stories-${t}.gguf`);
  const randomFile = (t: GgmlTypeName) => path.join(dir, `r256-${t}.gguf`);
  let randomBin: string;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-gguf-'));
    randomBin = writeRandomLlama2c(path.join(dir, 'r256.bin'), { dim: 256, hiddenDim: 512, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 512, seqLen: 256 }, 5);
    for (const t of TYPES) {
      await toGguf(stories.v0, storiesFile(t), { type: t, tokenizer: stories.tokenizer });
      await toGguf(randomBin, randomFile(t), { type: t, tokenizer: stories.tokenizer });
    }
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  describe('stories260K in every type', () => {
    let text: string;
    let ref: Float32Array;
    before(async () => {
      text = await greedy(stories.v0, stories.tokenizer);
      ref = await logits(stories.v0);
    });
    it('F32: the same logits bit for bit, the same greedy text, the tokenizer from the metadata', async () => {
      const l = await logits(storiesFile('F32'));
      expect(Buffer.from(l.buffer).equals(Buffer.from(ref.buffer))).to.equal(true);
      expect(await greedy(storiesFile('F32'))).to.equal(text);
    });
    for (const t of ['F16', 'BF16', 'Q8_0'] as GgmlTypeName[])
      it(`${t}: the same greedy text as the .bin (48 tokens), logits within ${TOL[t]}`, async () => {
        expect(await greedy(storiesFile(t))).to.equal(text);
        expect(relRms(await logits(storiesFile(t)), ref)).to.be.below(TOL[t]);
      });
    for (const t of ['Q4_0', 'Q4_K', 'Q5_K', 'Q6_K'] as GgmlTypeName[])
      it(`${t}: loads and generates; logits within ${TOL[t]} (rows of 64 and 172 values fall back to Q8_0 / F16)`, async () => {
        expect(relRms(await logits(storiesFile(t)), ref)).to.be.below(TOL[t]);
        expect((await greedy(storiesFile(t))).length).to.be.greaterThan(20);
      });
    it('a Hugging Face folder converts with its q/k rows back in the interleaved layout: the .bin logits', async () => {
      const f = path.join(dir, 'hf-F32.gguf');
      await toGguf(stories.hf, f, { type: 'F32', tokenizer: stories.tokenizer });
      expect(relRms(await logits(f), ref)).to.be.below(1e-6);
    });
  });

  describe('a dim-256 model: every matrix in the K types', () => {
    let ref: Float32Array;
    before(async () => (ref = await logits(randomBin)));
    for (const t of TYPES)
      it(`${t}: logits within ${TOL[t]} of the f32 .bin, and every matrix stored as ${t}`, async () => {
        const h = readGgufHeader(randomFile(t));
        const types = new Set(h.tensors.filter((x) => x.ne.length === 2).map((x) => x.type));
        expect([...types]).to.have.length(1);
        const err = relRms(await logits(randomFile(t)), ref);
        if (t === 'F32') expect(err).to.equal(0);
        else expect(err).to.be.below(TOL[t]).and.above(0);
      });
  });

  describe('on cuda (a GPU, else the emulator)', () => {
    for (const t of ['Q4_K', 'Q6_K'] as GgmlTypeName[])
      it(`a ${t} model's logits (10-token prefill and one decode step) equal the CPU's`, async function () {
        if (!cudaBackend) this.skip();
        const b = cudaBackend!;
        const run = (device: 'cpu' | 'cuda') =>
          withBinding(b.binding, async () => {
            const m = await Llama.load(randomFile(t), { device });
            const c = m.newCache(16);
            try {
              const prefill = (await m.forward(IDS, c, { allLogits: true }).read()) as Float32Array;
              const step = (await m.forward([42], c).read()) as Float32Array;
              return [prefill, step];
            } finally {
              c.dispose();
              m.dispose();
            }
          });
        const [host, dev] = [await run('cpu'), await run('cuda')];
        expect(relRms(dev[0], host[0])).to.be.below(1e-5);
        // the CPU's decode rounds x to int8 for every quant type (llama.cpp's scheme); the GPU's does not
        expect(relRms(dev[1], host[1])).to.be.below(5e-2);
      });
  });

  describe('the tokenizer in the metadata', () => {
    it("tok512 converted to GGUF metadata gives tok512's ids on the test strings", async () => {
      const m = await Llama.load(storiesFile('Q8_0'), { device: 'cpu' });
      const fromMeta = m.loadTokenizer();
      m.dispose();
      const tok512 = loadTokenizer(stories.tokenizer);
      for (const s of ['Once upon a time', 'Hello world', ' Lily and Tom went to the park.\nThey played!', 'ö & 株式会社', '  two  spaces', ''])
        expect(fromMeta.encode(s, { bos: true }), JSON.stringify(s)).to.deep.equal(tok512.encode(s, { bos: true }));
    });
    it("llama.cpp's ggml-vocab-llama-spm.gguf: its 47 test vectors (llama.cpp's expected ids)", () => {
      const base = dataPath('llama-tokenizer', 'ggml-vocab-llama-spm.gguf');
      const tok = new SentencePieceTokenizer(ggufSentencePiece(readGgufHeader(base)));
      const inputs = fs.readFileSync(base + '.inp', 'utf8').split('\n__ggml_vocab_test__\n');
      const outputs = fs.readFileSync(base + '.out', 'utf8').split('\n');
      // the file ends with a separator too, which leaves a final empty input (an empty line in .out)
      expect(outputs.length).to.equal(inputs.length);
      expect(inputs.length).to.be.at.least(47);
      inputs.forEach((s, i) => {
        const want = outputs[i].trim() === '' ? [] : outputs[i].trim().split(/\s+/).map(Number);
        expect(tok.encode(s), `test string ${i} ${JSON.stringify(s)}`).to.deep.equal(want);
      });
    });
  });

  describe('commands over a Q4_K base', () => {
    it('generate needs no --tokenizer; train a few adapter steps and eval; the adapter file is the usual one', () => {
      const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
      const model = ['--model', randomFile('Q4_K'), '--device', 'cpu'];
      const g = run('generate', ...model, '--prompt', 'Once upon a time', '--max-tokens', '8', '--temperature', '0');
      expect(g.status, g.stderr).to.equal(0);
      const data = path.join(dir, 'train.jsonl');
      fs.writeFileSync(data, makeDemoDataset({ count: 16, seed: 1 }).map((r) => JSON.stringify(r)).join('\n') + '\n');
      const out = path.join(dir, 'run-q4k');
      const t = run('train', ...model, '--data', data, '--out', out, '--adapter-layers', '2', '--adapter-len', '4', '--batch-size', '4', '--max-steps', '3', '--lr', '1e-2', '--warmup-steps', '1', '--seed', '3');
      expect(t.status, t.stderr).to.equal(0);
      const adapter = path.join(out, 'adapter.safetensors');
      expect(fs.existsSync(adapter)).to.equal(true);
      const e = run('eval', ...model, '--data', data, '--adapter', adapter);
      expect(e.status, e.stderr).to.equal(0);
      const frozen = run('eval', ...model, '--data', data);
      const withA = JSON.parse(e.stdout), without = JSON.parse(frozen.stdout);
      expect(withA.loss).to.be.a('number');
      expect(withA.loss, 'three steps of training lower the loss').to.be.below(without.loss);
      // the same adapter file loads onto the f32 .bin of the same model
      const e2 = run('eval', '--model', randomBin, '--tokenizer', stories.tokenizer, '--device', 'cpu', '--data', data, '--adapter', adapter);
      expect(e2.status, e2.stderr).to.equal(0);
    });
  });

  describe('bad and hostile files are clear errors naming the file', () => {
    let good: Buffer;
    before(() => (good = fs.readFileSync(storiesFile('Q8_0'))));
    const write = (name: string, b: Buffer) => {
      const f = path.join(dir, name);
      fs.writeFileSync(f, b);
      return f;
    };
    const fails = async (f: string, re: RegExp) => {
      let err: Error | undefined;
      try {
        (await Llama.load(f, { device: 'cpu' })).dispose();
      } catch (e) {
        err = e as Error;
      }
      expect(err, `${path.basename(f)} loaded`).to.be.instanceOf(Error);
      expect(err!.message).to.include(path.basename(f));
      expect(err!.message).to.match(re);
    };
    /** Byte offset of tensor `name`'s info (its name string's length field). */
    const infoAt = (b: Buffer, name: string) => b.indexOf(Buffer.from(name)) - 8;

    it('truncated anywhere: header, tensor infos, data', async () => {
      const h = readGgufHeader(storiesFile('Q8_0'));
      for (const n of [3, 10, 30, 2000, h.dataStart - 5, good.length - 1])
        await fails(write(`trunc-${n}.gguf`, good.subarray(0, n)), /truncated|not a GGUF|ended early|more than the whole file/);
    });
    it('counts of 2^60 (tensors, metadata, array items, string lengths) before allocating', async () => {
      const b = Buffer.from(good);
      b.writeBigUInt64LE(2n ** 60n, 8);
      await fails(write('tensors-2-60.gguf', b), /tensor count 1152921504606846976 is above the supported maximum/);
      const c = Buffer.from(good);
      c.writeBigUInt64LE(2n ** 60n, 16);
      await fails(write('kv-2-60.gguf', c), /metadata count .* is above/);
      const d = Buffer.from(good);
      const at = d.indexOf(Buffer.from('tokenizer.ggml.tokens')) + 'tokenizer.ggml.tokens'.length + 8;
      d.writeBigUInt64LE(2n ** 60n, at);
      await fails(write('array-2-60.gguf', d), /item count .* is above/);
      const e = Buffer.from(good);
      e.writeBigUInt64LE(2n ** 60n, 24); // the first key's length
      await fails(write('string-2-60.gguf', e), /length .* is above/);
      const f = Buffer.from(good);
      f.writeBigUInt64LE(BigInt(GGUF_LIMITS.arrayItems), at); // allowed, but far more than the file holds
      await fails(write('array-big.gguf', f), /truncated or does not match: metadata tokenizer.ggml.tokens: 67108864 items implies/);
    });
    it('a tensor whose size or offset lies', async () => {
      const b = Buffer.from(good);
      const at = infoAt(b, 'blk.0.attn_q.weight');
      const ne0 = at + 8 + 'blk.0.attn_q.weight'.length + 4;
      b.writeBigUInt64LE(64n * 4096n, ne0 + 8); // rows
      await fails(write('lying-size.gguf', b), /blk\.0\.attn_q\.weight .*(needs|truncated)/);
      const c = Buffer.from(good);
      const off = ne0 + 16 + 4;
      c.writeBigUInt64LE(BigInt(good.length) - 32n, off);
      await fails(write('lying-offset.gguf', c), /blk\.0\.attn_q\.weight .*(ends at|overlap)/);
      const d = Buffer.from(good);
      d.writeBigUInt64LE(c.readBigUInt64LE(off) + 1n, off);
      d.writeBigUInt64LE(33n, off);
      await fails(write('unaligned.gguf', d), /offset 33 is not a multiple of the alignment 32/);
      const e = Buffer.from(good);
      e.writeBigUInt64LE(0n, off);
      await fails(write('overlap.gguf', e), /overlap/);
    });
    it('unknown and unsupported tensor types, bad version, bad alignment, wrong architecture', async () => {
      const b = Buffer.from(good);
      const at = infoAt(b, 'blk.0.attn_q.weight');
      const typeAt = at + 8 + 'blk.0.attn_q.weight'.length + 4 + 16;
      b.writeUInt32LE(77, typeAt);
      await fails(write('type-77.gguf', b), /ggml type id 77 \(unknown\)/);
      b.writeUInt32LE(10, typeAt);
      await fails(write('type-q2k.gguf', b), /ggml type Q2_K; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K/);
      const v = Buffer.from(good);
      v.writeUInt32LE(1, 4);
      await fails(write('v1.gguf', v), /GGUF version 1 is not supported/);
      const f = path.join(dir, 'align.gguf');
      writeGguf(f, [['general.architecture', { type: 'string', value: 'llama' }], ['general.alignment', { type: 'u32', value: 24 }]], []);
      await fails(f, /general.alignment 24 is not a power of two/);
      const g = path.join(dir, 'gpt2.gguf');
      writeGguf(g, [['general.architecture', { type: 'string', value: 'gpt2' }]], []);
      await fails(g, /architecture "gpt2" is not supported/);
    });
    it('a NaN scale in a quantized block fails the load naming the tensor', async () => {
      const h = readGgufHeader(storiesFile('Q8_0'));
      const t = h.tensors.find((x) => x.name === 'blk.1.attn_k.weight')!;
      const b = Buffer.from(good);
      b.writeUInt16LE(0x7e00, h.dataStart + t.offset + 34 * 3); // block 3's fp16 scale: NaN
      await fails(write('nan-scale.gguf', b), /blk\.1\.attn_k\.weight.*non-finite scale/);
    });
  });

  it('fuzz: mutated GGUF files in child processes, no crash, every failure a clear error', function () {
    this.timeout(90_000);
    const worker = path.join(__dirname, 'util', 'gguf-fuzz-worker.js');
    for (const [seed, base] of [[2601, storiesFile('Q8_0')], [2602, randomFile('Q4_K')]] as const) {
      const r = spawnSync(process.execPath, [worker, base, String(seed), '300', path.join(dir, `fuzz-${seed}`)], { encoding: 'utf8', timeout: 80_000 });
      const lines = r.stdout.trim().split('\n');
      const last = lines[lines.length - 1];
      expect(r.signal, `seed ${seed} crashed with ${r.signal} at ${last}: ${r.stderr}`).to.equal(null);
      expect(r.status, `seed ${seed} exited ${r.status} at ${last}: ${r.stderr}`).to.equal(0);
      const summary = JSON.parse(last);
      expect(summary.cases).to.equal(300);
      expect(summary.bad, summary.bad.join('\n')).to.deep.equal([]);
      expect(summary.errors).to.be.greaterThan(60);
    }
  });
});
