// Feeds binding.gyp the same sources and BLAS settings CMakeLists.txt uses, so that node-gyp
// (and prebuildify, which drives it) builds the CPU addon from one list of files.
//   node scripts/gyp-config.js sources|defines|includes|libraries
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
// native/comm builds its MPI engine only under CMake; here (prebuilt binaries) it is the stub, so
// that the binary loads on machines without Open MPI. NCCL is loaded at run time either way.
const dirs = ['native/core', 'native/cpu', 'native/ops', 'native/io', 'native/napi', 'native/comm'];
const blasHeader = ['/usr/include/x86_64-linux-gnu/openblas-pthread', '/usr/include/openblas', '/usr/include'].find((d) =>
  fs.existsSync(path.join(d, 'cblas.h')),
);
const blasLib = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/usr/lib'].find((d) =>
  fs.existsSync(path.join(d, 'libopenblas.so')),
);
const blas = process.env.LLAMA_ADAPTER_BLAS !== 'OFF' && blasHeader && blasLib;
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
  defines: () => ['NAPI_VERSION=8', 'NAPI_CPP_EXCEPTIONS', `LA_VERSION=${version}`].concat(blas ? ['LA_HAVE_CBLAS', 'LA_HAVE_OPENBLAS'] : []),
  includes: () => [require('node-addon-api').include.replace(/"/g, '')].concat(blas ? [blasHeader] : []),
  libraries: () => (blas ? [`-L${blasLib}`, '-lopenblas'] : []),
}[process.argv[2]];
if (!out) throw new Error('usage: gyp-config.js sources|defines|includes|libraries');
process.stdout.write(out().join(' '));
