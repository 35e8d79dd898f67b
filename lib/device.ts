// Which backend computes: 'cuda' when the addon has a usable GPU, else 'cpu'. Every entry point
// (CLI --device, Llama.load, Trainer) resolves its option here, so the default and the error for an
// unavailable GPU are the same everywhere.
import { native, Device } from './native';

export const DEVICES: readonly Device[] = ['cuda', 'cpu'];

/** 'cuda' when capabilities().cuda.available, else 'cpu'. */
export function defaultDevice(): Device {
  return native.capabilities().cuda.available ? 'cuda' : 'cpu';
}

/**
 * The device to run on: `requested` ('cuda' | 'cpu'), or the default when undefined. Asking for
 * 'cuda' where it is not available throws, quoting capabilities().cuda.reason; `what` names the
 * option in messages (e.g. "--device").
 */
export function resolveDevice(requested?: string, what = 'device'): Device {
  if (requested === undefined) return defaultDevice();
  if (requested !== 'cuda' && requested !== 'cpu') throw new RangeError(`${what} must be 'cuda' or 'cpu', got ${JSON.stringify(requested)}`);
  if (requested === 'cuda') {
    const cuda = native.capabilities().cuda;
    if (!cuda.available)
      throw new Error(
        `${what} cuda: CUDA is not available (${cuda.reason || (cuda.compiled ? 'no usable GPU' : 'the addon was built without CUDA')}); ` +
          `use ${what} cpu`,
      );
  }
  return requested;
}

/** One line for run headers: "cuda (1 GPU)" or "cpu (8 threads, OpenBLAS)". */
export function describeDevice(device: Device): string {
  const c = native.capabilities();
  if (device === 'cuda') return `cuda (${c.cuda.devices} GPU${c.cuda.devices === 1 ? '' : 's'}${c.cuda.gemm ? `, ${c.cuda.gemm}` : ''})`;
  return `cpu (${c.threads} thread${c.threads === 1 ? '' : 's'}${c.blas ? `, ${c.blas}` : ''})`;
}
