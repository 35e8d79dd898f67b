// The training configuration: every flag of `llama-adapter train`, its default (the paper's
// recipe, SPEC §4), YAML config files whose keys equal the flag names, and validation with
// messages that name the flag.
import * as fs from 'fs';
import * as YAML from 'yaml';
import { FlagSpec, Flags, UsageError } from '../cli/args';
import { ADAPTER_MAX_LEN } from '../model/bounds';

export interface TrainConfig {
  /** what is trained: a LLaMA-Adapter on instruction data (lm), or zero-init prompts and a linear
   *  head in a frozen image encoder (classify, lib/tasks/classify.ts, SPEC §9) */
  task: 'lm' | 'classify';
  model: string; // task lm
  encoder?: string; // a HF ViT or CLIP folder: classify's backbone, or lm's image features (SPEC §8)
  'image-root'?: string; // where the data's relative image paths start
  'head-only': boolean; // task classify: the linear probe (no prompts, no gates)
  'gate-init': 'zero' | 'random';
  tokenizer?: string;
  data: string;
  'val-data'?: string;
  'val-split': number;
  /** the data files' format (lib/data/dataset.ts); default alpaca */
  format?: 'alpaca' | 'scienceqa' | 'coco';
  /** --format scienceqa: the split of --data (default train) and of --val-data (default val) */
  split?: string;
  'val-data-split'?: string;
  out: string;
  'adapter-layers'?: number; // default N - 2 (at least 1), known once the model is loaded
  'adapter-len': number;
  gate: 'per-head' | 'scalar';
  'image-features'?: string; // task lm: an image-conditioned adapter (SPEC §8)
  'feature-layers'?: string;
  'proj-width': number;
  /** leave out records whose image is missing (counted in one warning) instead of failing */
  'skip-missing-images': boolean;
  epochs: number;
  'max-steps'?: number;
  'batch-size': number;
  'grad-accum': number;
  lr?: number; // absolute peak lr; default blr * effective batch / 256
  blr: number;
  'warmup-epochs': number;
  'warmup-steps'?: number;
  schedule: 'cosine' | 'constant';
  'weight-decay': number;
  'clip-grad'?: number;
  'max-seq-len': number;
  seed: number;
  'no-shuffle': boolean;
  'init-adapter'?: string;
  'eval-every': number;
  'save-every': number;
  'keep-last': number;
  resume?: string; // 'auto' or a checkpoint folder
  /** clear a run already in --out before starting (otherwise such a folder is refused) */
  overwrite: boolean;
  threads?: number;
  dtype: 'f32' | 'bf16';
  /** CPU products with bf16 weights: f32 activations (highest) or bf16 ones (medium); native.setMatmulPrecision */
  'matmul-precision': 'highest' | 'medium';
  /** where the model and the adapter compute; default 'cuda' when available, else 'cpu' (resolved
   *  by Trainer.create and saved so in OUT/config.yaml) */
  device?: 'cuda' | 'cpu';
  checkpointing: boolean;
  /** read the model into memory instead of mapping it */
  'no-mmap': boolean;
  // data parallelism (lib/train/distributed.ts)
  devices?: number; // processes to start on this machine (under mpirun); default 1
  comm: 'auto' | 'mpi' | 'nccl' | 'none';
  'comm-timeout'?: number; // seconds; default $LLAMA_ADAPTER_COMM_TIMEOUT or 600
}

type Kind = 'string' | 'int' | 'number' | 'bool' | 'enum';
interface Option {
  kind: Kind;
  help: string;
  min?: number;
  minExclusive?: boolean;
  max?: number;
  values?: string[];
}

