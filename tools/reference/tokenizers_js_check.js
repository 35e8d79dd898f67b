#!/usr/bin/env node
// A second, independent reference for the tokenizer golden file: Hugging Face's own JavaScript
// tokenizers (@huggingface/tokenizers, "Tokenizers.js", a port of the Rust `tokenizers` pipeline:
// BertNormalizer, BertPreTokenizer, ByteLevel, BPE, WordPiece) run on the complete tokenizer.json
// folders of test/golden/text-tokenizers. It is not a dependency of this project: fetch it with
//   (cd /tmp && npm pack @huggingface/tokenizers@0.2.0 && tar xzf huggingface-tokenizers-0.2.0.tgz)
// then, from the repository root:
//   node tools/reference/tokenizers_js_check.js /tmp/package test/golden/text-tokenizers
// It asserts that its ids (without special tokens) equal the Python reference's for every string,
// and records them in golden.json under "tokenizersJs" (lib/text is then tested against both).
// Tokenizers.js gives no character offsets; those are checked against the Python reference only.
const fs = require('fs');
const path = require('path');
const [pkg, dir] = process.argv.slice(2);
const { Tokenizer } = require(path.resolve(pkg, 'dist', 'tokenizers.cjs'));
const version = JSON.parse(fs.readFileSync(path.join(pkg, 'package.json'), 'utf8')).version;
const goldenPath = path.join(dir, 'golden.json');
const golden = JSON.parse(fs.readFileSync(goldenPath, 'utf8'));
golden.tokenizersJs = { package: `@huggingface/tokenizers@${version}`, folders: {} };
for (const name of ['roberta-json', 'bert-json']) {
  const tj = JSON.parse(fs.readFileSync(path.join(dir, name, 'tokenizer.json'), 'utf8'));
  const tc = JSON.parse(fs.readFileSync(path.join(dir, name, 'tokenizer_config.json'), 'utf8'));
  const tok = new Tokenizer(tj, tc);
  const ids = golden.strings.map((s) => Array.from(tok.encode(s, { add_special_tokens: false }).ids));
  ids.forEach((got, i) => {
    const want = golden.folders[name].cases[i].ids;
    if (JSON.stringify(got) !== JSON.stringify(want))
      throw new Error(`${name}: string ${i} ${JSON.stringify(golden.strings[i])}: tokenizers.js ${JSON.stringify(got)} != python ${JSON.stringify(want)}`);
  });
  const pair = Array.from(tok.encode('Hello world', { text_pair: 'free software', add_special_tokens: true }).ids);
  golden.tokenizersJs.folders[name] = { ids, pairHelloWorldFreeSoftware: pair };
  console.log(`${name}: ${ids.length} strings agree with the Python reference; pair ${JSON.stringify(pair)}`);
}
fs.writeFileSync(goldenPath, JSON.stringify(golden));
