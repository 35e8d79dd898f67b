// The backends the backend-parametrised tests run on: 'cpu' (the normal binding) and 'cuda' — on
// the normal binding when it has a usable GPU, else on the emulator binding (CUDA kernels run as CPU
// fibers, lib/emulator.ts) when that was built, else not at all: the cuda suites then report as
// skipped with the reason in their title.
//
// Every backend is compared with the CPU of its own binding: tensors of two bindings (two addons)
// cannot meet in one op.
import * as lib from '../../lib/native';
import { loadEmulator } from '../../lib/emulator';
import type { Device, DType, NativeBinding, Tensor } from '../../lib/native';

export interface Backend {
  /** 'cpu' or 'cuda' */
  name: Device;
  /** e.g. 'cuda' or 'cuda (emulated on the CPU)' */
  label: string;
  binding: NativeBinding;
  device: Device;
  emulated: boolean;
}

export interface SkippedBackend {
  name: Device;
  reason: string;
}

/** The emulator binding, why there is none, or the error of one that was built but does not load. */
function emulator(): { binding?: NativeBinding; why?: string; broken?: Error } {
  try {
    const b = loadEmulator();
    return b ? { binding: b } : { why: 'emulator not built: npm run build:emu' };
  } catch (e) {
    return { broken: e instanceof Error ? e : new Error(String(e)) };
  }
}

function discover(): { backends: Backend[]; skipped: SkippedBackend[]; broken?: Error } {
  const cpu: Backend = { name: 'cpu', label: 'cpu', binding: lib.native, device: 'cpu', emulated: false };
  const cuda = lib.native.capabilities().cuda;
  if (cuda.available) return { backends: [cpu, { name: 'cuda', label: 'cuda', binding: lib.native, device: 'cuda', emulated: false }], skipped: [] };
  const emu = emulator();
  if (emu.binding)
    return {
      backends: [cpu, { name: 'cuda', label: 'cuda (emulated on the CPU)', binding: emu.binding, device: 'cuda', emulated: true }],
      skipped: [],
    };
  if (emu.broken) return { backends: [cpu], skipped: [], broken: emu.broken };
  return { backends: [cpu], skipped: [{ name: 'cuda', reason: `no GPU — ${cuda.reason || 'CUDA not compiled'}; ${emu.why}` }] };
}

const found = discover();
/** The backends to test, 'cpu' first. */
export const backends: readonly Backend[] = found.backends;
/** Backends that cannot run here, with the reason. */
export const skippedBackends: readonly SkippedBackend[] = found.skipped;
/** An emulator that was built but does not load: the cuda suites fail with it (not skip). */
const broken = found.broken;
/** The cuda backend (real or emulated), if any. */
export const cudaBackend: Backend | undefined = found.backends.find((b) => b.name === 'cuda');

/**
 * `describe(title(b), () => body(b))` for every backend, and a skipped suite (with one pending
 * test, so that mocha lists it) for every backend that cannot run, its reason in the title.
 */
export function describeEachBackend(title: (name: string) => string, body: (b: Backend) => void, only?: (b: Backend) => boolean): void {
  for (const b of backends) if (!only || only(b)) describe(title(b.label), () => body(b));
  for (const s of skippedBackends)
    describe.skip(`${title(s.name)} (skipped: ${s.reason})`, () => {
      it('runs on this backend');
    });
  if (broken)
    describe(title('cuda (emulated on the CPU)'), () => {
      it('loads the emulator addon', () => {
        throw broken;
      });
    });
}

/**
 * Runs `fn` with lib/native's `native` replaced by `binding`, so that library code (Llama,
 * AdapterGraph, AdamW, ...) runs on that addon. Library modules read the export at each call
 * (CommonJS named imports are property reads), so the swap reaches them; it is undone afterwards.
 */
export async function withBinding<T>(binding: NativeBinding, fn: () => Promise<T>): Promise<T> {
  const mod = lib as unknown as { native: NativeBinding };
  const before = mod.native;
  if (binding === before) return fn();
  mod.native = binding;
  try {
    return await fn();
  } finally {
    mod.native = before;
  }
}

/** Tensor makers of one binding on one device; index tensors are always host (CPU) tensors. */
export class On {
  constructor(readonly n: NativeBinding, readonly device: Device) {}
  f32(data: ArrayLike<number>, shape: number[], dtype: DType = 'f32'): Tensor {
    return this.n.fromArray(Float32Array.from(data), shape, dtype, this.device);
  }
  zeros(shape: number[], dtype: DType = 'f32'): Tensor {
    return this.n.zeros(shape, dtype, this.device);
  }
  /** an i32 index tensor on the host (what library code passes to every op) */
  idx(data: ArrayLike<number>, shape?: number[]): Tensor {
    return this.n.fromArray(Int32Array.from(data), shape ?? [data.length], 'i32', 'cpu');
  }
}