/** Every flag, in the order `--help` lists them. */
export const trainOptions: Record<keyof TrainConfig | 'config', Option> = {
  task: { kind: 'enum', values: ['lm', 'classify'], help: 'lm: instruction tuning of a LLaMA; classify: image classification on --encoder (default lm)' },
  model: { kind: 'string', help: 'llama2.c .bin file, Hugging Face folder, Meta .pth folder or GGUF file (quantized weights stay quantized) (required for --task lm)' },
  encoder: { kind: 'string', help: 'Hugging Face ViT or CLIP folder, frozen: classify\'s backbone (required for --task classify); lm: image features computed by it once per image (SPEC §8)' },
  'image-root': { kind: 'string', help: "folder the data's image paths are relative to (default: the data file's folder, or where --format puts them)" },
  'head-only': { kind: 'bool', help: 'classify: train the linear head alone (the linear-probe baseline; features computed once)' },
  'gate-init': { kind: 'enum', values: ['zero', 'random'], help: 'gates start at 0 (the paper) or ~ N(0, 1) from --seed (the ablation) (default zero)' },
  tokenizer: { kind: 'string', help: 'tokenizer.model or tokenizer.bin (default: a GGUF\'s own vocabulary, else found beside the model)' },
  data: { kind: 'string', help: 'training data: Alpaca JSON list or JSONL, or as --format says; classify: an image-folder tree root/<class>/<file> or a JSON/JSONL list of {"image", "label"} (required)' },
  'val-data': { kind: 'string', help: 'validation data file (instead of --val-split)' },
  'val-split': { kind: 'number', min: 0, max: 1, help: 'fraction of --data held out for validation (default 0)' },
  format: { kind: 'enum', values: ['alpaca', 'scienceqa', 'coco'], help: 'data format: Alpaca JSON/JSONL, ScienceQA folder, COCO captions_*.json (SPEC §8; default alpaca)' },
  split: { kind: 'string', help: '--format scienceqa: the pid_splits.json list of --data (default train)' },
  'val-data-split': { kind: 'string', help: '--format scienceqa: the pid_splits.json list of --val-data (default val)' },
  out: { kind: 'string', help: 'run folder: adapter, checkpoints, metrics (required)' },
  config: { kind: 'string', help: 'YAML file whose keys are these flag names; flags override it' },
  'adapter-layers': { kind: 'int', min: 1, help: 'adapted top layers L (default: layers - 2, at least 1)' },
  'adapter-len': { kind: 'int', min: 1, max: ADAPTER_MAX_LEN, help: `prompts per adapted layer K (default 10, at most ${ADAPTER_MAX_LEN})` },
  gate: { kind: 'enum', values: ['per-head', 'scalar'], help: 'per-head (the paper) or scalar gates (default per-head)' },
  'image-features': { kind: 'string', help: 'SPEC §7 features file: an image-conditioned adapter; records\' "image" = tensor names' },
  'feature-layers': { kind: 'string', help: 'encoder layers of the features, e.g. -1 or -2,-1 (default -1, or the features file\'s)' },
  'proj-width': { kind: 'int', min: 1, help: 'hidden width R of the image projection (default 128)' },
  'skip-missing-images': { kind: 'bool', help: 'leave out records whose image file or features key is missing, with a count (default: such a record is an error naming it)' },
  epochs: { kind: 'int', min: 1, help: 'passes over the data (default 5)' },
  'max-steps': { kind: 'int', min: 1, help: 'stop after this many optimiser steps (default: epochs)' },
  'batch-size': { kind: 'int', min: 1, help: 'examples per micro-batch, packed without padding (default 4)' },
  'grad-accum': { kind: 'int', min: 1, help: 'micro-batches per optimiser step (default 8: effective batch 32)' },
  lr: { kind: 'number', min: 0, minExclusive: true, help: 'peak learning rate (default: blr * effective batch / 256)' },
  blr: { kind: 'number', min: 0, minExclusive: true, help: 'base learning rate (default 9e-3)' },
  'warmup-epochs': { kind: 'number', min: 0, help: 'linear warmup length in epochs (default 2)' },
  'warmup-steps': { kind: 'int', min: 0, help: 'linear warmup length in steps (overrides --warmup-epochs)' },
  schedule: { kind: 'enum', values: ['cosine', 'constant'], help: 'after warmup: half-cycle cosine to 0, or constant (default cosine)' },
  'weight-decay': { kind: 'number', min: 0, help: 'decoupled weight decay (default 0.02)' },
  'clip-grad': { kind: 'number', min: 0, minExclusive: true, help: 'clip the global gradient norm to this (default: off)' },
  'max-seq-len': { kind: 'int', min: 2, help: 'truncate examples to this many tokens (default 512)' },
  seed: { kind: 'int', min: 0, max: 0xffffffff, help: 'seed of the prompt init, shuffling and split (default 0)' },
  'no-shuffle': { kind: 'bool', help: 'batches in file order' },
  'init-adapter': { kind: 'string', help: 'start from this adapter file, ours or an official .pth (prompts, gates and image_proj.* as they are)' },
  'eval-every': { kind: 'int', min: 0, help: 'validation loss and a sample every N steps; 0 = off (default 0)' },
  'save-every': { kind: 'int', min: 0, help: 'checkpoint every N steps; 0 = off (default 0)' },
  'keep-last': { kind: 'int', min: 1, help: 'checkpoints kept (default 2)' },
  resume: { kind: 'string', help: "continue a run: 'auto' (the latest checkpoint in --out) or a checkpoint folder" },
  overwrite: { kind: 'bool', help: 'clear the run already in --out and start over (without it such a folder is refused)' },
  threads: { kind: 'int', min: 1, help: 'CPU threads (default: all cores)' },
  dtype: { kind: 'enum', values: ['f32', 'bf16'], help: 'storage of the frozen weights (default f32)' },
  'matmul-precision': {
    kind: 'enum',
    values: ['highest', 'medium'],
    help: 'CPU products with bf16 weights: medium rounds the activations to bf16 as CUDA does, about 2x faster with AVX512-BF16 (default highest)',
  },
  device: { kind: 'enum', values: ['cuda', 'cpu'], help: 'where to compute (default: cuda when a GPU is available, else cpu)' },
  checkpointing: { kind: 'bool', help: 'recompute each adapted layer in the backward (less memory)' },
  'no-mmap': { kind: 'bool', help: 'read the model file into memory instead of mapping it (when the file may change during the run)' },
  devices: { kind: 'int', min: 1, help: 'data-parallel processes on this machine, started with mpirun (default 1)' },
  comm: { kind: 'enum', values: ['auto', 'mpi', 'nccl', 'none'], help: 'gradient all-reduce: auto = MPI when started by mpirun (default auto)' },
  'comm-timeout': { kind: 'number', min: 0, minExclusive: true, help: 'seconds a rank waits for the others before failing (default 600)' },
};

