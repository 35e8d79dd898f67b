// The environment OpenBLAS must see before it loads, shared by the addon loaders (native.ts,
// emulator.ts) so that both addons get the same GEMM kernels.
import * as os from 'os';
import * as fs from 'fs';

/** The best OpenBLAS kernel family this CPU runs, whatever the environment says (undefined: let
 *  OpenBLAS pick, e.g. off x86-64 or off Linux). */
export function bestOpenblasCoreType(): string | undefined {
  // Debian's OpenBLAS 0.3.21 does not recognise recent CPUs and falls back to its slowest
  // kernels; it reads OPENBLAS_CORETYPE once, when the library loads, so it must be set before that.
  if (os.arch() !== 'x64') return undefined;
  try {
    const flags = fs.readFileSync('/proc/cpuinfo', 'utf8').match(/^flags\s*:(.*)$/m)?.[1] ?? '';
    const has = (f: string) => new RegExp(`\\b${f}\\b`).test(flags);
    // SkylakeX: AVX-512 sgemm, twice Haswell's AVX2 rate on CPUs with 512-bit FMA units (Zen 5: 480 vs
    // 250 GFLOP/s on 2 cores)
    if (has('avx512f') && has('avx512bw') && has('avx512vl')) return 'SkylakeX';
    if (has('avx2') && has('fma')) return 'Haswell';
  } catch {
    /* not Linux: OpenBLAS picks for itself */
  }
  return undefined;
}

/** Sets OPENBLAS_CORETYPE when this CPU needs it and it is not set already (a value the user set is
 *  kept); call before loading an addon. */
export function setOpenblasCoreType(): void {
  if (process.env.OPENBLAS_CORETYPE) return;
  const coreType = bestOpenblasCoreType();
  if (coreType) process.env.OPENBLAS_CORETYPE = coreType;
}
