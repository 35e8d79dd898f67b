// Image classification with zero-init prompts on real photos (Fashion-MNIST, ../shared/data): a
// frozen encoder, three runs with the same budget — the linear probe (head only), zero-init gated
// prompts + head, and the same with random-init gates (the paper's ablation) — then held-out
// accuracy on the 1000 test images, a table and a loss chart (SVG, vega-lite).
//
// The encoder is NOT pretrained (none can be downloaded here): a seeded random-init ViT written by
// tools/make-random-vit.ts, frozen. The comparison shows the mechanism, not pretrained accuracy.
//
//   npm run demo:classify [-- --out runs/demo-classify] [--steps 300] [--batch 64] [--quick]
import * as fs from 'fs';
import * as path from 'path';
import { parseArgs } from 'util';
import * as vega from 'vega';
import * as vl from 'vega-lite';
import { native } from '../lib/native';
import { attachProgress } from '../lib/cli/progress';
import { loadClassifyData } from '../lib/data/classify';
import { resolveTrainConfig } from '../lib/train/config';
import { ClassifyTrainer, openClassifier, scoreImages } from '../lib/tasks/classify';
import { ClassifyEncoder } from '../lib/tasks/classify-encoder';
import { demoViT, RandomViTOptions, writeRandomViT } from '../tools/make-random-vit';

const root = path.resolve(__dirname, '..', '..');
const shared = process.env.LLAMA_ADAPTER_DATA ?? path.resolve(root, '..', 'shared', 'data');
const fmnist = path.join(shared, 'fashion-mnist');

interface Arm {
  name: string;
  flags: Record<string, string | boolean>;
}

