// Byte-level BPE tokenization (GGUF tokenizer.ggml.model "gpt2"): speed of our encoder on 1 MB of
// English text (the Alpaca records in ../shared/data/alpaca), and agreement with llama.cpp.
//
//   node dist/bench/bpe-tokenize.js [--mb N] [--runs N]
//
// The vocabularies are GPT-2's and cl100k_base's ranks from js-tiktoken (a devDependency), written
// as vocabulary-only GGUF files by tools/to-gguf's metadata writer (test/util/tiktoken-vocab.ts):
// GPT-2's with pre "gpt-2" and also "default", cl100k_base's with pre "llama-bpe". For each, the
// encode time of a fresh tokenizer (every word merged once, then cached) and of a second pass
// (all words cached), beside js-tiktoken's time on the same text; the best of --runs (default 3). When node-llama-cpp is installed
// (bench/fetch-llama-cpp.sh; NODE_LLAMA_CPP_DIR names another folder), llama.cpp tokenizes the
// same records and the test corpus with the same files, and the ids are compared record by record.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { BpeTokenizer, loadTokenizer } from '../lib/tokenizer';
import { modelMetadata, tokenizerMetadata } from '../tools/to-gguf';
import { GgufMeta, writeGguf } from '../tools/gguf-writer';
import { TiktokenName, writeTiktokenFolder } from '../test/util/tiktoken-vocab';
import { CORPUS } from '../test/util/bpe-corpus';
import { dataDir, outDir } from './decode';
import { formatTable } from './table';

const mbAt = process.argv.indexOf('--mb');
const mb = mbAt > 0 ? Number(process.argv[mbAt + 1]) : 1;
if (!(mb > 0)) throw new Error('--mb must be a positive number');
const runsAt = process.argv.indexOf('--runs');
const runs = runsAt > 0 ? Number(process.argv[runsAt + 1]) : 3;
if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs must be a positive integer');
const records = ['alpaca_small.json', 'alpaca_en_demo.json'].flatMap(
  (f) => JSON.parse(fs.readFileSync(path.join(dataDir, 'alpaca', f), 'utf8')) as { instruction: string; input: string; output: string }[],
);
const texts = records.map((r) => `${r.instruction}\n\n${r.input}\n\n${r.output}`);
let text = texts.join('\n\n');
if (text.length < mb * 1e6) throw new Error(`only ${text.length} characters of Alpaca text`);
text = text.slice(0, mb * 1e6);
const llamaCppDir = process.env.NODE_LLAMA_CPP_DIR ?? path.join(outDir, 'node-llama-cpp');
const haveLlamaCpp = fs.existsSync(path.join(llamaCppDir, 'node_modules', 'node-llama-cpp'));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bpe-bench-'));

const seconds = (f: () => void): number => {
  const t0 = process.hrtime.bigint();
  f();
  return Number(process.hrtime.bigint() - t0) / 1e9;
};

const rows: string[][] = [];
const notes: string[] = [];
try {
  for (const [name, pre] of [['gpt2', 'gpt-2'], ['gpt2', 'default'], ['cl100k_base', 'llama-bpe']] as [TiktokenName, string][]) {
    const folder = path.join(tmp, name);
    const ref = fs.existsSync(folder) ? undefined : writeTiktokenFolder(folder, name);
    const vocab = tokenizerMetadata(folder, { pre });
    const nTokens = (vocab.find(([k]) => k === 'tokenizer.ggml.tokens')![1].value as string[]).length;
    // llama.cpp wants a model's hyper-parameters even for its vocabulary alone
    const config = { dim: 64, hiddenDim: 128, nLayers: 1, nHeads: 4, nKvHeads: 4, vocabSize: nTokens, maxSeqLen: 128, normEps: 1e-5, ropeTheta: 10000, ropeLayout: 'interleaved' as const, tiedEmbeddings: true };
    const file = path.join(tmp, `${name}-${pre}.gguf`);
    writeGguf(file, [...modelMetadata(config, name), ...(vocab as [string, GgufMeta][])], []);
    // a first instance warms up the JIT on other text, so that the first pass below times the merging
    loadTokenizer(file).encode(CORPUS.join('\n').repeat(20));
    // best of --runs: on a shared machine the best run is the least disturbed one
    let tok = loadTokenizer(file);
    let ids: number[] = [];
    let [load, cold, warm, tiktoken] = [Infinity, Infinity, Infinity, ref ? Infinity : NaN];
    for (let run = 0; run < runs; run++) {
      load = Math.min(load, seconds(() => (tok = loadTokenizer(file))));
      cold = Math.min(cold, seconds(() => (ids = tok.encode(text))));
      warm = Math.min(warm, seconds(() => tok.encode(text)));
      if (ref) tiktoken = Math.min(tiktoken, seconds(() => ref.encode(text, [], [])));
    }
    if (tok.decode(ids) !== text) throw new Error(`${name} ${pre}: decode(encode(text)) differs from the text`);
    const row = [name, pre, String(ids.length), load.toFixed(2), `${(ids.length / cold / 1e3).toFixed(0)}k`, `${(ids.length / warm / 1e3).toFixed(0)}k`, Number.isNaN(tiktoken) ? '' : `${(ids.length / tiktoken / 1e3).toFixed(0)}k`];
    if (haveLlamaCpp) {
      const inputs = path.join(tmp, 'texts.json');
      const all = [...CORPUS, ...texts];
      fs.writeFileSync(inputs, JSON.stringify(all));
      const out = path.join(tmp, 'ids.json');
      const llamaCpp = (special: boolean) => {
        const r = spawnSync(process.execPath, [path.join(__dirname, '..', '..', 'bench', 'llama-cpp-tokenize.mjs'), llamaCppDir, file, inputs, special ? '1' : '0', out], { encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`llama-cpp-tokenize failed: ${r.stderr}`);
        return JSON.parse(fs.readFileSync(out, 'utf8')) as { ids: number[][]; ms: number };
      };
      // the texts as text, and with control tokens parsed (special: true / parse_special)
      let differ = 0;
      for (const special of [false, true]) {
        const got = llamaCpp(special);
        all.forEach((t, i) => {
          if (JSON.stringify((tok as BpeTokenizer).encode(t, { special })) !== JSON.stringify(got.ids[i]))
            if (differ++ < 3) notes.push(`${name}/${pre}${special ? ' (special)' : ''}: differs from llama.cpp on ${JSON.stringify(t.slice(0, 80))}`);
        });
        if (!special) notes.push(`llama.cpp (node-llama-cpp) tokenized the ${all.length} texts (${name}/${pre}) in ${(got.ms / 1e3).toFixed(2)} s`);
      }
      row.push(`${2 * all.length - differ}/${2 * all.length}`);
    }
    rows.push(row);
  }
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
const head = ['vocabulary', 'pre', 'tokens in text', 'load s', 'encode tok/s (first pass)', 'encode tok/s (cached)', 'js-tiktoken tok/s'];
if (haveLlamaCpp) head.push('same ids as llama.cpp (texts x special off/on)');
if (!haveLlamaCpp) notes.push(`node-llama-cpp not found in ${llamaCppDir} (bench/fetch-llama-cpp.sh): no comparison with llama.cpp`);
const title = `Byte-level BPE encode: ${(text.length / 1e6).toFixed(1)} MB of Alpaca text (${records.length} records), Node ${process.version}, 1 thread`;
console.log(formatTable({ title, columns: head, rows, align: head.map((_, i) => (i < 2 ? 'l' : 'r')), notes }));
