// Features files (SPEC §7): the reader checks every tensor and reads values on demand; the writer
// streams to a temporary file. Cross-checked against files written by hand (header bytes built
// here, independently of the writer) and against the shared Fashion-MNIST features file.
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FeaturesFile, FeaturesWriter, writeFeatures } from '../lib/data/features';
import { dataPath } from './util/paths';

let tmp: string;
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'llama-adapter-features-'));
});
after(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

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

/** A safetensors file built byte by byte: header JSON as given, then the raw data. */
function rawFile(name: string, header: Record<string, unknown>, data: Buffer): string {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const p = path.join(tmp, name);
  fs.writeFileSync(p, Buffer.concat([len, json, data]));
  return p;
}

const f32 = (xs: number[]): Buffer => Buffer.from(new Float32Array(xs).buffer);

describe('features files (SPEC §7)', () => {
  it('reads [M, D] tensors written by hand, lazily, by key', () => {
    const p = rawFile(
      'hand.safetensors',
      {
        __metadata__: { encoder: 'hand' },
        'b/2.png': { dtype: 'F32', shape: [2, 3], data_offsets: [24, 48] },
        'a/1.png': { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] },
      },
      f32([1, 2, 3, 4, 5, 6, -1, -2, -3, -4, -5, 0.5]),
    );
    const f = FeaturesFile.open(p);
    try {
      expect([f.M, f.D, f.size]).to.deep.equal([2, 3, 2]);
      expect(f.metadata).to.deep.equal({ encoder: 'hand' });
      expect(f.has('a/1.png') && f.has('b/2.png') && !f.has('c.png')).to.equal(true);
      expect(Array.from(f.get('a/1.png'))).to.deep.equal([1, 2, 3, 4, 5, 6]);
      expect(Array.from(f.get('b/2.png'))).to.deep.equal([-1, -2, -3, -4, -5, 0.5]);
      throwsWith(() => f.get('c.png'), 'no image "c.png"', 'holds 2 images');
    } finally {
      f.close();
    }
    throwsWith(() => {
      const g = FeaturesFile.open(p);
      g.close();
      g.close(); // idempotent
      g.get('a/1.png');
    }, 'is closed');
  });

  it('[D] tensors are M = 1, and mix with [1, D]', () => {
    const p = rawFile(
      'vec.safetensors',
      {
        x: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
        y: { dtype: 'F32', shape: [1, 2], data_offsets: [8, 16] },
      },
      f32([7, 8, 9, 10]),
    );
    const f = FeaturesFile.open(p);
    expect([f.M, f.D]).to.deep.equal([1, 2]);
    expect(Array.from(f.get('y'))).to.deep.equal([9, 10]);
    f.close();
  });

  it('rejects wrong dtypes, ranks, inconsistent M or D, non-finite values, empty files, naming the key', () => {
    const bad = (name: string, header: Record<string, unknown>, data: Buffer, ...parts: string[]): void =>
      throwsWith(() => FeaturesFile.open(rawFile(name, header, data)), name, ...parts);
    bad('f16.st', { k1: { dtype: 'F16', shape: [2], data_offsets: [0, 4] } }, Buffer.alloc(4), 'image "k1"', 'dtype F16, expected F32');
    bad('i64.st', { k2: { dtype: 'I64', shape: [1], data_offsets: [0, 8] } }, Buffer.alloc(8), 'image "k2"', 'dtype I64');
    bad('rank3.st', { k3: { dtype: 'F32', shape: [1, 1, 2], data_offsets: [0, 8] } }, Buffer.alloc(8), 'image "k3"', 'expected [M, D] or [D]');
    bad('scalar.st', { k4: { dtype: 'F32', shape: [], data_offsets: [0, 4] } }, Buffer.alloc(4), 'image "k4"');
    bad('zero.st', { k5: { dtype: 'F32', shape: [0, 4], data_offsets: [0, 0] } }, Buffer.alloc(0), 'image "k5"', 'empty');
    bad(
      'dmix.st',
      { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [3], data_offsets: [8, 20] } },
      Buffer.alloc(20),
      'image "b"',
      'differs from image "a"',
    );
    bad(
      'mmix.st',
      { a: { dtype: 'F32', shape: [1, 2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2, 2], data_offsets: [8, 24] } },
      Buffer.alloc(24),
      'image "b"',
      'M = 2',
    );
    bad('none.st', { __metadata__: { a: 'b' } }, Buffer.alloc(0), 'no image features');
    bad('trunc.st', { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, Buffer.alloc(8), 'truncated or corrupt');
    throwsWith(() => FeaturesFile.open(path.join(tmp, 'missing.st')), 'missing.st');
    const nan = FeaturesFile.open(rawFile('nan.st', { ok: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, bad: { dtype: 'F32', shape: [2], data_offsets: [8, 16] } }, f32([1, 2, 3, NaN])));
    expect(Array.from(nan.get('ok'))).to.deep.equal([1, 2]);
    throwsWith(() => nan.get('bad'), 'image "bad"', 'NaN', '[0, 1]', 'not finite');
    throwsWith(() => nan.checkAll(), 'image "bad"');
    nan.close();
  });

  it('the writer round-trips through the reader, and leaves nothing when it fails', () => {
    const p = path.join(tmp, 'w.safetensors');
    const feats = new Map<string, Float32Array>([
      ['train/1/image.png', new Float32Array([0.25, -1, 3, 4, 5, 6])],
      ['train/2/image.png', new Float32Array([1e-30, 2, 3e30, 4, 5, -6])],
      ['x', new Float32Array([0, 0, 0, 0, 0, 1])],
    ]);
    writeFeatures(p, feats, { M: 2, D: 3, metadata: { feature_layers: '-1,-2' } });
    const f = FeaturesFile.open(p);
    expect(f.keys).to.deep.equal([...feats.keys()]);
    expect([f.M, f.D]).to.deep.equal([2, 3]);
    expect(f.metadata).to.deep.equal({ feature_layers: '-1,-2' });
    for (const [k, v] of feats) expect(f.get(k)).to.deep.equal(v);
    f.checkAll();
    f.close();
    // the header layout: 8-byte aligned data, shapes [2, 3]; and M = 1 writes [D]
    const hdr = JSON.parse(fs.readFileSync(p).subarray(8, 8 + Number(fs.readFileSync(p).readBigUInt64LE(0))).toString('utf8'));
    expect(hdr['x']).to.deep.equal({ dtype: 'F32', shape: [2, 3], data_offsets: [48, 72] });
    expect(Number(fs.readFileSync(p).readBigUInt64LE(0)) % 8).to.equal(0);
    const q = path.join(tmp, 'v.safetensors');
    writeFeatures(q, new Map([['k', new Float32Array([1, 2])]]), { M: 1, D: 2 });
    const fq = FeaturesFile.open(q);
    expect(Array.from(fq.get('k'))).to.deep.equal([1, 2]);
    fq.close();

    const files = (): string[] => fs.readdirSync(tmp).filter((n) => n.includes('bad.safetensors'));
    const b = path.join(tmp, 'bad.safetensors');
    throwsWith(() => writeFeatures(b, new Map([['k', new Float32Array([1, NaN])]]), { M: 1, D: 2 }), 'image "k"', 'not finite');
    throwsWith(() => writeFeatures(b, new Map([['k', new Float32Array([1, 2, 3])]]), { M: 1, D: 2 }), 'image "k"', 'M·D = 2');
    throwsWith(() => writeFeatures(b, new Map(), { M: 1, D: 2 }), 'no images');
    throwsWith(() => writeFeatures(b, new Map([['__metadata__', new Float32Array(2)]]), { M: 1, D: 2 }), 'reserved');
    throwsWith(() => writeFeatures(b, new Map([['k', new Float32Array(2)]]), { M: 0, D: 2 }), 'positive integer M');
    const w = new FeaturesWriter(b, ['a', 'b'], { M: 1, D: 1 });
    throwsWith(() => w.add('b', new Float32Array([1])), 'expected image "a" next');
    w.add('a', new Float32Array([1]));
    throwsWith(() => w.finish(), 'only 1 of 2 images written', 'next: "b"');
    expect(files(), 'no file and no temporary left behind').to.deep.equal([]);
    throwsWith(() => writeFeatures(path.join(tmp, 'no-such-dir', 'f.st'), new Map([['k', new Float32Array(1)]]), { M: 1, D: 1 }), 'no-such-dir');
  });

  it('reads the shared Fashion-MNIST features file (7000 images, [1280])', function () {
    const p = dataPath('fashion-mnist', 'features-mobilenetv2.safetensors');
    if (!fs.existsSync(p)) this.skip();
    const f = FeaturesFile.open(p);
    try {
      expect([f.M, f.D, f.size]).to.deep.equal([1, 1280, 7000]);
      const v = f.get('train/00000.png');
      // Independent read of the same bytes through the header's offsets.
      const buf = fs.readFileSync(p);
      const n = Number(buf.readBigUInt64LE(0));
      const e = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'))['train/00000.png'];
      const raw = new Float32Array(buf.buffer.slice(buf.byteOffset + 8 + n + e.data_offsets[0], buf.byteOffset + 8 + n + e.data_offsets[1]));
      expect(v).to.deep.equal(raw);
      expect(v.some((x) => x !== 0)).to.equal(true);
    } finally {
      f.close();
    }
  });
});
