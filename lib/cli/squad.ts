// The SQuAD commands (SPEC §9): `train --task squad`, `eval --task squad`, `answer`.
import * as fs from 'fs';
import * as nodePath from 'path';
import { resolveDevice } from '../device';
import { loadSquad } from '../data/squad';
import * as YAML from 'yaml';
import { checkOutputDir, makeOutputDir, removeEmptyDirs } from '../output';
import { TextEncoderModel } from '../text/encoder';
import { LoadedCheckpoint, resumeFolder } from '../train/checkpoint';
import { checkCheckpointSettings, checkRunConfig, clearRun, holdsRunToResume, removeLeftovers, RUN_CONFIG, RUN_METRICS } from '../train/run-folder';
import { keepMetricsUpTo } from '../train/trainer';
import {
  SquadAdapter, SquadParams, WindowOptions, adapterPathIn, decodeAnswer, disposeParams, evaluateSquad, frozenParams, loadSquadAdapter,
  loadSquadCheckpoint, makeFeatures, paramValues, saveSquadAdapter, scoreFeatures, squadTotalSteps, trainSquad,
} from '../tasks/squad';
import { FlagSpec, Flags, numberFlag, parseFlags, requireString, stringFlag, UsageError } from './args';
import { applyMatmulPrecision, matmulPrecisionUsage } from './model-flags';

/** True when argv asks for `--task squad` (train and eval hand such a command to this file). */
export function wantsSquad(argv: string[]): boolean {
  const i = argv.indexOf('--task');
  return argv.includes('--task=squad') || (i >= 0 && argv[i + 1] === 'squad');
}

const common: FlagSpec = {
  task: { type: 'string' },
  encoder: { type: 'string' },
  device: { type: 'string' },
  dtype: { type: 'string' },
  'matmul-precision': { type: 'string' },
  'batch-size': { type: 'string' },
};

const windowFlags: FlagSpec = {
  'max-seq-len': { type: 'string' },
  'doc-stride': { type: 'string' },
  'max-query-len': { type: 'string' },
};

const windowUsage = `  --max-seq-len N      tokens per window, question and special tokens included (default 384;
                       at most the encoder's positions)
  --doc-stride N       tokens shared by consecutive windows of a long context (default 128)
  --max-query-len N    questions are cut to N tokens (default 64)`;

const encoderUsage = `  --encoder DIR        Hugging Face RoBERTa or BERT folder (config.json, model.safetensors or an
                       index, and its tokenizer: vocab.json + merges.txt, vocab.txt, or tokenizer.json)
  --device cpu|cuda    where to run (default: cuda when available)
  --dtype f32|bf16     storage of the encoder's matrices (default f32)
${matmulPrecisionUsage()}
  --batch-size N       windows per forward pass (default 16)`;

export const trainUsage = `Usage: llama-adapter train --task squad --encoder DIR --data FILE --out DIR [flags]

Extractive question answering with zero-init gated prompts (SPEC §9): K prompts and per-head tanh
gates (0 at the start) in the top L layers of the frozen encoder and a span head (start/end logits;
the folder's own qa_outputs as the initial head when it has one, else zeros). Writes
OUT/adapter.safetensors, OUT/config.yaml (the run's settings) and OUT/metrics.jsonl (one line
per step), with --eval-data the metrics of that file at the end in OUT/eval.json, and with
--save-every checkpoints OUT/step-NNNNNN/ (adapter, AdamW state, data position) that --resume
continues bit for bit.

${encoderUsage}
  --data FILE          SQuAD v1.1 or v2.0 JSON (v2.0: unanswerable questions are trained to CLS)
  --out DIR            the run folder (one that already holds a run is refused unless --resume
                       or --overwrite)
  --layers L           adapted layers at the top (default min(8, layers of the encoder)); 0 with
                       --head-only
  --prompt-len K       prompts per adapted layer (default 10)
  --head-only          train the span head alone (no prompts: the linear probe)
  --gate-init zero|random  gates 0 (default, zero-init attention) or ~ N(0, 1) (the ablation)
  --epochs N           passes over the windows (default 2)
  --max-steps N        stop after N optimiser steps
  --lr X               peak learning rate (default 5e-3), linear warmup then cosine to 0
  --warmup-steps N     (default: 10% of the steps)
  --weight-decay X     AdamW decoupled weight decay (default 0.02)
  --seed N             prompt / gate initialisation and shuffling (default 0)
  --eval-data FILE     SQuAD file scored with the trained adapter at the end
  --save-every N       checkpoint every N steps; 0 = off (default 0)
  --keep-last N        checkpoints kept (default 2)
  --resume auto|DIR    continue a run: auto = the latest checkpoint in --out (a start from
                       scratch when it has none), or a checkpoint folder; every setting that
                       changes the result must be the run's own (each one that differs is named)
  --overwrite          clear the run already in --out and start over
${windowUsage}`;

