// The training loop: data, adapter, optimiser, schedule, evaluation, checkpoints and resume.
// Emits events (step, eval, checkpoint, log) so the CLI and API users can show progress.
import { EventEmitter } from 'events';
import * as fs from 'fs';
import * as path from 'path';
import { native } from '../native';
import { describeDevice, resolveDevice } from '../device';
import { Batch, Batcher, Example, splitValidation, tokenizeRecords } from '../data/alpaca';
import { checkImages, loadDataset } from '../data/dataset';
import { generate } from '../generate/generate';
import { Adapter, AdapterConfig, checkAdapterConfig, defaultAdapterConfig } from '../model/adapter';
import { Llama } from '../model/llama';
import { Tokenizer } from '../tokenizer';
import { loadCheckpoint, LoadedCheckpoint, resumeFolder, RunState, saveCheckpoint } from './checkpoint';
import { configToYaml, TrainConfig } from './config';
import { checkCheckpointSettings, checkRunFolder, clearRun, removeLeftovers, resultSettings } from './run-folder';
import { checkOutputDir, makeOutputDir, removeEmptyDirs } from '../output';
import { currentWorld } from './distributed';
import { AdapterGrads, AdapterGraph, PackedBatch } from './graph';
import { ImagePromptStep } from '../model/image-prompts';
import { FeaturesFileSource, openEncoderSource, ImageFeatureSource, parseFeatureLayers, projConfigFor } from './image-features';
import { AdamW, NonFiniteError } from './optimizer';
import { learningRate, runSchedule } from './schedule';

export interface StepMetrics {
  step: number; // 1-based, optimiser steps completed
  totalSteps: number;
  epoch: number; // fractional epochs of data consumed
  loss: number; // mean cross-entropy over the step's target tokens
  lr: number;
  grad_norm: number; // before clipping
  tokens: number; // tokens the step trained on (packed, no padding)
  targets: number; // of which carried loss
  ms: number;
}

export interface EvalResult {
  step: number;
  loss: number; // mean cross-entropy over every target token of the validation set
  tokens: number;
  sample?: { prompt: string; text: string };
}

export interface TrainResult {
  adapterPath: string;
  steps: number;
  finalLoss: number;
  lastEval?: EvalResult;
}

/**
 * The image prompts of the images that `batches` name (each image once), or undefined when they
 * name none. `withGrad`: for a training step (ImagePromptStep.backward after the micro-batches).
 */
export async function imagePromptsFor(
  adapter: Adapter | undefined,
  source: ImageFeatureSource | undefined,
  batches: PackedBatch[],
  withGrad: boolean,
): Promise<ImagePromptStep | undefined> {
  const keys = [...new Set(batches.flatMap((b) => (b.images ?? []).filter((k): k is string => typeof k === 'string')))];
  if (keys.length === 0) return undefined;
  if (!adapter?.image) throw new Error('the data has images but the adapter is text-only: it has no image projection (image_proj.*)');
  if (!source) throw new Error('the data has images but no image features were given: pass --image-features FILE or --encoder DIR');
  const MD = source.M * source.D;
  const values = new Float32Array(keys.length * MD);
  for (let i = 0; i < keys.length; i++) values.set(await source.get(keys[i]), i * MD);
  return new ImagePromptStep(adapter.image, keys, values, withGrad);
}

/** Mean cross-entropy of `examples` (all target tokens) under the model with `adapter` (and the
 *  images' features from `images`, for an image-conditioned adapter). */
export async function evaluateLoss(
  model: Llama,
  adapter: Adapter | undefined,
  examples: Example[],
  batchSize: number,
  images?: ImageFeatureSource,
): Promise<{ loss: number; tokens: number }> {
  const graph = new AdapterGraph(model, adapter);
  let sum = 0;
  let tokens = 0;
  const batcher = new Batcher(examples, { batchSize, seed: 0, shuffle: false });
  for (let b = 0; b < batcher.batchesPerEpoch; b++) {
    const batch = batcher.next();
    const prompts = await imagePromptsFor(adapter, images, [batch], false);
    try {
      const r = await graph.run(batch, 1, undefined, prompts);
      sum += r.lossSum;
      tokens += r.targets;
    } finally {
      prompts?.dispose();
    }
  }
  return { loss: tokens ? sum / tokens : NaN, tokens };
}

