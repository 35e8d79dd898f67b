// Issue 15: no input may abort, hang or silently corrupt a run. Each case ran a child process (the
// CLI, or a small script) where the old behaviour was an abort, a hang or a crash, with a time
// limit, so that a regression fails here instead of stopping the suite.
import { expect } from 'chai';
import { spawn, spawnSync, SpawnSyncReturns } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { makeDemoDataset } from '../lib/data/demo';
import { loadAlpaca, tokenizeExample, promptOf, MAX_RECORD_CHARS } from '../lib/data/alpaca';
import { Adapter } from '../lib/model/adapter';
import { Llama } from '../lib/model/llama';
import { LLAMA2C_MAGIC, llama2cFileSize, readLlama2cHeader } from '../lib/model/llama2c';
import { readSafetensorsHeader } from '../lib/model/safetensors';
import { listCheckpoints } from '../lib/train/checkpoint';
import { loadTokenizer } from '../lib/tokenizer';
import { repoRoot } from './util/paths';
import { stories } from './util/stories';

const cli = path.join(repoRoot, 'dist', 'lib', 'cli', 'main.js');
const model = ['--model', stories.v0, '--tokenizer', stories.tokenizer];

/** The CLI in a child process, stopped after `timeoutMs`; `ms` is its wall time. */
function run(args: string[], opts: { timeoutMs?: number; uid?: number; gid?: number } = {}): SpawnSyncReturns<string> & { ms: number } {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: opts.timeoutMs ?? 60_000, uid: opts.uid, gid: opts.gid });
  return Object.assign(r, { ms: Date.now() - t0 });
}

/** Exit status 1 (or `status`) with a message matching `re`, no stack trace, no signal. */
function expectError(r: ReturnType<typeof run>, re: RegExp, status = 1): void {
  expect(r.signal, `killed by ${r.signal} after ${r.ms} ms: ${r.stderr}`).to.equal(null);
  expect(r.status, r.stderr).to.equal(status);
  expect(r.stderr).to.match(re);
  expect(r.stderr).to.not.match(/\n\s+at /);
}