export const evalUsage = `Usage: llama-adapter eval --task squad --encoder DIR --data FILE [--adapter FILE] [flags]

Prints {"exact_match", "f1"} (percent, as the official SQuAD evaluation script) of the
encoder's answers to the questions of FILE, and "total". Without --adapter the folder's own
qa_outputs head is used (the frozen *ForQuestionAnswering model as downloaded).

${encoderUsage}
  --data FILE          SQuAD v1.1 or v2.0 JSON
  --adapter FILE       adapter.safetensors from train --task squad
  --predictions FILE   also write {"question id": "answer"} there
  --no-answer          allow the v2.0 no-answer (default: when the adapter was trained on v2.0
                       or the file holds unanswerable questions)
${windowUsage}`;

export const answerUsage = `Usage: llama-adapter answer --encoder DIR [--adapter FILE] --question Q --context C

Prints the answer span of the context (one line; an empty line is "no answer", only with an
adapter trained on SQuAD v2.0 or --no-answer). Without --adapter the folder's own qa_outputs head
is used; a folder without one is an error.

${encoderUsage}
  --adapter FILE       adapter.safetensors from train --task squad
  --question Q         the question
  --context C          the text that holds the answer (or --context-file FILE)
  --context-file FILE  read the context from a file
  --no-answer          allow the no-answer decision (SPEC §9)
${windowUsage}`;

function windowOptions(v: Flags, defaults?: WindowOptions): WindowOptions {
  return {
    maxSeqLen: numberFlag(v, 'max-seq-len', { integer: true, min: 8 }) ?? defaults?.maxSeqLen ?? 384,
    docStride: numberFlag(v, 'doc-stride', { integer: true, min: 0 }) ?? defaults?.docStride ?? 128,
    maxQueryLen: numberFlag(v, 'max-query-len', { integer: true, min: 1 }) ?? defaults?.maxQueryLen ?? 64,
  };
}

async function openEncoder(v: Flags, usage: string): Promise<TextEncoderModel> {
  const dir = requireString(v, 'encoder', usage);
  const dtype = stringFlag(v, 'dtype') ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'bf16') throw new UsageError(`--dtype must be f32 or bf16, got '${dtype}'`);
  applyMatmulPrecision(v, dtype);
  const device = resolveDevice(stringFlag(v, 'device') as never, '--device');
  return TextEncoderModel.load(dir, { device, dtype });
}

function checkTask(v: Flags): void {
  if (v.task !== 'squad') throw new UsageError(`--task must be squad here, got '${String(v.task)}'`);
}

const progress = (what: string) => (done: number, total: number) => {
  if (done === total || done % 256 < 16) process.stderr.write(`${what}: ${done}/${total} windows\n`);
};

/** Every setting that changes what a SQuAD run computes, by flag name, as given (the defaults
 *  that depend on neither the encoder nor the data filled in): OUT/config.yaml. */
