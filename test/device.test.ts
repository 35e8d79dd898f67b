// Choosing the backend: the default (cuda when available, else cpu), the error for cuda where it is
// not available (quoting capabilities().cuda.reason) in the API and every computing CLI command,
// and the device reaching the model, its cache, the adapter and the training state.
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native } from '../lib/native';
import { defaultDevice, resolveDevice } from '../lib/device';
import { makeDemoDataset } from '../lib/data/demo';
import { Adapter } from '../lib/model/adapter';
import { Llama } from '../lib/model/llama';
import { readLlama2cHeader } from '../lib/model/llama2c';
import { allTensors } from '../lib/model/weights';
import { resolveTrainConfig } from '../lib/train/config';
import { Trainer } from '../lib/train/trainer';
import { repoRoot } from './util/paths';
import { stories } from './util/stories';

const cli = path.join(repoRoot, 'dist', 'lib', 'cli', 'main.js');
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
const cuda = native.capabilities().cuda;
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('device choice (--device, the device option)', function () {
  this.timeout(60_000);
  let dir: string;
  let data: string;

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-device-'));
    data = path.join(dir, 'train.json');
    fs.writeFileSync(data, JSON.stringify(makeDemoDataset({ count: 8, seed: 2 })));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it(`the default is ${cuda.available ? 'cuda (a GPU is available)' : 'cpu (no GPU here)'}`, () => {
    expect(defaultDevice()).to.equal(cuda.available ? 'cuda' : 'cpu');
    expect(resolveDevice(undefined)).to.equal(defaultDevice());
    expect(resolveDevice('cpu')).to.equal('cpu');
    expect(() => resolveDevice('tpu', '--device')).to.throw(RangeError, /--device must be 'cuda' or 'cpu', got "tpu"/);
  });

  it('a model loaded on the cpu keeps its weights, cache and attached adapter there', async () => {
    const model = await Llama.load(stories.v0, { device: 'cpu' });
    try {
      expect(model.device).to.equal('cpu');
      expect(allTensors(model.checkpoint.weights).every((t) => t.device === 'cpu')).to.equal(true);
      const cache = model.newCache(8);
      expect([...cache.k, ...cache.v].every((t) => t.device === 'cpu')).to.equal(true);
      const adapter = Adapter.init(model.config, { layers: 1, len: 2, gate: 'scalar' }, 0, 'cpu');
      expect(adapter.device).to.equal('cpu');
      model.setAdapter(adapter);
      const logits = model.forward([1, 2], cache);
      expect(logits.device).to.equal('cpu');
      expect((await logits.read()).length).to.equal(model.config.vocabSize);
      model.setAdapter(undefined);
      adapter.dispose();
      cache.dispose();
    } finally {
      model.dispose();
    }
  });

  it('Trainer.create resolves the device into the run config and prints it in the header', async () => {
    const logs: string[] = [];
    const cfg = resolveTrainConfig({ model: stories.v0, data, out: path.join(dir, 'run'), 'max-steps': '1', 'batch-size': '2', 'grad-accum': '1' });
    expect(cfg.device).to.equal(undefined);
    const t = await Trainer.create(cfg, (m) => logs.push(m));
    try {
      expect(t.cfg.device).to.equal(defaultDevice());
      expect(t.model.device).to.equal(defaultDevice());
      expect(logs.join('\n')).to.match(new RegExp(`device ${defaultDevice()} \\(`));
    } finally {
      t.dispose();
    }
  });

  it('--device with another value is a usage error (exit 2) on train, generate and eval', () => {
    for (const args of [
      ['train', '--model', stories.v0, '--data', data, '--out', path.join(dir, 'x'), '--device', 'gpu'],
      ['generate', '--model', stories.v0, '--prompt', 'a', '--device', 'gpu'],
      ['eval', '--model', stories.v0, '--data', data, '--device', 'gpu'],
    ]) {
      const r = run(...args);
      expect(r.status, `${args[0]}: ${r.stderr}`).to.equal(2);
      expect(r.stderr).to.match(/device must be cuda or cpu, got 'gpu'/);
    }
  });

  it('--device cpu runs generate and eval; the help of each lists --device', () => {
    const g = run('generate', '--model', stories.v0, '--prompt', 'Once', '--temperature', '0', '--max-tokens', '5', '--device', 'cpu');
    expect(g.status, g.stderr).to.equal(0);
    expect(g.stdout.trim().length).to.be.greaterThan(0);
    const e = run('eval', '--model', stories.v0, '--data', data, '--device', 'cpu');
    expect(e.status, e.stderr).to.equal(0);
    expect(JSON.parse(e.stdout).tokens).to.be.greaterThan(0);
    for (const cmd of ['train', 'generate', 'eval']) expect(run(cmd, '--help').stdout, cmd).to.match(/--device cuda\|cpu/);
  });

  (cuda.available ? it.skip : it)(`asking for cuda without a GPU is a clear error quoting the reason (${cuda.reason})`, async () => {
    const reason = new RegExp(`cuda.*not available.*${escape(cuda.reason)}`);
    expect(() => resolveDevice('cuda', '--device')).to.throw(reason);
    let err: unknown;
    try {
      await Llama.load(stories.v0, { device: 'cuda' });
    } catch (e) {
      err = e;
    }
    expect(String(err)).to.match(reason);
    expect(() => Adapter.init(readLlama2cHeader(stories.v0).config, { layers: 1, len: 1, gate: 'scalar' }, 0, 'cuda')).to.throw(reason);
    for (const args of [
      ['train', '--model', stories.v0, '--data', data, '--out', path.join(dir, 'cuda-run'), '--device', 'cuda'],
      ['generate', '--model', stories.v0, '--prompt', 'a', '--device', 'cuda'],
      ['eval', '--model', stories.v0, '--data', data, '--device', 'cuda'],
    ]) {
      const r = run(...args);
      expect(r.status, `${args[0]}: ${r.stderr}`).to.equal(1);
      expect(r.stderr).to.match(new RegExp(`^llama-adapter ${args[0]}: error: --device cuda: CUDA is not available \\(${escape(cuda.reason)}\\)`));
    }
    expect(fs.existsSync(path.join(dir, 'cuda-run'))).to.equal(false); // refused before anything ran
  });
});
