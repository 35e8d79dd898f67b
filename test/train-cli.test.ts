// The train / eval / export / generate --adapter commands end to end on stories260K: outputs,
// metrics, config files, bit-identical resume, and a clear error for each kind of bad input.
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { makeDemoDataset } from '../lib/data/demo';
import { Adapter } from '../lib/model/adapter';
import { readLlama2cHeader } from '../lib/model/llama2c';
import { readSafetensorsHeader } from '../lib/model/safetensors';
import { learningRate } from '../lib/train/schedule';
import { repoRoot } from './util/paths';
import { stories } from './util/stories';

const cli = path.join(repoRoot, 'dist', 'lib', 'cli', 'main.js');
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
const model = ['--model', stories.v0, '--tokenizer', stories.tokenizer];

async function adapterValues(file: string) {
  const header = readLlama2cHeader(stories.v0);
  const a = Adapter.load(file, header.config);
  try {
    return await a.values();
  } finally {
    a.dispose();
  }
}

describe('train / eval / export commands (stories260K)', function () {
  this.timeout(120_000);
  let dir: string;
  let data: string;
  let val: string;
  const small = ['--adapter-layers', '2', '--adapter-len', '4', '--batch-size', '4', '--grad-accum', '2', '--lr', '1e-2', '--warmup-steps', '2', '--seed', '3'];

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-train-'));
    const records = makeDemoDataset({ count: 40, seed: 1 });
    data = path.join(dir, 'train.jsonl');
    fs.writeFileSync(data, records.slice(0, 32).map((r) => JSON.stringify(r)).join('\n') + '\n');
    val = path.join(dir, 'val.json');
    fs.writeFileSync(val, JSON.stringify(records.slice(32)));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('trains: adapter file, metrics per step, resolved config, eval and a sample', () => {
    const out = path.join(dir, 'run');
    const r = run('train', ...model, '--data', data, '--val-data', val, '--out', out, ...small, '--epochs', '2', '--eval-every', '4');
    expect(r.status, r.stderr).to.equal(0);
    expect(r.stdout.trim()).to.equal(path.join(out, 'adapter.safetensors'));
    expect(r.stderr).to.match(/step 8\/8 \| epoch 2\.00 \| loss \d+\.\d+ \| norm \d+\.\d+ \| lr [\d.e+-]+ \| \d+ ms \| \d+ tok\/s/);
    expect(r.stderr).to.match(/eval at step 4: val loss \d+\.\d+ over \d+ tokens/);
    const lines = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const steps = lines.filter((l) => 'loss' in l);
    expect(steps.map((l) => l.step)).to.deep.equal([1, 2, 3, 4, 5, 6, 7, 8]);
    for (const k of ['step', 'epoch', 'loss', 'lr', 'grad_norm', 'tokens', 'ms']) expect(steps[0]).to.have.property(k);
    // 32 examples / 4 per micro-batch / 2 micro-batches = 4 steps per epoch; lr as scheduled
    steps.forEach((l, i) => expect(l.lr).to.be.closeTo(learningRate(i, { peakLr: 1e-2, totalSteps: 8, warmupSteps: 2, kind: 'cosine' }), 1e-12));
    expect(lines.filter((l) => 'val_loss' in l).map((l) => l.step)).to.deep.equal([4, 8]);
    const cfg = fs.readFileSync(path.join(out, 'config.yaml'), 'utf8');
    expect(cfg).to.match(/^adapter-len: 4$/m);
    expect(cfg).to.match(/^grad-accum: 2$/m);
    expect(cfg).to.match(/^device: (cpu|cuda)$/m); // the resolved device
    expect(r.stderr).to.match(/^device (cpu|cuda) \(/m);
    const h = readSafetensorsHeader(path.join(out, 'adapter.safetensors'));
    expect(h.tensors.get('adapter_query.weight')!.shape).to.deep.equal([8, 64]);
    expect(h.tensors.get('layers.3.attention.gate')!.shape).to.deep.equal([1, 8, 1, 1]);
    expect(h.tensors.get('layers.4.attention.gate')!.shape).to.deep.equal([1, 8, 1, 1]);
    expect(h.metadata.adapter_len).to.equal('4');
  });

  it('--dtype bf16 --matmul-precision medium trains with bf16 products and records the precision', () => {
    const out = path.join(dir, 'run-medium');
    const r = run('train', ...model, '--data', data, '--out', out, ...small, '--max-steps', '2', '--dtype', 'bf16', '--matmul-precision', 'medium');
    expect(r.status, r.stderr).to.equal(0);
    const steps = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((l) => 'loss' in l);
    expect(steps).to.have.length(2);
    steps.forEach((l) => expect(Number.isFinite(l.loss) && l.loss > 0).to.equal(true));
    expect(fs.readFileSync(path.join(out, 'config.yaml'), 'utf8')).to.match(/^matmul-precision: medium$/m);
  });

  it('eval prints the mean loss over the target tokens, lower with the trained adapter', () => {
    const frozen = run('eval', ...model, '--data', data);
    expect(frozen.status, frozen.stderr).to.equal(0);
    const f = JSON.parse(frozen.stdout);
    const adapted = JSON.parse(run('eval', ...model, '--data', data, '--adapter', path.join(dir, 'run', 'adapter.safetensors')).stdout);
    expect(f.tokens).to.equal(adapted.tokens);
    expect(f.tokens).to.be.greaterThan(500);
    expect(adapted.loss).to.be.lessThan(f.loss);
    // the batch size does not change the mean
    const f2 = JSON.parse(run('eval', ...model, '--data', data, '--batch-size', '3').stdout);
    expect(f2.loss).to.be.closeTo(f.loss, 1e-5 * f.loss);
  });

  it('generate --adapter runs the adapted model', async () => {
    // an adapter whose gates are open, so that its prompts surely change the text
    const config = readLlama2cHeader(stories.v0).config;
    const init = Adapter.init(config, { layers: 3, len: 5, gate: 'per-head' }, 7);
    const v = await init.values();
    init.dispose();
    const open = Adapter.fromValues(config, init.config, { prompts: v.prompts, gates: v.gates.fill(1) });
    const a = path.join(dir, 'open.safetensors');
    await open.save(a);
    open.dispose();
    const r = run('generate', ...model, '--adapter', a, '--instruction', 'Write a story about Tom who likes dogs.', '--temperature', '0', '--max-tokens', '20');
    expect(r.status, r.stderr).to.equal(0);
    expect(r.stdout.trim().length).to.be.greaterThan(10);
    const plain = run('generate', ...model, '--instruction', 'Write a story about Tom who likes dogs.', '--temperature', '0', '--max-tokens', '20');
    expect(plain.stdout).to.not.equal(r.stdout);
  });

  it('--resume continues to the bit-identical adapter of an uninterrupted run', async () => {
    const full = path.join(dir, 'full');
    const a = run('train', ...model, '--data', data, '--out', full, ...small, '--epochs', '3');
    expect(a.status, a.stderr).to.equal(0);
    const part = path.join(dir, 'part');
    // --keep-last keeps the newest checkpoints only
    const b = run('train', ...model, '--data', data, '--out', part, ...small, '--epochs', '3', '--save-every', '1', '--keep-last', '2', '--max-steps', '12');
    expect(b.status, b.stderr).to.equal(0);
    const ckpts = fs.readdirSync(part).filter((n) => n.startsWith('step-'));
    expect(ckpts).to.deep.equal(['step-000011', 'step-000012']); // --keep-last 2
    // an interrupted run: checkpoints at steps 5 and 10, then keep only step 5 (mid-epoch 2)
    const c = run('train', ...model, '--data', data, '--out', path.join(dir, 'part5'), ...small, '--epochs', '3', '--save-every', '5');
    expect(c.status, c.stderr).to.equal(0);
    fs.rmSync(path.join(dir, 'part5', 'adapter.safetensors'));
    fs.rmSync(path.join(dir, 'part5', 'step-000010'), { recursive: true });
    const d = run('train', ...model, '--data', data, '--out', path.join(dir, 'part5'), ...small, '--epochs', '3', '--resume', 'auto');
    expect(d.status, d.stderr).to.equal(0);
    expect(d.stderr).to.match(/resuming from .*step-000005 at step 5\/12/);
    const x = await adapterValues(path.join(full, 'adapter.safetensors'));
    const y = await adapterValues(path.join(dir, 'part5', 'adapter.safetensors'));
    expect(Buffer.from(y.prompts.buffer).equals(Buffer.from(x.prompts.buffer))).to.equal(true, 'prompts differ');
    expect(Buffer.from(y.gates.buffer).equals(Buffer.from(x.gates.buffer))).to.equal(true, 'gates differ');
    // a different recipe cannot resume that run
    const e = run('train', ...model, '--data', data, '--out', path.join(dir, 'part5'), ...small, '--epochs', '3', '--batch-size', '2', '--resume', 'auto');
    expect(e.status).to.equal(1);
    expect(e.stderr).to.match(/cannot resume from .*batch-size was 4, now 2/);
  });

  it('--config YAML supplies flags; flags override it', () => {
    const yaml = path.join(dir, 'run.yaml');
    fs.writeFileSync(yaml, `adapter-len: 3\nadapter-layers: 1\nbatch-size: 8\ngrad-accum: 1\nepochs: 1\nlr: 0.01\nseed: 5\n`);
    const out = path.join(dir, 'yaml');
    const r = run('train', ...model, '--data', data, '--out', out, '--config', yaml, '--adapter-len', '2');
    expect(r.status, r.stderr).to.equal(0);
    const h = readSafetensorsHeader(path.join(out, 'adapter.safetensors'));
    expect(h.tensors.get('adapter_query.weight')!.shape).to.deep.equal([2, 64]); // 1 layer x 2 prompts
    expect(fs.readFileSync(path.join(out, 'config.yaml'), 'utf8')).to.match(/^adapter-len: 2$/m);
  });

  it('--init-adapter starts from the given prompts and gates', async () => {
    const first = path.join(dir, 'run', 'adapter.safetensors');
    const out = path.join(dir, 'init');
    const r = run('train', ...model, '--data', data, '--out', out, ...small, '--max-steps', '1', '--lr', '1e-12', '--init-adapter', first);
    expect(r.status, r.stderr).to.equal(0);
    const a = await adapterValues(first);
    const b = await adapterValues(path.join(out, 'adapter.safetensors'));
    for (let i = 0; i < a.prompts.length; i++) expect(b.prompts[i]).to.be.closeTo(a.prompts[i], 1e-6);
    // (another folder: `out` now holds a run, which a new run may not reuse without --overwrite)
    const wrong = run('train', ...model, '--data', data, '--out', path.join(dir, 'init-wrong'), '--adapter-len', '5', '--init-adapter', first);
    expect(wrong.status).to.equal(1);
    expect(wrong.stderr).to.match(/--init-adapter .* has 2 layers, 4 prompts/);
  });

  it('export --format peft writes the PEFT files for a scalar gate and refuses per-head gates', () => {
    const out = path.join(dir, 'scalar');
    const t = run('train', ...model, '--data', data, '--out', out, ...small, '--max-steps', '2', '--gate', 'scalar');
    expect(t.status, t.stderr).to.equal(0);
    const peft = path.join(dir, 'peft');
    const e = run('export', '--adapter', path.join(out, 'adapter.safetensors'), '--format', 'peft', '--out', peft);
    expect(e.status, e.stderr).to.equal(0);
    const config = JSON.parse(fs.readFileSync(path.join(peft, 'adapter_config.json'), 'utf8'));
    expect(config).to.deep.equal({ peft_type: 'ADAPTION_PROMPT', task_type: 'CAUSAL_LM', adapter_len: 4, adapter_layers: 2, target_modules: 'self_attn' });
    const h = readSafetensorsHeader(path.join(peft, 'adapter_model.safetensors'));
    expect(h.tensors.get('base_model.model.model.layers.3.self_attn.adaption_prompt')!.shape).to.deep.equal([1, 4, 64]);
    expect(h.tensors.get('base_model.model.model.layers.4.self_attn.adaption_gate')!.shape).to.deep.equal([1]);
    const refused = run('export', '--adapter', path.join(dir, 'run', 'adapter.safetensors'), '--format', 'peft', '--out', path.join(dir, 'peft2'));
    expect(refused.status).to.equal(1);
    expect(refused.stderr).to.match(/per-head gates.*--gate scalar/);
    expect(fs.existsSync(path.join(dir, 'peft2', 'adapter_model.safetensors'))).to.equal(false);
  });

  it('a non-finite loss stops training with a clear message, the last checkpoint intact', () => {
    const out = path.join(dir, 'nan');
    // a learning rate of 1e30 sends the adapter to infinity after the first update
    const r = run('train', ...model, '--data', data, '--out', out, ...small, '--lr', '1e30', '--warmup-steps', '0', '--max-steps', '4', '--save-every', '1');
    expect(r.status).to.equal(1);
    expect(r.stderr).to.match(/training stopped: the (loss|gradient norm) is (NaN|Infinity|-Infinity) at step \d/);
    expect(r.stderr).to.match(/The last good checkpoint, .*step-00000\d, is intact/);
    expect(fs.existsSync(path.join(out, 'adapter.safetensors'))).to.equal(false);
    expect(fs.readdirSync(out).filter((n) => n.startsWith('step-')).length).to.be.greaterThan(0);
  });

  describe('bad input gives a clear error and writes nothing', () => {
    const expectError = (r: ReturnType<typeof run>, status: number, re: RegExp) => {
      expect(r.status, r.stderr).to.equal(status);
      expect(r.stderr).to.match(re);
      expect(r.stderr).to.not.match(/\n\s+at /); // no stack trace
    };
    const write = (name: string, text: string) => {
      const f = path.join(dir, name);
      fs.writeFileSync(f, text);
      return f;
    };

    it('malformed JSON', () => {
      const f = write('bad.json', '[{"instruction": "a", "output": "b"},');
      expectError(run('train', ...model, '--data', f, '--out', path.join(dir, 'x1')), 1, /bad\.json.*(JSON|Unexpected)/);
      expect(fs.existsSync(path.join(dir, 'x1', 'adapter.safetensors'))).to.equal(false);
    });
    it('a record without output', () => {
      const f = write('missing.jsonl', '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n');
      expectError(run('train', ...model, '--data', f, '--out', path.join(dir, 'x2')), 1, /line 2.*output/);
    });
    it('an empty data file', () => {
      const f = write('empty.json', '');
      expectError(run('train', ...model, '--data', f, '--out', path.join(dir, 'x3')), 1, /no records/);
    });
    it('an example longer than --max-seq-len is truncated with a warning, and one with no room for a target is skipped', () => {
      const f = write('long.jsonl', JSON.stringify({ instruction: 'Write a story about Tom who likes dogs.', output: 'word '.repeat(300) }) + '\n');
      const r = run('train', ...model, '--data', f, '--out', path.join(dir, 'x4'), '--max-seq-len', '40', '--max-steps', '1', '--grad-accum', '1');
      expectError(r, 1, /no target|no example|skipped/i);
    });
    it('an adapter file that does not fit the model', () => {
      const other = path.join(dir, 'other.safetensors');
      // an adapter for a model of dim 32
      const a = Adapter.fromValues(
        { ...readLlama2cHeader(stories.v0).config, dim: 32 },
        { layers: 1, len: 2, gate: 'per-head' },
        { prompts: new Float32Array(64), gates: new Float32Array(8) },
      );
      return a.save(other).then(() => {
        a.dispose();
        expectError(run('generate', ...model, '--adapter', other, '--prompt', 'x'), 1, /does not fit the model.*dim is 64/);
        expectError(run('eval', ...model, '--data', data, '--adapter', other), 1, /does not fit the model/);
      });
    });
    it('unknown flags and bad values', () => {
      expectError(run('train', ...model, '--data', data, '--out', dir, '--learning-rate', '1'), 2, /Unknown option '--learning-rate'/);
      expectError(run('train', ...model, '--data', data, '--out', dir, '--gate', 'both'), 2, /gate must be per-head or scalar, got 'both'/);
      expectError(run('train', ...model, '--data', data, '--out', dir, '--batch-size', '0'), 2, /batch-size must be an integer >= 1, got '0'/);
      expectError(run('train', ...model, '--data', data), 2, /--out is required/);
      expectError(run('train', ...model, '--data', data, '--out', dir, '--adapter-layers', '9'), 1, /adapter layers must be an integer in \[1, 5\]/);
      const yaml = write('bad.yaml', 'learning-rate: 3\n');
      expectError(run('train', ...model, '--data', data, '--out', dir, '--config', yaml), 2, /bad\.yaml: unknown option 'learning-rate'/);
      expectError(run('export', '--adapter', path.join(dir, 'run', 'adapter.safetensors'), '--format', 'gguf', '--out', dir), 2, /--format must be peft/);
    });
  });
});