function squadSettings(v: Flags, win: WindowOptions, paths: { encoder: string; data: string }): Record<string, unknown> {
  const int = (k: string, min: number, max?: number) => numberFlag(v, k, { integer: true, min, max });
  return {
    task: 'squad',
    encoder: nodePath.resolve(paths.encoder),
    data: nodePath.resolve(paths.data),
    'max-seq-len': win.maxSeqLen,
    'doc-stride': win.docStride,
    'max-query-len': win.maxQueryLen,
    layers: int('layers', 0) ?? 'default',
    'prompt-len': int('prompt-len', 1, 4096) ?? 10,
    'head-only': v['head-only'] === true,
    'gate-init': stringFlag(v, 'gate-init') ?? 'zero',
    epochs: int('epochs', 1) ?? 2,
    'max-steps': int('max-steps', 1) ?? null,
    'batch-size': int('batch-size', 1) ?? 16,
    lr: numberFlag(v, 'lr', { min: 0, minExclusive: true }) ?? 5e-3,
    'warmup-steps': int('warmup-steps', 0) ?? 'default',
    'weight-decay': numberFlag(v, 'weight-decay', { min: 0 }) ?? 0.02,
    seed: int('seed', 0, 2 ** 32 - 1) ?? 0,
    dtype: stringFlag(v, 'dtype') ?? 'f32',
    'matmul-precision': stringFlag(v, 'matmul-precision') ?? 'highest',
  };
}

/** A run's config.yaml as the settings train() records (a file that is not a mapping holds none). */
function readSettingsFile(file: string): Record<string, unknown> {
  const saved: unknown = YAML.parse(fs.readFileSync(file, 'utf8'));
  return typeof saved === 'object' && saved !== null ? (saved as Record<string, unknown>) : {};
}

