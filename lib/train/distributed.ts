// Data-parallel training across processes (one per GPU, or several CPU processes), possibly on
// several machines: every rank builds the same Batcher from the same seed, takes a disjoint,
// contiguous share of each micro-batch's examples, and scales its loss by 1 / (the target tokens of
// the whole global step), which every rank knows without asking (they all see the global batch).
// Once per optimiser step the adapter gradients and the loss sums are summed over the ranks, so the
// step equals the single-process one (SPEC §3: the mean over all target tokens of the global batch)
// up to the order of the float additions, and every rank applies the same AdamW update. Rank 0
// alone prints, logs and writes files; a resumed run reads its checkpoint on rank 0 and broadcasts
// it, so other machines need not see the run folder.
//
// Launch: `mpirun -np N llama-adapter train ...` (Open MPI sets OMPI_COMM_WORLD_*), or
// `llama-adapter train --devices N ...`, which starts mpirun itself on this machine.
import { ChildProcess, execFileSync, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native, CommKind, Device, Tensor } from '../native';
import { Adapter, AdapterConfig } from '../model/adapter';
import { LlamaConfig } from '../model/config';
import { Batch, Example, packBatch } from '../data/alpaca';
import type { LoadedCheckpoint, RunState } from './checkpoint';

/** What mpirun told this process (Open MPI's environment variables), if it started it. */
export interface Launch {
  rank: number;
  size: number;
  /** rank and count of the processes on this machine */
  localRank: number;
  localSize: number;
}

export function detectLaunch(env: NodeJS.ProcessEnv = process.env): Launch | undefined {
  const int = (name: string): number | undefined => {
    const v = env[name];
    return v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined;
  };
  const size = int('OMPI_COMM_WORLD_SIZE') ?? int('PMIX_SIZE');
  const rank = int('OMPI_COMM_WORLD_RANK') ?? int('PMIX_RANK');
  if (size === undefined || rank === undefined) return undefined;
  return {
    rank,
    size,
    localRank: int('OMPI_COMM_WORLD_LOCAL_RANK') ?? rank,
    localSize: int('OMPI_COMM_WORLD_LOCAL_SIZE') ?? size,
  };
}

/** The contiguous share [lo, hi) of S items that rank r of W takes (sizes differ by at most 1). */
export function shardRange(S: number, rank: number, size: number): [number, number] {
  return [Math.floor((rank * S) / size), Math.floor(((rank + 1) * S) / size)];
}

export class World {
  constructor(
    readonly kind: CommKind,
    readonly rank: number,
    readonly size: number,
  ) {}

  static single(): World {
    return new World('none', 0, 1);
  }

  get isRoot(): boolean {
    return this.rank === 0;
  }

  /** This rank's examples of a global micro-batch (the batch itself in a world of one). */
  shard(batch: Batch, examples: Example[]): Batch {
    if (this.size === 1) return batch;
    const [lo, hi] = shardRange(batch.exampleIndices.length, this.rank, this.size);
    return packBatch(examples, batch.exampleIndices.slice(lo, hi));
  }

  /**
   * Sums the step's gradients (in place) and loss sums over the ranks; returns the global loss
   * sum. The gradients were scaled by 1 / (global targets) already, so their sum is the gradient
   * of the mean over the global batch.
   */
  async reduceStep(grads: Tensor[], lossSum: number): Promise<number> {
    if (this.kind === 'none') return lossSum; // (a one-rank NCCL world still runs it: the GPU check)
    const [, sums] = await Promise.all([native.allreduceSum(grads), native.allreduceScalars(Float64Array.of(lossSum))]);
    return sums[0];
  }

  /** Extra fields of a checkpoint's run state: the world size it was written with. */
  runState(): { world: number } {
    return { world: this.size };
  }

  /**
   * `load` runs on rank 0 only (it finds and reads the checkpoint to resume from); its result, or
   * its error, reaches every rank. Other ranks get their own copy of the adapter.
   */
  async shareResume(load: () => LoadedCheckpoint | undefined, model: LlamaConfig, device?: Device): Promise<LoadedCheckpoint | undefined> {
    if (this.size === 1) return load();
    let local: LoadedCheckpoint | undefined;
    let failure: unknown;
    let payload: Uint8Array | null = null;
    if (this.isRoot) {
      try {
        local = load();
        payload = local ? await encodeCheckpoint(local) : encodeMessage({ none: true });
      } catch (err) {
        failure = err;
        payload = encodeMessage({ error: err instanceof Error ? err.message : String(err) });
      }
    }
    const bytes = await native.broadcast(payload, 0);
    if (this.isRoot) {
      if (failure) throw failure;
      return local;
    }
    return decodeCheckpoint(bytes, model, device);
  }

