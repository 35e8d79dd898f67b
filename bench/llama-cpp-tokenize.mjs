// llama.cpp's own tokenization of texts with the vocabulary of a GGUF file, through node-llama-cpp's
// prebuilt llama.cpp (see bench/fetch-llama-cpp.sh): for bench/bpe-tokenize.ts's comparison.
// Reads a JSON array of strings, writes a JSON array of id arrays (no BOS; control tokens parsed
// when SPECIAL is 1), and the milliseconds the tokenization took.
//
//   node bench/llama-cpp-tokenize.mjs NODE_LLAMA_CPP_DIR MODEL.gguf TEXTS.json SPECIAL OUT.json
import { createRequire } from 'module';
import * as fs from 'fs';
import * as path from 'path';

const [dir, file, textsFile, special, outFile] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(dir), 'package.json'));
const { getLlama } = await import(require.resolve('node-llama-cpp'));
// logLevel 'disabled': a vocabulary-only file makes llama.cpp complain about the missing weights
const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'disabled' });
const model = await llama.loadModel({ modelPath: file, vocabOnly: true });
const texts = JSON.parse(fs.readFileSync(textsFile, 'utf8'));
const t0 = performance.now();
const ids = texts.map((t) => Array.from(model.tokenize(t, special === '1')));
const ms = performance.now() - t0;
fs.writeFileSync(outFile, JSON.stringify({ ids, ms, version: llama.llamaCppRelease?.release ?? 'unknown' }));
process.exit(0);
