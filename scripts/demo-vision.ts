// npm run demo:vision — the image-conditioned LLaMA-Adapter (SPEC §8) on real photos: stories260K
// learns to answer "What is shown in this picture?" with "A photo of a {label}." from the
// MobileNetV2 features of Fashion-MNIST photos (../shared/data/fashion-mnist, see its SOURCES.md).
// Trains on the 6000 training images and measures held-out accuracy on the 1000 test images (the
// greedy answer names the right class) for three runs of the same steps and seed:
//   image adapter, zero-init gates (the paper; written to runs/demo-vision/run/adapter.safetensors)
//   image adapter, random-init gates (the paper's ablation)
//   text-only adapter (the same records without the image: it cannot see the photo)
// and draws their loss and accuracy curves (runs/demo-vision/curves.svg).
//
//   node dist/scripts/demo-vision.js [--out runs/demo-vision] [--steps N] [--batch-size B] [--quick]
import * as fs from 'fs';
import * as path from 'path';
import { parseArgs } from 'util';
import * as vega from 'vega';
import * as vegaLite from 'vega-lite';
import { AlpacaRecord, promptOf } from '../lib/data/alpaca';
import { generate } from '../lib/generate/generate';
import { Adapter } from '../lib/model/adapter';
import { Llama } from '../lib/model/llama';
import { loadTokenizer, Tokenizer } from '../lib/tokenizer';
import { resolveTrainConfig } from '../lib/train/config';
import { FeaturesFileSource } from '../lib/train/image-features';
import { StepMetrics, Trainer } from '../lib/train/trainer';
import { listCheckpoints } from '../lib/train/checkpoint';

const root = path.resolve(__dirname, '..', '..');
const shared = process.env.LLAMA_ADAPTER_DATA ?? path.resolve(root, '..', 'shared', 'data');
const fmnist = path.join(shared, 'fashion-mnist');

const INSTRUCTION = 'What is shown in this picture?';
const CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];

interface Photo {
  image: string;
  label: string;
}

function readPhotos(file: string): Photo[] {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => {
      const r = JSON.parse(l) as Photo;
      if (!CLASSES.includes(r.label)) throw new Error(`${file}: unknown label ${r.label}`);
      return r;
    });
}

function records(photos: Photo[], withImage: boolean): (AlpacaRecord & { image?: string })[] {
  return photos.map((p) => ({ instruction: INSTRUCTION, input: '', output: `A photo of a ${p.label}.`, ...(withImage ? { image: p.image } : {}) }));
}

function writeJsonl(file: string, rows: object[]): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
}

/** The classes an answer names (case-sensitive: "Shirt" is not in "T-shirt/top"). */
function named(answer: string): string[] {
  return CLASSES.filter((c) => answer.includes(c));
}

/** Share of `photos` whose greedy answer names their class and no other. */
async function accuracy(model: Llama, tok: Tokenizer, adapter: Adapter, photos: Photo[], images?: FeaturesFileSource): Promise<{ correct: number; total: number; samples: string[] }> {
  const prompt = promptOf({ instruction: INSTRUCTION, input: '', output: '' });
  let correct = 0;
  const samples: string[] = [];
  try {
    for (const p of photos) {
      model.setAdapter(adapter, images ? { imageFeatures: await images.get(p.image) } : {});
      let text = '';
      for await (const piece of generate(model, tok, prompt, { temperature: 0, maxTokens: 16 })) text += piece;
      const n = named(text);
      if (n.length === 1 && n[0] === p.label) correct++;
      if (samples.length < 4) samples.push(`${p.label} -> ${JSON.stringify(text.trim())}`);
    }
  } finally {
    model.setAdapter(undefined);
  }
  return { correct, total: photos.length, samples };
}