describe('reliability (issue 15)', function () {
  this.timeout(120_000);
  let dir: string;
  let data: string;
  const small = ['--adapter-layers', '2', '--adapter-len', '4', '--batch-size', '4', '--grad-accum', '2', '--lr', '1e-2', '--warmup-steps', '2', '--seed', '3'];

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-rel-'));
    data = path.join(dir, 'train.jsonl');
    fs.writeFileSync(data, makeDemoDataset({ count: 32, seed: 1 }).map((r) => JSON.stringify(r)).join('\n') + '\n');
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  describe('1. header sizes are bounded and checked before anything is allocated', () => {
    /** stories260K with int32 field `k` of its header set to `v` (v0: fields at 0, v1: at 8). */
    const patched = (src: string, name: string, offset: number, v: number) => {
      const buf = fs.readFileSync(src);
      buf.writeInt32LE(v, offset);
      const p = path.join(dir, name);
      fs.writeFileSync(p, buf);
      return p;
    };

    it('a llama2.c v0 or v1 header claiming 2^31-1 or 1e7 layers fails at once, naming the field', () => {
      for (const [src, off, v] of [
        [stories.v0, 8, 2 ** 31 - 1],
        [stories.v0, 8, 1e7],
        [stories.v1, 16, 2 ** 31 - 1],
      ] as const) {
        const p = patched(src, `layers-${v}.bin`, off, v);
        const r = run(['generate', '--model', p, '--tokenizer', stories.tokenizer, '--prompt', 'x'], { timeoutMs: 20_000 });
        expectError(r, new RegExp(`${path.basename(p)}.*n_layers ${v} is above the supported maximum 1024`));
        expect(r.ms).to.be.below(5000);
      }
    });

    it('a header within the bounds that the file cannot hold: the exact size is computed first', () => {
      const p = patched(stories.v0, 'layers-1000.bin', 8, 1000);
      const want = llama2cFileSize(0, { ...readLlama2cHeader(stories.v0).config, nLayers: 1000 }, true);
      expect(() => readLlama2cHeader(p)).to.throw(new RegExp(`is truncated: .*implies ${want} bytes but the file has ${fs.statSync(p).size}`));
      // the arithmetic agrees with the real files
      for (const f of [stories.v0, stories.v1]) {
        const h = readLlama2cHeader(f);
        expect(llama2cFileSize(h.version, h.config, h.config.tiedEmbeddings)).to.equal(BigInt(fs.statSync(f).size));
      }
      const v1 = readLlama2cHeader(stories.v1);
      expect(fs.readFileSync(stories.v1).readUInt32LE(0)).to.equal(LLAMA2C_MAGIC);
      expect(v1.version).to.equal(1);
    });

    const hfWith = (name: string, layers: number) => {
      const d = path.join(dir, name);
      fs.mkdirSync(d);
      const cfg = JSON.parse(fs.readFileSync(path.join(stories.hf, 'config.json'), 'utf8'));
      cfg.num_hidden_layers = layers;
      fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify(cfg));
      fs.symlinkSync(path.join(stories.hf, 'model.safetensors'), path.join(d, 'model.safetensors'));
      return d;
    };

    it('an HF config.json with num_hidden_layers 10000000 fails at once, naming the key', () => {
      const d = hfWith('hf-1e7', 1e7);
      const r = run(['generate', '--model', d, '--tokenizer', stories.tokenizer, '--prompt', 'x'], { timeoutMs: 20_000 });
      expectError(r, /config\.json: impossible model config: num_hidden_layers 10000000 is above the supported maximum 1024/);
      expect(r.ms).to.be.below(5000);
    });

    it('num_hidden_layers within the bounds but more than the safetensors hold: counted before listed', () => {
      const d = hfWith('hf-100', 100);
      const held = readSafetensorsHeader(path.join(stories.hf, 'model.safetensors')).tensors.size;
      const r = run(['generate', '--model', d, '--tokenizer', stories.tokenizer, '--prompt', 'x'], { timeoutMs: 20_000 });
      expectError(r, new RegExp(`missing tensor model\\.layers\\.5\\..*num_hidden_layers 100.* implies 902 tensors but it holds ${held}`));
    });
  });

  describe('2. data: a clear error above the per-record size; only what survives truncation is tokenized', () => {
    it('a 100 MB string is a clear error naming the record, in loadAlpaca and in eval', () => {
      const f = path.join(dir, 'huge.jsonl');
      const fd = fs.openSync(f, 'w');
      fs.writeSync(fd, '{"instruction": "a", "output": "b"}\n{"instruction": "Tell a story.", "output": "');
      const chunk = 'word '.repeat(1 << 20); // 5 MiB
      for (let i = 0; i < 20; i++) fs.writeSync(fd, chunk);
      fs.writeSync(fd, '"}\n');
      fs.closeSync(fd);
      expect(() => loadAlpaca(f)).to.throw(new RegExp(`huge\\.jsonl.*line 2: 104857613 characters is above the limit of ${MAX_RECORD_CHARS} per record`));
      const r = run(['eval', ...model, '--data', f, '--max-seq-len', '64'], { timeoutMs: 30_000 });
      expectError(r, /line 2: 104857613 characters is above the limit/);
    });

    it('a record of megabytes: its first maxSeqLen tokens, in milliseconds, equal to the whole encoding', () => {
      const tok = loadTokenizer(stories.tokenizer);
      const words = 'Once upon a time there was a little girl named Lily who liked to play outside in the sun .'.split(' ');
      const text = (n: number) => Array.from({ length: n }, (_, i) => words[(i * 7) % words.length]).join(' ');
      const r = { instruction: 'Tell a story.', output: text(40_000) }; // ~170k characters
      const ex = tokenizeExample(tok, r, 64);
      const full = tok.encode(promptOf(r) + r.output, { bos: true, eos: true });
      expect(Array.from(ex.ids)).to.deep.equal(full.slice(0, 64));
      expect(ex.truncated).to.equal(true);
      expect(ex.fullLength).to.be.above(64);
      // a short record is tokenized whole, as before
      const s = { instruction: 'Tell a story.', output: text(20) };
      const exs = tokenizeExample(tok, s, 512);
      expect(Array.from(exs.ids)).to.deep.equal(tok.encode(promptOf(s) + s.output, { bos: true, eos: true }));
      expect(exs.fullLength).to.equal(exs.ids.length);
      // 8 M characters: the whole encoding took 11 s; the head takes milliseconds
      const big = { instruction: 'Tell a story.', output: text(2_000_000) };
      const t0 = Date.now();
      const exb = tokenizeExample(tok, big, 64);
      expect(Date.now() - t0).to.be.below(1000);
      expect(Array.from(exb.ids)).to.deep.equal(full.slice(0, 64));
    });
  });

  describe('3. output locations are checked before any work, naming the real cause', () => {
    it('--out under /proc fails at once (it hung at 100% CPU), for train and export', () => {
      const a = run(['train', ...model, '--data', data, '--out', '/proc/la-x/y'], { timeoutMs: 15_000 });
      expectError(a, /cannot create --out \/proc\/la-x\/y: \/proc does not allow creating files \(ENOENT/);
      expect(a.ms).to.be.below(3000);
      const adapter = path.join(dir, 'scalar.safetensors');
      const cfg = readLlama2cHeader(stories.v0).config;
      const ad = Adapter.fromValues(cfg, { layers: 1, len: 2, gate: 'scalar' }, { prompts: new Float32Array(128), gates: new Float32Array(1) });
      return ad.save(adapter).then(() => {
        ad.dispose();
        const b = run(['export', '--adapter', adapter, '--format', 'peft', '--out', '/proc/la-x/y'], { timeoutMs: 15_000 });
        expectError(b, /cannot create --out \/proc\/la-x\/y: \/proc does not allow creating files \(ENOENT/);
        expect(b.ms).to.be.below(3000);
      });
    });

    it('a file where a folder should be: ENOTDIR naming it', () => {
      const r = run(['train', ...model, '--data', data, '--out', path.join(data, 'sub')], { timeoutMs: 15_000 });
      expectError(r, new RegExp(`${data.replace(/[.]/g, '\\.')} is not a folder \\(ENOTDIR\\)`));
      const r2 = run(['train', ...model, '--data', data, '--out', data], { timeoutMs: 15_000 });
      expectError(r2, /it exists and is not a folder \(ENOTDIR\)/);
    });

    it('a read-only file system: EROFS (it said ENOENT)', function () {
      const mnt = path.join(dir, 'ro');
      fs.mkdirSync(mnt);
      const script = `mount -t tmpfs -o ro tmpfs ${mnt} && exec "${process.execPath}" ${cli} train --model ${stories.v0} --data ${data} --out ${mnt}/run`;
      const probe = spawnSync('unshare', ['-rm', 'sh', '-c', `mount -t tmpfs -o ro tmpfs ${mnt}`], { encoding: 'utf8' });
      if (probe.status !== 0) this.skip(); // no user namespaces here
      const r = spawnSync('unshare', ['-rm', 'sh', '-c', script], { encoding: 'utf8', timeout: 15_000 });
      expect(r.status, r.stderr).to.equal(1);
      expect(r.stderr).to.match(/is on a read-only file system \(EROFS\)/);
    });

    it('a folder this user may not write: EACCES', function () {
      if (process.getuid?.() !== 0) this.skip(); // needs root to run the CLI as another user
      const locked = path.join(dir, 'locked');
      fs.mkdirSync(locked, { mode: 0o755 });
      fs.chmodSync(dir, 0o755);
      fs.chmodSync(data, 0o644);
      const r = run(['train', ...model, '--data', data, '--out', path.join(locked, 'run')], { timeoutMs: 15_000, uid: 65534, gid: 65534 });
      if (/EACCES.*(main\.js|node_modules)|Cannot find module/.test(r.stderr)) this.skip(); // the checkout is not readable by nobody
      expectError(r, /permission denied: cannot create files in .*locked \(EACCES\)/);
    });
  });

  describe('4. run folders: refused, overwritten or resumed with the same settings', () => {
    let runDir: string;
    before(() => {
      runDir = path.join(dir, 'R');
      const r = run(['train', ...model, '--data', data, '--out', runDir, ...small, '--max-steps', '6', '--save-every', '3']);
      expect(r.status, r.stderr).to.equal(0);
    });

    it('a new run in a folder holding a run is refused, and the folder is left as it was', () => {
      const before = fs.readdirSync(runDir).sort();
      const metrics = fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8');
      const r = run(['train', ...model, '--data', data, '--out', runDir, ...small, '--lr', '2e-2', '--max-steps', '6', '--save-every', '3']);
      expectError(r, /--out .*R already holds a run \(adapter\.safetensors, config\.yaml, metrics\.jsonl, 2 checkpoints\): continue it with --resume auto, or pass --overwrite/);
      expect(fs.readdirSync(runDir).sort()).to.deep.equal(before);
      expect(fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8')).to.equal(metrics);
    });

    it('--resume with other settings is refused, naming each field', () => {
      const r = run(['train', ...model, '--data', data, '--out', runDir, ...small, '--max-steps', '6', '--lr', '2e-2', '--weight-decay', '0.1', '--clip-grad', '1', '--resume', 'auto']);
      expectError(r, /cannot resume from .*R.*lr was 0\.01, now 0\.02; .*weight-decay was 0\.02, now 0\.1; clip-grad was null, now 1/);
      const r2 = run(['train', ...model, '--data', data, '--out', runDir, ...small, '--max-steps', '6', '--schedule', 'constant', '--resume', 'auto']);
      expectError(r2, /cannot resume from .*schedule was "cosine", now "constant"/);
      expect(run(['train', '--out', runDir, '--resume', 'auto', '--overwrite', ...model, '--data', data]).status).to.equal(2);
    });

    it('--resume auto cleans the leftovers of killed runs', () => {
      fs.mkdirSync(path.join(runDir, 'step-000004.tmp-99999'));
      fs.writeFileSync(path.join(runDir, '.adapter.safetensors.99999.0badf00d.tmp'), 'x');
      const r = run(['train', ...model, '--data', data, '--out', runDir, ...small, '--max-steps', '6', '--save-every', '3', '--resume', 'auto']);
      expect(r.status, r.stderr).to.equal(0);
      expect(r.stderr).to.match(/removed what killed runs left in .*: \.adapter\.safetensors\.99999\.0badf00d\.tmp, step-000004\.tmp-99999/);
      expect(fs.readdirSync(runDir).filter((n) => n.includes('tmp'))).to.deep.equal([]);
    });

    it('--overwrite clears the old run first: only the new run is left', () => {
      const r = run(['train', ...model, '--data', data, '--out', runDir, ...small, '--lr', '2e-2', '--max-steps', '4', '--save-every', '2', '--overwrite']);
      expect(r.status, r.stderr).to.equal(0);
      expect(fs.readdirSync(runDir).filter((n) => n.startsWith('step-')).sort()).to.deep.equal(['step-000002', 'step-000004']);
      const steps = fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).step);
      expect(steps).to.deep.equal([1, 2, 3, 4]);
      expect(fs.readFileSync(path.join(runDir, 'config.yaml'), 'utf8')).to.match(/^lr: 0\.02$/m).and.not.match(/overwrite/);
    });

    it('a failed start leaves no --out folder behind', () => {
      const other = path.join(dir, 'other.safetensors');
      const cfg = readLlama2cHeader(stories.v0).config;
      const a = Adapter.fromValues(cfg, { layers: 1, len: 2, gate: 'per-head' }, { prompts: new Float32Array(128), gates: new Float32Array(8) });
      return a.save(other).then(() => {
        a.dispose();
        const out = path.join(dir, 'fresh', 'deeper');
        const r = run(['train', ...model, '--data', data, '--out', out, ...small, '--init-adapter', other]);
        expectError(r, /--init-adapter .* has 1 layers/);
        expect(fs.existsSync(path.join(dir, 'fresh'))).to.equal(false);
      });
    });
  });

  it('kill -9 twice, then --resume auto: the final adapter is byte for byte the uninterrupted run\'s', async () => {
    const args = (out: string) => ['train', ...model, '--data', data, '--out', out, ...small, '--max-steps', '40', '--save-every', '1', '--keep-last', '2'];
    const full = path.join(dir, 'k-full');
    expect(run(args(full)).status).to.equal(0);
    const out = path.join(dir, 'k-killed');
    /** Starts the run and kills it with SIGKILL once a checkpoint past `step` exists. */
    const killAfter = async (step: number, extra: string[]) => {
      const child = spawn(process.execPath, [cli, ...args(out), ...extra], { stdio: 'ignore' });
      const exited = new Promise<string | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
      const latest = () => Math.max(0, ...listCheckpoints(out).map((p) => Number(/step-(\d+)$/.exec(p)![1])));
      while (latest() < step && child.exitCode === null) await new Promise((r) => setTimeout(r, 5));
      child.kill('SIGKILL');
      expect(await exited, 'the run ended before it was killed').to.equal('SIGKILL');
      return latest();
    };
    const first = await killAfter(3, []);
    const second = await killAfter(first + 10, ['--resume', 'auto']);
    expect(second).to.be.within(first + 10, 39);
    const r = run([...args(out), '--resume', 'auto']);
    expect(r.status, r.stderr).to.equal(0);
    expect(fs.readFileSync(path.join(out, 'adapter.safetensors')).equals(fs.readFileSync(path.join(full, 'adapter.safetensors')))).to.equal(true, 'the adapters differ');
    const steps = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).step);
    expect(steps).to.deep.equal(Array.from({ length: 40 }, (_, i) => i + 1));
  });

  it('5. checkpoints are ordered by step number past step 999999', () => {
    const out = path.join(dir, 'order');
    for (const s of ['step-999999', 'step-1000002', 'step-000010']) {
      fs.mkdirSync(path.join(out, s), { recursive: true });
      fs.writeFileSync(path.join(out, s, 'state.json'), '{}');
    }
    expect(listCheckpoints(out).map((p) => path.basename(p))).to.deep.equal(['step-000010', 'step-999999', 'step-1000002']);
  });

  describe('8. --no-mmap: a model file truncated under a running process', () => {
    /** A child that loads a copy of stories260K, truncates it, then runs a forward pass. */
    const truncatedUnder = (mmap: boolean) => {
      const copy = path.join(dir, `model-${mmap}.bin`);
      fs.copyFileSync(stories.v0, copy);
      const code = `
        const fs = require('fs');
        const { Llama } = require(${JSON.stringify(path.join(repoRoot, 'dist', 'lib', 'model', 'llama.js'))});
        (async () => {
          const m = await Llama.load(${JSON.stringify(copy)}, { device: 'cpu', mmap: ${mmap} });
          fs.truncateSync(${JSON.stringify(copy)}, 1000);
          const logits = await m.forward([1, 2, 3], m.newCache(8)).read();
          process.stdout.write(JSON.stringify(Array.from(logits.slice(0, 4))));
        })();`;
      return spawnSync(process.execPath, ['-e', code], { encoding: 'utf8', timeout: 30_000 });
    };

    it('mapped (the default): SIGBUS ends the process, as documented', () => {
      const r = truncatedUnder(true);
      expect(r.signal).to.equal('SIGBUS');
    });

    it('read into memory: runs on, with the same logits as the mapped load of the intact file', async () => {
      const r = truncatedUnder(false);
      expect(r.signal, r.stderr).to.equal(null);
      expect(r.status, r.stderr).to.equal(0);
      const m = await Llama.load(stories.v0, { device: 'cpu' });
      try {
        const ref = (await m.forward([1, 2, 3], m.newCache(8)).read()).slice(0, 4);
        expect(JSON.parse(r.stdout)).to.deep.equal(Array.from(ref));
      } finally {
        m.dispose();
      }
    });

    it('generate --no-mmap gives the same text; a bad mmap option is refused', async () => {
      const args = ['generate', ...model, '--prompt', 'Once upon a time', '--temperature', '0', '--max-tokens', '16'];
      const a = run(args);
      const b = run([...args, '--no-mmap']);
      expect(b.status, b.stderr).to.equal(0);
      expect(b.stdout).to.equal(a.stdout);
      let msg = '';
      await Llama.load(stories.v0, { mmap: 'no' as unknown as boolean }).catch((e: Error) => (msg = e.message));
      expect(msg).to.match(/mmap must be true or false/);
    });
  });

  describe('9. smaller cases', () => {
    it('a folder given as --adapter names the path', () => {
      const r = run(['generate', ...model, '--adapter', dir, '--prompt', 'x']);
      expectError(r, new RegExp(`${path.basename(dir)} is a folder, not a safetensors file`));
    });

    it('negative numbers as separate arguments get the range error', () => {
      expectError(run(['train', ...model, '--data', data, '--out', path.join(dir, 'neg'), '--lr', '-1']), /lr must be a number > 0, got '-1'/, 2);
      expectError(run(['generate', ...model, '--prompt', 'x', '--temperature', '-1']), /--temperature must be a number >= 0, got '-1'/, 2);
      expectError(run(['generate', ...model, '--prompt', 'x', '--seed', '-5']), /--seed must be an integer >= 0 <= 4294967295, got '-5'/, 2);
      expect(fs.existsSync(path.join(dir, 'neg'))).to.equal(false);
    });

    it('--adapter-len 100000000 is bounded with a clear message', () => {
      expectError(run(['train', ...model, '--data', data, '--out', path.join(dir, 'len'), '--adapter-len', '100000000']), /adapter-len must be an integer >= 1 <= 4096, got '100000000'/, 2);
      const cfg = readLlama2cHeader(stories.v0).config;
      expect(() => Adapter.init(cfg, { layers: 1, len: 1e8, gate: 'per-head' })).to.throw(/adapter length must be an integer in \[1, 4096\], got 100000000/);
    });

    it('Adapter.fromValues rejects NaN and Inf, as Adapter.load does', () => {
      const cfg = readLlama2cHeader(stories.v0).config;
      const prompts = new Float32Array(128);
      prompts[5] = NaN;
      expect(() => Adapter.fromValues(cfg, { layers: 1, len: 2, gate: 'per-head' }, { prompts, gates: new Float32Array(8) })).to.throw(/prompts must be finite, but value 5 is NaN/);
      const gates = new Float32Array(8);
      gates[7] = -Infinity;
      expect(() => Adapter.fromValues(cfg, { layers: 1, len: 2, gate: 'per-head' }, { prompts: new Float32Array(128), gates })).to.throw(/gates must be finite, but value 7 is -Infinity/);
    });

    it('setAdapter with a disposed adapter is a clear error', async () => {
      const m = await Llama.load(stories.v0, { device: 'cpu' });
      try {
        const a = Adapter.init(m.config, { layers: 2, len: 3, gate: 'per-head' }, 1, 'cpu');
        a.dispose();
        expect(() => m.setAdapter(a)).to.throw(/setAdapter: the adapter was disposed/);
      } finally {
        m.dispose();
      }
    });

    it('--max-steps shorter than the warmup warns', () => {
      const r = run(['train', ...model, '--data', data, '--out', path.join(dir, 'warm'), ...small, '--warmup-steps', '5', '--max-steps', '2']);
      expect(r.status, r.stderr).to.equal(0);
      expect(r.stderr).to.match(/warning: the run has 2 steps but the warmup 5: the lr never reaches its peak 0\.0100 \(at most 0\.00400\)/);
    });
  });
});
