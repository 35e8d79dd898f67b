import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { dataPath } from './util/paths';
import { loadTokenizer, StreamDecoder, Tokenizer } from '../lib/tokenizer';
import { bpeMerge, decodeUtf8 } from '../lib/tokenizer/sentencepiece';

const MODEL = dataPath('llama-tokenizer', 'tokenizer.model');
const BIN = dataPath('llama-tokenizer', 'tokenizer.bin');
const TOK512 = dataPath('stories260K', 'tok512.bin');

/**
 * llama.cpp's SPM test vectors. Inputs are separated by "\n__ggml_vocab_test__\n" (the file
 * also ends with one, which leaves a final empty input); the .out has one line of
 * space-separated ids per input, an empty line for an input that gives no tokens.
 */
function loadVectors(): { text: string; ids: number[] }[] {
  const base = dataPath('llama-tokenizer', 'ggml-vocab-llama-spm.gguf');
  const inputs = fs.readFileSync(base + '.inp', 'utf8').split('\n__ggml_vocab_test__\n');
  const lines = fs.readFileSync(base + '.out', 'utf8').split('\n');
  expect(lines.length).to.equal(inputs.length);
  return inputs.map((text, i) => ({
    text,
    ids: lines[i].trim() === '' ? [] : lines[i].trim().split(/\s+/).map(Number),
  }));
}

function streamed(tok: Tokenizer, ids: number[]): string {
  const sd = new StreamDecoder(tok);
  let text = '';
  for (const id of ids) text += sd.push(id);
  return text + sd.flush();
}

const label = (s: string): string => {
  const j = JSON.stringify(s);
  return j.length > 50 ? j.slice(0, 47) + '..."' : j;
};