interface RunResult {
  name: string;
  losses: { step: number; loss: number }[];
  curve: { step: number; accuracy: number }[]; // on the curve subset
  final: { correct: number; total: number; samples: string[] };
  seconds: number;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      out: { type: 'string', default: path.join(root, 'runs', 'demo-vision') },
      model: { type: 'string', default: path.join(shared, 'stories260K', 'stories260K.bin') },
      tokenizer: { type: 'string', default: path.join(shared, 'stories260K', 'tok512.bin') },
      steps: { type: 'string', default: '600' },
      'batch-size': { type: 'string', default: '16' },
      lr: { type: 'string', default: '2e-2' },
      points: { type: 'string', default: '6' },
      'curve-images': { type: 'string', default: '200' },
      quick: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const out = values.out!;
  const quick = values.quick!;
  const steps = quick ? 20 : Number(values.steps);
  const points = Number(values.points);
  const featuresFile = path.join(fmnist, 'features-mobilenetv2.safetensors');
  const train = readPhotos(path.join(fmnist, 'train.jsonl'));
  const test = readPhotos(path.join(fmnist, 'test.jsonl')).slice(0, quick ? 100 : undefined);
  const curveSet = test.slice(0, Math.min(test.length, Number(values['curve-images'])));
  const dataDir = path.join(out, 'data');
  writeJsonl(path.join(dataDir, 'train-image.jsonl'), records(train, true));
  writeJsonl(path.join(dataDir, 'train-text.jsonl'), records(train, false));
  writeJsonl(path.join(dataDir, 'test-image.jsonl'), records(test, true)); // for `eval --metric exact`
  console.log(`Fashion-MNIST: ${train.length} training photos, ${test.length} test photos; MobileNetV2 features from ${featuresFile}`);

  const model = await Llama.load(values.model!, { device: 'cpu' });
  const tok = loadTokenizer(values.tokenizer!);
  const images = new FeaturesFileSource(featuresFile);
  const runs: RunResult[] = [];
  try {
    const variants = [
      { name: 'image, zero-init gates', dir: 'run', data: 'train-image.jsonl', gateInit: 'zero', image: true },
      { name: 'image, random-init gates', dir: 'run-random-gates', data: 'train-image.jsonl', gateInit: 'random', image: true },
      { name: 'text only, zero-init gates', dir: 'run-text', data: 'train-text.jsonl', gateInit: 'zero', image: false },
    ];
    for (const v of variants) {
      const runDir = path.join(out, v.dir);
      fs.rmSync(runDir, { recursive: true, force: true });
      const every = Math.max(1, Math.round(steps / points));
      const cfg = resolveTrainConfig({
        model: values.model!,
        tokenizer: values.tokenizer!,
        data: path.join(dataDir, v.data),
        out: runDir,
        ...(v.image ? { 'image-features': featuresFile } : {}),
        'gate-init': v.gateInit,
        'adapter-layers': '5',
        'adapter-len': '10',
        'max-steps': String(steps),
        'batch-size': values['batch-size']!,
        'grad-accum': '1',
        lr: values.lr!,
        'warmup-steps': String(Math.round(steps / 10)),
        'save-every': String(every),
        'keep-last': String(points + 1),
        device: 'cpu',
        seed: '0',
      });
      console.log(`\n== ${v.name}: ${steps} steps of ${cfg['batch-size']} ==`);
      const t0 = Date.now();
      const trainer = await Trainer.create(cfg, (m) => console.log(m));
      const losses: RunResult['losses'] = [];
      trainer.on('step', (m: StepMetrics) => {
        losses.push({ step: m.step, loss: m.loss });
        if (m.step % Math.max(1, Math.round(steps / 10)) === 0 || m.step === m.totalSteps)
          console.log(`step ${m.step}/${m.totalSteps} | loss ${m.loss.toFixed(4)} | lr ${m.lr.toExponential(2)} | ${m.ms} ms`);
      });
      let adapterPath: string;
      try {
        adapterPath = (await trainer.run()).adapterPath;
      } finally {
        trainer.dispose();
      }
      const seconds = (Date.now() - t0) / 1000;
      // accuracy along the way: each checkpoint's adapter on the curve subset
      const curve: RunResult['curve'] = [];
      for (const dir of listCheckpoints(runDir)) {
        const step = Number(/step-(\d+)$/.exec(dir)![1]);
        const a = Adapter.load(path.join(dir, 'adapter.safetensors'), model.config, 'cpu');
        try {
          const r = await accuracy(model, tok, a, curveSet, v.image ? images : undefined);
          curve.push({ step, accuracy: r.correct / r.total });
        } finally {
          a.dispose();
        }
        fs.rmSync(dir, { recursive: true, force: true }); // the final adapter is kept; the curve points are not needed
      }
      const a = Adapter.load(adapterPath, model.config, 'cpu');
      let final;
      try {
        final = await accuracy(model, tok, a, test, v.image ? images : undefined);
      } finally {
        a.dispose();
      }
      console.log(`${v.name}: held-out accuracy ${final.correct}/${final.total}; trained in ${seconds.toFixed(1)} s; e.g. ${final.samples.slice(0, 2).join('; ')}`);
      runs.push({ name: v.name, losses, curve, final, seconds });
    }

    const pct = (r: RunResult) => `${((100 * r.final.correct) / r.final.total).toFixed(1)}% (${r.final.correct}/${r.final.total})`;
    const last = (r: RunResult) => {
      const tail = r.losses.slice(-Math.max(1, Math.round(steps / 10)));
      return (tail.reduce((s, x) => s + x.loss, 0) / tail.length).toFixed(4);
    };
    console.log(`\n| run (${steps} steps of ${values['batch-size']}, same seed) | held-out accuracy, ${test.length} test photos | training loss, last 10% of steps | training time |`);
    console.log('|---|---|---|---|');
    console.log(`| chance (10 classes) | 10.0% | | |`);
    for (const r of runs) console.log(`| ${r.name} | ${pct(r)} | ${last(r)} | ${r.seconds.toFixed(0)} s |`);

    const svg = await chart(runs, curveSet.length);
    fs.writeFileSync(path.join(out, 'curves.svg'), svg);
    fs.writeFileSync(path.join(out, 'results.json'), JSON.stringify({ steps, batchSize: Number(values['batch-size']), runs }, null, 2) + '\n');
    console.log(`\nchart: ${path.join(out, 'curves.svg')}; adapter: ${path.join(out, 'run', 'adapter.safetensors')}`);
    console.log(
      `try it:  node dist/lib/cli/main.js generate --model ${values.model} --adapter ${path.join(out, 'run', 'adapter.safetensors')} ` +
        `--image-features ${featuresFile} --image test/00000.png --temperature 0 --instruction "${INSTRUCTION}"`,
    );
  } finally {
    images.close();
    model.dispose();
  }
}

