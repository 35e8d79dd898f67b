// Checkpoint folders OUT/step-NNNNNN/: the adapter, the optimiser state, and the run state (step,
// data position) — written to a temporary folder and renamed, so a crash never leaves a
// half-written checkpoint, and read back so that a resumed run continues bit for bit.
import * as fs from 'fs';
import * as path from 'path';
import type { Device, Tensor } from '../native';
import { Adapter } from '../model/adapter';
import { LlamaConfig } from '../model/config';
import { readSafetensorsHeader, writeSafetensors } from '../model/safetensors';
import { BatcherState } from '../data/alpaca';
import { AdamW } from './optimizer';

export interface RunState {
  /** optimiser steps completed */
  step: number;
  totalSteps: number;
  /** the IndexBatcher's position: over Alpaca examples, classify's images or SQuAD's windows (the
   *  count it was drawn over is in it and checked on restore) */
  data: BatcherState;
  /** the settings that must match on resume */
  fingerprint: Record<string, unknown>;
}

const STEP_DIR = /^step-(\d{6,})$/;

export function stepDirName(step: number): string {
  return `step-${String(step).padStart(6, '0')}`;
}

/** The checkpoint folder --resume names: `auto` is the highest step in `out`, or none (said with
 *  `log`) when it has none yet; without --resume, none. */
export function resumeFolder(resume: string | undefined, out: string, log: (m: string) => void): string | undefined {
  if (!resume) return undefined;
  if (resume !== 'auto') return resume;
  const dir = listCheckpoints(out).pop(); // the highest step
  if (!dir) log(`no checkpoint in ${out}: starting from scratch`);
  return dir;
}

/** Checkpoint folders of a run, oldest first: by step number (step-999999 before step-1000002). */
export function listCheckpoints(out: string): string[] {
  if (!fs.existsSync(out)) return [];
  const step = (n: string) => Number(STEP_DIR.exec(n)![1]);
  return fs
    .readdirSync(out)
    .filter((n) => STEP_DIR.test(n) && fs.existsSync(path.join(out, n, 'state.json')))
    .sort((a, b) => step(a) - step(b))
    .map((n) => path.join(out, n));
}

/** What a checkpoint holds of a run's trainable part: the LLaMA Adapter, or a task's own (the
 *  image-classification adapter of lib/model/classifier.ts). */
export interface Checkpointable {
  save(file: string): Promise<void>;
  parameters(): Tensor[];
  dispose(): void;
}

export async function saveCheckpoint(out: string, adapter: Checkpointable, opt: AdamW, state: RunState, keepLast: number): Promise<string> {
  const dir = path.join(out, stepDirName(state.step));
  const tmp = `${dir}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp); // the run folder exists (not recursive: see lib/output.ts)
  try {
    await adapter.save(path.join(tmp, 'adapter.safetensors'));
    const tensors = [];
    for (let i = 0; i < opt.params.length; i++) {
      tensors.push({ name: `m.${i}`, dtype: 'F32' as const, shape: [...opt.m[i].shape], data: (await opt.m[i].read()) as Float32Array });
      tensors.push({ name: `v.${i}`, dtype: 'F32' as const, shape: [...opt.v[i].shape], data: (await opt.v[i].read()) as Float32Array });
    }
    writeSafetensors(path.join(tmp, 'optimizer.safetensors'), tensors, { step: String(opt.step) });
    fs.writeFileSync(path.join(tmp, 'state.json'), JSON.stringify(state, null, 2) + '\n');
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(tmp, dir);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  const all = listCheckpoints(out);
  for (const old of all.slice(0, Math.max(0, all.length - keepLast))) fs.rmSync(old, { recursive: true, force: true });
  return dir;
}

export interface LoadedCheckpoint<A extends Checkpointable = Adapter> {
  dir: string;
  adapter: A;
  state: RunState;
  /** m and v per parameter, in the optimiser's order */
  moments: { m: Float32Array; v: Float32Array }[];
  optimizerStep: number;
}

/** `device`: where the adapter goes (the model's); the files are device-independent. */
export function loadCheckpoint(dir: string, model: LlamaConfig, device?: Device): LoadedCheckpoint {
  return loadCheckpointWith(dir, (file) => Adapter.load(file, model, device));
}

/** A checkpoint whose adapter file `loadAdapter` reads (and checks against the run's model). */
export function loadCheckpointWith<A extends Checkpointable>(dir: string, loadAdapter: (file: string) => A): LoadedCheckpoint<A> {
  const stateFile = path.join(dir, 'state.json');
  if (!fs.existsSync(stateFile)) throw new Error(`${dir} is not a checkpoint folder: it has no state.json`);
  let state: RunState;
  try {
    state = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
  } catch (err) {
    throw new Error(`${stateFile} is not valid JSON: ${(err as Error).message}`);
  }
  if (!Number.isInteger(state.step) || state.step < 0 || typeof state.data !== 'object')
    throw new Error(`${stateFile} is not a llama-adapter run state`);
  const adapter = loadAdapter(path.join(dir, 'adapter.safetensors'));
  try {
    const optFile = path.join(dir, 'optimizer.safetensors');
    const header = readSafetensorsHeader(optFile);
    const n = adapter.parameters().length;
    const fd = fs.openSync(optFile, 'r');
    try {
      const read = (name: string, numel: number) => {
        const e = header.tensors.get(name);
        if (!e || e.dtype !== 'F32' || e.byteLength !== numel * 4)
          throw new Error(`${optFile}: ${name} is missing or does not fit the adapter`);
        const buf = Buffer.alloc(e.byteLength);
        fs.readSync(fd, buf, 0, e.byteLength, e.byteOffset);
        return new Float32Array(buf.buffer, buf.byteOffset, numel).slice();
      };
      const moments = adapter.parameters().map((p, i) => {
        const numel = p.shape.reduce((a, b) => a * b, 1);
        return { m: read(`m.${i}`, numel), v: read(`v.${i}`, numel) };
      });
      if (header.tensors.size !== 2 * n) throw new Error(`${optFile} holds ${header.tensors.size / 2} parameters' state, the adapter has ${n}`);
      const optimizerStep = Number(header.metadata.step);
      if (!Number.isInteger(optimizerStep) || optimizerStep < 0) throw new Error(`${optFile}: invalid step metadata`);
      return { dir, adapter, state, moments, optimizerStep };
    } finally {
      fs.closeSync(fd);
    }
  } catch (err) {
    adapter.dispose();
    throw err;
  }
}
