// The quick start's main job: adapt stories260K (a 260K-parameter TinyStories model) to follow
// "Write a story about {name} who likes {thing}." and show that it worked — held-out loss and
// how often the story uses the asked name (names never seen in training), before and after.
//
//   node dist/scripts/demo.js [--out runs/demo] [--model PATH] [--tokenizer PATH] [--epochs N] [--quick]
import * as fs from 'fs';
import * as path from 'path';
import { parseArgs } from 'util';
import { AlpacaRecord, promptOf, tokenizeRecords } from '../lib/data/alpaca';
import { storyUsesName } from '../lib/data/demo';
import { generate } from '../lib/generate/generate';
import { Adapter } from '../lib/model/adapter';
import { Llama } from '../lib/model/llama';
import { loadTokenizer, Tokenizer } from '../lib/tokenizer';
import { attachProgress } from '../lib/cli/progress';
import { resolveTrainConfig } from '../lib/train/config';
import { evaluateLoss, Trainer } from '../lib/train/trainer';
import { writeDemoData } from '../tools/make-demo-data';

const root = path.resolve(__dirname, '..', '..');
const shared = process.env.LLAMA_ADAPTER_DATA ?? path.resolve(root, '..', 'shared', 'data');

/** The name and the thing a demo instruction asks for. */
function askedFor(r: AlpacaRecord): { name: string; thing: string } {
  const m = /^Write a story about (\S+) who likes (.+)\.$/.exec(r.instruction);
  if (!m) throw new Error(`not a demo instruction: ${r.instruction}`);
  return { name: m[1], thing: m[2] };
}

interface Measured {
  loss: number;
  tokens: number;
  usesName: number;
  usesThing: number;
  asked: number;
  samples: { instruction: string; text: string }[];
}

async function measure(model: Llama, tok: Tokenizer, adapter: Adapter | undefined, test: AlpacaRecord[], n: number): Promise<Measured> {
  const { examples } = tokenizeRecords(tok, test, { maxSeqLen: model.config.maxSeqLen, warn: () => {} });
  const { loss, tokens } = await evaluateLoss(model, adapter, examples, 16);
  model.setAdapter(adapter);
  let usesName = 0;
  let usesThing = 0;
  const samples: Measured['samples'] = [];
  try {
    for (const r of test.slice(0, n)) {
      let text = '';
      for await (const piece of generate(model, tok, promptOf(r), { temperature: 0, maxTokens: 80 })) text += piece;
      const { name, thing } = askedFor(r);
      if (storyUsesName(text, name)) usesName++;
      if (storyUsesName(text, thing)) usesThing++;
      if (samples.length < 3) samples.push({ instruction: r.instruction, text: text.trim() });
    }
  } finally {
    model.setAdapter(undefined);
  }
  return { loss, tokens, usesName, usesThing, asked: Math.min(n, test.length), samples };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      out: { type: 'string', default: path.join(root, 'runs', 'demo') },
      model: { type: 'string', default: path.join(shared, 'stories260K', 'stories260K.bin') },
      tokenizer: { type: 'string', default: path.join(shared, 'stories260K', 'tok512.bin') },
      epochs: { type: 'string', default: '3' },
      quick: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const out = values.out!;
  const quick = values.quick!;
  const dataDir = path.join(out, 'data');
  const { files, splits } = writeDemoData(dataDir, { seed: 0, train: quick ? 200 : 2000, val: 50, test: 100, overwrite: true });
  const [trainFile, valFile] = files;
  const probe = quick ? 10 : 50;
  console.log(`demo data: ${splits.train.length} training stories, held-out names in ${splits.test.length} test instructions (${dataDir})`);

  const model = await Llama.load(values.model!);
  const tok = loadTokenizer(values.tokenizer!);
  try {
    console.log('measuring the frozen model ...');
    const before = await measure(model, tok, undefined, splits.test, probe);

    const cfg = resolveTrainConfig({
      model: values.model!,
      tokenizer: values.tokenizer!,
      data: trainFile,
      'val-data': valFile,
      out: path.join(out, 'run'),
      'adapter-layers': '5',
      'adapter-len': '10',
      epochs: quick ? '1' : values.epochs!,
      'batch-size': '16',
      'grad-accum': '1',
      lr: '2e-2',
      'warmup-epochs': '0.2',
      'eval-every': quick ? '0' : '50',
      seed: '0',
    });
    const trainer = await Trainer.create(cfg, (m) => console.log(m));
    attachProgress(trainer, process.stdout);
    let adapterPath: string;
    try {
      adapterPath = (await trainer.run()).adapterPath;
    } finally {
      trainer.dispose();
    }
    const adapter = Adapter.load(adapterPath, model.config);
    let after: Measured;
    try {
      console.log('measuring the adapted model ...');
      after = await measure(model, tok, adapter, splits.test, probe);
    } finally {
      adapter.dispose();
    }

    const pct = (k: number, m: Measured) => `${k}/${m.asked} (${Math.round((100 * k) / m.asked)}%)`;
    console.log('\n| held-out test set (unseen names) | frozen stories260K | + adapter |');
    console.log('|---|---|---|');
    console.log(`| mean cross-entropy of the stories (${before.tokens} tokens) | ${before.loss.toFixed(4)} | ${after.loss.toFixed(4)} |`);
    console.log(`| greedy story uses the asked name | ${pct(before.usesName, before)} | ${pct(after.usesName, after)} |`);
    console.log(`| greedy story uses the asked thing | ${pct(before.usesThing, before)} | ${pct(after.usesThing, after)} |`);
    for (let i = 0; i < before.samples.length; i++) {
      console.log(`\n${before.samples[i].instruction}`);
      console.log(`  frozen : ${JSON.stringify(before.samples[i].text.slice(0, 200))}`);
      console.log(`  adapted: ${JSON.stringify(after.samples[i].text.slice(0, 200))}`);
    }
    fs.writeFileSync(path.join(out, 'results.json'), JSON.stringify({ before, after, adapter: adapterPath }, null, 2) + '\n');
    console.log(`\nadapter: ${adapterPath}`);
    console.log(
      `try it:  node dist/lib/cli/main.js generate --model ${values.model} --tokenizer ${values.tokenizer} ` +
        `--adapter ${adapterPath} --temperature 0 --instruction "Write a story about Omar who likes cakes."`,
    );
  } finally {
    model.dispose();
  }
}

main().catch((err) => {
  console.error(`demo: error: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
