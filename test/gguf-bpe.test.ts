// Byte-level BPE vocabularies in GGUF metadata (tokenizer.ggml.model "gpt2"): GPT-2's and
// cl100k_base's ranks from js-tiktoken, written as tokenizer.json folders, converted by
// tools/to-gguf's metadata writer into vocabulary-only GGUF files, read back by loadTokenizer, must
// tokenize a varied corpus exactly as js-tiktoken does (pre "gpt-2" and "llama-bpe"), and decode it
// back. A tiny random llama GGUF with a GPT-2 vocabulary runs tokenize, generate, train and eval
// with no --tokenizer.
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { BpeTokenizer, StreamDecoder, loadTokenizer } from '../lib/tokenizer';
import { ByteBpeModel, preTokenize, PRE_TOKENIZERS } from '../lib/tokenizer/bpe';
import { BYTE_CHARS } from '../lib/tokenizer/byte-level-bpe';
import { ggufTokenizerModel, readGgufHeader } from '../lib/model/gguf';
import { GgufMeta, writeGguf } from '../tools/gguf-writer';
import { tokenizerMetadata, toGguf } from '../tools/to-gguf';
import { writeRandomLlama2c } from '../bench/decode';
import { Llama } from '../lib/model/llama';
import { generate, generateTokens } from '../lib/generate/generate';
import { makeDemoDataset } from '../lib/data/demo';
import { dataPath, repoRoot } from './util/paths';
import { writeTiktokenFolder } from './util/tiktoken-vocab';
import { CORPUS } from './util/bpe-corpus';

const cli = path.join(repoRoot, 'dist', 'lib', 'cli', 'main.js');


/** A vocabulary-only GGUF (no tensors) of the tokenizer at `tokDir`. */
function vocabGguf(tokDir: string, file: string, extra: [string, GgufMeta][] = []): string {
  writeGguf(file, [['general.architecture', { type: 'string', value: 'llama' }], ...tokenizerMetadata(tokDir), ...extra], []);
  return file;
}

