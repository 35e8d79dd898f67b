// The RoBERTa (byte-level BPE) and BERT (WordPiece) tokenizers against the ids and character
// offsets of tools/reference/text_tokenizer_reference.py (an independent Python implementation of
// GPT-2's encoder.py and BERT's tokenization.py) on vocabularies built from real text, with
// vocab.json + merges.txt, tokenizer.json, and vocab.txt + tokenizer_config.json (cased/uncased);
// and the ids against Hugging Face's own tokenizers.js (tools/reference/tokenizers_js_check.js).
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadTextTokenizer } from '../lib/text/tokenizer';
import { repoRoot } from './util/paths';

const dir = path.join(repoRoot, 'test', 'golden', 'text-tokenizers');
const golden = JSON.parse(fs.readFileSync(path.join(dir, 'golden.json'), 'utf8'));

/** code point offset -> UTF-16 offset of `s` */
function utf16Of(s: string): (cp: number) => number {
  const map: number[] = [];
  let u = 0;
  for (const ch of s) {
    map.push(u);
    u += ch.length;
  }
  map.push(u);
  return (cp) => map[cp];
}

describe('text tokenizers against the reference implementation', () => {
  for (const name of Object.keys(golden.folders)) {
    const g = golden.folders[name];
    it(`${name}: ids and offsets of ${golden.strings.length} strings`, () => {
      const tok = loadTextTokenizer(path.join(dir, name), g.kind === 'bpe' ? 'roberta' : 'bert');
      expect(tok.kind).to.equal(g.kind);
      expect(tok.vocabSize).to.equal(g.vocabSize);
      let tokens = 0;
      golden.strings.forEach((s: string, i: number) => {
        const e = tok.encode(s);
        const want = g.cases[i];
        expect(e.ids, `ids of string ${i} ${JSON.stringify(s)}`).to.deep.equal(want.ids);
        const u = utf16Of(s);
        expect(e.offsets, `offsets of string ${i}`).to.deep.equal(want.offsets.map(([a, b]: number[]) => [u(a), u(b)]));
        tokens += e.ids.length;
      });
      expect(tokens).to.be.above(100);
    });
  }

  for (const name of Object.keys(golden.tokenizersJs.folders))
    it(`${name}: ids and the pair encoding equal Hugging Face's tokenizers.js (${golden.tokenizersJs.package})`, () => {
      const t = golden.tokenizersJs.folders[name];
      const tok = loadTextTokenizer(path.join(dir, name), name.startsWith('roberta') ? 'roberta' : 'bert');
      golden.strings.forEach((s: string, i: number) => expect(tok.encode(s).ids, `string ${i}`).to.deep.equal(t.ids[i]));
      expect(tok.pair(tok.encode('Hello world').ids, tok.encode('free software').ids).ids).to.deep.equal(t.pairHelloWorldFreeSoftware);
    });

  it('pairs: <s> a </s></s> b </s> for RoBERTa, [CLS] a [SEP] b [SEP] with token types for BERT', () => {
    const r = loadTextTokenizer(path.join(dir, 'roberta'), 'roberta');
    const p = r.pair([10, 11], [12]);
    expect(p.ids).to.deep.equal([0, 10, 11, 2, 2, 12, 2]);
    expect(p.bStart).to.equal(5);
    expect(p.types).to.deep.equal([0, 0, 0, 0, 0, 0, 0]);
    const b = loadTextTokenizer(path.join(dir, 'bert-uncased'), 'bert');
    const q = b.pair([10, 11], [12]);
    expect(q.ids).to.deep.equal([b.clsId, 10, 11, b.sepId, 12, b.sepId]);
    expect(q.bStart).to.equal(4);
    expect(q.types).to.deep.equal([0, 0, 0, 0, 1, 1]);
  });

  it('offsets give back the text of each token (uncased WordPiece maps to the original characters)', () => {
    const b = loadTextTokenizer(path.join(dir, 'bert-uncased'), 'bert');
    const s = 'Café RÉSUMÉ, software.';
    const e = b.encode(s);
    const words = e.offsets.map(([a, z]) => s.slice(a, z));
    expect(words.join('|')).to.match(/^Caf\|é\|.*\|,\|software\|\.$/);
  });

  it('a folder without its files, or with the wrong model type, is a clear error', () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tok-'));
    try {
      expect(() => loadTextTokenizer(tmp, 'roberta')).to.throw(/no tokenizer\.json and no vocab\.json/);
      expect(() => loadTextTokenizer(tmp, 'bert')).to.throw(/no tokenizer\.json and no vocab\.txt/);
      fs.copyFileSync(path.join(dir, 'roberta-json', 'tokenizer.json'), path.join(tmp, 'tokenizer.json'));
      expect(() => loadTextTokenizer(tmp, 'bert')).to.throw(/expected a WordPiece model for a BERT folder, got "BPE"/);
      fs.writeFileSync(path.join(tmp, 'tokenizer.json'), '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}}');
      expect(() => loadTextTokenizer(tmp, 'roberta')).to.throw(/merge 0 "a" is not two tokens/);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});
