// The package as users get it: require() and import, the prebuilt binary without a build folder,
// and the error that explains a missing binary.
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { expectGemmResults, loaderCache, runGemmChild } from './util/gemm-cases';
import { repoRoot } from './util/paths';

const node = process.execPath;
/** dependencies used only to build from source */
const buildOnly = ['cmake-js', 'node-addon-api'];

/** The newest modification time of the files under the given paths (what the prebuilt binary is made of). */
function newestMtime(paths: string[]): number {
  let newest = 0;
  const walk = (p: string) => {
    const st = fs.statSync(p);
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) walk(path.join(p, e));
    else newest = Math.max(newest, st.mtimeMs);
  };
  for (const p of paths) if (fs.existsSync(p)) walk(p);
  return newest;
}

/** The glibc the prebuilt binary may need at most (README, "Installing"). */
const GLIBC_FLOOR = '2.34';
const versionLE = (a: string, b: string) => {
  const x = a.split('.').map(Number), y = b.split('.').map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) < (y[i] ?? 0);
  return true;
};

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
      const binary = path.join(platformDir, 'llama-adapter.node');
      const sources = newestMtime(['native', 'binding.gyp', 'scripts/gyp-config.js', 'package.json'].map((p) => path.join(repoRoot, p)));
      if (!fs.existsSync(binary) || fs.statSync(binary).mtimeMs < sources) {
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

    it('needs only glibc (up to GLIBC_' + GLIBC_FLOOR + ') and libgcc_s: no OpenBLAS, libgfortran or libstdc++', function () {
      if (os.platform() !== 'linux') this.skip();
      const file = path.join(pkg, 'prebuilds', `${os.platform()}-${os.arch()}`, 'llama-adapter.node');
      const dynamic = execFileSync('readelf', ['-d', '-W', file], { encoding: 'utf8' });
      const needed = [...dynamic.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]);
      const glibcParts = /^(libc|libm|libdl|libpthread|librt|ld-linux[-\w]*)\.so\.\d+$/;
      expect(needed.filter((l) => !glibcParts.test(l) && l !== 'libgcc_s.so.1'), `NEEDED: ${needed.join(', ')}`).to.deep.equal([]);
      // the symbol versions it needs (readelf -V: the .gnu.version_r section)
      const versions = execFileSync('readelf', ['-V', '-W', file], { encoding: 'utf8' });
      const needs = [...versions.slice(versions.indexOf('.gnu.version_r')).matchAll(/Name: (\S+)/g)].map((m) => m[1]);
      expect(needs.filter((v) => /^(GLIBCXX|CXXABI)_/.test(v)), 'libstdc++ versions').to.deep.equal([]);
      const glibc = needs.filter((v) => v.startsWith('GLIBC_')).map((v) => v.slice('GLIBC_'.length));
      expect(glibc.length).to.be.greaterThan(0);
      expect(glibc.filter((v) => !versionLE(v, GLIBC_FLOOR)), `glibc versions above ${GLIBC_FLOOR}`).to.deep.equal([]);
    });

    it('loads and computes with OpenBLAS and libgfortran hidden (a mount namespace), on the own kernels', function () {
      if (os.platform() !== 'linux') this.skip();
      // every OpenBLAS and libgfortran the loader knows, an empty file bound over each (in a
      // mount namespace of the child only), as on a machine that never installed them
      const cache = loaderCache();
      if (!cache) {
        console.log('      (skipped: ldconfig not found, so the libraries to hide are unknown)');
        this.skip();
      }
      const known = cache.split('\n').filter((l) => /(libopenblas|libgfortran)\S* .*=> /.test(l));
      const hide = [...new Set(known.map((l) => fs.realpathSync(l.split(' => ')[1].trim())))];
      const unshare = process.getuid?.() === 0 ? ['unshare', '-m'] : ['unshare', '-r', '-m'];
      const probe = spawnSync(unshare[0], [...unshare.slice(1), 'true'], { encoding: 'utf8' });
      if (probe.status !== 0) {
        console.log(`      (skipped: no mount namespace here: ${probe.error ?? probe.stderr.trim()})`);
        this.skip();
      }
      const empty = path.join(pkg, 'empty');
      fs.writeFileSync(empty, '');
      const run = runGemmChild(
        `(() => { for (const f of ${JSON.stringify(hide)}) if (require('fs').statSync(f).size !== 0) throw new Error(f + ' is not hidden'); return require(${JSON.stringify(pkg)}).native; })()`,
        { wrap: [...unshare, 'sh', '-c', 'for f in $LA_HIDE; do mount --bind "$LA_EMPTY" "$f" || exit 97; done; exec "$@"', 'sh'], env: { ...process.env, LA_HIDE: hide.join(' '), LA_EMPTY: empty } },
      );
      expect(run.status, run.stderr).to.not.equal(97);
      expectGemmResults(run);
      expect(run.blas).to.match(/^own kernels \(libopenblas\.so\.0 could not be loaded: /);
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

  describe('npm tarball (npm pack --dry-run)', () => {
    let files: Map<string, number>; // path -> bytes
    before(function () {
      const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: repoRoot, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      const [info] = JSON.parse(out) as { files: { path: string; size: number }[] }[];
      files = new Map(info.files.map((f) => [f.path, f.size]));
    });
    const walk = (dir: string): string[] =>
      fs.readdirSync(path.join(repoRoot, dir), { withFileTypes: true }).flatMap((e) =>
        e.isDirectory() ? walk(`${dir}/${e.name}`) : [`${dir}/${e.name}`],
      );

    it('holds the license, the library with its types and CLI, and everything a source build needs', () => {
      const pkgJson = require(path.join(repoRoot, 'package.json'));
      const must = ['LICENSE', 'README.md', 'package.json', 'dist/lib/index.js', 'dist/lib/index.d.ts', pkgJson.bin['llama-adapter'],
        'CMakeLists.txt', 'binding.gyp', 'scripts/install.js', 'scripts/gyp-config.js', ...walk('native')];
      expect(must.filter((f) => !files.has(f)), 'missing from the tarball').to.deep.equal([]);
      expect(fs.readFileSync(path.join(repoRoot, 'LICENSE'), 'utf8')).to.match(/^MIT License\n\nCopyright \(c\) 2026 the llama-adapter authors\n/);
      expect(pkgJson.license).to.equal('MIT');
      // every relative require() of the shipped JavaScript resolves inside the tarball
      const unresolved: string[] = [];
      for (const f of files.keys()) {
        if (!f.endsWith('.js') || !f.startsWith('dist/')) continue;
        const code = fs.readFileSync(path.join(repoRoot, f), 'utf8');
        for (const m of code.matchAll(/require\("(\.\.?\/[^"]*)"\)/g)) {
          const target = path.posix.join(path.posix.dirname(f), m[1]);
          if (![target, `${target}.js`, `${target}.json`, `${target}/index.js`].some((t) => files.has(t))) unresolved.push(`${f}: ${m[1]}`);
        }
      }
      expect(unresolved, 'requires that leave the tarball').to.deep.equal([]);
    });

    it('leaves out tests, benchmarks, tools and the scripts only the repository uses', () => {
      const dev = /^(dist\/(test|bench|tools|scripts)\/|test\/|bench\/|tools\/|\.ci\/|build\/|build-emu\/|node_modules\/)/;
      expect([...files.keys()].filter((f) => dev.test(f))).to.deep.equal([]);
      expect([...files.keys()].filter((f) => f.startsWith('scripts/')).sort()).to.deep.equal(['scripts/gyp-config.js', 'scripts/install.js']);
    });

    it('weighs under 3 MB unpacked without the prebuilt binaries (dist/lib and the sources; dist/test alone was 0.9 MB)', () => {
      let bytes = 0;
      for (const [f, size] of files) if (!f.startsWith('prebuilds/')) bytes += size;
      expect(bytes).to.be.lessThan(3_000_000);
    });
  });
});
