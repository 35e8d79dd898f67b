// SQuAD training-step throughput (issue 14) on the CPU: the same batches as bench/torch_squad_step.py
// (PyTorch float32, padded batches with an attention mask, autograd), and the cost of packing vs
// padding in this engine.
//   encoder: random-init RoBERTa with a QA head (lib/text/random-folder.ts, fan-in scaled), --hidden/--layers
//   data:    the cloze SQuAD set of scripts/squad-measure.ts (Debian's licence texts), windows of
//            --max-seq-len 192 tokens, stride 64, in file order, --batch windows per step
//   trained: prompts (K = 10) + random-init gates in the top --adapt layers and the span head
// Usage: node dist/bench/squad-step.js OUT [--hidden 256] [--heads C/64] [--layers 4] [--adapt 4]
//        [--batch 16] [--steps 10] [--max-seq-len 192] [--threads 2]
// Writes OUT/batches.json (ids, types, offsets, targets, the initial parameters) for the PyTorch
// script and prints {"ms_per_step", "tokens_per_s", losses, packed vs padded forward ms}.
import './blas-choice'; // first: before the addon loads
import * as fs from 'fs';
import * as path from 'path';
import { native } from '../lib/native';
import { writeRandomTextFolder } from '../lib/text/random-folder';
import { TextBatchIndex, TextEncoderModel, TextEncoderGraph } from '../lib/text/encoder';
import { loadSquad } from '../lib/data/squad';
import { batchOf, initParams, makeFeatures, squadOptimizer, paramValues, squadStep, disposeParams } from '../lib/tasks/squad';
import { buildClozeSquad } from '../tools/make-cloze-squad';

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const out = args[0];
  if (!out) throw new Error('usage: squad-step OUT [--hidden C] [--layers N] [--adapt L] [--batch B] [--steps S] [--threads T]');
  const flag = (n: string, d: number) => (args.includes(n) ? Number(args[args.indexOf(n) + 1]) : d);
  const C = flag('--hidden', 256);
  const nLayers = flag('--layers', 4);
  const L = flag('--adapt', 4);
  const B = flag('--batch', 16);
  const steps = flag('--steps', 10);
  const threads = flag('--threads', 2);
  const heads = flag('--heads', Math.max(1, C / 64));
  const maxSeqLen = flag('--max-seq-len', 192);
  native.setThreads(threads);
  fs.mkdirSync(out, { recursive: true });
  const { train } = buildClozeSquad(7);
  fs.writeFileSync(path.join(out, 'train.json'), JSON.stringify(train));
  const encDir = path.join(out, 'encoder');
  writeRandomTextFolder(encDir, {
    family: 'roberta', tokenizerDir: path.join(__dirname, '..', '..', 'test', 'golden', 'text-tokenizers', 'roberta'),
    hidden: C, layers: nLayers, heads, ffn: 4 * C, maxTokens: maxSeqLen, qaHead: true, seed: 5, init: 'fan-in',
  });
  const enc = await TextEncoderModel.load(encDir, { device: 'cpu' });
  const data = loadSquad(path.join(out, 'train.json'));
  const feats = makeFeatures(data.examples, enc.tokenizer!, { maxSeqLen, docStride: Math.floor(maxSeqLen / 3), maxQueryLen: Math.min(64, Math.floor(maxSeqLen / 3)) });
  const batches = Array.from({ length: steps + 2 }, (_, s) => feats.slice(s * B, (s + 1) * B));
  const p = await initParams(enc, L, 10, 'random', 0);
  const init = await paramValues(p);
  fs.writeFileSync(path.join(out, 'batches.json'), JSON.stringify({
    adapt: L, K: 10, lr: 1e-3, weightDecay: 0.02,
    params: init.map((v) => Array.from(v)),
    batches: batches.map((b) => ({ ...batchOf(b), ids: Array.from(batchOf(b).ids), types: Array.from(batchOf(b).types), start: b.map((f) => f.startPos), end: b.map((f) => f.endPos) })),
  }));
  const graph = new TextEncoderGraph(enc, L);
  const opt = squadOptimizer(p, 0.02);
  const losses: number[] = [];
  const norms: number[] = [];
  let ms = 0;
  let tokens = 0;
  for (let s = 0; s < batches.length; s++) {
    const t0 = process.hrtime.bigint();
    const r = await squadStep(enc, p, graph, opt, batches[s], 1e-3);
    const dt = Number(process.hrtime.bigint() - t0) / 1e6;
    losses.push(r.loss);
    norms.push(r.gradNorm);
    if (s >= 2) {
      ms += dt;
      tokens += r.tokens;
    }
  }
  // packing vs padding: the frozen forward of the same windows, packed (one segment per window) and
  // padded to the longest window (what a padded batch with a mask computes)
  const fwd = async (padded: boolean) => {
    let total = 0;
    let toks = 0;
    for (const b of batches.slice(2)) {
      const T = Math.max(...b.map((f) => f.ids.length));
      const w = padded
        ? b.map((f) => ({ ...f, ids: Int32Array.from({ length: T }, (_, i) => (i < f.ids.length ? f.ids[i] : enc.tokenizer!.padId)), types: new Int32Array(T) }))
        : b;
      const idx = new TextBatchIndex(batchOf(w), enc.config);
      const t0 = process.hrtime.bigint();
      const h = enc.forward(idx);
      await h.read();
      total += Number(process.hrtime.bigint() - t0) / 1e6;
      toks += idx.N;
      h.dispose();
      idx.dispose();
    }
    return { ms: total / (batches.length - 2), tokens: toks / (batches.length - 2) };
  };
  const packed = await fwd(false);
  const padded = await fwd(true);
  opt.dispose();
  disposeParams(p);
  enc.dispose();
  process.stdout.write(JSON.stringify({
    engine: 'llama-adapter CPU', threads, encoder: `random-init RoBERTa ${nLayers}x${C}, ${heads} heads`, adapt: L, batch: B, steps,
    ms_per_step: ms / steps, tokens_per_s: (tokens * 1000) / ms, losses, grad_norms: norms,
    forward: { packed, padded },
  }, null, 1) + '\n');
}

main().catch((e) => {
  process.stderr.write(`squad-step: ${(e as Error).stack}\n`);
  process.exitCode = 1;
});