export const trainDefaults: Omit<TrainConfig, 'model' | 'data' | 'out'> = {
  task: 'lm',
  'head-only': false,
  'gate-init': 'zero',
  'val-split': 0,
  'adapter-len': 10,
  gate: 'per-head',
  'proj-width': 128,
  'skip-missing-images': false,
  epochs: 5,
  'batch-size': 4,
  'grad-accum': 8,
  blr: 9e-3,
  'warmup-epochs': 2,
  schedule: 'cosine',
  'weight-decay': 0.02,
  'max-seq-len': 512,
  seed: 0,
  'no-shuffle': false,
  'eval-every': 0,
  'save-every': 0,
  'keep-last': 2,
  overwrite: false,
  dtype: 'f32',
  'matmul-precision': 'highest',
  checkpointing: false,
  'no-mmap': false,
  comm: 'auto',
};

/** --task classify's own defaults: images are batched, not packed. */
export const classifyDefaults: Partial<TrainConfig> = { 'batch-size': 32, 'grad-accum': 1 };

/** Flags that belong to one task only (--encoder, --image-root and --gate-init mean something to
 *  both: the classifier's backbone, or the image-conditioned adapter's features). */
const lmOnly = ['model', 'tokenizer', 'max-seq-len', 'dtype', 'matmul-precision', 'checkpointing', 'devices', 'comm', 'comm-timeout', 'format', 'split', 'val-data-split', 'image-features', 'feature-layers', 'proj-width', 'skip-missing-images'];
const classifyOnly = ['head-only'];

export function trainFlagSpec(): FlagSpec {
  const spec: FlagSpec = {};
  for (const [name, o] of Object.entries(trainOptions)) spec[name] = { type: o.kind === 'bool' ? 'boolean' : 'string' };
  return spec;
}

export function trainUsage(): string {
  const lines = Object.entries(trainOptions).map(([name, o]) => {
    const flag = `--${name}${o.kind === 'bool' ? '' : o.kind === 'enum' ? ` ${o.values!.join('|')}` : ' X'}`;
    return `  ${flag.padEnd(30)} ${o.help}`;
  });
  return (
    'Usage: llama-adapter train --model PATH --data FILE --out DIR [flags]\n' +
    '       llama-adapter train --task classify --encoder DIR --data D --out DIR [flags]\n\n' +
    "Fine-tunes a LLaMA-Adapter on instruction data (the frozen model's weights never change), or, with\n" +
    '--task classify, zero-init gated prompts in the top --adapter-layers of a frozen image encoder plus a\n' +
    'linear head on its final layernorm(h[cls]) (defaults there: --batch-size 32 --grad-accum 1).\n\n' +
    lines.join('\n')
  );
}

