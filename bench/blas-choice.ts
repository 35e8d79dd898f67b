// Imported first by every benchmark entry point, before anything loads the addon: benchmarks measure
// the library's own choice of OpenBLAS kernels, and the PyTorch baselines get the same choice (they use
// the same Debian OpenBLAS). An OPENBLAS_CORETYPE inherited from the environment would otherwise decide
// for both — e.g. a machine-wide `Haswell` halves the sgemm rate of an AVX-512 CPU for both sides.
// LLAMA_ADAPTER_BENCH_BLAS=keep keeps the inherited value.
import * as path from 'path';
import { bestOpenblasCoreType } from '../lib/blas-env';

const inherited = process.env.OPENBLAS_CORETYPE;
const best = bestOpenblasCoreType();
// only in a benchmark's own process: a test that imports a bench module must not change the
// environment its child processes inherit
const benchMain = path.basename(path.dirname(require.main?.filename ?? '')) === 'bench';
if (benchMain && process.env.LLAMA_ADAPTER_BENCH_BLAS !== 'keep' && best && inherited !== best) process.env.OPENBLAS_CORETYPE = best;

/** What the benchmarks ran with, for the notes under a table. */
export const blasChoiceNote =
  inherited && inherited !== process.env.OPENBLAS_CORETYPE
    ? `OPENBLAS_CORETYPE=${process.env.OPENBLAS_CORETYPE} (this CPU's best; the environment's ${inherited} was replaced — LLAMA_ADAPTER_BENCH_BLAS=keep keeps it)`
    : `OPENBLAS_CORETYPE=${process.env.OPENBLAS_CORETYPE ?? '(unset: OpenBLAS detects)'}`;

/** The coretype both sides of a comparison use. */
export const benchCoreType = (): string | undefined => process.env.OPENBLAS_CORETYPE;
