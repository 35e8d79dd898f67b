// The CUDA emulator's variant of the native addon: a test build (`npm run build:emu`, into
// build-emu/) whose CUDA backend runs the real .cu kernels on the CPU, each GPU thread a fiber
// (native/cuda/emu). It has the same surface as the normal addon and reports one CUDA device, so
// tests run the CUDA ops in CI without a GPU. Tensors of the two addons cannot meet in one op.
import * as fs from 'fs';
import * as path from 'path';
import type { NativeBinding } from './native';
import { setOpenblasCoreType } from './blas-env';

/** Where `npm run build:emu` puts the emulator addon and its self-test. */
export const EMULATOR_DIR = path.resolve(__dirname, '..', '..', 'build-emu', 'Release');
export const EMULATOR_ADDON = path.join(EMULATOR_DIR, 'llama_adapter_emu.node');
export const EMULATOR_SELFTEST = path.join(EMULATOR_DIR, 'la_cuda_emu_selftest');

/**
 * The emulator addon, or null when it was not built. One that exists but does not load (e.g. a
 * kernel file missing from it) throws, naming the file: a broken test build should not pass for
 * an absent one.
 */
export function loadEmulator(): NativeBinding | null {
  if (!fs.existsSync(EMULATOR_ADDON)) return null;
  setOpenblasCoreType();
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    return require(EMULATOR_ADDON) as NativeBinding;
  } catch (err) {
    const reason = err instanceof Error ? err.message.split('\n')[0] : String(err);
    throw new Error(`llama-adapter: the CUDA emulator addon ${EMULATOR_ADDON} could not be loaded (${reason}); rebuild it with \`npm run build:emu\``);
  }
}
