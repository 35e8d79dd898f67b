// The run folder (--out): what marks it as holding a run, the settings a resumed run must share
// with the run that wrote it, clearing it for --overwrite, and the leftovers of killed runs.
import * as fs from 'fs';
import * as path from 'path';
import { peakFromBase } from './schedule';
import { readConfigFile, TrainConfig, trainDefaults } from './config';

export const RUN_CONFIG = 'config.yaml';
export const RUN_METRICS = 'metrics.jsonl';
export const RUN_ADAPTER = 'adapter.safetensors';

/** step-NNNNNN checkpoint folders and the step-NNNNNN.tmp-PID folders a killed save leaves. */
const CHECKPOINT = /^step-\d{6,}(\.tmp-\d+)?$/;
/** Temporary files of an interrupted write: writeSafetensors' `.NAME.PID.HEX.tmp`, checkpoints'
 *  `step-NNNNNN.tmp-PID` and export's `.NAME.PID.tmp`. */
const LEFTOVER = /^(\..+\.\d+(\.[0-9a-f]+)?\.tmp|step-\d{6,}\.tmp-\d+)$/;

/** The entries of `out` that belong to a run (empty when `out` holds none or does not exist). */
export function runEntries(out: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(out);
  } catch {
    return [];
  }
  return names.filter((n) => n === RUN_CONFIG || n === RUN_METRICS || n === RUN_ADAPTER || CHECKPOINT.test(n) || LEFTOVER.test(n)).sort();
}

/** "config.yaml, metrics.jsonl, 3 checkpoints" */
export function describeEntries(entries: string[]): string {
  const ckpts = entries.filter((n) => CHECKPOINT.test(n)).length;
  const files = entries.filter((n) => !CHECKPOINT.test(n) && !LEFTOVER.test(n));
  return [...files, ...(ckpts ? [`${ckpts} checkpoint${ckpts > 1 ? 's' : ''}`] : [])].join(', ') || 'leftovers of a killed run';
}

/** Removes every run entry of `out` (--overwrite); other files stay. */
export function clearRun(out: string): void {
  for (const n of runEntries(out)) fs.rmSync(path.join(out, n), { recursive: true, force: true });
}

/** Removes the temporary files and folders killed runs left in `out`; returns their names. */
export function removeLeftovers(out: string): string[] {
  const gone = runEntries(out).filter((n) => LEFTOVER.test(n));
  for (const n of gone) fs.rmSync(path.join(out, n), { recursive: true, force: true });
  return gone;
}

/**
 * Every setting that changes what a run computes, normalised so that two ways of saying the same
 * thing compare equal (paths resolved, the peak lr whether given as --lr or --blr).
 */
export function resultSettings(c: TrainConfig): Record<string, unknown> {
  const abs = (p: string | undefined) => (p ? path.resolve(p) : null);
  return {
    model: abs(c.model),
    tokenizer: abs(c.tokenizer),
    data: abs(c.data),
    'val-data': abs(c['val-data']),
    'val-split': c['val-split'],
    'adapter-layers': c['adapter-layers'] ?? 'default',
    'adapter-len': c['adapter-len'],
    gate: c.gate,
    'init-adapter': abs(c['init-adapter']),
    dtype: c.dtype,
    'matmul-precision': c['matmul-precision'] ?? 'highest',
    epochs: c['max-steps'] === undefined ? c.epochs : 'unused (--max-steps)',
    'max-steps': c['max-steps'] ?? null,
    'batch-size': c['batch-size'],
    'grad-accum': c['grad-accum'],
    'max-seq-len': c['max-seq-len'],
    lr: c.lr ?? peakFromBase(c.blr, c['batch-size'] * c['grad-accum']),
    warmup: c['warmup-steps'] !== undefined ? `${c['warmup-steps']} steps` : `${c['warmup-epochs']} epochs`,
    schedule: c.schedule,
    'weight-decay': c['weight-decay'],
    'clip-grad': c['clip-grad'] ?? null,
    seed: c.seed,
    shuffle: !c['no-shuffle'],
  };
}

/** "lr was 0.01, now 0.02" for each key of `now` whose value differs in `saved` (keys `saved`
 *  lacks are skipped unless `all`). */
export function settingMismatches(saved: Record<string, unknown>, now: Record<string, unknown>, all = true): string[] {
  return Object.keys(now)
    .filter((k) => (all || k in saved) && JSON.stringify(saved[k]) !== JSON.stringify(now[k]))
    .map((k) => `${k} was ${JSON.stringify(saved[k])}, now ${JSON.stringify(now[k])}`);
}

/**
 * The rule every trainer shares: an --out holding a run is refused unless --resume or --overwrite
 * is given. True when there is a run and --resume asks to continue it (the caller then compares
 * the settings).
 */
export function holdsRunToResume(out: string, o: { resume?: string; overwrite?: boolean }): boolean {
  const entries = runEntries(out);
  if (!entries.length || o.overwrite) return false;
  if (!o.resume)
    throw new Error(
      `--out ${out} already holds a run (${describeEntries(entries)}): continue it with --resume auto, ` +
        `or pass --overwrite to clear it and start over`,
    );
  return true;
}

/**
 * Before any work: refuses an --out that holds another run unless --resume (then its config.yaml
 * must agree with `cfg` on every setting that changes the result) or --overwrite.
 */
export function checkRunFolder(cfg: TrainConfig): void {
  if (!holdsRunToResume(cfg.out, cfg)) return;
  checkRunConfig(cfg.out, resultSettings(cfg), (file) => resultSettings({ ...trainDefaults, ...readConfigFile(file) } as TrainConfig));
}

/**
 * Refuses a resume whose settings differ from the run folder's config.yaml, naming each one:
 * `settingsOf` reads the file into the settings `now` holds. A folder without the file has
 * nothing to compare here (the checkpoint's own record is compared when it is loaded).
 */
export function checkRunConfig(out: string, now: Record<string, unknown>, settingsOf: (file: string) => Record<string, unknown>): void {
  const file = path.join(out, RUN_CONFIG);
  if (!fs.existsSync(file)) return;
  let saved: Record<string, unknown>;
  try {
    saved = settingsOf(file);
  } catch (err) {
    throw new Error(`cannot resume in ${out}: its ${RUN_CONFIG} cannot be compared with this run's settings (${(err as Error).message}); pass --overwrite to start over`);
  }
  const diff = settingMismatches(saved, now);
  if (diff.length)
    throw new Error(
      `cannot resume from ${out} (its ${RUN_CONFIG}): ${diff.join('; ')}. ` +
        `Resume with the run's settings, or pass --overwrite to clear it and start over`,
    );
}

/**
 * Refuses a checkpoint whose recorded settings differ from this run's (`all` false: only those
 * it recorded, for older checkpoints that record fewer); its adapter is disposed then.
 */
export function checkCheckpointSettings(
  resumed: { dir: string; state: { fingerprint?: Record<string, unknown> }; adapter: { dispose(): void } },
  fingerprint: Record<string, unknown>,
  all = true,
): void {
  const mismatch = settingMismatches(resumed.state.fingerprint ?? {}, fingerprint, all);
  if (!mismatch.length) return;
  resumed.adapter.dispose();
  throw new Error(`cannot resume from ${resumed.dir}: ${mismatch.join('; ')}`);
}
