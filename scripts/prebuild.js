// npm run prebuild: builds the CPU addon with prebuildify (node-gyp + binding.gyp) into
// prebuilds/<platform>-<arch>/, in a scratch copy so the local cmake-js build/ stays as it is.
const { execFileSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'llama-adapter-prebuild-'));
try {
  for (const item of ['package.json', 'binding.gyp', 'native', 'scripts']) {
    fs.cpSync(path.join(root, item), path.join(scratch, item), { recursive: true });
  }
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(scratch, 'node_modules'), 'dir');
  const bin = path.join(root, 'node_modules', '.bin', 'prebuildify');
  execFileSync(bin, ['--napi', '--strip', ...process.argv.slice(2)], { cwd: scratch, stdio: 'inherit' });
  fs.cpSync(path.join(scratch, 'prebuilds'), path.join(root, 'prebuilds'), { recursive: true });
  for (const dir of fs.readdirSync(path.join(scratch, 'prebuilds')))
    for (const f of fs.readdirSync(path.join(scratch, 'prebuilds', dir))) console.log(`prebuilds/${dir}/${f}`);
} finally {
  fs.rmSync(scratch, { recursive: true, force: true });
}