/** The image feature source that the flags name (--image-features or --encoder), or undefined. */
export async function openImageSource(
  flags: { 'image-features'?: string; encoder?: string; 'image-root'?: string; 'feature-layers'?: string },
  dataFile: string | undefined,
  device?: 'cpu' | 'cuda',
  /** where the data's image paths are relative to when --image-root is not given (default: the data file's folder) */
  dataRoot?: string,
): Promise<ImageFeatureSource | undefined> {
  if (flags['image-features'] && flags.encoder) throw new Error('give either --image-features or --encoder, not both');
  if (flags['image-features']) return new FeaturesFileSource(flags['image-features']);
  if (flags.encoder) {
    const root = flags['image-root'] ?? dataRoot ?? (dataFile ? path.dirname(path.resolve(dataFile)) : process.cwd());
    return openEncoderSource(flags.encoder, root, parseFeatureLayers(flags['feature-layers']) ?? [-1], device);
  }
  if (flags['image-root']) throw new Error('--image-root needs --encoder (it is where the records\' image paths are read)');
  return undefined;
}

export class Trainer extends EventEmitter {
  private constructor(
    readonly cfg: TrainConfig,
    readonly model: Llama,
    readonly tokenizer: Tokenizer,
    readonly train: Example[],
    readonly val: Example[],
    readonly adapterConfig: AdapterConfig,
    /** the image features of an image-conditioned run (--image-features or --encoder) */
    readonly images?: ImageFeatureSource,
  ) {
    super();
  }

  /** Loads the model, the tokenizer and the data named by `cfg`. */
  static async create(cfg: TrainConfig, log: (msg: string) => void = () => {}): Promise<Trainer> {
    // the resolved device is part of the run's config (saved in OUT/config.yaml)
    cfg = { ...cfg, device: resolveDevice(cfg.device, '--device') };
    // before any work: can --out be written, and may this run use it?
    checkOutputDir(cfg.out, '--out');
    checkRunFolder(cfg);
    if (cfg.threads) native.setThreads(cfg.threads);
    native.setMatmulPrecision(cfg['matmul-precision'] ?? 'highest');
    if (cfg['matmul-precision'] === 'medium' && cfg.dtype !== 'bf16')
      log('warning: --matmul-precision medium applies to bf16 weights only; with --dtype f32 the products stay f32');
    // an encoder reads the records' image files: under --image-root, else where the format puts them
    const dataRoot = cfg.encoder && !cfg['image-root'] ? loadDataset(cfg.data, { format: cfg.format, split: cfg.format === 'scienceqa' ? cfg.split ?? 'train' : undefined }).imageRoot : undefined;
    const images = await openImageSource(cfg, cfg.data, cfg.device, dataRoot);
    let model: Llama;
    try {
      model = await Llama.load(cfg.model, { dtype: cfg.dtype, device: cfg.device, mmap: !cfg['no-mmap'], onProgress: log });
    } catch (err) {
      images?.close();
      throw err;
    }
    try {
      const tokenizer = model.loadTokenizer(cfg.tokenizer);
      const adapterConfig: AdapterConfig = {
        ...defaultAdapterConfig(model.config),
        ...(cfg['adapter-layers'] !== undefined ? { layers: cfg['adapter-layers'] } : {}),
        len: cfg['adapter-len'],
        gate: cfg.gate,
        ...(images ? { image: projConfigFor(images, cfg['proj-width'], parseFeatureLayers(cfg['feature-layers'])) } : {}),
      };
      checkAdapterConfig(model.config, adapterConfig);
      const maxSeqLen = Math.min(cfg['max-seq-len'], model.config.maxSeqLen);
      const tokenize = (file: string, split: string) => {
        let ds = loadDataset(file, { format: cfg.format, split: cfg.format === 'scienceqa' ? split : undefined });
        const withImages = ds.records.filter((r) => r.image !== undefined).length;
        if (withImages && !images)
          log(`note: ${withImages} of ${ds.records.length} records of ${file} have an image; a text-only adapter does not see them (--image-features FILE or --encoder DIR trains an image-conditioned one)`);
        if (images) ds = checkImages(ds, images.imageSource, { warn: log, skipMissing: cfg['skip-missing-images'] });
        return tokenizeRecords(tokenizer, ds.records, { maxSeqLen, source: ds.source, warn: log }).examples;
      };
      let train = tokenize(cfg.data, cfg.split ?? 'train');
      let val: Example[] = [];
      if (cfg['val-data']) val = tokenize(cfg['val-data'], cfg['val-data-split'] ?? 'val');
      else if (cfg['val-split'] > 0) ({ train, val } = splitValidation(train, { valSplit: cfg['val-split'], seed: cfg.seed }));
      if (train.length === 0) throw new Error(`${cfg.data}: no training example is left (all were held out or skipped)`);
      if (images?.prepare) {
        // the frozen encoder's features of every image of the run, once
        const keys = [...train, ...val].flatMap((e) => (e.image !== undefined ? [e.image] : []));
        let shown = 0;
        await images.prepare(keys, (done, total) => {
          if (done === total || done - shown >= Math.max(1, Math.ceil(total / 10))) {
            shown = done;
            log(`encoding images: ${done}/${total}`);
          }
        });
      }
      log(
        `device ${describeDevice(model.device)}; ` +
          `model ${cfg.model}: ${model.config.nLayers} layers, dim ${model.config.dim}; adapter: top ${adapterConfig.layers} layers, ` +
          `${adapterConfig.len} prompts, ${adapterConfig.gate} gate, ${cfg['gate-init']} gate init` +
          (adapterConfig.image
            ? `, image projection ${adapterConfig.image.featureLayers.length} x ${adapterConfig.image.featureSize} -> ${adapterConfig.image.width} -> ${model.config.dim} from ${images!.describe}`
            : '') +
          `; ${train.length} training and ${val.length} validation examples`,
      );
      return new Trainer(cfg, model, tokenizer, train, val, adapterConfig, images);
    } catch (err) {
      model.dispose();
      images?.close();
      throw err;
    }
  }