function coerce(name: string, raw: unknown, from: string): unknown {
  const o = trainOptions[name as keyof typeof trainOptions];
  if (!o) throw new UsageError(`${from}: unknown option '${name}'`);
  const bad = (want: string) => new UsageError(`${from}: ${name} must be ${want}, got '${String(raw)}'`);
  switch (o.kind) {
    case 'string':
      if (typeof raw !== 'string' || raw === '') throw bad('a non-empty string');
      return raw;
    case 'bool':
      if (typeof raw === 'boolean') return raw;
      if (raw === 'true' || raw === 'false') return raw === 'true';
      throw bad('true or false');
    case 'enum':
      if (typeof raw !== 'string' || !o.values!.includes(raw)) throw bad(o.values!.join(' or '));
      return raw;
    default: {
      const v = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
      const range = [
        o.kind === 'int' ? 'an integer' : 'a number',
        o.min !== undefined ? `${o.minExclusive ? '>' : '>='} ${o.min}` : '',
        o.max !== undefined ? `<= ${o.max}` : '',
      ]
        .filter(Boolean)
        .join(' ');
      if (!Number.isFinite(v) || (o.kind === 'int' && !Number.isInteger(v))) throw bad(range);
      if (o.min !== undefined && (o.minExclusive ? v <= o.min : v < o.min)) throw bad(range);
      if (o.max !== undefined && v > o.max) throw bad(range);
      return v;
    }
  }
}

/** Reads a YAML config file: a mapping whose keys are flag names. */
export function readConfigFile(file: string): Partial<TrainConfig> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`cannot read the config file ${file}: ${(err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = YAML.parse(text);
  } catch (err) {
    throw new UsageError(`${file} is not valid YAML: ${(err as Error).message}`);
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new UsageError(`${file} must be a mapping of flag names to values`);
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(doc as Record<string, unknown>)) {
    if (k === 'config') throw new UsageError(`${file}: a config file cannot name another config file`);
    out[k] = coerce(k, v, file);
  }
  return out as Partial<TrainConfig>;
}

/** Defaults, then the --config file, then the flags. */
export function resolveTrainConfig(flags: Flags): TrainConfig {
  const fromFile = typeof flags.config === 'string' ? readConfigFile(flags.config) : {};
  const fromFlags: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(flags)) {
    if (v === undefined || k === 'config' || k === 'help') continue;
    fromFlags[k] = coerce(k, v, `--${k}`);
  }
  const task = (fromFlags.task ?? fromFile.task ?? trainDefaults.task) as TrainConfig['task'];
  const defaults = task === 'classify' ? { ...trainDefaults, ...classifyDefaults } : trainDefaults;
  const cfg = { ...defaults, ...fromFile, ...fromFlags } as TrainConfig;
  for (const required of ['data', 'out', task === 'classify' ? 'encoder' : 'model'] as const)
    if (!cfg[required]) throw new UsageError(`--${required} is required${task === 'classify' ? ' with --task classify' : ''}\n\n${trainUsage()}`);
  // flags of the other task are mistakes, not silently ignored
  const given = (k: string) => k in fromFlags || k in fromFile;
  const otherTask = task === 'classify' ? lmOnly : classifyOnly;
  const wrong = otherTask.filter(given);
  if (wrong.length) throw new UsageError(`${wrong.map((k) => `--${k}`).join(', ')} ${wrong.length > 1 ? 'do' : 'does'} not apply to --task ${task}`);
  if (task === 'classify' && cfg.gate !== 'per-head') throw new UsageError('--task classify has per-head gates only');
  // (the LLaMA trainer's random gates come with the image-conditioned adapter's work; until then, refuse)
  if (task === 'classify' && cfg['head-only'] && (given('gate-init') || given('adapter-layers') || given('adapter-len')))
    throw new UsageError('--head-only trains no prompts or gates: drop --gate-init, --adapter-layers and --adapter-len');
  if (cfg['val-data'] && cfg['val-split'] > 0) throw new UsageError('give either --val-data or --val-split, not both');
  if (cfg['val-split'] >= 1) throw new UsageError(`--val-split must be below 1, got ${cfg['val-split']}`);
  if (cfg.resume && cfg.overwrite) throw new UsageError('give either --resume or --overwrite, not both');
  if (cfg.format !== 'scienceqa')
    for (const k of ['split', 'val-data-split'] as const)
      if (cfg[k] !== undefined) throw new UsageError(`--${k} is only for --format scienceqa`);
  return cfg;
}

/** The resolved config as YAML (saved in the run folder; it can be passed back with --config). */
export function configToYaml(cfg: TrainConfig): string {
  const clean: Record<string, unknown> = {};
  // --overwrite is an action on the folder, not a setting of the run
  for (const [k, v] of Object.entries(cfg)) if (v !== undefined && k !== 'overwrite') clean[k] = v;
  return YAML.stringify(clean);
}
