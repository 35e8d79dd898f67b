// llama.cpp's own greedy decode of a GGUF file, through node-llama-cpp's prebuilt llama.cpp (see
// bench/fetch-llama-cpp.sh), timed as bench/gguf.ts times ours: from BOS, the clock starts when the
// first generated token is out. One JSON line on stdout.
//
//   node bench/llama-cpp-decode.mjs NODE_LLAMA_CPP_DIR MODEL.gguf STEPS THREADS
import { createRequire } from 'module';
import * as path from 'path';

const [dir, file, stepsArg, threadsArg] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(dir), 'package.json'));
const { getLlama } = await import(require.resolve('node-llama-cpp'));
const steps = Number(stepsArg), threads = Number(threadsArg);
const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' });
const model = await llama.loadModel({ modelPath: file });
const ctx = await model.createContext({ contextSize: steps + 8, threads, batchSize: 8 });
const seq = ctx.getSequence();
const stamps = [];
for await (const _ of seq.evaluate([model.tokens.bos], { temperature: 0 })) {
  stamps.push(performance.now());
  if (stamps.length >= steps) break;
}
const tokPerS = (stamps.length - 1) / ((stamps[stamps.length - 1] - stamps[0]) / 1000);
console.log(JSON.stringify({ tokPerS, steps: stamps.length, version: llama.llamaCppRelease?.release ?? 'unknown' }));
process.exit(0);