  /** What a resumed run must share with the run that wrote the checkpoint. */
  private fingerprint(totalSteps: number): Record<string, unknown> {
    const c = this.cfg;
    return {
      ...resultSettings(c),
      model: path.resolve(c.model),
      data: path.resolve(c.data),
      'val-data': c['val-data'] ? path.resolve(c['val-data']) : null,
      'val-split': c['val-split'],
      adapter: this.adapterConfig,
      'batch-size': c['batch-size'],
      'grad-accum': c['grad-accum'],
      'max-seq-len': c['max-seq-len'],
      seed: c.seed,
      'gate-init': c['gate-init'],
      images: c['image-features'] ? path.resolve(c['image-features']) : c.encoder ? path.resolve(c.encoder) : null,
      shuffle: !c['no-shuffle'],
      totalSteps,
      examples: this.train.length,
    };
  }

  private findResume(): LoadedCheckpoint | undefined {
    const dir = resumeFolder(this.cfg.resume, this.cfg.out, (m) => this.emit('log', m));
    if (!dir) return undefined;
    return loadCheckpoint(dir, this.model.config, this.model.device);
  }

  async run(): Promise<TrainResult> {
    const c = this.cfg;
    const batcher = new Batcher(this.train, { batchSize: c['batch-size'], seed: c.seed, shuffle: !c['no-shuffle'] });
    const A = c['grad-accum'];
    const schedule = runSchedule(c, batcher.batchesPerEpoch);
    const totalSteps = schedule.totalSteps;
    const fingerprint = this.fingerprint(totalSteps);
    const dist = currentWorld(); // data parallelism (distributed.ts): a world of one unless launched by mpirun
    const root = dist.isRoot; // only rank 0 writes files

    if (schedule.warmupSteps > totalSteps)
      this.emit(
        'log',
        `warning: the run has ${totalSteps} steps but the warmup ${schedule.warmupSteps}: the lr never reaches its peak ` +
          `${schedule.peakLr.toPrecision(3)} (at most ${learningRate(totalSteps - 1, schedule).toPrecision(3)}); shorten --warmup-steps or --warmup-epochs`,
      );

    // Start: the folder, then the adapter (resumed, given, or new). A start that fails leaves no
    // folder it created behind.
    const made = root ? makeOutputDir(c.out, '--out') : [];
    let resumed: LoadedCheckpoint | undefined;
    let adapter: Adapter;
    let opt: AdamW;
    let startStep = 0;
    try {
      if (root && c.overwrite) clearRun(c.out);
      if (root && c.resume) {
        const gone = removeLeftovers(c.out);
        if (gone.length) this.emit('log', `removed what killed runs left in ${c.out}: ${gone.join(', ')}`);
      }
      resumed = await dist.shareResume(() => this.findResume(), this.model.config, this.model.device);
      if (resumed) dist.checkResume(resumed);
      if (resumed) {
        // every setting the checkpoint recorded must be the same (older checkpoints record fewer)
        checkCheckpointSettings(resumed, fingerprint, false);
        adapter = resumed.adapter;
        batcher.restore(resumed.state.data);
        startStep = resumed.state.step;
        this.emit('log', `resuming from ${resumed.dir} at step ${startStep}/${totalSteps}`);
      } else if (c['init-adapter']) {
        adapter = Adapter.load(c['init-adapter'], this.model.config, this.model.device);
        const a = adapter.config;
        const want = this.adapterConfig;
        if (a.layers !== want.layers || a.len !== want.len || a.gate !== want.gate) {
          adapter.dispose();
          throw new Error(
            `--init-adapter ${c['init-adapter']} has ${a.layers} layers, ${a.len} prompts, ${a.gate} gate; the run asks for ${want.layers}, ${want.len}, ${want.gate}`,
          );
        }
        const why = imageMismatch(c['init-adapter'], a, want);
        if (why) {
          adapter.dispose();
          throw new Error(why);
        }
      } else {
        adapter = Adapter.init(this.model.config, this.adapterConfig, c.seed, this.model.device, c['gate-init']);
      }
      try {
        opt = new AdamW(
          adapter.parameters(),
          { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: c['weight-decay'] },
          resumed ? { moments: resumed.moments, step: resumed.optimizerStep } : undefined,
          adapter.decayMask(),
        );
      } catch (err) {
        adapter.dispose();
        throw err;
      }
    } catch (err) {
      removeEmptyDirs(made);
      throw err;
    }

    const grads = new AdapterGrads(adapter);
    const graph = new AdapterGraph(this.model, adapter, { checkpointing: c.checkpointing });
    const metricsFile = path.join(c.out, 'metrics.jsonl');
    if (root) {
      fs.writeFileSync(path.join(c.out, 'config.yaml'), configToYaml(c));
      keepMetricsUpTo(metricsFile, startStep);
    }
    this.emit('log', `${totalSteps} steps of ${c['batch-size']} x ${A} examples, peak lr ${schedule.peakLr.toPrecision(3)}, ` + `warmup ${schedule.warmupSteps} steps, ${adapter.parameterCount} trainable parameters`);

    let lastLoss = NaN;
    let lastEval: EvalResult | undefined;
    let lastSaved = resumed?.dir;
    try {
      for (let step = startStep; step < totalSteps; step++) {
        const t0 = Date.now();
        const micro: Batch[] = Array.from({ length: A }, () => batcher.next());
        const targets = micro.reduce((s, b) => s + b.targetCount, 0);
        const tokens = micro.reduce((s, b) => s + b.tokens.length, 0);
        grads.zero();
        let lossSum = 0;
        // the step's loss is the mean over all its target tokens (SPEC §3): one shared denominator
        // (every rank sees the whole global batch, so `targets` is global; each runs its shard)
        // I_p of each image of the step once (every micro-batch reads it); its backward once, below
        const imagePrompts = await imagePromptsFor(adapter, this.images, micro, true);
        try {
          for (const b of micro)
            lossSum += (await graph.run(dist.shard(b, this.train), targets > 0 ? 1 / targets : 0, grads, imagePrompts)).lossSum;
          if (imagePrompts) imagePrompts.backward(grads.image!);
        } finally {
          imagePrompts?.dispose();
        }
        lossSum = await dist.reduceStep(grads.all(), lossSum); // sum gradients and losses over the ranks
        const loss = targets > 0 ? lossSum / targets : 0;
        if (step === startStep)
          this.emit(
            'log',
            `activation memory: ${(graph.activationBytes / 2 ** 20).toFixed(1)} MiB kept for the backward of the last micro-batch` +
              (c.checkpointing ? ' (checkpointing: layer inputs only)' : ' (--checkpointing keeps layer inputs only)'),
          );
        const lr = learningRate(step, schedule);
        if (!Number.isFinite(loss)) throw new NonFiniteError(`the loss is ${loss} at step ${step + 1}`);
        const gradNorm = await opt.update(grads.all(), lr, c['clip-grad']);
        lastLoss = loss;
        const m: StepMetrics = {
          step: step + 1,
          totalSteps,
          epoch: (batcher.epoch * batcher.batchesPerEpoch + batcher.index) / batcher.batchesPerEpoch,
          loss,
          lr,
          grad_norm: gradNorm,
          tokens,
          targets,
          ms: Date.now() - t0,
        };
        if (root) fs.appendFileSync(metricsFile, JSON.stringify(m) + '\n');
        this.emit('step', m);
        const last = step + 1 === totalSteps;
        if (c['eval-every'] > 0 && ((step + 1) % c['eval-every'] === 0 || last) && this.val.length) {
          lastEval = await this.evaluate(adapter, step + 1);
          if (root) fs.appendFileSync(metricsFile, JSON.stringify({ step: step + 1, val_loss: lastEval.loss, val_tokens: lastEval.tokens }) + '\n');
          this.emit('eval', lastEval);
        }
        if (root && c['save-every'] > 0 && (step + 1) % c['save-every'] === 0) {
          const state: RunState = { step: step + 1, totalSteps, data: batcher.state(), fingerprint, ...dist.runState() };
          lastSaved = await saveCheckpoint(c.out, adapter, opt, state, c['keep-last']);
          this.emit('checkpoint', lastSaved);
        }
      }
      const adapterPath = path.join(c.out, 'adapter.safetensors');
      if (root) await adapter.save(adapterPath, { steps: String(totalSteps), model: path.basename(c.model) });
      return { adapterPath, steps: totalSteps, finalLoss: lastLoss, lastEval };
    } catch (err) {
      if (err instanceof NonFiniteError)
        throw new NonFiniteError(
          `training stopped: ${err.message}. ${lastSaved ? `The last good checkpoint, ${lastSaved}, is intact.` : 'No checkpoint was saved (use --save-every).'} Try a lower --lr or --clip-grad.`,
        );
      throw err;
    } finally {
      grads.dispose();
      opt.dispose();
      adapter.dispose();
    }
  }

