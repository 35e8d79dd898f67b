// Checkpoint loaders (llama2.c v0/v1, Hugging Face safetensors), the llama2.c -> HF converter, and
// their failures. Reference data: ../shared/data/stories260K{,-hf}.
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { dataPath } from './util/paths';
import { Tensor } from '../lib/native';
import { loadCheckpoint } from '../lib/model/load';
import { Checkpoint, allTensors } from '../lib/model/weights';
import { readLlama2cHeader } from '../lib/model/llama2c';
import { readSafetensorsHeader, writeSafetensors } from '../lib/model/safetensors';
import { convertLlama2cToHf, permuteRowsForHf } from '../tools/llama2c-to-hf';

const V0 = dataPath('stories260K', 'stories260K.bin');
const V1 = dataPath('stories260K', 'stories260K_v1.bin');
const HF = dataPath('stories260K-hf');

async function f32(t: Tensor): Promise<Float32Array> {
  return (await t.read()) as Float32Array;
}

/** Bitwise equality (so -0 != 0 and NaN payloads count); reports the first difference. */
function expectSameBits(a: Float32Array, b: Float32Array, what: string): void {
  expect(a.length, `${what}: length`).to.equal(b.length);
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++)
    if (ua[i] !== ub[i]) expect.fail(`${what}: element ${i} differs: ${a[i]} vs ${b[i]}`);
}

/** f32 -> bf16 (round to nearest, ties to even) -> f32, for finite values. */
function bf16Round(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const o = new Uint32Array(out.buffer);
  for (let i = 0; i < u.length; i++) o[i] = ((u[i] + 0x7fff + ((u[i] >>> 16) & 1)) & 0xffff0000) >>> 0;
  return out;
}

/** Round half to even. */
function rne(v: number): number {
  const f = Math.floor(v);
  const r = v - f;
  return r > 0.5 ? f + 1 : r < 0.5 ? f : f % 2 === 0 ? f : f + 1;
}

/** f32 -> IEEE half bits (round to nearest even), for finite values below 65504. */
function f16Bits(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a < 2 ** -14) return sign | rne(a / 2 ** -24); // subnormal (1024 = the smallest normal)
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  else if (2 ** (e + 1) <= a) e++;
  let m = rne((a / 2 ** e - 1) * 1024);
  if (m === 1024) {
    m = 0;
    e++;
  }
  return sign | ((e + 15) << 10) | m;
}

function f16Value(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  return s * (e === 0 ? m * 2 ** -24 : (1 + m / 1024) * 2 ** (e - 15));
}

/** Runs `fn` and returns its error message, failing the test if it does not throw. */
async function errorOf(fn: () => unknown): Promise<string> {
  try {
    await fn();
  } catch (e) {
    expect(e).to.be.instanceOf(Error);
    return (e as Error).message;
  }
  return expect.fail('expected an error');
}

function expectStories260K(ck: Checkpoint): void {
  const c = ck.config;
  expect([c.dim, c.hiddenDim, c.nLayers, c.nHeads, c.nKvHeads, c.vocabSize, c.maxSeqLen]).to.deep.equal([64, 172, 5, 8, 4, 512, 512]);
  expect(c.tiedEmbeddings).to.equal(true);
  expect(c.normEps).to.equal(1e-5);
  expect(c.ropeTheta).to.equal(10000);
  const w = ck.weights;
  expect(w.classifier).to.equal(w.embedding); // the same object when tied
  expect(w.layers).to.have.length(5);
  expect(w.embedding.shape).to.deep.equal([512, 64]);
  expect(w.finalNorm.shape).to.deep.equal([64]);
  const l = w.layers[0];
  expect(l.wq.shape).to.deep.equal([64, 64]);
  expect(l.wk.shape).to.deep.equal([32, 64]);
  expect(l.wv.shape).to.deep.equal([32, 64]);
  expect(l.wo.shape).to.deep.equal([64, 64]);
  expect(l.w1.shape).to.deep.equal([172, 64]);
  expect(l.w2.shape).to.deep.equal([64, 172]);
  expect(l.w3.shape).to.deep.equal([172, 64]);
  expect(l.attnNorm.shape).to.deep.equal([64]);
  expect(l.ffnNorm.shape).to.deep.equal([64]);
}

