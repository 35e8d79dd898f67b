// Feeds binding.gyp the same sources and settings CMakeLists.txt uses, so that node-gyp
// (and prebuildify, which drives it) builds the CPU addon from one list of files.
//   node scripts/gyp-config.js sources|defines|includes|libraries
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
// native/comm builds its MPI engine only under CMake; here (prebuilt binaries) it is the stub, so
// that the binary loads on machines without Open MPI. NCCL is loaded at run time either way.
const dirs = ['native/core', 'native/cpu', 'native/ops', 'native/io', 'native/napi', 'native/comm'];
// OpenBLAS is loaded at run time (native/core/blas.cpp): nothing of it is needed here.
// LLAMA_ADAPTER_BLAS=OFF builds an addon that never loads it (the own GEMM kernel only).
const blasOff = process.env.LLAMA_ADAPTER_BLAS === 'OFF';
const version = require(path.join(root, 'package.json')).version;

const out = {
  sources: () =>
    dirs.flatMap((d) =>
      fs
        .readdirSync(path.join(root, d))
        .filter((f) => f.endsWith('.cpp'))
        .sort()
        .map((f) => `${d}/${f}`),
    ),
  defines: () => ['NAPI_VERSION=8', 'NAPI_CPP_EXCEPTIONS', `LA_VERSION=${version}`].concat(blasOff ? ['LA_BLAS_OFF'] : []),
  includes: () => [require('node-addon-api').include.replace(/"/g, '')],
  libraries: () => (process.platform === 'linux' ? ['-ldl'] : []),
}[process.argv[2]];
if (!out) throw new Error('usage: gyp-config.js sources|defines|includes|libraries');
process.stdout.write(out().join(' '));