describe('GGUF byte-level BPE vocabularies (tokenizer.ggml.model "gpt2")', function () {
  this.timeout(120_000);
  let dir: string;
  before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-gguf-bpe-'))));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const [name, pre] of [['gpt2', 'gpt-2'], ['cl100k_base', 'llama-bpe']] as const) {
    describe(`${name} (pre "${pre}") against js-tiktoken`, () => {
      let tok: BpeTokenizer;
      let ref: ReturnType<typeof writeTiktokenFolder>;
      before(() => {
        const tokDir = path.join(dir, name);
        ref = writeTiktokenFolder(tokDir, name);
        const file = vocabGguf(tokDir, path.join(dir, `${name}.gguf`));
        const h = readGgufHeader(file);
        expect(h.metadata.get('tokenizer.ggml.pre')).to.equal(pre);
        tok = loadTokenizer(file) as BpeTokenizer;
        expect(tok).to.be.instanceOf(BpeTokenizer);
      });

      it('the corpus token for token, and decode(encode(s)) === s', () => {
        for (const s of CORPUS) {
          const ids = tok.encode(s);
          expect(ids, JSON.stringify(s)).to.deep.equal(ref.encode(s, [], []));
          expect(tok.decode(ids), JSON.stringify(s)).to.equal(s);
        }
      });

      it('random text from a mixed alphabet (2000 strings) token for token', () => {
        const alphabet = Array.from("abcXYZ019 \n\t\r'.,!?-_()[]{}<>|éßжπ中日한🙂🚀\u00a0\u2003\u0301\u200d");
        let seed = 12345;
        const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
        for (let k = 0; k < 2000; k++) {
          let s = '';
          const n = 1 + Math.floor(rand() * 24);
          for (let i = 0; i < n; i++) s += alphabet[Math.floor(rand() * alphabet.length)];
          const ids = tok.encode(s);
          expect(ids, JSON.stringify(s)).to.deep.equal(ref.encode(s, [], []));
          expect(tok.decode(ids)).to.equal(s);
        }
      });

      it('English prose: the 2000 records of alpaca_small.json (0.8 MB) token for token', function () {
        const file = dataPath('alpaca', 'alpaca_small.json');
        if (!fs.existsSync(file)) this.skip();
        const records = JSON.parse(fs.readFileSync(file, 'utf8')) as { instruction: string; input: string; output: string }[];
        expect(records.length).to.equal(2000);
        let mismatches = 0;
        for (const r of records) {
          const text = `${r.instruction}\n\n${r.input}\n\n${r.output}`;
          if (JSON.stringify(tok.encode(text)) !== JSON.stringify(ref.encode(text, [], []))) mismatches++;
        }
        expect(mismatches).to.equal(0);
      });

      it('lone surrogates are encoded as U+FFFD, as js-tiktoken does', () => {
        for (const s of ['a\ud800b', '\udc00', 'x \ud83d']) {
          expect(tok.encode(s), JSON.stringify(s)).to.deep.equal(ref.encode(s, [], []));
          expect(tok.decode(tok.encode(s))).to.equal(s.replace(/[\ud800-\udfff]/g, '\ufffd'));
        }
      });

      it('control tokens are text unless asked for; with special: true they are single tokens', () => {
        const s = 'a<|endoftext|>b <|endoftext|>\n<|endoftext|>';
        const eot = ref.encode('<|endoftext|>', 'all');
        expect(eot).to.have.length(1);
        expect(tok.encode(s)).to.deep.equal(ref.encode(s, [], []));
        expect(tok.encode(s)).to.not.include(eot[0]);
        expect(tok.encode(s, { special: true })).to.deep.equal(ref.encode(s, 'all'));
        // control tokens vanish in decode
        expect(tok.decode(tok.encode(s, { special: true }))).to.equal('ab \n');
        expect(tok.eos).to.equal(eot[0]);
      });

      it('decode of bytes that are not whole UTF-8: one U+FFFD per bad byte; streaming holds a cut character back', () => {
        const byteId = (b: number) => {
          for (let i = 0; i < tok.vocabSize; i++) if (tok.piece(i) === BYTE_CHARS[b]) return i;
          throw new Error(`no token for byte ${b}`);
        };
        const kabu = [0xe6, 0xa0, 0xaa].map(byteId); // 株, one byte token each
        expect(tok.decode(kabu)).to.equal('株');
        expect(tok.decode(kabu.slice(0, 2))).to.equal('\ufffd\ufffd');
        expect(tok.decode([byteId(0x80), ...kabu])).to.equal('\ufffd株');
        expect(tok.decode([byteId(0xff)])).to.equal(ref.decode([byteId(0xff)]));
        const d = new StreamDecoder(tok);
        expect(tok.encode('a ')).to.have.length(2);
        const ids = [...tok.encode('a '), ...kabu, ...tok.encode(' 🦙 and 😶‍🌫️')];
        const pushed = ids.map((id) => d.push(id));
        expect(pushed.slice(0, 4).join('')).to.equal('a '); // 株 is held back until its third byte
        expect(pushed.join('') + d.flush()).to.equal('a 株 🦙 and 😶‍🌫️');
      });

      it('1 MB (the corpus repeated) round-trips through a fresh tokenizer (speed: bench/bpe-tokenize.ts)', () => {
        const text = CORPUS.join(' ').repeat(Math.ceil(1e6 / CORPUS.join(' ').length)).slice(0, 1e6);
        const fresh = loadTokenizer(path.join(dir, `${name}.gguf`));
        const ids = fresh.encode(text);
        expect(ids.length).to.be.within(2e5, 6e5);
        expect(fresh.decode(ids)).to.equal(text);
      });
    });
  }

  describe('metadata rules', () => {
    let base: ByteBpeModel;
    before(() => {
      const tokDir = path.join(dir, 'small');
      writeTiktokenFolder(tokDir, 'gpt2', 600);
      base = ggufTokenizerModel(readGgufHeader(vocabGguf(tokDir, path.join(dir, 'small.gguf')))) as ByteBpeModel;
    });
    const model = (patch: Partial<ByteBpeModel>): ByteBpeModel => ({ ...base, ...patch });

    it('BOS follows tokenizer.ggml.add_bos_token, else the pre-tokenizer (LLaMA 3 yes, GPT-2 no); EOS when asked', () => {
      const gpt2 = new BpeTokenizer(model({}));
      expect(gpt2.addBos).to.equal(false);
      expect(gpt2.encode('hi', { bos: true })).to.deep.equal(gpt2.encode('hi'));
      expect(gpt2.encode('hi', { eos: true })).to.deep.equal([...gpt2.encode('hi'), gpt2.eos]);
      const llama3 = new BpeTokenizer(model({ pre: 'llama-bpe', addBos: PRE_TOKENIZERS['llama-bpe'].addBos }));
      expect(llama3.encode('hi', { bos: true })).to.deep.equal([llama3.bos, ...llama3.encode('hi')]);
      const file = vocabGguf(path.join(dir, 'small'), path.join(dir, 'small-bos.gguf'), [['tokenizer.ggml.add_bos_token', { type: 'bool', value: true }]]);
      const withBos = loadTokenizer(file);
      expect(withBos.encode('hi', { bos: true })[0]).to.equal(withBos.bos);
      const noBos = new BpeTokenizer(model({ bosId: -1, addBos: true }));
      expect(() => noBos.encode('hi', { bos: true })).to.throw(/no BOS token/);
    });

    it('llama.cpp\'s "default" pre-tokenizer: punctuation runs, GPT-2\'s pattern, digit runs, then digits in threes', () => {
      const res = PRE_TOKENIZERS.default.patterns.map((p) => new RegExp(p, 'gu'));
      expect(preTokenize('Hello, world!!! 1234567 ab12', res)).to.deep.equal(['Hello', ',', ' world', '!!!', ' ', '123', '456', '7', ' ab', '12']);
      expect(preTokenize("it's $5+6", res)).to.deep.equal(['it', "'", 's', ' ', '$', '5', '+', '6']);
      // GPT-2's own pattern keeps the space with the number and the contraction whole
      const gpt2 = PRE_TOKENIZERS['gpt-2'].patterns.map((p) => new RegExp(p, 'gu'));
      expect(preTokenize("it's 1234567!!", gpt2)).to.deep.equal(['it', "'s", ' 1234567', '!!']);
      const tok = new BpeTokenizer(model({ pre: 'default' }));
      expect(tok.decode(tok.encode('Hello, world!!! 1234567'))).to.equal('Hello, world!!! 1234567');
    });

    it('whitespace is Unicode White_Space: U+0085 is a space, U+FEFF is not', () => {
      const gpt2 = PRE_TOKENIZERS['gpt-2'].patterns.map((p) => new RegExp(p, 'gu'));
      // (js-tiktoken, with JavaScript's \s, would give 'a', '\u0085\u0085', 'b' and 'a', ' ', '\ufeffb')
      expect(preTokenize('a\u0085\u0085b', gpt2)).to.deep.equal(['a', '\u0085', '\u0085', 'b']);
      expect(preTokenize('a \ufeffb', gpt2)).to.deep.equal(['a', ' \ufeff', 'b']);
    });

    it('LLaMA 3 (ignore_merges): a word the vocabulary holds whole is one token even without merges to it', () => {
      // "zq" is a token but no merge makes it: GPT-2's rule splits it, LLaMA 3's takes it whole
      const tokens = [...base.tokens, 'zq'];
      const types = [...base.types, 1];
      const zq = tokens.length - 1;
      expect(new BpeTokenizer(model({ tokens, types, pre: 'gpt-2' })).encode('zq')).to.not.include(zq);
      const llama3 = new BpeTokenizer(model({ tokens, types, pre: 'llama-bpe' }));
      expect(llama3.encode('zq')).to.deep.equal([zq]);
      expect(llama3.encode('zqzq')).to.not.include(zq);
    });

    it('user-defined tokens are always split out and decode as their text', () => {
      const tokens = [...base.tokens, '<tool>'];
      const tok = new BpeTokenizer(model({ tokens, types: [...base.types, 4] }));
      const id = tokens.length - 1;
      const ids = tok.encode('a<tool>b');
      expect(ids).to.include(id);
      expect(tok.decode(ids)).to.equal('a<tool>b');
    });

    it('to-gguf reads vocab.json + merges.txt as tokenizer.json; --pre names a pre-tokenizer it cannot recognise', () => {
      const small = path.join(dir, 'small');
      const j = JSON.parse(fs.readFileSync(path.join(small, 'tokenizer.json'), 'utf8'));
      const legacy = path.join(dir, 'small-legacy');
      fs.mkdirSync(legacy);
      // GPT-2's own folder: <|endoftext|> sits in vocab.json, and tokenizer_config.json names it
      const vocab = { ...j.model.vocab };
      for (const a of j.added_tokens) vocab[a.content] = a.id;
      fs.writeFileSync(path.join(legacy, 'vocab.json'), JSON.stringify(vocab));
      fs.writeFileSync(path.join(legacy, 'merges.txt'), '#version: 0.2\n' + j.model.merges.join('\n') + '\n');
      fs.copyFileSync(path.join(small, 'tokenizer_config.json'), path.join(legacy, 'tokenizer_config.json'));
      expect(tokenizerMetadata(legacy)).to.deep.equal(tokenizerMetadata(small));
      // no special tokens named (GPT-2's hub folder): BOS/EOS from the model's config.json
      fs.writeFileSync(path.join(legacy, 'tokenizer_config.json'), JSON.stringify({ model_max_length: 1024 }));
      fs.writeFileSync(path.join(legacy, 'config.json'), JSON.stringify({ bos_token_id: 600, eos_token_id: 600 }));
      const ids = tokenizerMetadata(legacy).filter(([k]) => k.endsWith('_token_id'));
      expect(ids.map(([k, v]) => [k, v.value])).to.deep.equal([['tokenizer.ggml.bos_token_id', 600], ['tokenizer.ggml.eos_token_id', 600]]);
      // a pre_tokenizer that is neither GPT-2's nor LLaMA 3's
      const odd = path.join(dir, 'odd.json');
      fs.writeFileSync(odd, JSON.stringify({ ...j, pre_tokenizer: { type: 'Whitespace' } }));
      expect(() => tokenizerMetadata(odd)).to.throw(/odd\.json: its pre_tokenizer is not GPT-2's nor LLaMA 3's; name one with --pre/);
      const named = tokenizerMetadata(odd, { pre: 'llama-bpe' });
      expect(named.find(([k]) => k === 'tokenizer.ggml.pre')![1].value).to.equal('llama-bpe');
      expect(() => tokenizerMetadata(odd, { pre: 'qwen2' })).to.throw(/unknown pre-tokenizer "qwen2"/);
    });

    it('unsupported or broken vocabularies are clear errors naming the problem', () => {
      expect(() => new BpeTokenizer(model({ pre: 'qwen2' }))).to.throw(/pre-tokenizer tokenizer.ggml.pre = "qwen2".*supported: "default", "gpt-2", "llama-bpe"/);
      expect(() => new BpeTokenizer(model({ tokens: base.tokens.slice(1), types: base.types.slice(1) }))).to.throw(/no token for the byte 0x21/);
      expect(() => new BpeTokenizer(model({ merges: ['ab'] }))).to.throw(/merge 0 "ab" is not two tokens/);
      expect(() => new BpeTokenizer(model({ types: base.types.map(() => 9) }))).to.throw(/token 0 has type 9/);
      expect(() => new BpeTokenizer(model({ eosId: 1e6 }))).to.throw(/eos id 1000000 is not a token id/);
      // in a file: the error names the file and the key
      const noMerges = path.join(dir, 'no-merges.gguf');
      writeGguf(noMerges, tokenizerMetadata(path.join(dir, 'small')).filter(([k]) => k !== 'tokenizer.ggml.merges'), []);
      expect(() => loadTokenizer(noMerges)).to.throw(/no-merges\.gguf: tokenizer.ggml.merges is missing/);
      const qwen = path.join(dir, 'qwen.gguf');
      writeGguf(qwen, tokenizerMetadata(path.join(dir, 'small')).map(([k, v]): [string, GgufMeta] => [k, k === 'tokenizer.ggml.pre' ? { type: 'string', value: 'qwen2' } : v]), []);
      expect(() => loadTokenizer(qwen)).to.throw(/qwen\.gguf: the pre-tokenizer tokenizer.ggml.pre = "qwen2" is not supported/);
      const t5 = path.join(dir, 't5.gguf');
      writeGguf(t5, [['tokenizer.ggml.model', { type: 'string', value: 't5' }]], []);
      expect(() => loadTokenizer(t5)).to.throw(/t5\.gguf: tokenizer.ggml.model "t5" is not supported/);
    });
  });

  describe('a tiny llama GGUF with a GPT-2 vocabulary needs no --tokenizer', () => {
    let model: string;
    let ref: ReturnType<typeof writeTiktokenFolder>;
    const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
    before(async () => {
      const tokDir = path.join(dir, 'gpt2-1000');
      ref = writeTiktokenFolder(tokDir, 'gpt2', 1000); // 1000 ranks + <|endoftext|> = 1001 tokens
      const bin = writeRandomLlama2c(path.join(dir, 'tiny.bin'), { dim: 64, hiddenDim: 128, nLayers: 2, nHeads: 4, nKvHeads: 2, vocabSize: 1001, seqLen: 128 }, 7);
      model = path.join(dir, 'tiny-gpt2.gguf');
      await toGguf(bin, model, { type: 'Q8_0', tokenizer: tokDir });
    });

    it('tokenize --model and --tokenizer print js-tiktoken\'s ids', () => {
      const text = "Hello world, it's 2024!";
      for (const flag of ['--model', '--tokenizer']) {
        const r = run('tokenize', flag, model, text);
        expect(r.status, r.stderr).to.equal(0);
        expect(JSON.parse(r.stdout)).to.deep.equal(ref.encode(text));
      }
    });

    it('a model whose vocabulary is not usable still loads; loadTokenizer() says why, --tokenizer replaces it', async () => {
      // "gpt-2" -> "qwen2" in place (same length): a pre-tokenizer we do not implement
      const b = fs.readFileSync(model);
      const at = b.indexOf(Buffer.from('gpt-2'), b.indexOf(Buffer.from('tokenizer.ggml.pre')));
      b.write('qwen2', at);
      const qwen = path.join(dir, 'tiny-qwen2.gguf');
      fs.writeFileSync(qwen, b);
      const m = await Llama.load(qwen, { device: 'cpu' });
      try {
        expect(() => m.loadTokenizer()).to.throw(/tiny-qwen2\.gguf: the pre-tokenizer tokenizer.ggml.pre = "qwen2" is not supported.*pass --tokenizer/);
        expect(m.loadTokenizer(model).encode('Hello')).to.deep.equal(ref.encode('Hello'));
      } finally {
        m.dispose();
      }
      const r = run('generate', '--model', qwen, '--device', 'cpu', '--prompt', 'Hi', '--max-tokens', '2');
      expect(r.status).to.not.equal(0);
      expect(r.stderr).to.match(/"qwen2" is not supported/);
      const t = run('tokenize', '--model', path.join(dir, 'tiny.bin'), 'Hi');
      expect(t.status).to.not.equal(0);
      expect(t.stderr).to.match(/tiny\.bin is not a GGUF file/);
    });

    it('end of turn and end of message (tokenizer.ggml.eot_token_id, eom_token_id) end generation like EOS', async () => {
      const tokDir = path.join(dir, 'gpt2-1000');
      const plain = loadTokenizer(vocabGguf(tokDir, path.join(dir, 'no-eot.gguf')));
      expect(plain.stopIds).to.deep.equal([plain.eos]);
      const file = vocabGguf(tokDir, path.join(dir, 'eot.gguf'), [
        ['tokenizer.ggml.eot_token_id', { type: 'u32', value: 998 }],
        ['tokenizer.ggml.eom_token_id', { type: 'u32', value: 999 }],
      ]);
      expect(loadTokenizer(file).stopIds).to.deep.equal([plain.eos, 998, 999]);
      const bad = vocabGguf(tokDir, path.join(dir, 'bad-eot.gguf'), [['tokenizer.ggml.eot_token_id', { type: 'u32', value: 5000 }]]);
      expect(() => loadTokenizer(bad)).to.throw(/tokenizer\.ggml\.eot_token_id 5000 is not a token id \(vocabulary of 1001\)/);
      // generate() stops at a stop id: make a token of the greedy continuation the end of turn
      const m = await Llama.load(model, { device: 'cpu' });
      try {
        const tok = m.loadTokenizer() as BpeTokenizer;
        const ids = tok.encode('Once upon a time');
        const greedy: number[] = [];
        for await (const id of generateTokens(m, ids, { maxTokens: 12, temperature: 0, stopTokens: [] })) greedy.push(id);
        // the first token that did not come before (the random model repeats itself), else the first
        const at = Math.max(0, greedy.findIndex((id, i) => i > 0 && !greedy.slice(0, i).includes(id)));
        const eot = greedy[at];
        const withEot = new BpeTokenizer({ ...(ggufTokenizerModel(readGgufHeader(model)) as ByteBpeModel), eotId: eot });
        let text = '';
        for await (const piece of generate(m, withEot, 'Once upon a time', { maxTokens: 12, temperature: 0 })) text += piece;
        expect(text).to.equal(tok.decode(greedy.slice(0, at)));
        expect(at, 'the stop came before the last token').to.be.below(greedy.length);
      } finally {
        m.dispose();
      }
    });

    it('generate prints the greedy continuation the library computes; train and eval run', async () => {
      const m = await Llama.load(model, { device: 'cpu' });
      let want: string;
      try {
        const tok = m.loadTokenizer();
        expect(tok).to.be.instanceOf(BpeTokenizer);
        const ids = tok.encode('Once upon a time', { bos: true });
        expect(ids).to.deep.equal(ref.encode('Once upon a time')); // GPT-2 adds no BOS
        const out: number[] = [];
        for await (const id of generateTokens(m, ids, { maxTokens: 12, temperature: 0, stopTokens: [tok.eos] })) out.push(id);
        expect(out.length, 'the random model stops at once').to.be.above(3);
        want = tok.decode(out);
        expect(want.length).to.be.above(0);
      } finally {
        m.dispose();
      }
      const g = run('generate', '--model', model, '--device', 'cpu', '--prompt', 'Once upon a time', '--max-tokens', '12', '--temperature', '0');
      expect(g.status, g.stderr).to.equal(0);
      expect(g.stdout).to.include(want);
      const data = path.join(dir, 'train.jsonl');
      fs.writeFileSync(data, makeDemoDataset({ count: 8, seed: 1 }).map((r) => JSON.stringify(r)).join('\n') + '\n');
      const out = path.join(dir, 'run');
      const t = run('train', '--model', model, '--device', 'cpu', '--data', data, '--out', out, '--adapter-layers', '1', '--adapter-len', '4', '--batch-size', '4', '--max-steps', '2', '--seed', '3');
      expect(t.status, t.stderr).to.equal(0);
      const e = run('eval', '--model', model, '--device', 'cpu', '--data', data, '--adapter', path.join(out, 'adapter.safetensors'));
      expect(e.status, e.stderr).to.equal(0);
      expect(JSON.parse(e.stdout).loss).to.be.a('number');
    });
  });
});