describe('checkpoint loaders', function () {
  let tmp: string;
  const opened: Checkpoint[] = [];
  const load = async (p: string, opts?: { dtype?: 'f32' | 'bf16' }) => {
    const ck = await loadCheckpoint(p, opts);
    opened.push(ck);
    return ck;
  };

  before(function () {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llama-adapter-loaders-'));
  });
  after(function () {
    for (const ck of opened) ck.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  /** A fresh folder under tmp. */
  let n = 0;
  const sub = (name: string) => {
    const d = path.join(tmp, `${n++}-${name}`);
    fs.mkdirSync(d);
    return d;
  };
  /** A copy of the HF folder whose config.json has been edited. */
  const hfCopy = (name: string, edit?: (cfg: Record<string, unknown>) => void) => {
    const d = sub(name);
    for (const f of fs.readdirSync(HF)) fs.copyFileSync(path.join(HF, f), path.join(d, f));
    if (edit) {
      const p = path.join(d, 'config.json');
      fs.chmodSync(p, 0o644);
      const cfg = JSON.parse(fs.readFileSync(p, 'utf8'));
      edit(cfg);
      fs.writeFileSync(p, JSON.stringify(cfg));
    }
    return d;
  };

  describe('llama2.c', function () {
    it('loads stories260K v0 and v1 with the expected config and identical weights', async function () {
      const a = await load(V0);
      const b = await load(V1);
      expect(a.format).to.equal('llama2c-v0');
      expect(b.format).to.equal('llama2c-v1');
      expectStories260K(a);
      expectStories260K(b);
      for (const ck of [a, b]) {
        expect(ck.config.ropeLayout).to.equal('interleaved');
        expect(ck.tokenizerPath).to.equal(dataPath('stories260K', 'tok512.bin'));
        expect(ck.weights.embedding.dtype).to.equal('f32');
      }
      expectSameBits(await f32(a.weights.embedding), await f32(b.weights.embedding), 'embedding');
      expectSameBits(await f32(a.weights.layers[2].wq), await f32(b.weights.layers[2].wq), 'layers.2.wq');
      expectSameBits(await f32(a.weights.layers[4].w2), await f32(b.weights.layers[4].w2), 'layers.4.w2');
      expectSameBits(await f32(a.weights.layers[1].ffnNorm), await f32(b.weights.layers[1].ffnNorm), 'layers.1.ffnNorm');
      expectSameBits(await f32(a.weights.finalNorm), await f32(b.weights.finalNorm), 'finalNorm');
      // Real weights, not zeros: the norms of a trained model are far from 0.
      expect((await f32(a.weights.finalNorm)).some((x) => Math.abs(x) > 0.1)).to.equal(true);
    });

    it('dispose frees every tensor and is idempotent', async function () {
      const ck = await loadCheckpoint(V0);
      const ts = allTensors(ck.weights);
      expect(ts).to.have.length(1 + 5 * 9 + 1);
      ck.dispose();
      ck.dispose();
      for (const t of ts) expect(t.disposed).to.equal(true);
    });

    it('loads bf16 as round-to-nearest-even of the f32 values, norms stay f32', async function () {
      const a = await load(V0);
      const b = await load(V0, { dtype: 'bf16' });
      expect(b.weights.embedding.dtype).to.equal('bf16');
      expect(b.weights.layers[0].wq.dtype).to.equal('bf16');
      expect(b.weights.layers[3].w2.dtype).to.equal('bf16');
      expect(b.weights.layers[0].attnNorm.dtype).to.equal('f32');
      expect(b.weights.finalNorm.dtype).to.equal('f32');
      for (const [x, y, what] of [
        [a.weights.embedding, b.weights.embedding, 'embedding'],
        [a.weights.layers[0].wq, b.weights.layers[0].wq, 'layers.0.wq'],
        [a.weights.layers[3].w2, b.weights.layers[3].w2, 'layers.3.w2'],
      ] as [Tensor, Tensor, string][]) {
        const ref = await f32(x);
        const got = await f32(y);
        expectSameBits(got, bf16Round(ref), what);
        // the rounding is not a no-op on these weights
        expect(got.some((v, i) => v !== ref[i])).to.equal(true);
      }
      expectSameBits(await f32(b.weights.finalNorm), await f32(a.weights.finalNorm), 'finalNorm');
      // bf16 rounding itself: ties go to even, above the tie rounds up
      const tie = new Float32Array(new Uint32Array([0x3f808000, 0x3f818000, 0x3f808001]).buffer);
      expect(Array.from(new Uint32Array(bf16Round(tie).buffer))).to.deep.equal([0x3f800000, 0x3f820000, 0x3f810000]);
    });

    it('reads the header and layout of both versions', function () {
      const h0 = readLlama2cHeader(V0);
      const h1 = readLlama2cHeader(V1);
      expect(h0.version).to.equal(0);
      expect(h1.version).to.equal(1);
      expect(h0.fileSize).to.equal(1056540);
      expect(h1.fileSize).to.equal(1040384);
      expect(h0.slots.find((s) => s.name === 'embedding')!.byteOffset).to.equal(28);
      expect(h1.slots[0].name).to.equal('layers.0.attnNorm');
      expect(h1.slots[0].byteOffset).to.equal(256);
    });
  });

  describe('untied classifier', function () {
    it('v0 (negative vocab), v1 (shared 0) and the converted HF folder load lm_head separately', async function () {
      // stories260K with an extra classifier: the embedding negated, so it differs from it
      const emb = readLlama2cHeader(V0).slots.find((s) => s.name === 'embedding')!;
      const v0 = fs.readFileSync(V0);
      const cls = Buffer.from(v0.subarray(emb.byteOffset, emb.byteOffset + 512 * 64 * 4));
      for (let i = 0; i < cls.length; i += 4) cls.writeFloatLE(-cls.readFloatLE(i), i);
      const d = sub('untied');
      const p0 = path.join(d, 'untied-v0.bin');
      const b0 = Buffer.concat([v0, cls]);
      b0.writeInt32LE(-512, 20);
      fs.writeFileSync(p0, b0);
      const p1 = path.join(d, 'untied-v1.bin');
      const b1 = Buffer.concat([fs.readFileSync(V1), cls]);
      b1.writeUInt8(0, 36);
      fs.writeFileSync(p1, b1);
      const out = path.join(d, 'hf');
      convertLlama2cToHf(p0, out, { shards: 2 });
      const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
      expect(cfg.tie_word_embeddings).to.equal(false);
      const want = new Float32Array(cls.buffer.slice(cls.byteOffset, cls.byteOffset + cls.length));
      const embRef = await f32((await load(V0)).weights.embedding);
      for (const p of [p0, p1, out]) {
        const ck = await load(p);
        expect(ck.config.tiedEmbeddings, p).to.equal(false);
        expect(ck.config.vocabSize).to.equal(512);
        expect(ck.weights.classifier).to.not.equal(ck.weights.embedding);
        expect(ck.weights.classifier.shape).to.deep.equal([512, 64]);
        expectSameBits(await f32(ck.weights.classifier), want, `${p} classifier`);
        expectSameBits(await f32(ck.weights.embedding), embRef, `${p} embedding`);
        expect(allTensors(ck.weights)).to.have.length(1 + 5 * 9 + 2);
      }
      // a tied header on the same bytes leaves the classifier over: the size check catches it
      const p2 = path.join(d, 'tied-but-long.bin');
      fs.writeFileSync(p2, Buffer.concat([v0, cls]));
      expect(await errorOf(() => loadCheckpoint(p2))).to.match(/131072 bytes more than/);
    });
  });

  describe('Hugging Face', function () {
    it('loads stories260K-hf: config, tied, permuted q/k rows, same embedding as v0', async function () {
      const hf = await load(HF);
      const v0 = await load(V0);
      expect(hf.format).to.equal('hf');
      expectStories260K(hf);
      expect(hf.config.ropeLayout).to.equal('half');
      expect(hf.tokenizerPath).to.equal(undefined);
      expectSameBits(await f32(hf.weights.embedding), await f32(v0.weights.embedding), 'embedding');
      for (let l = 0; l < 5; l++) {
        const q0 = await f32(v0.weights.layers[l].wq);
        const qh = await f32(hf.weights.layers[l].wq);
        // HF row h*d + i is Meta row h*d + 2i; row h*d + d/2 + i is Meta row h*d + 2i + 1
        const d = 8;
        for (let h = 0; h < 8; h++)
          for (let i = 0; i < d / 2; i++) {
            expectSameBits(qh.subarray((h * d + i) * 64, (h * d + i + 1) * 64), q0.subarray((h * d + 2 * i) * 64, (h * d + 2 * i + 1) * 64), `wq ${l} ${h} ${i}`);
            expectSameBits(
              qh.subarray((h * d + d / 2 + i) * 64, (h * d + d / 2 + i + 1) * 64),
              q0.subarray((h * d + 2 * i + 1) * 64, (h * d + 2 * i + 2) * 64),
              `wq ${l} ${h} ${i + d / 2}`,
            );
          }
        expectSameBits(qh, permuteRowsForHf(q0, 8, 8, 64), `layers.${l}.wq`);
        expectSameBits(await f32(hf.weights.layers[l].wk), permuteRowsForHf(await f32(v0.weights.layers[l].wk), 4, 8, 64), `layers.${l}.wk`);
        expectSameBits(await f32(hf.weights.layers[l].wv), await f32(v0.weights.layers[l].wv), `layers.${l}.wv`);
        expectSameBits(await f32(hf.weights.layers[l].w1), await f32(v0.weights.layers[l].w1), `layers.${l}.w1`);
        expectSameBits(await f32(hf.weights.layers[l].w2), await f32(v0.weights.layers[l].w2), `layers.${l}.w2`);
      }
      expectSameBits(await f32(hf.weights.finalNorm), await f32(v0.weights.finalNorm), 'finalNorm');
    });

    it('loads F16 and BF16 tensors (mixed in one file) as f32 or bf16', async function () {
      // stories260K-hf with the embedding in F16, the other matrices in BF16, the norms in F32
      const src = readSafetensorsHeader(path.join(HF, 'model.safetensors'));
      const raw = fs.readFileSync(path.join(HF, 'model.safetensors'));
      const header: Record<string, unknown> = {};
      const parts: Buffer[] = [];
      let off = 0;
      for (const [name, e] of src.tensors) {
        const vals = new Float32Array(raw.buffer.slice(raw.byteOffset + e.byteOffset, raw.byteOffset + e.byteOffset + e.byteLength));
        let buf: Buffer;
        let dtype: string;
        if (e.shape.length === 1) {
          dtype = 'F32';
          buf = Buffer.from(vals.buffer);
        } else if (name === 'model.embed_tokens.weight') {
          dtype = 'F16';
          buf = Buffer.alloc(2 * vals.length);
          vals.forEach((v, i) => buf.writeUInt16LE(f16Bits(v), 2 * i));
        } else {
          dtype = 'BF16';
          const r = new Uint32Array(bf16Round(vals).buffer);
          buf = Buffer.alloc(2 * vals.length);
          r.forEach((u, i) => buf.writeUInt16LE(u >>> 16, 2 * i));
        }
        header[name] = { dtype, shape: e.shape, data_offsets: [off, off + buf.length] };
        parts.push(buf);
        off += buf.length;
      }
      const d = hfCopy('mixed');
      const json = Buffer.from(JSON.stringify(header));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(json.length));
      fs.rmSync(path.join(d, 'model.safetensors'));
      fs.writeFileSync(path.join(d, 'model.safetensors'), Buffer.concat([len, json, ...parts]));

      const ref = await load(HF);
      const embRef = await f32(ref.weights.embedding);
      const embF16 = Float32Array.from(embRef, (v) => f16Value(f16Bits(v)));
      expect(embF16.some((v, i) => v !== embRef[i])).to.equal(true); // the f16 rounding shows
      const a = await load(d);
      expect(a.weights.embedding.dtype).to.equal('f32');
      expectSameBits(await f32(a.weights.embedding), embF16, 'f16 embedding as f32');
      expectSameBits(await f32(a.weights.layers[2].wq), bf16Round(await f32(ref.weights.layers[2].wq)), 'bf16 wq as f32');
      expectSameBits(await f32(a.weights.layers[2].ffnNorm), await f32(ref.weights.layers[2].ffnNorm), 'f32 norm');
      const b = await load(d, { dtype: 'bf16' });
      expect(b.weights.embedding.dtype).to.equal('bf16');
      expect(b.weights.layers[2].ffnNorm.dtype).to.equal('f32');
      expectSameBits(await f32(b.weights.embedding), bf16Round(embF16), 'f16 embedding as bf16');
      expectSameBits(await f32(b.weights.layers[4].w3), bf16Round(await f32(ref.weights.layers[4].w3)), 'bf16 w3 as bf16');
    });

    it('parses the safetensors header with absolute offsets', function () {
      const h = readSafetensorsHeader(path.join(HF, 'model.safetensors'));
      expect(h.metadata).to.deep.equal({ format: 'pt' });
      expect(h.tensors.size).to.equal(47);
      const e = h.tensors.get('model.embed_tokens.weight')!;
      expect(e).to.deep.equal({ dtype: 'F32', shape: [512, 64], byteOffset: 8 + 4856, byteLength: 131072 });
    });
  });

  describe('llama2c-to-hf converter', function () {
    let ref: Checkpoint;
    before(async function () {
      ref = await load(HF);
    });

    async function expectSameAsRef(dir: string): Promise<void> {
      const ck = await load(dir);
      expect(ck.format).to.equal('hf');
      expect(ck.config).to.deep.equal(ref.config);
      const a = allTensors(ck.weights);
      const b = allTensors(ref.weights);
      expect(a.length).to.equal(b.length);
      for (let i = 0; i < a.length; i++) {
        expect(a[i].shape).to.deep.equal(b[i].shape);
        expectSameBits(await f32(a[i]), await f32(b[i]), `tensor ${i}`);
      }
    }

    it('writes a single-file folder equal to stories260K-hf', async function () {
      const out = path.join(tmp, 'conv1');
      const r = convertLlama2cToHf(V0, out);
      expect(r.files).to.include.members(['model.safetensors', 'config.json', 'tok512.bin']);
      await expectSameAsRef(out);
      const ck = opened[opened.length - 1];
      expect(ck.tokenizerPath).to.equal(path.join(out, 'tok512.bin'));
      // the same header layout as the reference file, so the same bytes
      expect(Buffer.compare(fs.readFileSync(path.join(out, 'model.safetensors')), fs.readFileSync(path.join(HF, 'model.safetensors')))).to.equal(0);
      // refuses to overwrite without being asked
      expect(await errorOf(() => convertLlama2cToHf(V0, out))).to.match(/already holds a model.*overwrite/);
      convertLlama2cToHf(V1, out, { overwrite: true });
      await expectSameAsRef(out);
    });

    it('writes 3 shards + index equal to stories260K-hf', async function () {
      const out = path.join(tmp, 'conv3');
      const r = convertLlama2cToHf(V1, out, { shards: 3 });
      const shards = ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors'];
      expect(r.files).to.include.members([...shards, 'model.safetensors.index.json', 'config.json']);
      expect(fs.existsSync(path.join(out, 'model.safetensors'))).to.equal(false);
      const index = JSON.parse(fs.readFileSync(path.join(out, 'model.safetensors.index.json'), 'utf8'));
      expect(new Set(Object.values(index.weight_map))).to.deep.equal(new Set(shards));
      expect(Object.keys(index.weight_map)).to.have.length(47);
      expect(index.metadata.total_size).to.equal(260032 * 4);
      await expectSameAsRef(out);
      // no temporary files left behind
      expect(fs.readdirSync(out).filter((f) => f.includes('tmp'))).to.deep.equal([]);
    });

    it('rejects a bad shard count', async function () {
      expect(await errorOf(() => convertLlama2cToHf(V0, path.join(tmp, 'conv0'), { shards: 0 }))).to.match(/shards must be/);
    });
  });

  describe('safetensors writer', function () {
    it('round-trips, with metadata and aligned data', function () {
      const p = path.join(tmp, 'rt.safetensors');
      const a = new Float32Array([1, -2.5, 3e-8, 4]);
      writeSafetensors(p, [
        { name: 'a', dtype: 'F32', shape: [2, 2], data: a },
        { name: 'b', dtype: 'F32', shape: [1, 3, 1, 1], data: () => new Float32Array([0, 0.5, -1]) },
      ], { adapter_len: '10' });
      const h = readSafetensorsHeader(p);
      expect(h.metadata).to.deep.equal({ adapter_len: '10' });
      const ea = h.tensors.get('a')!;
      const eb = h.tensors.get('b')!;
      expect(ea.byteOffset % 8).to.equal(0);
      expect(eb.shape).to.deep.equal([1, 3, 1, 1]);
      const buf = fs.readFileSync(p);
      expect(Array.from(new Float32Array(buf.buffer.slice(buf.byteOffset + ea.byteOffset, buf.byteOffset + ea.byteOffset + 16)))).to.deep.equal(Array.from(a));
      expect(buf.readFloatLE(eb.byteOffset + 4)).to.equal(0.5);
    });

    it('leaves nothing behind when it fails', async function () {
      const d = sub('writefail');
      const p = path.join(d, 'x.safetensors');
      const msg = await errorOf(() =>
        writeSafetensors(p, [
          { name: 'a', dtype: 'F32', shape: [2], data: new Float32Array(2) },
          { name: 'b', dtype: 'F32', shape: [3], data: new Float32Array(2) },
        ]),
      );
      expect(msg).to.match(/b: shape \[3\] needs 3 floats/);
      expect(fs.readdirSync(d)).to.deep.equal([]);
    });
  });

  describe('bad inputs give clear errors', function () {
    const bytesV0 = () => fs.readFileSync(V0);
    const bytesV1 = () => fs.readFileSync(V1);
    const write = (name: string, b: Buffer) => {
      const p = path.join(tmp, name);
      fs.writeFileSync(p, b);
      return p;
    };

    it('a truncated v0 .bin', async function () {
      const p = write('trunc-v0.bin', bytesV0().subarray(0, 1056540 - 100));
      const msg = await errorOf(() => loadCheckpoint(p));
      expect(msg).to.include(p).and.match(/truncated/).and.include('1056540').and.include('1056440');
      const tiny = write('tiny.bin', bytesV0().subarray(0, 20));
      expect(await errorOf(() => loadCheckpoint(tiny))).to.include(tiny).and.match(/truncated/);
    });

    it('a truncated v1 .bin', async function () {
      const p = write('trunc-v1.bin', bytesV1().subarray(0, 500000));
      const msg = await errorOf(() => loadCheckpoint(p));
      expect(msg).to.include(p).and.match(/truncated/).and.include('v1');
      const hdr = write('trunc-v1-header.bin', bytesV1().subarray(0, 100));
      expect(await errorOf(() => loadCheckpoint(hdr))).to.include(hdr).and.match(/truncated.*256-byte/);
    });

    it('trailing bytes after the weights', async function () {
      const p = write('long-v0.bin', Buffer.concat([bytesV0(), Buffer.alloc(4)]));
      expect(await errorOf(() => loadCheckpoint(p))).to.include(p).and.match(/4 bytes more than/);
    });

    it('a wrong v1 magic', async function () {
      const b = bytesV1();
      b.writeUInt32LE(0x616b3433, 0);
      const p = write('magic.bin', b);
      const msg = await errorOf(() => loadCheckpoint(p));
      expect(msg).to.include(p).and.match(/not a valid llama2\.c/).and.match(/magic/);
    });

    it('a wrong v1 version', async function () {
      const b = bytesV1();
      b.writeInt32LE(2, 4);
      const p = write('version.bin', b);
      expect(await errorOf(() => loadCheckpoint(p))).to.include(p).and.match(/unsupported llama2\.c checkpoint version 2/);
    });

    it('zero or negative dims in the header, heads not dividing', async function () {
      const cases: [string, number, number, RegExp][] = [
        ['dim0-v0.bin', 0, 0, /dim must be a positive integer, got 0/],
        ['layers-neg-v0.bin', 2, -5, /n_layers must be a positive integer, got -5/],
        ['heads-v0.bin', 3, 7, /n_heads 7 does not divide dim 64/],
        ['kv-v0.bin', 4, 3, /n_kv_heads 3 does not divide n_heads 8/],
        ['seq0-v0.bin', 6, 0, /seq_len must be a positive integer, got 0/],
      ];
      for (const [name, field, value, re] of cases) {
        const b = bytesV0();
        b.writeInt32LE(value, 4 * field);
        const p = write(name, b);
        expect(await errorOf(() => loadCheckpoint(p))).to.include(p).and.match(/impossible header/).and.match(re);
      }
      const b = bytesV1();
      b.writeInt32LE(-64, 8); // dim in the v1 params
      const p = write('dim-neg-v1.bin', b);
      expect(await errorOf(() => loadCheckpoint(p))).to.match(/v1 checkpoint: impossible header.*dim must be a positive integer, got -64/);
    });

    it('NaN weights fail the load, naming the tensor, and do not poison later loads', async function () {
      const h = readLlama2cHeader(V0);
      const slot = h.slots.find((s) => s.name === 'layers.1.wq')!;
      const b = bytesV0();
      b.writeFloatLE(NaN, slot.byteOffset + 4 * 100);
      const p = write('nan.bin', b);
      const msg = await errorOf(() => loadCheckpoint(p));
      expect(msg).to.include(p).and.include('layers.1.wq').and.match(/non-finite|NaN/).and.match(/element 100\b/);
      // bf16 conversion path too, and an Inf in a norm
      const b2 = bytesV0();
      b2.writeFloatLE(-Infinity, h.slots.find((s) => s.name === 'finalNorm')!.byteOffset);
      const p2 = write('inf.bin', b2);
      expect(await errorOf(() => loadCheckpoint(p2, { dtype: 'bf16' }))).to.include('finalNorm').and.match(/non-finite/);
      // the error was reported once; the next load is clean
      const ok = await load(V0);
      expect(ok.config.dim).to.equal(64);
    });

    it('a nonexistent path', async function () {
      const p = path.join(tmp, 'no-such-model.bin');
      expect(await errorOf(() => loadCheckpoint(p))).to.include(p).and.match(/not found|does not exist/);
    });

    it('a directory without config.json', async function () {
      const d = sub('empty');
      expect(await errorOf(() => loadCheckpoint(d))).to.include(d).and.match(/without config\.json/);
      const f = path.join(HF, 'model.safetensors');
      expect(await errorOf(() => loadCheckpoint(f))).to.match(/pass the Hugging Face model folder/);
    });

    it('an HF tensor whose shape contradicts config.json', async function () {
      const d = hfCopy('kvheads', (c) => {
        c.num_key_value_heads = 8;
      });
      const msg = await errorOf(() => loadCheckpoint(d));
      expect(msg).to.include('model.layers.0.self_attn.k_proj.weight').and.include('[32, 64]').and.include('[64, 64]');
      const d2 = hfCopy('ffn', (c) => {
        c.intermediate_size = 170;
      });
      expect(await errorOf(() => loadCheckpoint(d2))).to.include('model.layers.0.mlp.gate_proj.weight').and.include('[172, 64]').and.include('[170, 64]');
    });

    it('config.json with a missing or invalid key', async function () {
      const d = hfCopy('nokey', (c) => {
        delete c.hidden_size;
      });
      expect(await errorOf(() => loadCheckpoint(d))).to.include('config.json').and.include('missing key "hidden_size"');
      const d2 = hfCopy('badkey', (c) => {
        c.num_hidden_layers = 2.5;
      });
      expect(await errorOf(() => loadCheckpoint(d2))).to.match(/"num_hidden_layers" must be a positive integer, got 2\.5/);
      const d3 = hfCopy('headdim', (c) => {
        c.head_dim = 16;
      });
      expect(await errorOf(() => loadCheckpoint(d3))).to.match(/head_dim 16 must equal hidden_size \/ num_attention_heads = 8/);
      const d4 = hfCopy('badjson');
      fs.chmodSync(path.join(d4, 'config.json'), 0o644);
      fs.writeFileSync(path.join(d4, 'config.json'), '{"hidden_size": 64,');
      expect(await errorOf(() => loadCheckpoint(d4))).to.match(/config\.json is not valid JSON/);
    });

    it('an untied config without lm_head.weight', async function () {
      const d = hfCopy('untied', (c) => {
        c.tie_word_embeddings = false;
      });
      expect(await errorOf(() => loadCheckpoint(d))).to.match(/missing tensor lm_head\.weight/);
    });

    it('a missing shard', async function () {
      const out = path.join(tmp, 'missing-shard');
      convertLlama2cToHf(V0, out, { shards: 3 });
      fs.rmSync(path.join(out, 'model-00002-of-00003.safetensors'));
      const msg = await errorOf(() => loadCheckpoint(out));
      expect(msg).to.include(out).and.match(/missing shard file model-00002-of-00003\.safetensors/);
    });

    it('a folder without weights', async function () {
      const d = sub('noweights');
      fs.copyFileSync(path.join(HF, 'config.json'), path.join(d, 'config.json'));
      fs.writeFileSync(path.join(d, 'pytorch_model.bin'), '');
      expect(await errorOf(() => loadCheckpoint(d))).to.match(/neither model\.safetensors nor model\.safetensors\.index\.json.*pytorch_model\.bin/);
    });

    /** A safetensors file from a raw JSON header and `dataBytes` bytes of zeros. */
    const rawSafetensors = (p: string, header: unknown, dataBytes: number) => {
      const json = Buffer.from(JSON.stringify(header));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(json.length));
      fs.writeFileSync(p, Buffer.concat([len, json, Buffer.alloc(dataBytes)]));
    };

    it('a safetensors header with offsets past the end', async function () {
      const d = sub('past-end');
      fs.copyFileSync(path.join(HF, 'config.json'), path.join(d, 'config.json'));
      const p = path.join(d, 'model.safetensors');
      rawSafetensors(p, { 'model.embed_tokens.weight': { dtype: 'F32', shape: [512, 64], data_offsets: [0, 131072] } }, 1000);
      expect(() => readSafetensorsHeader(p)).to.throw(/model\.embed_tokens\.weight.*past the end of the file/);
      expect(await errorOf(() => loadCheckpoint(d))).to.include(p).and.match(/past the end/);
      // a header length beyond the file
      const q = path.join(tmp, 'hdrlen.safetensors');
      const b = Buffer.alloc(16);
      b.writeBigUInt64LE(1000n);
      fs.writeFileSync(q, b);
      expect(() => readSafetensorsHeader(q)).to.throw(/header length 1000/);
    });

    it('other safetensors header faults', function () {
      const p = path.join(tmp, 'faults.safetensors');
      rawSafetensors(p, { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, b: { dtype: 'F32', shape: [4], data_offsets: [8, 24] } }, 24);
      expect(() => readSafetensorsHeader(p)).to.throw(/tensors a \[0, 16\) and b \[8, 24\) overlap/);
      rawSafetensors(p, { a: { dtype: 'F32', shape: [3], data_offsets: [0, 16] } }, 16);
      expect(() => readSafetensorsHeader(p)).to.throw(/tensor a: F32\[3\] needs 12 bytes/);
      rawSafetensors(p, { pos: { dtype: 'I64', shape: [2], data_offsets: [0, 16] } }, 16);
      expect(() => readSafetensorsHeader(p)).to.throw(/tensor pos: dtype I64 is not supported/);
      expect(readSafetensorsHeader(p, { skipUnsupported: true }).skipped.get('pos')).to.equal('I64');
      rawSafetensors(p, { a: { dtype: 'Q4', shape: [2], data_offsets: [0, 1] } }, 16);
      expect(() => readSafetensorsHeader(p)).to.throw(/tensor a: unknown dtype "Q4"/);
      fs.writeFileSync(p, Buffer.from([1, 0]));
      expect(() => readSafetensorsHeader(p)).to.throw(/not a safetensors file/);
    });
  });
});