  /** A checkpoint written by a world of another size cannot be resumed here: say so. */
  checkResume(resumed: LoadedCheckpoint): void {
    const saved = (resumed.state as RunState & { world?: number }).world ?? 1;
    if (saved === this.size) return;
    resumed.adapter.dispose();
    const how = (n: number) => (n === 1 ? 'one process (no mpirun, no --devices)' : `${n} processes (--devices ${n}, or mpirun -np ${n})`);
    throw new Error(
      `cannot resume from ${resumed.dir}: it was written by a run of ${saved} process${saved === 1 ? '' : 'es'}, ` +
        `this run has ${this.size}. Resume with the same world size: ${how(saved)}.`,
    );
  }

  /** Waits for every rank (bounded by the timeout), then leaves the world. */
  async finalize(): Promise<void> {
    if (this.kind === 'none') return;
    await native.commBarrier();
    await native.commFinalize();
  }

  /** Ends every rank now (after a failure on this one, so that the others do not wait for it). */
  abort(code = 1): never {
    return native.commAbort(code);
  }
}

let current: World = World.single();

/** The world of this process: a world of one until initWorld(). */
export function currentWorld(): World {
  return current;
}

export interface WorldOptions {
  /** 'auto': MPI when started by mpirun with more than one process, else a world of one */
  comm?: 'auto' | CommKind;
  /** seconds a collective waits for the other ranks (default $LLAMA_ADAPTER_COMM_TIMEOUT or 600) */
  timeoutS?: number;
  /** CPU threads; default: the machine's cores shared among its ranks */
  threads?: number;
  env?: NodeJS.ProcessEnv;
}

const installMpi = 'apt-get install openmpi-bin libopenmpi-dev, then rebuild the addon: npm run build:native';

/** Joins the world this process was started in (see WorldOptions), once. */
export function initWorld(opts: WorldOptions = {}): World {
  const env = opts.env ?? process.env;
  const launch = detectLaunch(env);
  let kind = opts.comm ?? 'auto';
  if (kind === 'auto') kind = launch && launch.size > 1 ? 'mpi' : 'none';
  if (kind === 'none' && launch && launch.size > 1)
    throw new Error(`--comm none, but mpirun started ${launch.size} processes: each would train on its own`);
  if (kind === 'mpi' && !launch)
    throw new Error(`--comm mpi needs the process to be started by mpirun (or use --devices N)`);
  if (kind === 'mpi' && !native.commInfo().mpi.compiled)
    throw new Error(`this run was started by mpirun, but the native addon was built without MPI: ${installMpi}`);
  if (kind === 'none') return (current = World.single()); // nothing to join
  const envTimeout = Number(env.LLAMA_ADAPTER_COMM_TIMEOUT);
  const timeoutS = opts.timeoutS ?? (envTimeout > 0 ? envTimeout : 600);
  const w = native.commInit(kind, {
    timeoutS,
    device: launch?.localRank ?? 0,
    mpi: !!launch && launch.size > 1,
    ncclLibrary: kind === 'nccl' ? (env.LLAMA_ADAPTER_NCCL ?? findNcclWheel()) : undefined,
  });
  if (!opts.threads && launch && launch.localSize > 1) native.setThreads(Math.max(1, Math.floor(os.cpus().length / launch.localSize)));
  current = new World(w.kind, w.rank, w.size);
  return current;
}

/** libnccl.so.2 of the pip wheel nvidia-nccl-cu* in this machine's python3, if there is one. */
export function findNcclWheel(): string | undefined {
  try {
    const out = execFileSync(
      'python3',
      ['-c', "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib', 'libnccl.so.2'))"],
      { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'] },
    ).trim();
    return out && fs.existsSync(out) ? out : undefined;
  } catch {
    return undefined;
  }
}

// ---- launching: --devices N --------------------------------------------------------------------

/** The first executable `name` on PATH. */
export function which(name: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      /* not here */
    }
  }
  return undefined;
}

