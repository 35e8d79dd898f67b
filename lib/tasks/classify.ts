// Image classification with zero-init gated prompts (SPEC §9), over the shared trainer machinery
// (config and flags, AdamW and the schedule, metrics.jsonl, checkpoints and --resume, progress):
// K prompts and per-head tanh gates in the top L layers of a frozen image encoder, and a linear
// head on the final layernorm(h[cls]). --head-only trains the head alone (the linear probe).
//
// What is frozen is computed once per image and kept (when it fits CACHE_BYTES): with --head-only
// the features themselves, so a step is the head alone; else the decoded, preprocessed pixels.
//
// Shapes: B images of a micro-batch, D hidden, C classes.
import { EventEmitter } from 'events';
import * as fs from 'fs';
import * as path from 'path';
import { native, Tensor } from '../native';
import { describeDevice, resolveDevice } from '../device';
import { ClassifyData, LabeledImage, loadClassifyData } from '../data/classify';
import { IndexBatcher, splitValidation } from '../data/alpaca';
import { Classifier, ClassifierConfig, headBackward, headForward } from '../model/classifier';
import { loadCheckpointWith, LoadedCheckpoint, resumeFolder, RunState, saveCheckpoint } from '../train/checkpoint';
import { configToYaml, TrainConfig } from '../train/config';
import { checkCheckpointSettings, checkRunFolder, clearRun, removeLeftovers } from '../train/run-folder';
import { checkOutputDir, makeOutputDir, removeEmptyDirs } from '../output';
import { AdamW, NonFiniteError } from '../train/optimizer';
import { learningRate, runSchedule } from '../train/schedule';
import { keepMetricsUpTo } from '../train/trainer';
import { ClassifyEncoder } from './classify-encoder';

/** Bytes of frozen features or pixels kept on the device across steps at most (else recomputed). */
export const CACHE_BYTES = 1 << 30;

export interface ClassifyStepMetrics {
  step: number;
  totalSteps: number;
  epoch: number;
  loss: number; // mean cross-entropy over the step's images
  accuracy: number; // share of the step's images classified right (before the update)
  lr: number;
  grad_norm: number;
  images: number;
  ms: number;
}

export interface ClassifyEval {
  step: number;
  loss: number;
  accuracy: number;
  examples: number;
}

export interface ClassifyTrainResult {
  adapterPath: string;
  steps: number;
  finalLoss: number;
  lastEval?: ClassifyEval;
}

/** Logits (B, C) of every image of `data` in order, with the loss and accuracy against its labels. */
export interface Scored {
  logits: Float32Array; // (N, C)
  loss: number;
  accuracy: number;
  examples: number;
}

/**
 * Where a batch's features come from: `forward` gives f (B, D) for item indices, and with a
 * classifier that has prompts, a `backward` taking df (B, D) into the prompt and gate gradients.
 */
export class FeatureSource {
  /** head-only: the frozen features (N, D); else the preprocessed pixels (N, Cin, S, S) */
  private cache?: Tensor;

  private constructor(
    private readonly enc: ClassifyEncoder,
    private readonly items: LabeledImage[],
    private readonly classifier: Classifier,
  ) {}

  /** Computes what is frozen once (in batches, with progress through `log`) when it fits. */
  static async create(enc: ClassifyEncoder, items: LabeledImage[], classifier: Classifier, log: (m: string) => void, what: string): Promise<FeatureSource> {
    const src = new FeatureSource(enc, items, classifier);
    const headOnly = classifier.config.layers === 0;
    const per = headOnly ? enc.dims.hidden : enc.pixelSize; // floats kept per image
    if (per * 4 * items.length > CACHE_BYTES) {
      log(`${what}: ${((per * 4 * items.length) / 2 ** 30).toFixed(1)} GiB would not fit the cache: decoding the images every step`);
      return src;
    }
    const t0 = Date.now();
    const shape = headOnly ? [items.length, enc.dims.hidden] : [items.length, enc.pixelSize];
    const cache = native.zeros(shape, 'f32', enc.device);
    const batch = 64;
    try {
      for (let s = 0; s < items.length; s += batch) {
        const part = items.slice(s, s + batch);
        const pixels = await enc.pixels(part.map((x) => x.file)); // (b, Cin, S, S)
        const rows = native.fromArray(Int32Array.from(part, (_, i) => s + i), [part.length], 'i32');
        if (headOnly) {
          const f = enc.features(pixels); // (b, D)
          native.scatterAddRows(cache, rows, f);
          f.dispose();
        } else {
          const flat = native.reshape(pixels, [part.length, enc.pixelSize]);
          native.scatterAddRows(cache, rows, flat);
          flat.dispose();
        }
        pixels.dispose();
        rows.dispose();
        await native.synchronize(); // bound the queue (a failed op rejects here)
        const done = s + part.length;
        // about ten progress lines, whatever the size
        if (items.length > batch && (Math.floor((done * 10) / items.length) > Math.floor((s * 10) / items.length) || done === items.length))
          log(`${what}: ${headOnly ? 'frozen features' : 'decoded'} ${done}/${items.length} images`);
      }
    } catch (err) {
      cache.dispose();
      throw err;
    }
    log(`${what}: ${items.length} images ${headOnly ? 'through the frozen encoder' : 'decoded and preprocessed'} in ${((Date.now() - t0) / 1000).toFixed(1)} s (cached)`);
    src.cache = cache;
    return src;
  }