describe('tokenizer', () => {
  const vectors = loadVectors();
  let sp: Tokenizer;
  let bin: Tokenizer;
  let tok512: Tokenizer;

  before(() => {
    sp = loadTokenizer(MODEL);
    bin = loadTokenizer(BIN);
    tok512 = loadTokenizer(TOK512);
  });

  it('has all 47 llama.cpp test vectors', () => {
    expect(vectors).to.have.length(47);
    expect(vectors[2]).to.deep.equal({ text: '', ids: [] });
    expect(vectors[3]).to.deep.equal({ text: ' ', ids: [259] });
  });

  describe('SentencePiece tokenizer.model', () => {
    it('reads the vocabulary and special ids', () => {
      expect(sp.vocabSize).to.equal(32000);
      expect([sp.bos, sp.eos]).to.deep.equal([1, 2]);
      expect(sp.piece(0)).to.equal('<unk>');
      expect(sp.piece(1)).to.equal('<s>');
      expect(sp.piece(13)).to.equal('<0x0A>');
      expect(sp.piece(15043)).to.equal('\u2581Hello');
      expect(() => sp.piece(32000)).to.throw(RangeError);
    });

    it('encodes "Hello world" and adds BOS/EOS only on request', () => {
      expect(sp.encode('Hello world')).to.deep.equal([15043, 3186]);
      expect(sp.encode('Hello world', { bos: true })).to.deep.equal([1, 15043, 3186]);
      expect(sp.encode('Hello world', { bos: true, eos: true })).to.deep.equal([1, 15043, 3186, 2]);
      expect(sp.encode('', { bos: true })).to.deep.equal([1]);
    });

    describe('llama.cpp test vectors', () => {
      vectors.forEach(({ text, ids }, i) => {
        it(`#${i} ${label(text)}`, () => {
          expect(sp.encode(text)).to.deep.equal(ids);
        });
      });
    });

    it('round-trips every test vector through decode, with and without BOS', () => {
      for (const { text, ids } of vectors) {
        expect(sp.decode(ids), label(text)).to.equal(text);
        expect(sp.decode(sp.encode(text, { bos: true, eos: true })), label(text)).to.equal(text);
      }
    });

    it('decodes like SentencePiece: one dummy-prefix space dropped, controls invisible, bytes reassembled', () => {
      expect(sp.decode([1, 15043, 3186, 2])).to.equal('Hello world');
      expect(sp.decode([29871, 15043])).to.equal(' Hello'); // only the first '▁' is the dummy prefix
      expect(sp.decode([3186, 3186])).to.equal('world world');
      expect(sp.decode([0])).to.equal(' \u2047 '); // <unk> surface
      expect(sp.decode([243, 162, 169, 156])).to.equal('🦙');
      // Each invalid byte becomes its own U+FFFD, as in SentencePiece.
      expect(sp.decode([243, 162, 29889])).to.equal('\ufffd\ufffd.');
      expect(() => sp.decode([-1])).to.throw(RangeError);
    });

    it('stays fast on long input (heap-based merging)', function () {
      this.timeout(20000);
      const text = vectors.map((v) => v.text).join(' ').repeat(40) + 'a'.repeat(50000);
      const t0 = Date.now();
      const ids = sp.encode(text);
      expect(Date.now() - t0).to.be.below(10000);
      expect(sp.decode(ids)).to.equal(text);
    });
  });

  describe('llama2.c tokenizer.bin (same LLaMA vocabulary)', () => {
    it('reads the vocabulary', () => {
      expect(bin.vocabSize).to.equal(32000);
      expect([bin.bos, bin.eos]).to.deep.equal([1, 2]);
      expect(bin.piece(15043)).to.equal(' Hello');
      expect(bin.piece(1)).to.equal('\n<s>\n');
    });

    it('encodes like run.c', () => {
      expect(bin.encode('Lets try ö & 株式会社')).to.deep.equal([365, 1691, 1018, 3963, 669, 29871, 31409, 30607, 30437, 30564]);
      expect(bin.encode('Hello world')).to.deep.equal([15043, 3186]);
      expect(bin.encode('Hello world', { bos: true, eos: true })).to.deep.equal([1, 15043, 3186, 2]);
      expect(bin.encode('')).to.deep.equal([]);
    });

    it('agrees with the SentencePiece model on all llama.cpp test vectors', () => {
      const failures = vectors.filter(({ text, ids }) => JSON.stringify(bin.encode(text)) !== JSON.stringify(ids));
      expect(failures.map((f) => f.text)).to.deep.equal([]);
    });

    it('decodes like run.c: leading space dropped only after BOS, BOS/EOS invisible', () => {
      expect(bin.decode([1, 15043, 3186, 2])).to.equal('Hello world');
      expect(bin.decode([15043, 3186])).to.equal(' Hello world');
      expect(bin.decode([1, 243, 162, 169, 156])).to.equal('🦙');
      for (const { text } of vectors) {
        expect(bin.decode(bin.encode(text, { bos: true })), label(text)).to.equal(text);
      }
    });
  });

  describe('llama2.c tok512.bin (stories260K)', () => {
    it('reads 512 tokens', () => {
      expect(tok512.vocabSize).to.equal(512);
      expect(tok512.piece(261)).to.equal(' a');
    });

    it('encodes like run.c', () => {
      expect(tok512.encode('abcdefgh')).to.deep.equal([261, 430, 429, 418, 411, 431, 428, 415]);
      expect(tok512.encode('Once upon a time')).to.deep.equal([403, 407, 261, 378]);
    });

    it('falls back to byte tokens (byte + 3) and round-trips', () => {
      expect(tok512.encode('😀').slice(-4)).to.deep.equal([0xf0 + 3, 0x9f + 3, 0x98 + 3, 0x80 + 3]);
      for (const s of ['Once upon a time', 'Hi 😀 ö 株式会社', '  two  spaces\n\tand tab']) {
        expect(tok512.decode(tok512.encode(s, { bos: true }))).to.equal(s);
      }
    });
  });

  describe('StreamDecoder', () => {
    it('holds byte tokens until the UTF-8 character is complete', () => {
      const sd = new StreamDecoder(sp);
      expect(sd.push(1)).to.equal('');
      expect(sd.push(15043)).to.equal('Hello');
      expect(sd.push(29871)).to.equal(' ');
      expect(sd.push(243)).to.equal('');
      expect(sd.push(162)).to.equal('');
      expect(sd.push(169)).to.equal('');
      expect(sd.push(156)).to.equal('🦙');
      expect(sd.push(3186)).to.equal(' world');
      expect(sd.flush()).to.equal('');
    });

    it('flushes an incomplete character as U+FFFD', () => {
      const sd = new StreamDecoder(sp);
      expect(sd.push(15043)).to.equal('Hello');
      expect(sd.push(243)).to.equal('');
      expect(sd.flush()).to.equal('\ufffd');
    });

    it('yields exactly decode() for every test vector, for both formats', () => {
      for (const tok of [sp, bin]) {
        for (const { ids } of vectors) {
          for (const seq of [ids, [tok.bos, ...ids], [tok.bos, ...ids, tok.eos]]) {
            expect(streamed(tok, seq), JSON.stringify(seq)).to.equal(tok.decode(seq));
          }
        }
      }
      const ids = tok512.encode('Hi 😀 ö 株式会社', { bos: true });
      expect(streamed(tok512, ids)).to.equal('Hi 😀 ö 株式会社');
    });

    it('rejects ids outside the vocabulary', () => {
      expect(() => new StreamDecoder(sp).push(32000)).to.throw(RangeError);
    });
  });

  describe('BPE merging and UTF-8 helpers', () => {
    it('merges the best-scoring pair first, leftmost on ties', () => {
      const scores: Record<string, number> = { ab: -1, bc: -2, abc: -3 };
      const merge = (s: string, frozen?: boolean[]) => bpeMerge(Array.from(s), (m) => scores[m], frozen).pieces;
      expect(merge('abc')).to.deep.equal(['abc']);
      expect(merge('abab')).to.deep.equal(['ab', 'ab']);
      scores.ba = -1; // tie with 'ab': the leftmost pair wins
      expect(merge('bab')).to.deep.equal(['ba', 'b']);
      expect(merge('abc', [false, true, false])).to.deep.equal(['a', 'b', 'c']);
      expect(merge('')).to.deep.equal([]);
    });

    it('decodes UTF-8 with one U+FFFD per invalid byte', () => {
      expect(decodeUtf8(Buffer.from('ö株😀'))).to.equal('ö株😀');
      expect(decodeUtf8([0xe6, 0x97])).to.equal('\ufffd\ufffd');
      expect(decodeUtf8([0xc0, 0x80])).to.equal('\ufffd\ufffd'); // overlong
      expect(decodeUtf8([0xed, 0xa0, 0x80])).to.equal('\ufffd\ufffd\ufffd'); // surrogate
      expect(decodeUtf8([0x41, 0xff, 0x42])).to.equal('A\ufffdB');
    });
  });

  describe('SentencePiece features beyond LLaMA (synthetic model)', () => {
    let dir: string;
    before(() => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tokenizer-test-'));
    });
    after(() => {
      fs.rmSync(dir, { recursive: true, force: true });
    });

    const write = (name: string, data: Uint8Array): string => {
      const p = path.join(dir, name);
      fs.writeFileSync(p, data);
      return p;
    };

    it('keeps user-defined pieces whole and splits UNUSED pieces back', () => {
      const p = write('tiny.model', tinyModel(2));
      const tok = loadTokenizer(p);
      const id = (s: string): number => {
        for (let i = 0; i < tok.vocabSize; i++) if (tok.piece(i) === s) return i;
        throw new Error('no piece ' + s);
      };
      // 'ab' is UNUSED: formed by a merge, it is emitted as 'a' 'b'; 'abc' is a normal piece.
      expect(tok.encode('ab')).to.deep.equal([id('\u2581'), id('a'), id('b')]);
      expect(tok.encode('abc')).to.deep.equal([id('\u2581'), id('abc')]);
      // '<sep>' is USER_DEFINED: matched whole, never merged with neighbours.
      expect(tok.encode('a<sep>bc')).to.deep.equal([id('\u2581'), id('a'), id('<sep>'), id('b'), id('c')]);
      // 'z' has no piece: byte fallback.
      expect(tok.encode('z')).to.deep.equal([id('\u2581'), id('<0x7A>')]);
      expect(tok.decode(tok.encode('abc a<sep>z'))).to.equal('abc a<sep>z');
    });

    it('refuses model types other than BPE, naming the file', () => {
      const p = write('unigram.model', tinyModel(1));
      expect(() => loadTokenizer(p)).to.throw(Error, p).with.property('message').that.contains('unigram');
    });
  });

  describe('loadTokenizer errors', () => {
    let dir: string;
    before(() => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tokenizer-test-'));
    });
    after(() => {
      fs.rmSync(dir, { recursive: true, force: true });
    });

    const write = (name: string, data: Uint8Array): string => {
      const p = path.join(dir, name);
      fs.writeFileSync(p, data);
      return p;
    };

    it('missing file', () => {
      const p = path.join(dir, 'does-not-exist.model');
      expect(() => loadTokenizer(p)).to.throw(Error, p);
    });

    it('a directory or a device', () => {
      expect(() => loadTokenizer(dir)).to.throw(Error, dir);
      if (fs.existsSync('/dev/zero')) expect(() => loadTokenizer('/dev/zero')).to.throw(Error, 'not a regular file');
    });

    it('empty file', () => {
      const p = write('empty.model', new Uint8Array(0));
      expect(() => loadTokenizer(p)).to.throw(Error, p).with.property('message').that.contains('empty');
    });

    it('truncated tokenizer.model', () => {
      const full = fs.readFileSync(MODEL);
      for (const n of [3, 10, 1000, 250001, full.length - 1]) {
        const p = write(`truncated-${n}.model`, full.subarray(0, n));
        expect(() => loadTokenizer(p), `${n} bytes`).to.throw(Error, p);
      }
    });

    it('truncated tokenizer.bin', () => {
      const full = fs.readFileSync(BIN);
      for (const n of [2, 4, 10, 200001, full.length - 1]) {
        const p = write(`truncated-${n}.bin`, full.subarray(0, n));
        expect(() => loadTokenizer(p), `${n} bytes`).to.throw(Error, p);
      }
    });

    it('random bytes', () => {
      // Deterministic pseudo-random data; also with first bytes that look like each format.
      let seed = 12345;
      const rand = (n: number): Buffer => {
        const b = Buffer.alloc(n);
        for (let i = 0; i < n; i++) {
          seed = (seed * 1103515245 + 12345) >>> 0;
          b[i] = seed >>> 24;
        }
        return b;
      };
      const cases: Buffer[] = [rand(100000), rand(17)];
      const looksBin = rand(5000);
      looksBin.writeUInt32LE(27, 0);
      const looksModel = rand(5000);
      looksModel[0] = 0x0a;
      cases.push(looksBin, looksModel);
      cases.forEach((data, i) => {
        const p = write(`random-${i}.bin`, data);
        expect(() => loadTokenizer(p)).to.throw(Error, p);
      });
    });

    it('a text file', () => {
      const p = write('notes.txt', Buffer.from('this is not a tokenizer\n'));
      expect(() => loadTokenizer(p)).to.throw(Error, p).with.property('message').that.contains('unrecognised');
    });
  });
});