export async function train(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const spec: FlagSpec = {
    ...common, ...windowFlags, data: { type: 'string' }, out: { type: 'string' }, layers: { type: 'string' }, 'prompt-len': { type: 'string' },
    'head-only': { type: 'boolean' }, 'gate-init': { type: 'string' }, epochs: { type: 'string' }, 'max-steps': { type: 'string' },
    lr: { type: 'string' }, 'warmup-steps': { type: 'string' }, 'weight-decay': { type: 'string' }, seed: { type: 'string' },
    'eval-data': { type: 'string' }, 'save-every': { type: 'string' }, 'keep-last': { type: 'string' }, resume: { type: 'string' },
    overwrite: { type: 'boolean' },
  };
  const { values: v, positionals } = parseFlags(argv, spec, trainUsage);
  if (v.help) {
    out.write(trainUsage + '\n');
    return;
  }
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}'\n\n${trainUsage}`);
  checkTask(v);
  const dataPath = requireString(v, 'data', trainUsage);
  const outDir = requireString(v, 'out', trainUsage);
  const encoderDir = requireString(v, 'encoder', trainUsage);
  const gateInit = stringFlag(v, 'gate-init') ?? 'zero';
  if (gateInit !== 'zero' && gateInit !== 'random') throw new UsageError(`--gate-init must be zero or random, got '${gateInit}'`);
  const headOnly = v['head-only'] === true;
  const win = windowOptions(v);
  const saveEvery = numberFlag(v, 'save-every', { integer: true, min: 0 }) ?? 0;
  const keepLast = numberFlag(v, 'keep-last', { integer: true, min: 1 }) ?? 2;
  const resume = stringFlag(v, 'resume');
  const overwrite = v.overwrite === true;
  if (resume !== undefined && overwrite) throw new UsageError('give either --resume or --overwrite, not both');
  const settings = squadSettings(v, win, { encoder: encoderDir, data: dataPath });
  // before any work: can --out be written, and may this run use it (lib/train/run-folder.ts)?
  checkOutputDir(outDir, '--out');
  if (holdsRunToResume(outDir, { resume, overwrite })) checkRunConfig(outDir, settings, readSettingsFile);
  const adapterPath = adapterPathIn(outDir);
  const data = loadSquad(dataPath);
  const evalData = stringFlag(v, 'eval-data') !== undefined ? loadSquad(stringFlag(v, 'eval-data')!) : undefined;
  const enc = await openEncoder(v, trainUsage);
  try {
    const c = enc.config;
    const layersFlag = numberFlag(v, 'layers', { integer: true, min: 0, max: c.nLayers });
    if (headOnly && layersFlag) throw new UsageError('--head-only trains no prompts: leave --layers out');
    if (!headOnly && layersFlag === 0) throw new UsageError('--layers 0 is --head-only');
    const layers = headOnly ? 0 : layersFlag ?? Math.min(8, c.nLayers);
    if (win.maxSeqLen > c.maxTokens) throw new UsageError(`--max-seq-len ${win.maxSeqLen} is above the ${c.maxTokens} positions of ${enc.dir}`);
    const opts = {
      ...win, layers, promptLen: settings['prompt-len'] as number, gateInit: gateInit as 'zero' | 'random',
      epochs: settings.epochs as number, maxSteps: (settings['max-steps'] as number | null) ?? undefined,
      batchSize: settings['batch-size'] as number, lr: settings.lr as number,
      weightDecay: settings['weight-decay'] as number, warmupSteps: 0, seed: settings.seed as number,
    };
    process.stderr.write(`squad: tokenizing ${data.examples.length} questions of ${dataPath}\n`);
    const windows = makeFeatures(data.examples, enc.tokenizer!, win);
    const feats = windows.length;
    const total = squadTotalSteps(feats, opts);
    opts.warmupSteps = numberFlag(v, 'warmup-steps', { integer: true, min: 0 }) ?? Math.floor(total / 10);
    // what a checkpoint must share with the run resuming it: the settings as resolved
    const fingerprint = { ...settings, layers, 'warmup-steps': opts.warmupSteps, windows: feats, 'total-steps': total };
    process.stderr.write(
      `squad: ${data.examples.length} questions (${data.v2 ? 'v2.0' : 'v1.1'}) in ${feats} windows, ${total} steps; ` +
        `${headOnly ? 'head only' : `${layers} layers x ${opts.promptLen} prompts, gates ${gateInit}`}; ${c.family} ${c.nLayers}x${c.dim} on ${enc.device}\n`,
    );
    if (data.mismatched) process.stderr.write(`squad: ${data.mismatched} answers differ from the context at answer_start: not trained on\n`);
    const log = (m: string) => process.stderr.write(`squad: ${m}\n`);
    // the same run-folder rules as the other trainers: a start that fails leaves no folder it made
    const made = makeOutputDir(outDir, '--out');
    const metricsPath = nodePath.join(outDir, RUN_METRICS);
    let resumed: LoadedCheckpoint<SquadAdapter> | undefined;
    try {
      if (overwrite) {
        clearRun(outDir);
        fs.rmSync(nodePath.join(outDir, 'eval.json'), { force: true });
      }
      if (resume !== undefined) {
        const gone = removeLeftovers(outDir);
        if (gone.length) log(`removed what killed runs left in ${outDir}: ${gone.join(', ')}`);
      }
      const dir = resumeFolder(resume, outDir, log);
      if (dir) {
        resumed = loadSquadCheckpoint(dir, enc);
        checkCheckpointSettings(resumed, fingerprint);
        log(`resuming from ${dir} at step ${resumed.state.step}/${total}`);
      }
    } catch (e) {
      removeEmptyDirs(made);
      throw e;
    }
    let params: SquadParams | undefined;
    try {
      fs.writeFileSync(nodePath.join(outDir, RUN_CONFIG), YAML.stringify(settings));
      const startStep = resumed?.state.step ?? 0;
      keepMetricsUpTo(metricsPath, startStep);
      if (startStep === 0) fs.writeFileSync(metricsPath, '');
      params = await trainSquad(enc, data, opts, (s) => {
        fs.appendFileSync(metricsPath, JSON.stringify(s) + '\n');
        if (s.step === 1 || s.step % 10 === 0 || s.step === s.totalSteps)
          process.stderr.write(`step ${s.step}/${s.totalSteps} | loss ${s.loss.toFixed(4)} | norm ${s.grad_norm.toFixed(4)} | lr ${s.lr.toExponential(2)} | ${s.ms} ms | ${Math.round((s.tokens * 1000) / Math.max(1, s.ms))} tok/s\n`);
      }, windows, { out: outDir, saveEvery, keepLast, fingerprint, resumed });
      saveSquadAdapter(adapterPath, params, enc, { ...win, layers, promptLen: opts.promptLen, v2: data.v2 }, await paramValues(params));
    } catch (e) {
      if (!params) removeEmptyDirs(made);
      throw e;
    }
    if (evalData) {
      const r = await evaluateSquad(enc, params, evalData, win, data.v2 || evalData.v2, opts.batchSize, progress('eval'));
      const res = { exact_match: r.exact_match, f1: r.f1, total: r.total };
      fs.writeFileSync(nodePath.join(outDir, 'eval.json'), JSON.stringify(res) + '\n');
      process.stderr.write(`eval ${evalData.path}: ${JSON.stringify(res)}\n`);
    }
    disposeParams(params);
    out.write(adapterPath + '\n');
  } finally {
    enc.dispose();
  }
}