  /** Features (B, D) of items `idx`, and the backward into `grads` (prompts, gates) when adapted. */
  async forward(idx: Int32Array, withBackward: boolean): Promise<{ f: Tensor; backward?: (df: Tensor, grads: Tensor[]) => void; dispose(): void }> {
    const enc = this.enc;
    const headOnly = this.classifier.config.layers === 0;
    let pixels: Tensor; // (B, Cin, S, S)
    if (this.cache) {
      const rows = native.fromArray(idx, [idx.length], 'i32');
      const got = native.gatherRows(this.cache, rows);
      rows.dispose();
      if (headOnly) return { f: got, dispose: () => got.dispose() };
      const c = enc.encoder.config;
      pixels = native.reshape(got, [idx.length, c.channels, c.imageSize, c.imageSize]);
      got.dispose();
    } else pixels = await enc.pixels(Array.from(idx, (i) => this.items[i].file));
    if (headOnly) {
      const f = enc.features(pixels);
      pixels.dispose();
      return { f, dispose: () => f.dispose() };
    }
    const run = enc.adaptedForward(pixels, this.classifier, withBackward);
    pixels.dispose();
    return { f: run.features, backward: run.backward, dispose: () => run.dispose() };
  }

  dispose(): void {
    this.cache?.dispose();
  }
}

/** argmax per row of logits (N, C): the count of rows whose argmax is the label. */
function correct(logits: Float32Array, labels: ArrayLike<number>, C: number): number {
  let n = 0;
  for (let i = 0; i < labels.length; i++) {
    let best = 0;
    for (let c = 1; c < C; c++) if (logits[i * C + c] > logits[i * C + best]) best = c;
    if (best === labels[i]) n++;
  }
  return n;
}

/** Logits (N, C) of the images (the files of `items`) under the classifier, in batches. */
export async function classifyLogits(enc: ClassifyEncoder, classifier: Classifier, items: LabeledImage[], batchSize: number, source?: FeatureSource): Promise<Float32Array> {
  const own = source ?? (await FeatureSource.create(enc, items, classifier, () => {}, 'images'));
  const C = classifier.numClasses;
  const logits = new Float32Array(items.length * C);
  try {
    for (let s = 0; s < items.length; s += batchSize) {
      const n = Math.min(batchSize, items.length - s);
      const run = await own.forward(Int32Array.from({ length: n }, (_, i) => s + i), false);
      const out = headForward(run.f, classifier.weight, classifier.bias); // (n, C)
      logits.set((await out.read()) as Float32Array, s * C);
      out.dispose();
      run.dispose();
    }
  } finally {
    if (!source) own.dispose();
  }
  return logits;
}

/** Mean cross-entropy (in double) and accuracy of logits (N, C) against the labels. */
export function lossAndAccuracy(logits: Float32Array, labels: ArrayLike<number>, C: number): { loss: number; accuracy: number } {
  let sum = 0;
  for (let i = 0; i < labels.length; i++) {
    let max = -Infinity;
    for (let c = 0; c < C; c++) max = Math.max(max, logits[i * C + c]);
    let z = 0;
    for (let c = 0; c < C; c++) z += Math.exp(logits[i * C + c] - max);
    sum += max + Math.log(z) - logits[i * C + labels[i]];
  }
  return { loss: sum / labels.length, accuracy: correct(logits, labels, C) / labels.length };
}