/** mpirun's arguments for N local processes of `command`. */
export function mpirunArgs(n: number, command: string[], isRoot = process.getuid?.() === 0): string[] {
  return ['-np', String(n), '--oversubscribe', '--bind-to', 'none', ...(isRoot ? ['--allow-run-as-root'] : []), ...command];
}

/**
 * Runs `llama-adapter train ARGV` as N processes under mpirun on this machine and resolves to
 * mpirun's exit status. The flags go through as they are (--devices included: each rank checks it
 * against the world mpirun made, and the run's config.yaml keeps it).
 */
export async function launchDevices(n: number, argv: string[]): Promise<number> {
  const mpirun = process.env.LLAMA_ADAPTER_MPIRUN ?? which('mpirun');
  if (!mpirun) throw new Error(`--devices ${n} starts ${n} processes with Open MPI's mpirun, which is not on PATH: ${installMpi}`);
  if (!native.commInfo().mpi.compiled) throw new Error(`--devices ${n}: the native addon was built without MPI: ${installMpi}`);
  const main = path.resolve(__dirname, '..', 'cli', 'main.js');
  const args = mpirunArgs(n, [process.execPath, ...process.execArgv, main, 'train', ...argv]);
  const child: ChildProcess = spawn(mpirun, args, { stdio: 'inherit' });
  const forward = (sig: NodeJS.Signals) => () => child.kill(sig);
  const handlers: [NodeJS.Signals, () => void][] = (['SIGINT', 'SIGTERM', 'SIGHUP'] as NodeJS.Signals[]).map((s) => [s, forward(s)]);
  for (const [s, h] of handlers) process.on(s, h);
  try {
    return await new Promise<number>((resolve, reject) => {
      child.on('error', (err) => reject(new Error(`could not start ${mpirun}: ${err.message}`)));
      child.on('exit', (code, signal) => resolve(code ?? 128 + (signal ? os.constants.signals[signal] ?? 0 : 0)));
    });
  } finally {
    for (const [s, h] of handlers) process.off(s, h);
  }
}

// ---- the checkpoint on the wire ------------------------------------------------------------------
// [u32 header length][header JSON][padding to 4][f32 values: prompts, gates, then m and v of each
// parameter], little-endian.

interface WireHeader {
  none?: boolean;
  error?: string;
  dir?: string;
  state?: RunState;
  optimizerStep?: number;
  config?: AdapterConfig;
  sizes?: number[]; // prompts, gates, then m0, v0, m1, v1, ...
}

function encodeMessage(header: WireHeader, arrays: Float32Array[] = []): Uint8Array {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const start = (4 + json.length + 3) & ~3;
  const total = start + arrays.reduce((s, a) => s + a.byteLength, 0);
  const out = new Uint8Array(total);
  new DataView(out.buffer).setUint32(0, json.length, true);
  out.set(json, 4);
  let off = start;
  for (const a of arrays) {
    out.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), off);
    off += a.byteLength;
  }
  return out;
}

async function encodeCheckpoint(c: LoadedCheckpoint): Promise<Uint8Array> {
  const values = await c.adapter.values();
  const arrays = [values.prompts, values.gates, ...c.moments.flatMap((m) => [m.m, m.v])];
  return encodeMessage(
    { dir: c.dir, state: c.state, optimizerStep: c.optimizerStep, config: c.adapter.config, sizes: arrays.map((a) => a.length) },
    arrays,
  );
}

function decodeCheckpoint(bytes: Uint8Array, model: LlamaConfig, device?: Device): LoadedCheckpoint | undefined {
  const len = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, true);
  const header = JSON.parse(Buffer.from(bytes.subarray(4, 4 + len)).toString('utf8')) as WireHeader;
  if (header.none) return undefined;
  if (header.error !== undefined) throw new Error(`rank 0 could not load the checkpoint to resume from: ${header.error}`);
  let off = (4 + len + 3) & ~3;
  const arrays = header.sizes!.map((n) => {
    const a = new Float32Array(bytes.slice(off, off + 4 * n).buffer);
    off += 4 * n;
    return a;
  });
  const [prompts, gates, ...moments] = arrays;
  const adapter = Adapter.fromValues(model, header.config!, { prompts, gates }, device);
  const pairs: { m: Float32Array; v: Float32Array }[] = [];
  for (let i = 0; i < moments.length; i += 2) pairs.push({ m: moments[i], v: moments[i + 1] });
  return { dir: header.dir!, adapter, state: header.state!, moments: pairs, optimizerStep: header.optimizerStep! };
}