async function paramsFor(enc: TextEncoderModel, v: Flags): Promise<{ params: SquadParams; win: WindowOptions; v2: boolean }> {
  const a = stringFlag(v, 'adapter');
  if (a !== undefined) {
    const { params, info } = loadSquadAdapter(a, enc);
    return { params, win: windowOptions(v, info), v2: info.v2 };
  }
  return { params: await frozenParams(enc), win: windowOptions(v), v2: false };
}

export async function evaluate(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const spec: FlagSpec = { ...common, ...windowFlags, data: { type: 'string' }, adapter: { type: 'string' }, predictions: { type: 'string' }, 'no-answer': { type: 'boolean' } };
  const { values: v, positionals } = parseFlags(argv, spec, evalUsage);
  if (v.help) {
    out.write(evalUsage + '\n');
    return;
  }
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}'\n\n${evalUsage}`);
  checkTask(v);
  const data = loadSquad(requireString(v, 'data', evalUsage));
  const predPath = stringFlag(v, 'predictions');
  const enc = await openEncoder(v, evalUsage);
  try {
    const { params, win, v2 } = await paramsFor(enc, v);
    try {
      if (win.maxSeqLen > enc.config.maxTokens) throw new UsageError(`--max-seq-len ${win.maxSeqLen} is above the ${enc.config.maxTokens} positions of ${enc.dir}`);
      const bs = numberFlag(v, 'batch-size', { integer: true, min: 1 }) ?? 16;
      const r = await evaluateSquad(enc, params, data, win, v2 || data.v2 || v['no-answer'] === true, bs, progress('eval'));
      if (predPath) {
        const tmp = `${predPath}.tmp-${process.pid}`;
        fs.writeFileSync(tmp, JSON.stringify(Object.fromEntries(r.predictions), null, 1) + '\n');
        fs.renameSync(tmp, predPath);
      }
      out.write(JSON.stringify({ exact_match: r.exact_match, f1: r.f1, total: r.total }) + '\n');
    } finally {
      disposeParams(params);
    }
  } finally {
    enc.dispose();
  }
}

export const usage = answerUsage;

export async function run(argv: string[], out: NodeJS.WritableStream = process.stdout): Promise<void> {
  const spec: FlagSpec = {
    ...common, ...windowFlags, adapter: { type: 'string' }, question: { type: 'string' }, context: { type: 'string' },
    'context-file': { type: 'string' }, 'no-answer': { type: 'boolean' },
  };
  const { values: v, positionals } = parseFlags(argv, spec, answerUsage);
  if (v.help) {
    out.write(answerUsage + '\n');
    return;
  }
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}'\n\n${answerUsage}`);
  if (v.task !== undefined) checkTask(v);
  const question = requireString(v, 'question', answerUsage);
  const cf = stringFlag(v, 'context-file');
  if (cf !== undefined && v.context !== undefined) throw new UsageError('give --context or --context-file, not both');
  const context = cf !== undefined ? fs.readFileSync(cf, 'utf8') : requireString(v, 'context', answerUsage);
  const enc = await openEncoder(v, answerUsage);
  try {
    const { params, win, v2 } = await paramsFor(enc, v);
    try {
      const ex = { id: 'q', question, context, answers: [], isImpossible: false };
      const feats = makeFeatures([ex], enc.tokenizer!, win);
      const logits = await scoreFeatures(enc, params, feats, numberFlag(v, 'batch-size', { integer: true, min: 1 }) ?? 16);
      out.write(decodeAnswer(ex, feats, logits, v2 || v['no-answer'] === true).text.replace(/\s*\n\s*/g, ' ') + '\n');
    } finally {
      disposeParams(params);
    }
  } finally {
    enc.dispose();
  }
}