interface ArmResult {
  name: string;
  trainable: number;
  seconds: number;
  finalTrainLoss: number; // mean of the last 10 steps
  testLoss: number;
  testAccuracy: number;
  curve: { step: number; loss: number }[];
  heldOut: { step: number; accuracy: number; loss: number }[]; // on the 1000 test images during training
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      out: { type: 'string' },
      steps: { type: 'string' },
      batch: { type: 'string' },
      lr: { type: 'string' },
      'adapter-layers': { type: 'string' },
      'adapter-len': { type: 'string' },
      quick: { type: 'boolean' },
    },
  });
  const out = path.resolve(values.out ?? path.join(root, 'runs', 'demo-classify'));
  const quick = !!values.quick;
  const steps = Number(values.steps ?? (quick ? 20 : 600));
  const batch = Number(values.batch ?? 64);
  const lr = values.lr ?? '3e-2';
  const layers = values['adapter-layers'] ?? '2';
  const len = values['adapter-len'] ?? '10';
  fs.mkdirSync(out, { recursive: true });
  const log = (m: string) => process.stdout.write(m + '\n');

  const vit: RandomViTOptions = demoViT;
  const encoderDir = path.join(out, 'encoder');
  writeRandomViT(encoderDir, vit);
  log(`encoder: ${encoderDir} — a random-init ViT (seed ${vit.seed}, frozen, NOT pretrained): ${vit.image}px images, ${vit.patch}px patches, hidden ${vit.hidden}, ${vit.layers} layers, ${vit.heads} heads, MLP ${vit.mlp}`);

  const imageRoot = path.join(fmnist, 'images');
  const trainList = path.join(fmnist, 'train.jsonl');
  const testList = path.join(fmnist, 'test.jsonl');
  const common: Record<string, string | boolean> = {
    task: 'classify',
    encoder: encoderDir,
    data: trainList,
    'image-root': imageRoot,
    'max-steps': String(steps),
    'batch-size': String(batch),
    'grad-accum': '1',
    lr,
    'warmup-steps': String(Math.round(steps / 10)),
    // the held-out curve: the test images scored 6 times during training (never used to choose anything)
    'val-data': testList,
    'eval-every': String(Math.max(1, Math.round(steps / 6))),
    schedule: 'cosine',
    seed: '0',
  };
  const arms: Arm[] = [
    { name: 'head only (linear probe)', flags: { 'head-only': true } },
    { name: 'zero-init prompts + head', flags: { 'adapter-layers': layers, 'adapter-len': len, 'gate-init': 'zero' } },
    { name: 'random-init gates + head', flags: { 'adapter-layers': layers, 'adapter-len': len, 'gate-init': 'random' } },
  ];
  const slug = (a: Arm) => (a.flags['head-only'] ? 'head-only' : `prompts-${a.flags['gate-init']}-gates`);

  const results: ArmResult[] = [];
  for (const arm of arms) {
    const runDir = path.join(out, slug(arm));
    fs.rmSync(runDir, { recursive: true, force: true });
    const cfg = resolveTrainConfig({ ...common, ...arm.flags, out: runDir });
    log(`\n== ${arm.name}`);
    const t0 = Date.now();
    const trainer = await ClassifyTrainer.create(cfg, log);
    let trainable = 0;
    try {
      if (process.stdout.isTTY) attachProgress(trainer, process.stdout);
      else {
        trainer.on('log', log);
        trainer.on('step', (m) => (m.step % 50 === 0 || m.step === m.totalSteps) && log(`step ${m.step}/${m.totalSteps} | loss ${m.loss.toFixed(4)} | ${m.ms} ms`));
      }
      const r = await trainer.run();
      const seconds = (Date.now() - t0) / 1000;
      // held-out accuracy on the 1000 test images
      const enc = trainer.encoder;
      const classifier = await openClassifier(enc, encoderDir, r.adapterPath);
      trainable = classifier.parameterCount;
      try {
        const test = loadClassifyData(testList, { imageRoot, labels: classifier.config.labels });
        const s = await scoreImages(enc, classifier, test.examples, 100);
        const metrics = fs
          .readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8')
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l));
        const curve = metrics.filter((m) => 'loss' in m).map((m) => ({ step: m.step as number, loss: m.loss as number }));
        const heldOut = metrics.filter((m) => 'val_accuracy' in m).map((m) => ({ step: m.step as number, accuracy: m.val_accuracy as number, loss: m.val_loss as number }));
        const last = curve.slice(-10);
        results.push({
          name: arm.name,
          trainable,
          seconds,
          finalTrainLoss: last.reduce((a, b) => a + b.loss, 0) / last.length,
          testLoss: s.loss,
          testAccuracy: s.accuracy,
          curve,
          heldOut,
        });
        log(`${arm.name}: test accuracy ${(100 * s.accuracy).toFixed(1)}%, test loss ${s.loss.toFixed(4)} (${seconds.toFixed(0)} s)`);
      } finally {
        classifier.dispose();
      }
    } finally {
      trainer.dispose();
    }
  }

  // the table
  const caps = native.capabilities();
  const header =
    `Fashion-MNIST (6000 training photos, 1000 held-out test photos, 10 classes). Frozen encoder: random-init ViT ` +
    `(seed ${vit.seed}, not pretrained; ${vit.image}px, patch ${vit.patch}, hidden ${vit.hidden}, ${vit.layers} layers, ${vit.heads} heads). ` +
    `Same budget for every run: ${steps} steps of ${batch} images, AdamW, peak lr ${lr}, ${Math.round(steps / 10)} warmup steps then cosine, seed 0; ` +
    `prompts: top ${layers} layers, ${len} prompts each. CPU, ${caps.threads} threads (${caps.blas}).`;
  const rows = results.map(
    (r) =>
      `| ${r.name} | ${r.trainable.toLocaleString('en-US')} | ${(100 * r.testAccuracy).toFixed(1)}% | ${r.testLoss.toFixed(4)} | ${r.finalTrainLoss.toFixed(4)} | ${r.seconds.toFixed(0)} s |`,
  );
  const table = [
    header,
    '',
    '| run | trainable parameters | test accuracy | test loss | train loss (last 10 steps) | wall time |',
    '|---|---:|---:|---:|---:|---:|',
    ...rows,
  ].join('\n');
  fs.writeFileSync(path.join(out, 'results.md'), table + '\n');
  fs.writeFileSync(path.join(out, 'results.json'), JSON.stringify({ steps, batch, lr, layers: Number(layers), len: Number(len), encoder: vit, results }, null, 2) + '\n');

  // the chart: training loss per step (a 10-step moving average) and held-out accuracy, one line per run
  const lossValues = results.flatMap((r) => r.curve.map((p) => ({ run: r.name, step: p.step, loss: p.loss })));
  const accValues = results.flatMap((r) => r.heldOut.map((p) => ({ run: r.name, step: p.step, accuracy: p.accuracy })));
  const color = { field: 'run', type: 'nominal', title: null, legend: { orient: 'bottom', labelLimit: 400, direction: 'horizontal' } } as const;
  const spec = vl.compile({
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: {
      text: 'Fashion-MNIST on a frozen random-init ViT (not pretrained)',
      subtitle: `same budget for each run: ${steps} steps x ${batch} images; held-out = the 1000 test photos (chance 10%)`,
    },
    hconcat: [
      {
        width: 360,
        height: 260,
        data: { values: lossValues },
        transform: [{ window: [{ op: 'mean', field: 'loss', as: 'smoothed' }], frame: [-9, 0], groupby: ['run'], sort: [{ field: 'step' }] }],
        mark: { type: 'line', strokeWidth: 1.5 },
        encoding: {
          x: { field: 'step', type: 'quantitative', title: 'optimiser step' },
          y: { field: 'smoothed', type: 'quantitative', title: 'training cross-entropy (10-step mean)', scale: { zero: false } },
          color,
        },
      },
      {
        width: 300,
        height: 260,
        data: { values: accValues },
        mark: { type: 'line', point: true, strokeWidth: 1.5 },
        encoding: {
          x: { field: 'step', type: 'quantitative', title: 'optimiser step' },
          y: { field: 'accuracy', type: 'quantitative', title: 'held-out accuracy', axis: { format: '%' } },
          color,
        },
      },
    ],
  } as vl.TopLevelSpec).spec;
  const svg = await new vega.View(vega.parse(spec), { renderer: 'none' }).toSVG();
  fs.writeFileSync(path.join(out, 'loss.svg'), svg);
  log(`\n${table}\n\nwrote ${path.join(out, 'results.md')}, ${path.join(out, 'results.json')} and ${path.join(out, 'loss.svg')}`);
}

main().catch((err) => {
  process.stderr.write(`demo-classify: error: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
