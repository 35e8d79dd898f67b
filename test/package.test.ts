// The package as users get it: require() and import, the prebuilt binary without a build folder,
// and the error that explains a missing binary.
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { repoRoot } from './util/paths';

const node = process.execPath;
/** dependencies used only to build from source */
const buildOnly = ['cmake-js', 'node-addon-api'];

describe('package', function () {
  this.timeout(600_000);

  it('require() works from plain CommonJS', () => {
    const out = execFileSync(node, ['-e', `const la = require(${JSON.stringify(repoRoot)}); console.log(typeof la.Llama, la.native.capabilities().version)`], { encoding: 'utf8' });
    expect(out.trim()).to.equal(`function ${require(path.join(repoRoot, 'package.json')).version}`);
  });

  it('import works from ESM', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-esm-'));
    try {
      fs.mkdirSync(path.join(dir, 'node_modules'));
      fs.symlinkSync(repoRoot, path.join(dir, 'node_modules', 'llama-adapter'), 'dir');
      fs.writeFileSync(path.join(dir, 'main.mjs'), "import { Llama, loadTokenizer, native } from 'llama-adapter';\nconsole.log(typeof Llama, typeof loadTokenizer, native.capabilities().threads > 0);\n");
      const out = execFileSync(node, [path.join(dir, 'main.mjs')], { encoding: 'utf8' });
      expect(out.trim()).to.equal('function function true');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('prebuilt binary', () => {
    const platformDir = path.join(repoRoot, 'prebuilds', `${os.platform()}-${os.arch()}`);
    let pkg: string;

    before(function () {
      if (!fs.existsSync(path.join(platformDir, 'llama-adapter.node'))) {
        // `npm run prebuild` is what a release runs; here it proves the script works too (~1 min)
        execFileSync('npm', ['run', '-s', 'prebuild'], { cwd: repoRoot, stdio: 'ignore' });
      }
      // a copy of the package as installed from a tarball: no build/ folder, no sources
      pkg = fs.mkdtempSync(path.join(os.tmpdir(), 'la-prebuilt-'));
      for (const item of ['package.json', 'dist', 'prebuilds']) fs.cpSync(path.join(repoRoot, item), path.join(pkg, item), { recursive: true });
      // its runtime dependencies, as npm would install them (the build tools are not needed)
      const deps = Object.keys(require(path.join(repoRoot, 'package.json')).dependencies).filter((d) => !buildOnly.includes(d));
      for (const dep of deps)
        fs.cpSync(path.join(repoRoot, 'node_modules', dep), path.join(pkg, 'node_modules', dep), { recursive: true });
    });
    after(() => fs.rmSync(pkg, { recursive: true, force: true }));

    it('exists under prebuilds/<platform>-<arch>/ and loads with no build folder', () => {
      expect(fs.existsSync(path.join(pkg, 'build'))).to.equal(false);
      const script = `const la = require(${JSON.stringify(pkg)});
        const x = la.native.fromArray(new Float32Array([1, 2, 3, 4]), [2, 2]);
        la.native.matmul(x, x).read().then(v => console.log(JSON.stringify(Array.from(v)), la.native.capabilities().blas));`;
      const out = execFileSync(node, ['-e', script], { encoding: 'utf8' });
      const [values] = out.trim().split(' ');
      expect(JSON.parse(values)).to.deep.equal([5, 11, 11, 25]);
    });

    it('without any binary, the error lists the possible fixes', () => {
      fs.rmSync(path.join(pkg, 'prebuilds'), { recursive: true, force: true });
      const r = spawnSync(node, ['-e', `require(${JSON.stringify(pkg)})`], { encoding: 'utf8' });
      expect(r.status).to.not.equal(0);
      expect(r.stderr).to.match(/native addon could not be loaded/);
      expect(r.stderr).to.match(/npm run build:native/);
      expect(r.stderr).to.match(/prebuilds/);
    });
  });
});