/** Logits, mean loss and accuracy of `items` under the classifier (no gradients). */
export async function scoreImages(enc: ClassifyEncoder, classifier: Classifier, items: LabeledImage[], batchSize: number, source?: FeatureSource): Promise<Scored> {
  const logits = await classifyLogits(enc, classifier, items, batchSize, source);
  const { loss, accuracy } = lossAndAccuracy(logits, items.map((x) => x.label), classifier.numClasses);
  return { logits, loss, accuracy, examples: items.length };
}

export class ClassifyTrainer extends EventEmitter {
  private constructor(
    readonly cfg: TrainConfig,
    readonly encoder: ClassifyEncoder,
    readonly data: ClassifyData,
    readonly train: LabeledImage[],
    readonly val: LabeledImage[],
    readonly classifierConfig: ClassifierConfig,
  ) {
    super();
  }

  /** Loads the encoder and the data named by `cfg` (task classify). */
  static async create(cfg: TrainConfig, log: (msg: string) => void = () => {}): Promise<ClassifyTrainer> {
    const encoderDir = cfg.encoder;
    if (!encoderDir) throw new Error('--task classify needs --encoder');
    cfg = { ...cfg, device: resolveDevice(cfg.device, '--device') };
    // before any work: can --out be written, and may this run use it?
    checkOutputDir(cfg.out, '--out');
    checkRunFolder(cfg);
    if (cfg.threads) native.setThreads(cfg.threads);
    // the data first: a bad file fails before the encoder loads
    const data = loadClassifyData(cfg.data, { imageRoot: cfg['image-root'] });
    let val: LabeledImage[] = [];
    let train = data.examples;
    if (cfg['val-data']) val = loadClassifyData(cfg['val-data'], { imageRoot: cfg['image-root'], labels: data.labels }).examples;
    else if (cfg['val-split'] > 0) ({ train, val } = splitValidation(train, { valSplit: cfg['val-split'], seed: cfg.seed }));
    if (data.labels.length < 2) throw new Error(`${cfg.data}: a classifier needs at least 2 classes, found ${data.labels.length} (${data.labels.join(', ')})`);
    const enc = await ClassifyEncoder.load(encoderDir, cfg.device!);
    try {
      const headOnly = cfg['head-only'];
      const classifierConfig: ClassifierConfig = {
        layers: headOnly ? 0 : (cfg['adapter-layers'] ?? Math.max(1, enc.dims.layers - 2)),
        len: headOnly ? 0 : cfg['adapter-len'],
        gateInit: cfg['gate-init'],
        labels: data.labels,
      };
      if (classifierConfig.layers > enc.dims.layers)
        throw new Error(`--adapter-layers ${classifierConfig.layers} is more than the encoder's ${enc.dims.layers} layers`);
      log(
        `device ${describeDevice(enc.device)}; encoder ${encoderDir}: ${enc.dims.family} ${enc.dims.layers} layers, hidden ${enc.dims.hidden}, ` +
          `${enc.dims.heads} heads, ${enc.dims.image}px / ${enc.dims.patch}px patches; ` +
          (headOnly ? 'head only (linear probe)' : `prompts: top ${classifierConfig.layers} layers, ${classifierConfig.len} prompts, ${cfg['gate-init']} gates`) +
          `; ${data.labels.length} classes, ${train.length} training and ${val.length} validation images`,
      );
      return new ClassifyTrainer(cfg, enc, data, train, val, classifierConfig);
    } catch (err) {
      enc.dispose();
      throw err;
    }
  }

  private fingerprint(totalSteps: number): Record<string, unknown> {
    const c = this.cfg;
    return {
      task: 'classify',
      encoder: path.resolve(c.encoder!),
      data: path.resolve(c.data),
      'val-data': c['val-data'] ? path.resolve(c['val-data']) : null,
      'val-split': c['val-split'],
      classifier: this.classifierConfig,
      'batch-size': c['batch-size'],
      'grad-accum': c['grad-accum'],
      seed: c.seed,
      shuffle: !c['no-shuffle'],
      totalSteps,
      examples: this.train.length,
    };
  }

  private findResume(): LoadedCheckpoint<Classifier> | undefined {
    const dir = resumeFolder(this.cfg.resume, this.cfg.out, (m) => this.emit('log', m));
    if (!dir) return undefined;
    return loadCheckpointWith(dir, (file) => Classifier.load(file, this.encoder.dims, this.encoder.device));
  }

