// The SQuAD measurement of issue 14 (README "Extractive QA with RoBERTa/BERT"): no pretrained
// RoBERTa or SQuAD can be fetched here, so
//   data:    a SQuAD v1.1 set built from real text that ships in a Debian package — the licence texts
//            of base-files (/usr/share/common-licenses/{GPL-3,GPL-2,Apache-2.0,MPL-2.0}): every
//            paragraph of 150..1500 characters is a context; up to two sentences of it become cloze
//            questions (a word of >= 5 letters replaced by "what", the word the answer); contexts are
//            split 85/15 into train / held-out eval by a seeded shuffle
//   encoder: a random-initialised RoBERTa (matrices ~ N(0, 1/fan_in), embeddings N(0, 1); --init-bert:
//            N(0, 0.02) everywhere; lib/text/random-folder.ts) with the
//            byte-level BPE of test/golden/text-tokenizers/roberta (400 merges learnt on GPL-3)
//   runs:    zero-init gated prompts, head only, random-init gates (same seed, steps, lr)
// Usage: node dist/scripts/squad-measure.js OUT [--steps N] [--layers L] [--threads T] [--init-bert]
// Writes OUT/{train,eval}.json, OUT/encoder/, OUT/<run>/ and prints one JSON summary.
import * as fs from 'fs';
import * as path from 'path';
import { native } from '../lib/native';
import { buildClozeSquad } from '../tools/make-cloze-squad';
import { writeRandomTextFolder } from '../lib/text/random-folder';
import { TextEncoderModel } from '../lib/text/encoder';
import { loadSquad } from '../lib/data/squad';
import { evaluateSquad, trainSquad, disposeParams, SquadStep } from '../lib/tasks/squad';

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const out = args[0];
  if (!out) throw new Error('usage: squad-measure OUT [--steps N] [--layers L] [--threads T]');
  const flag = (n: string, d: number) => (args.includes(n) ? Number(args[args.indexOf(n) + 1]) : d);
  const steps = flag('--steps', 120);
  const layers = flag('--layers', 4);
  const init = args.includes('--init-bert') ? ('bert' as const) : ('fan-in' as const);
  if (args.includes('--threads')) native.setThreads(flag('--threads', 2));
  fs.mkdirSync(out, { recursive: true });
  const { train, eval: ev, counts } = buildClozeSquad(7);
  fs.writeFileSync(path.join(out, 'train.json'), JSON.stringify(train));
  fs.writeFileSync(path.join(out, 'eval.json'), JSON.stringify(ev));
  const encDir = path.join(out, 'encoder');
  writeRandomTextFolder(encDir, {
    family: 'roberta', tokenizerDir: path.join(__dirname, '..', '..', 'test', 'golden', 'text-tokenizers', 'roberta'),
    hidden: 128, layers: 4, heads: 4, ffn: 512, maxTokens: 192, qaHead: false, seed: 11, init,
  });
  const enc = await TextEncoderModel.load(encDir, { device: 'cpu' });
  const trainData = loadSquad(path.join(out, 'train.json'));
  const evalData = loadSquad(path.join(out, 'eval.json'));
  const win = { maxSeqLen: 192, docStride: 64, maxQueryLen: 64 };
  const runs = [
    { name: 'zero-init gates', layers, gateInit: 'zero' as const },
    { name: 'head only', layers: 0, gateInit: 'zero' as const },
    { name: 'random-init gates', layers, gateInit: 'random' as const },
  ];
  const results: Record<string, unknown>[] = [];
  for (const r of runs) {
    const log: SquadStep[] = [];
    const t0 = Date.now();
    const p = await trainSquad(enc, trainData, {
      ...win, layers: r.layers, promptLen: 10, gateInit: r.gateInit, epochs: 1000, maxSteps: steps, batchSize: 16, lr: 1e-2,
      weightDecay: 0.02, warmupSteps: Math.floor(steps / 10), seed: 0,
    }, (s) => {
      log.push(s);
      if (s.step % 20 === 0) process.stderr.write(`${r.name}: step ${s.step}/${s.totalSteps} loss ${s.loss.toFixed(4)} ${s.ms} ms\n`);
    });
    const trainS = (Date.now() - t0) / 1000;
    const before = await evaluateSquad(enc, p, evalData, win, false, 32);
    const onTrain = await evaluateSquad(enc, p, trainData, win, false, 32);
    disposeParams(p);
    const mean = (a: SquadStep[]) => a.reduce((s, x) => s + x.loss, 0) / a.length;
    results.push({
      run: r.name, steps, firstLoss: mean(log.slice(0, 5)), lastLoss: mean(log.slice(-5)),
      eval: { exact_match: before.exact_match, f1: before.f1 }, train: { exact_match: onTrain.exact_match, f1: onTrain.f1 },
      trainSeconds: trainS, msPerStep: log.slice(5).reduce((s, x) => s + x.ms, 0) / Math.max(1, log.length - 5),
    });
    fs.writeFileSync(path.join(out, `${r.name.replace(/ /g, '-')}.jsonl`), log.map((s) => JSON.stringify(s)).join('\n') + '\n');
    process.stderr.write(JSON.stringify(results[results.length - 1]) + '\n');
  }
  enc.dispose();
  process.stdout.write(JSON.stringify({ data: counts, encoder: `random-init RoBERTa 4x128, 4 heads, ffn 512 (seed 11, init ${init})`, windows: win, results }, null, 1) + '\n');
}

if (require.main === module)
  main().catch((e) => {
    process.stderr.write(`squad-measure: ${(e as Error).message}\n`);
    process.exitCode = 1;
  });
