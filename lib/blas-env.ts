// The environment OpenBLAS must see before it loads, shared by the addon loaders (native.ts,
// emulator.ts) so that both addons get the same GEMM kernels.
import * as os from 'os';
import * as fs from 'fs';

function cpuNeedsCoreType(): string | undefined {
  // Debian's OpenBLAS 0.3.21 does not recognise recent CPUs and falls back to its slowest
  // kernels; it reads OPENBLAS_CORETYPE once, when the library loads, so set it before that.
  if (process.env.OPENBLAS_CORETYPE || os.arch() !== 'x64') return undefined;
  try {
    const flags = fs.readFileSync('/proc/cpuinfo', 'utf8').match(/^flags\s*:(.*)$/m)?.[1] ?? '';
    const has = (f: string) => new RegExp(`\\b${f}\\b`).test(flags);
    if (has('avx512f') && has('avx512bw') && has('avx512vl')) return 'SkylakeX';
    if (has('avx2') && has('fma')) return 'Haswell';
  } catch {
    /* not Linux: OpenBLAS picks for itself */
  }
  return undefined;
}

/** Sets OPENBLAS_CORETYPE when this CPU needs it and it is not set already; call before loading an addon. */
export function setOpenblasCoreType(): void {
  const coreType = cpuNeedsCoreType();
  if (coreType) process.env.OPENBLAS_CORETYPE = coreType;
}