  async run(): Promise<ClassifyTrainResult> {
    const c = this.cfg;
    const batcher = new IndexBatcher(this.train.length, { batchSize: c['batch-size'], seed: c.seed, shuffle: !c['no-shuffle'] });
    const A = c['grad-accum'];
    const schedule = runSchedule(c, batcher.batchesPerEpoch);
    const totalSteps = schedule.totalSteps;
    const fingerprint = this.fingerprint(totalSteps);
    // the same run-folder rules as the LLaMA trainer (lib/train/run-folder.ts): a start that fails
    // leaves no folder it created behind
    const made = makeOutputDir(c.out, '--out');
    let resumed: LoadedCheckpoint<Classifier> | undefined;
    let classifier: Classifier;
    let startStep = 0;
    try {
      if (c.overwrite) clearRun(c.out);
      if (c.resume) {
        const gone = removeLeftovers(c.out);
        if (gone.length) this.emit('log', `removed what killed runs left in ${c.out}: ${gone.join(', ')}`);
      }
      resumed = this.findResume();
      if (resumed) {
        checkCheckpointSettings(resumed, fingerprint);
        classifier = resumed.adapter;
        batcher.restore(resumed.state.data);
        startStep = resumed.state.step;
        this.emit('log', `resuming from ${resumed.dir} at step ${startStep}/${totalSteps}`);
      } else if (c['init-adapter']) {
        classifier = Classifier.load(c['init-adapter'], this.encoder.dims, this.encoder.device);
        const a = classifier.config;
        const want = this.classifierConfig;
        if (a.layers !== want.layers || a.len !== want.len || JSON.stringify(a.labels) !== JSON.stringify(want.labels)) {
          classifier.dispose();
          throw new Error(
            `--init-adapter ${c['init-adapter']} has ${a.layers} adapted layers, ${a.len} prompts and labels ${JSON.stringify(a.labels)}; ` +
              `the run asks for ${want.layers}, ${want.len} and ${JSON.stringify(want.labels)}`,
          );
        }
      } else {
        classifier = Classifier.init(this.encoder.dims, this.classifierConfig, c.seed, this.encoder.device);
      }
    } catch (err) {
      removeEmptyDirs(made);
      throw err;
    }

    const params = classifier.parameters();
    const opt = new AdamW(params, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: c['weight-decay'] }, resumed ? { moments: resumed.moments, step: resumed.optimizerStep } : undefined);
    const grads = params.map((p) => native.zeros([...p.shape], 'f32', p.device));
    const log = (m: string) => this.emit('log', m);
    let trainSrc: FeatureSource | undefined;
    let valSrc: FeatureSource | undefined;
    const metricsFile = path.join(c.out, 'metrics.jsonl');
    let lastLoss = NaN;
    let lastEval: ClassifyEval | undefined;
    let lastSaved = resumed?.dir;
    try {
      trainSrc = await FeatureSource.create(this.encoder, this.train, classifier, log, 'training images');
      if (this.val.length && c['eval-every'] > 0) valSrc = await FeatureSource.create(this.encoder, this.val, classifier, log, 'validation images');
      fs.writeFileSync(path.join(c.out, 'config.yaml'), configToYaml(c));
      keepMetricsUpTo(metricsFile, startStep);
      this.emit(
        'log',
        `${totalSteps} steps of ${c['batch-size']} x ${A} images, peak lr ${schedule.peakLr.toPrecision(3)}, warmup ${schedule.warmupSteps} steps, ` +
          `${classifier.parameterCount} trainable parameters`,
      );
      const nHead = 2; // the head's weight and bias are the last two parameters
      for (let step = startStep; step < totalSteps; step++) {
        const t0 = Date.now();
        const micro = Array.from({ length: A }, () => batcher.nextIndices());
        const images = micro.reduce((s, b) => s + b.length, 0);
        for (const g of grads) native.scaleInPlace(g, 0);
        let lossSum = 0;
        let right = 0;
        for (const idx of micro) {
          // the step's loss is the mean over all its images: one shared scale
          const run = await trainSrc.forward(idx, true);
          const logits = headForward(run.f, classifier.weight, classifier.bias); // (B, C)
          const labels = Int32Array.from(idx, (i) => this.train[i].label);
          const [loss, dlogits] = native.crossEntropy(logits, native.fromArray(labels, [labels.length], 'i32'), 1 / images);
          const { dW, db, df } = headBackward(dlogits, run.f, classifier.weight, run.backward !== undefined);
          native.addInPlace(grads[grads.length - nHead], dW);
          native.addInPlace(grads[grads.length - 1], db);
          if (run.backward) run.backward(df!, grads.slice(0, grads.length - nHead));
          right += correct((await logits.read()) as Float32Array, labels, classifier.numClasses);
          lossSum += (await loss.read())[0];
          for (const t of [logits, loss, dlogits, dW, db, df]) t?.dispose();
          run.dispose();
        }
        const loss = lossSum / images;
        const lr = learningRate(step, schedule);
        if (!Number.isFinite(loss)) throw new NonFiniteError(`the loss is ${loss} at step ${step + 1}`);
        const gradNorm = await opt.update(grads, lr, c['clip-grad']);
        lastLoss = loss;
        const m: ClassifyStepMetrics = {
          step: step + 1,
          totalSteps,
          epoch: (batcher.epoch * batcher.batchesPerEpoch + batcher.index) / batcher.batchesPerEpoch,
          loss,
          accuracy: right / images,
          lr,
          grad_norm: gradNorm,
          images,
          ms: Date.now() - t0,
        };
        fs.appendFileSync(metricsFile, JSON.stringify(m) + '\n');
        this.emit('step', m);
        const last = step + 1 === totalSteps;
        if (valSrc && ((step + 1) % c['eval-every'] === 0 || last)) {
          const s = await scoreImages(this.encoder, classifier, this.val, c['batch-size'], valSrc);
          lastEval = { step: step + 1, loss: s.loss, accuracy: s.accuracy, examples: s.examples };
          fs.appendFileSync(metricsFile, JSON.stringify({ step: step + 1, val_loss: s.loss, val_accuracy: s.accuracy, val_examples: s.examples }) + '\n');
          this.emit('eval', lastEval);
        }
        if (c['save-every'] > 0 && (step + 1) % c['save-every'] === 0) {
          const state: RunState = { step: step + 1, totalSteps, data: batcher.state(), fingerprint };
          lastSaved = await saveCheckpoint(c.out, classifier, opt, state, c['keep-last']);
          this.emit('checkpoint', lastSaved);
        }
      }
      const adapterPath = path.join(c.out, 'adapter.safetensors');
      await classifier.save(adapterPath, { steps: String(totalSteps), encoder: path.basename(path.resolve(c.encoder!)) });
      return { adapterPath, steps: totalSteps, finalLoss: lastLoss, lastEval };
    } catch (err) {
      if (err instanceof NonFiniteError)
        throw new NonFiniteError(
          `training stopped: ${err.message}. ${lastSaved ? `The last good checkpoint, ${lastSaved}, is intact.` : 'No checkpoint was saved (use --save-every).'} Try a lower --lr or --clip-grad.`,
        );
      throw err;
    } finally {
      trainSrc?.dispose();
      valSrc?.dispose();
      for (const g of grads) g.dispose();
      opt.dispose();
      classifier.dispose();
    }
  }

  dispose(): void {
    this.encoder.dispose();
  }
}