/** Loss curves (10-step moving mean) and accuracy curves of the runs, side by side, as SVG. */
async function chart(runs: RunResult[], curveImages: number): Promise<string> {
  const loss = runs.flatMap((r) => r.losses.map((p) => ({ run: r.name, step: p.step, loss: p.loss })));
  const acc = runs.flatMap((r) => r.curve.map((p) => ({ run: r.name, step: p.step, accuracy: p.accuracy })));
  const color = { field: 'run', type: 'nominal', title: null, legend: { orient: 'bottom', direction: 'vertical', labelLimit: 400 } };
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    hconcat: [
      {
        title: 'training loss (10-step moving mean)',
        width: 300,
        height: 220,
        data: { values: loss },
        transform: [{ window: [{ op: 'mean', field: 'loss', as: 'smoothed' }], frame: [-9, 0], groupby: ['run'], sort: [{ field: 'step' }] }],
        mark: { type: 'line', strokeWidth: 1.5 },
        encoding: {
          x: { field: 'step', type: 'quantitative' },
          y: { field: 'smoothed', type: 'quantitative', title: 'cross-entropy' },
          color,
        },
      },
      {
        title: `held-out accuracy (${curveImages} test photos)`,
        width: 300,
        height: 220,
        data: { values: acc },
        mark: { type: 'line', point: true },
        encoding: {
          x: { field: 'step', type: 'quantitative' },
          y: { field: 'accuracy', type: 'quantitative', axis: { format: '%' }, scale: { domain: [0, 1] } },
          color,
        },
      },
    ],
    config: { background: 'white' },
  };
  const compiled = vegaLite.compile(spec as unknown as vegaLite.TopLevelSpec).spec;
  return new vega.View(vega.parse(compiled), { renderer: 'none' }).toSVG();
}

main().catch((err) => {
  console.error(`demo:vision: error: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