// --- a tiny SentencePiece model, serialized by hand --------------------------------------------

function varint(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
  return out;
}

function lenField(num: number, body: Uint8Array | number[]): number[] {
  return [...varint(num * 8 + 2), ...varint(body.length), ...body];
}

function varintField(num: number, v: number): number[] {
  return [...varint(num * 8), ...varint(v)];
}

function piece(text: string, score: number, type: number): number[] {
  const f = Buffer.alloc(4);
  f.writeFloatLE(score, 0);
  const body = [...lenField(1, Buffer.from(text, 'utf8')), ...varint(2 * 8 + 5), ...f, ...varintField(3, type)];
  return lenField(1, body);
}

/** <unk> <s> </s>, 256 byte pieces, then a few normal, unused and user-defined pieces. */
function tinyModel(modelType: number): Uint8Array {
  const out: number[] = [];
  out.push(...piece('<unk>', 0, 2), ...piece('<s>', 0, 3), ...piece('</s>', 0, 3));
  for (let b = 0; b < 256; b++) out.push(...piece(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, 0, 6));
  out.push(...piece('<sep>', 0, 4));
  out.push(...piece('ab', -1, 5)); // UNUSED
  out.push(...piece('abc', -2, 1));
  out.push(...piece('\u2581', -3, 1), ...piece('a', -4, 1), ...piece('b', -5, 1), ...piece('c', -6, 1));
  const trainer = [...varintField(3, modelType), ...varintField(35, 1), ...varintField(40, 0), ...varintField(41, 1), ...varintField(42, 2)];
  const normalizer = [...lenField(1, Buffer.from('identity')), ...varintField(3, 1), ...varintField(4, 0)];
  out.push(...lenField(2, trainer), ...lenField(3, normalizer));
  return Uint8Array.from(out);
}