/** The head an eval or classify command runs: an adapter file's, or the encoder folder's own
 *  classifier (a ViTForImageClassification folder, as lib/encoder loads it, with its id2label);
 *  neither is a clear error. */
export async function openClassifier(enc: ClassifyEncoder, encoderDir: string, adapterFile?: string): Promise<Classifier> {
  if (adapterFile) return Classifier.load(adapterFile, enc.dims, enc.device);
  const own = enc.encoder.weights.classifier;
  const labels = enc.encoder.config.labels;
  if (!own || !labels)
    throw new Error(
      `${encoderDir} has no classifier (classifier.weight; a ViTForImageClassification folder has one): ` +
        'give --adapter, an adapter trained with `llama-adapter train --task classify`',
    );
  const config: ClassifierConfig = { layers: 0, len: 0, gateInit: 'zero', labels };
  const weight = (await own.w.read()) as Float32Array;
  const bias = (await own.b.read()) as Float32Array;
  return Classifier.fromValues(enc.dims, config, { prompts: new Float32Array(0), gates: new Float32Array(0), weight, bias }, enc.device);
}

/** The k best classes of each row of logits (N, C), highest first. */
export function topK(logits: Float32Array, C: number, k: number, labels: readonly string[]): { index: number; label: string; logit: number }[][] {
  const out = [];
  for (let i = 0; i < logits.length / C; i++) {
    const order = Array.from({ length: C }, (_, c) => c).sort((a, b) => logits[i * C + b] - logits[i * C + a] || a - b);
    out.push(order.slice(0, Math.min(k, C)).map((c) => ({ index: c, label: labels[c], logit: logits[i * C + c] })));
  }
  return out;
}