  /** Validation loss and one greedy sample from the first validation prompt. */
  async evaluate(adapter: Adapter, step: number): Promise<EvalResult> {
    const { loss, tokens } = await evaluateLoss(this.model, adapter, this.val, this.cfg['batch-size'], this.images);
    const first = this.val[0];
    if (first.promptLen + 1 >= this.model.config.maxSeqLen) return { step, loss, tokens };
    const prompt = this.tokenizer.decode(Array.from(first.ids.subarray(0, first.promptLen)));
    const image = first.image !== undefined && this.images ? await this.images.get(first.image) : undefined;
    this.model.setAdapter(adapter, image ? { imageFeatures: image } : undefined);
    let text = '';
    try {
      for await (const piece of generate(this.model, this.tokenizer, prompt, { temperature: 0, maxTokens: 64 })) text += piece;
    } finally {
      this.model.setAdapter(undefined);
    }
    return { step, loss, tokens, sample: { prompt, text } };
  }

  dispose(): void {
    this.model.dispose();
    this.images?.close();
  }
}

/** Why an --init-adapter's image projection does not fit the run (or undefined when it does). */
function imageMismatch(file: string, a: AdapterConfig, want: AdapterConfig): string | undefined {
  if (!a.image && want.image) return `--init-adapter ${file} is text-only (no image_proj.*) but the run is image-conditioned`;
  if (a.image && !want.image) return `--init-adapter ${file} is image-conditioned (image_proj.*): pass the run's --image-features FILE or --encoder DIR`;
  if (a.image && want.image) {
    const fmt = (p: typeof a.image) => `${p!.featureLayers.length} x ${p!.featureSize} -> ${p!.width}`;
    if (fmt(a.image) !== fmt(want.image)) return `--init-adapter ${file} has an image projection ${fmt(a.image)}, the run asks for ${fmt(want.image)} (features x size -> --proj-width)`;
  }
  return undefined;
}

/** Drops metric lines after `step` (a resumed run rewrites them). */
export function keepMetricsUpTo(file: string, step: number): void {
  if (!fs.existsSync(file)) return;
  if (step === 0) return fs.rmSync(file);
  const kept = fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => {
      if (!line.trim()) return false;
      try {
        return JSON.parse(line).step <= step;
      } catch {
        return false;
      }
    });
  fs.writeFileSync(file, kept.map((l) => l + '\n').join(''));
}
