// The quick start's main job: adapt stories260K (a 260K-parameter TinyStories model) to follow
// "Write a story about {name} who likes {thing}." and show that it worked — held-out loss and
// how often the story uses the asked name (names never seen in training), before and after.
//
//   node dist/scripts/demo.js [--out runs/demo] [--model PATH] [--tokenizer PATH] [--epochs N] [--quick]
import * as fs from 'fs';
import * as path from 'path';
import { parseArgs } from 'util';
import { AlpacaRecord, promptOf, tokenizeRecords } from '../lib/data/alpaca';
import { DEMO_THINGS, DEMO_TRAIN_NAMES, demoInstruction, storyUsesName } from '../lib/data/demo';
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

interface FollowRate {
  usesName: number;
  usesThing: number;
  asked: number;
  samples: { instruction: string; text: string }[];
}

interface Measured {
  loss: number; // held-out stories, mean cross-entropy
  tokens: number;
  unseenNames: FollowRate; // names never seen in training
  newPairs: FollowRate; // training names with things they were never paired with
}

/** Instructions pairing training names with things they were never paired with in training. */
function newPairs(train: AlpacaRecord[], n: number): AlpacaRecord[] {
  const seen = new Set(train.map((r) => r.instruction));
  const out: AlpacaRecord[] = [];
  for (let i = 0; out.length < n && i < 100 * n; i++) {
    const who = DEMO_TRAIN_NAMES[(i * 7) % DEMO_TRAIN_NAMES.length];
    const instruction = demoInstruction(who.name, DEMO_THINGS[(i * 11 + 3) % DEMO_THINGS.length]);
    if (!seen.has(instruction)) out.push({ instruction, output: '' });
  }
  return out;
}

/** How often greedy stories use the asked name and thing. */
async function followRate(model: Llama, tok: Tokenizer, records: AlpacaRecord[]): Promise<FollowRate> {
  let usesName = 0;
  let usesThing = 0;
  const samples: FollowRate['samples'] = [];
  for (const r of records) {
    let text = '';
    for await (const piece of generate(model, tok, promptOf(r), { temperature: 0, maxTokens: 80 })) text += piece;
    const { name, thing } = askedFor(r);
    if (storyUsesName(text, name)) usesName++;
    if (storyUsesName(text, thing)) usesThing++;
    if (samples.length < 3) samples.push({ instruction: r.instruction, text: text.trim() });
  }
  return { usesName, usesThing, asked: records.length, samples };
}

async function measure(model: Llama, tok: Tokenizer, adapter: Adapter | undefined, test: AlpacaRecord[], pairs: AlpacaRecord[]): Promise<Measured> {
  const { examples } = tokenizeRecords(tok, test, { maxSeqLen: model.config.maxSeqLen, warn: () => {} });
  const { loss, tokens } = await evaluateLoss(model, adapter, examples, 16);
  model.setAdapter(adapter);
  try {
    return { loss, tokens, unseenNames: await followRate(model, tok, test.slice(0, pairs.length)), newPairs: await followRate(model, tok, pairs) };
  } finally {
    model.setAdapter(undefined);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      out: { type: 'string', default: path.join(root, 'runs', 'demo') },
      model: { type: 'string', default: path.join(shared, 'stories260K', 'stories260K.bin') },
      tokenizer: { type: 'string', default: path.join(shared, 'stories260K', 'tok512.bin') },
      epochs: { type: 'string', default: '4' },
      quick: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const out = values.out!;
  const quick = values.quick!;
  const dataDir = path.join(out, 'data');
  const { files, splits } = writeDemoData(dataDir, { seed: 0, train: quick ? 200 : 2000, val: 50, test: 100, overwrite: true });
  const [trainFile, valFile] = files;
  const pairs = newPairs(splits.train, quick ? 10 : 50);
  console.log(`demo data: ${splits.train.length} training stories, held-out names in ${splits.test.length} test instructions (${dataDir})`);

  const model = await Llama.load(values.model!);
  const tok = loadTokenizer(values.tokenizer!);
  try {
    console.log('measuring the frozen model ...');
    const before = await measure(model, tok, undefined, splits.test, pairs);

    const cfg = resolveTrainConfig({
      model: values.model!,
      tokenizer: values.tokenizer!,
      data: trainFile,
      'val-data': valFile,
      out: path.join(out, 'run'),
      'adapter-layers': '5',
      'adapter-len': '30',
      epochs: quick ? '1' : values.epochs!,
      'batch-size': '16',
      'grad-accum': '1',
      lr: '5e-2',
      'warmup-epochs': '0.2',
      'eval-every': quick ? '0' : '100',
      seed: '0',
      overwrite: true, // the demo is rerunnable: its run folder is its own
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
      after = await measure(model, tok, adapter, splits.test, pairs);
    } finally {
      adapter.dispose();
    }

    const pct = (k: number, f: FollowRate) => `${k}/${f.asked} (${Math.round((100 * k) / f.asked)}%)`;
    const row = (what: string, a: string, b: string) => console.log(`| ${what} | ${a} | ${b} |`);
    console.log('\n| measured on held-out instructions | frozen stories260K | + adapter |');
    console.log('|---|---|---|');
    row(`mean cross-entropy of the test stories (${before.tokens} tokens)`, before.loss.toFixed(4), after.loss.toFixed(4));
    row('story uses the asked name: training names, new (name, thing) pairs', pct(before.newPairs.usesName, before.newPairs), pct(after.newPairs.usesName, after.newPairs));
    row('story uses the asked thing: same instructions', pct(before.newPairs.usesThing, before.newPairs), pct(after.newPairs.usesThing, after.newPairs));
    row('story uses the asked name: names never seen in training', pct(before.unseenNames.usesName, before.unseenNames), pct(after.unseenNames.usesName, after.unseenNames));
    row('story uses the asked thing: same instructions', pct(before.unseenNames.usesThing, before.unseenNames), pct(after.unseenNames.usesThing, after.unseenNames));
    for (let i = 0; i < 2; i++) {
      for (const set of ['newPairs', 'unseenNames'] as const) {
        const b = before[set].samples[i];
        console.log(`\n${b.instruction}`);
        console.log(`  frozen : ${JSON.stringify(b.text.slice(0, 160))}`);
        console.log(`  adapted: ${JSON.stringify(after[set].samples[i].text.slice(0, 160))}`);
      }
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
