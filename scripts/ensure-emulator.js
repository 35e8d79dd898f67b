// Before the tests: (re)build the CUDA emulator addon (build-emu/, `npm run build:emu`) when it is
// missing or older than a native source, so that the CUDA backend's kernels are checked on the
// CPU wherever there is no GPU. A failed build is reported and the tests go on: the CUDA suites
// then say they were skipped and why. LLAMA_ADAPTER_SKIP_EMULATOR=1 skips this step.
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const addon = path.join(root, 'build-emu', 'Release', 'llama_adapter_emu.node');

function newestSource(dir) {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestSource(p) : fs.statSync(p).mtimeMs);
  }
  return newest;
}

if (process.env.LLAMA_ADAPTER_SKIP_EMULATOR === '1') process.exit(0);
const sources = Math.max(newestSource(path.join(root, 'native')), fs.statSync(path.join(root, 'CMakeLists.txt')).mtimeMs);
if (fs.existsSync(addon) && fs.statSync(addon).mtimeMs >= sources) process.exit(0);

console.log('llama-adapter: building the CUDA emulator for the tests (build-emu/, once; about 3 minutes on 2 cores) ...');
const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const t0 = Date.now();
// Run outside npm (node scripts/ensure-emulator.js), cmake-js would download node's headers unless
// told where they are: npm passes npm_config_nodedir (Debian's npm sets it); else use the system's.
const env = { ...process.env };
if (!env.npm_config_nodedir && fs.existsSync('/usr/include/node/node_api.h')) env.npm_config_nodedir = '/usr';
const r = spawnSync(process.execPath, [cmakeJs, 'build', '--out', 'build-emu', '--CDLLAMA_ADAPTER_CUDA_EMULATOR=ON'], {
  cwd: root,
  encoding: 'utf8',
  env,
});
if (r.status === 0) {
  console.log(`llama-adapter: CUDA emulator built in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
} else {
  console.error((r.stdout + r.stderr).split('\n').slice(-30).join('\n'));
  console.error('llama-adapter: the CUDA emulator did not build; the CUDA op suites will be skipped');
}
