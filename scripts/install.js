// npm install: use a binary that loads (a prebuilt one under prebuilds/, or an earlier local
// build), else build from source with cmake-js (CPU backend, plus CUDA when nvcc is found and MPI
// when Open MPI is). LLAMA_ADAPTER_BUILD_FROM_SOURCE=1 (or npm's --build-from-source) always builds.
const { spawnSync } = require('child_process');
const path = require('path');

const root = path.resolve(__dirname, '..');
const fromSource = process.env.LLAMA_ADAPTER_BUILD_FROM_SOURCE === '1' || process.env.npm_config_build_from_source === 'true';

function loads() {
  // in a child process: a binary that crashes on load must not take the install with it
  const r = spawnSync(process.execPath, ['-e', `require('node-gyp-build')(${JSON.stringify(root)})`], { cwd: root, stdio: 'ignore' });
  return r.status === 0;
}

if (!fromSource && loads()) {
  console.log('llama-adapter: using the existing native addon (set LLAMA_ADAPTER_BUILD_FROM_SOURCE=1 to rebuild)');
} else {
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  const r = spawnSync(process.execPath, [cmakeJs, 'compile', '--out', 'build'], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(
      'llama-adapter: building the native addon failed. It needs cmake >= 3.18 and a C++17 compiler\n' +
        '(apt-get install cmake g++; optional: openmpi-bin libopenmpi-dev for multi-process training, the\n' +
        'CUDA toolkit for the GPU backend). OpenBLAS needs nothing at build time: installed or not\n' +
        '(apt-get install libopenblas0), it is loaded at run time when present.',
    );
    process.exit(r.status ?? 1);
  }
}
