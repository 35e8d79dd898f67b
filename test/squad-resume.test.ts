// `train --task squad` on the shared run machinery (lib/train/checkpoint.ts, lib/train/run-folder.ts):
// its numbers unchanged by the move onto the AdamW class and IndexBatcher (against a run recorded
// from main before it), checkpoints and keep-last, a resume bit for bit (from a checkpoint in the
// middle of an epoch, and after SIGKILL), and the run-folder rules (refused, overwritten, resumed
// only with the same settings, leftovers removed). Tiny random RoBERTa / BERT folders: seconds.
import { expect } from 'chai';
import { spawn, spawnSync } from 'child_process';
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { readSafetensorsHeader } from '../lib/model/safetensors';
import { writeRandomTextFolder } from '../lib/text/random-folder';
import { listCheckpoints } from '../lib/train/checkpoint';
import { repoRoot } from './util/paths';
import { capture } from './util/capture';

const cli = path.join(repoRoot, 'dist', 'lib', 'cli', 'main.js');
const tokDir = path.join(repoRoot, 'test', 'golden', 'text-tokenizers');
const CONTEXT =
  'The GNU General Public License is a free, copyleft license for software and other kinds of works. ' +
  'The licenses for most software are designed to take away your freedom to share and change the works. ' +
  'By contrast, the GPL is intended to guarantee your freedom to share and change all versions of a program.';

type Metrics = { step: number; ms: number; [k: string]: unknown };
const metricsOf = (out: string): Metrics[] =>
  fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
/** the lines without their wall time */
const timeless = (m: Metrics[]) => m.map(({ ms: _ms, ...rest }) => rest);
const adapterOf = (out: string) => fs.readFileSync(path.join(out, 'adapter.safetensors'));
const stepDirs = (out: string) => fs.readdirSync(out).filter((n) => n.startsWith('step-')).sort();

describe('train --task squad: checkpoints, --resume, run folders', function () {
  this.timeout(120000);
  let tmp: string;
  let roberta: string;
  let bert: string;
  let dataPath: string;
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'squad-resume-'));
    roberta = path.join(tmp, 'roberta-qa');
    bert = path.join(tmp, 'bert');
    const o = { hidden: 32, layers: 2, heads: 4, ffn: 64, maxTokens: 64, seed: 1 };
    writeRandomTextFolder(roberta, { ...o, family: 'roberta', tokenizerDir: path.join(tokDir, 'roberta'), qaHead: true });
    writeRandomTextFolder(bert, { ...o, family: 'bert', tokenizerDir: path.join(tokDir, 'bert-uncased'), qaHead: false, init: 'fan-in' });
    const words = ['software', 'freedom', 'license', 'program', 'works', 'contrast', 'guarantee', 'versions'];
    const qas = words.map((w, i) => ({ id: `q${i}`, question: `Where is ${w}?`, answers: [{ text: w, answer_start: CONTEXT.indexOf(w) }] }));
    dataPath = path.join(tmp, 'train.json');
    fs.writeFileSync(dataPath, JSON.stringify({ version: 'v1.1', data: [{ title: 't', paragraphs: [{ context: CONTEXT, qas }] }] }));
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  // RoBERTa: 35 windows of at most 48 tokens, 9 steps of 4 an epoch, 27 steps
  const PROMPTS = ['--layers', '2', '--prompt-len', '4'];
  const trainArgs = (encoder: string, out: string, shape: string[], more: string[]) => [
    'train', '--task', 'squad', '--encoder', encoder, '--device', 'cpu', '--max-seq-len', '48', '--doc-stride', '16', '--data', dataPath,
    '--out', out, ...shape, '--batch-size', '4', '--epochs', '3', '--lr', '2e-2', '--seed', '5', ...more,
  ];
  const args = (encoder: string, out: string, ...more: string[]) => trainArgs(encoder, out, PROMPTS, more);

  it('numbers unchanged: every step and the adapter equal a run recorded from main before the change', async function () {
    const golden = JSON.parse(fs.readFileSync(path.join(repoRoot, 'test', 'golden', 'squad-resume', 'main-e101e31.json'), 'utf8'));
    // the GEMM kernels OpenBLAS runs change the last bits: the run was recorded with each
    const want = golden.runs[process.env.OPENBLAS_CORETYPE ?? ''];
    if (!want) this.skip();
    const out = path.join(tmp, 'unchanged');
    // in a child on the AVX2 dot products, as at e101e31 (the AVX-512 ones sum in another order)
    const r = spawnSync(process.execPath, [cli, ...args(roberta, out)], { encoding: 'utf8', env: { ...process.env, LLAMA_ADAPTER_SIMD: 'avx2' } });
    expect(r.status, r.stderr).to.equal(0);
    const m = metricsOf(out);
    expect(m.map((s) => s.loss)).to.deep.equal(want.losses);
    expect(m.map((s) => s.grad_norm)).to.deep.equal(want.grad_norms);
    expect(m.map((s) => s.lr)).to.deep.equal(want.lr);
    expect(m.map((s) => s.epoch)).to.deep.equal(want.epoch);
    expect(m.map((s) => s.windows)).to.deep.equal(want.windows);
    expect(createHash('sha256').update(adapterOf(out)).digest('hex')).to.equal(want.adapter_sha256);
  });

  for (const [family, head] of [['roberta', 'prompts'], ['bert', 'prompts'], ['roberta', 'head only']] as const)
    it(`${family}, ${head}: checkpoints every 4 steps, the last 2 kept; a resume from the middle of an epoch is bit for bit`, async () => {
      const encoder = family === 'roberta' ? roberta : bert;
      const shape = head === 'head only' ? ['--head-only'] : PROMPTS;
      const whole = path.join(tmp, `whole-${family}-${head}`);
      const w = await capture(trainArgs(encoder, whole, shape, ['--save-every', '4']));
      expect(w.code, w.err).to.equal(0);
      expect(stepDirs(whole)).to.deep.equal(['step-000020', 'step-000024']);
      // a checkpoint: the adapter in OUT/adapter.safetensors' format, AdamW's moments and step, the data position
      const ck = path.join(whole, 'step-000024');
      expect(fs.readdirSync(ck).sort()).to.deep.equal(['adapter.safetensors', 'optimizer.safetensors', 'state.json']);
      const names = (f: string) => [...readSafetensorsHeader(f).tensors.keys()].sort();
      expect(names(path.join(ck, 'adapter.safetensors'))).to.deep.equal(names(path.join(whole, 'adapter.safetensors')));
      expect(readSafetensorsHeader(path.join(ck, 'adapter.safetensors')).metadata).to.deep.equal(readSafetensorsHeader(path.join(whole, 'adapter.safetensors')).metadata);
      const L = head === 'head only' ? 0 : 2;
      const opt = readSafetensorsHeader(path.join(ck, 'optimizer.safetensors'));
      expect(opt.tensors.size).to.equal(2 * (2 * L + 2));
      expect(opt.metadata.step).to.equal('24');
      const state = JSON.parse(fs.readFileSync(path.join(ck, 'state.json'), 'utf8'));
      expect(state).to.deep.include({ step: 24, totalSteps: 27 });
      const windows = family === 'roberta' ? 35 : 33; // 9 steps an epoch either way
      expect(state.data).to.deep.include({ epoch: 2, index: 6, examples: windows, batchSize: 4, shuffle: true });
      expect(state.fingerprint).to.deep.include({ task: 'squad', layers: L, 'total-steps': 27, windows, lr: 0.02, seed: 5 });

      // the same run, as if killed after the checkpoint of step 12 (epoch 1, batch 3): later
      // checkpoints and the adapter gone, metrics past step 12 written
      const cut = path.join(tmp, `cut-${family}-${head}`);
      const c = await capture(trainArgs(encoder, cut, shape, ['--save-every', '4', '--keep-last', '10']));
      expect(c.code, c.err).to.equal(0);
      expect(stepDirs(cut)).to.deep.equal(['step-000004', 'step-000008', 'step-000012', 'step-000016', 'step-000020', 'step-000024']);
      for (const n of ['step-000016', 'step-000020', 'step-000024', 'adapter.safetensors']) fs.rmSync(path.join(cut, n), { recursive: true });
      fs.appendFileSync(path.join(cut, 'metrics.jsonl'), '{"step": 28, "loss": 1}\n{"step": 2'); // a line cut short by the kill
      const r = await capture(trainArgs(encoder, cut, shape, ['--save-every', '4', '--keep-last', '10', '--resume', 'auto']));
      expect(r.code, r.err).to.equal(0);
      expect(r.err).to.match(/resuming from .*step-000012 at step 12\/27/);
      expect(r.err).to.not.match(/step 1\/27/);
      expect(adapterOf(cut).equals(adapterOf(whole)), 'the adapters differ').to.equal(true);
      expect(timeless(metricsOf(cut))).to.deep.equal(timeless(metricsOf(whole)));
      expect(metricsOf(cut).map((s) => s.step)).to.deep.equal(Array.from({ length: 27 }, (_, i) => i + 1));
    });

  it('kill -9 after a checkpoint, then --resume auto: the adapter and the metrics of an uninterrupted run', async () => {
    // 360 steps (40 epochs) with a checkpoint after each: long enough to be killed in the middle
    const long = (out: string, ...more: string[]) => [...args(roberta, out, '--epochs', '40', '--save-every', '1', '--keep-last', '2'), ...more];
    const full = path.join(tmp, 'k-full');
    const f = spawnSync(process.execPath, [cli, ...long(full)], { encoding: 'utf8', timeout: 60_000 });
    expect(f.status, f.stderr).to.equal(0);
    const out = path.join(tmp, 'k-killed');
    const child = spawn(process.execPath, [cli, ...long(out)], { stdio: 'ignore' });
    const exited = new Promise<string | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
    const latest = () => Math.max(0, ...listCheckpoints(out).map((p) => Number(/step-(\d+)$/.exec(p)![1])));
    while (latest() < 20 && child.exitCode === null) await new Promise((res) => setTimeout(res, 5));
    child.kill('SIGKILL');
    expect(await exited, 'the run ended before it was killed').to.equal('SIGKILL');
    const at = latest();
    expect(at).to.be.within(20, 359);
    const r = spawnSync(process.execPath, [cli, ...long(out, '--resume', 'auto')], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).to.equal(0);
    expect(r.stderr).to.match(new RegExp(`resuming from .*step-0*${at} at step ${at}/360`));
    expect(adapterOf(out).equals(adapterOf(full)), 'the adapters differ').to.equal(true);
    const resumed = timeless(metricsOf(out));
    const whole = timeless(metricsOf(full));
    expect(resumed.length).to.equal(360);
    expect(resumed.slice(at)).to.deep.equal(whole.slice(at));
    expect(resumed).to.deep.equal(whole);
    expect(stepDirs(out)).to.deep.equal(['step-000359', 'step-000360']);
  });

  describe('the run folder', () => {
    let run: string;
    before(async () => {
      run = path.join(tmp, 'R');
      const r = await capture(args(roberta, run, '--save-every', '4'));
      expect(r.code, r.err).to.equal(0);
    });

    it('a new run in a folder holding a run is refused, and the folder is left as it was', async () => {
      const before = fs.readdirSync(run).sort();
      const metrics = fs.readFileSync(path.join(run, 'metrics.jsonl'), 'utf8');
      const r = await capture(args(roberta, run, '--lr', '3e-2'));
      expect(r.code).to.equal(1);
      expect(r.err).to.match(/--out .*R already holds a run \(adapter\.safetensors, config\.yaml, metrics\.jsonl, 2 checkpoints\): continue it with --resume auto, or pass --overwrite/);
      expect(fs.readdirSync(run).sort()).to.deep.equal(before);
      expect(fs.readFileSync(path.join(run, 'metrics.jsonl'), 'utf8')).to.equal(metrics);
      const both = await capture(args(roberta, run, '--resume', 'auto', '--overwrite'));
      expect(both.code).to.equal(2);
      expect(both.err).to.match(/give either --resume or --overwrite, not both/);
    });

    it('the settings are in config.yaml; a resume with other settings is refused, naming each one', async () => {
      const cfg = fs.readFileSync(path.join(run, 'config.yaml'), 'utf8');
      expect(cfg).to.match(/^task: squad$/m).and.match(/^lr: 0\.02$/m).and.match(/^seed: 5$/m).and.match(/^layers: 2$/m).and.not.match(/^(overwrite|resume|save-every|keep-last):/m);
      const r = await capture(args(roberta, run, '--lr', '3e-2', '--seed', '6', '--doc-stride', '12', '--dtype', 'bf16', '--resume', 'auto'));
      expect(r.code).to.equal(1);
      expect(r.err).to.match(/cannot resume from .*R \(its config\.yaml\): doc-stride was 16, now 12; .*lr was 0\.02, now 0\.03; seed was 5, now 6; dtype was "f32", now "bf16"/);
      // without config.yaml, the checkpoint's own record: here the resolved warmup and step count
      const saved = path.join(tmp, 'config.saved');
      fs.renameSync(path.join(run, 'config.yaml'), saved);
      try {
        const s = await capture(args(roberta, run, '--max-steps', '20', '--resume', 'auto'));
        expect(s.code).to.equal(1);
        expect(s.err).to.match(/cannot resume from .*step-000024: max-steps was null, now 20; total-steps was 27, now 20/);
        const h = await capture(args(roberta, run, '--gate-init', 'random', '--resume', 'auto'));
        expect(h.err).to.match(/cannot resume from .*step-000024: gate-init was "zero", now "random"/);
      } finally {
        fs.renameSync(saved, path.join(run, 'config.yaml'));
      }
    });

    it('--resume auto removes the leftovers of killed runs', async () => {
      fs.mkdirSync(path.join(run, 'step-000028.tmp-99999'));
      fs.writeFileSync(path.join(run, '.adapter.safetensors.99999.0badf00d.tmp'), 'x');
      const whole = adapterOf(run);
      const r = await capture(args(roberta, run, '--save-every', '4', '--resume', 'auto'));
      expect(r.code, r.err).to.equal(0);
      expect(r.err).to.match(/removed what killed runs left in .*: \.adapter\.safetensors\.99999\.0badf00d\.tmp, step-000028\.tmp-99999/);
      expect(r.err).to.match(/resuming from .*step-000024 at step 24\/27/);
      expect(fs.readdirSync(run).filter((n) => n.includes('tmp'))).to.deep.equal([]);
      expect(adapterOf(run).equals(whole)).to.equal(true);
      expect(metricsOf(run).map((s) => s.step)).to.deep.equal(Array.from({ length: 27 }, (_, i) => i + 1));
    });

    it('--resume DIR names a checkpoint; --resume auto in an empty folder starts from scratch', async () => {
      const whole = adapterOf(run);
      const r = await capture(args(roberta, run, '--resume', path.join(run, 'step-000020')));
      expect(r.code, r.err).to.equal(0);
      expect(r.err).to.match(/resuming from .*step-000020 at step 20\/27/);
      expect(adapterOf(run).equals(whole)).to.equal(true);
      const fresh = path.join(tmp, 'fresh');
      const f = await capture(args(roberta, fresh, '--max-steps', '3', '--resume', 'auto'));
      expect(f.code, f.err).to.equal(0);
      expect(f.err).to.match(/no checkpoint in .*fresh: starting from scratch/);
      expect(metricsOf(fresh).map((s) => s.step)).to.deep.equal([1, 2, 3]);
    });

    it('--overwrite clears the old run (eval.json too) and keeps other files', async () => {
      fs.writeFileSync(path.join(run, 'eval.json'), '{}\n');
      fs.writeFileSync(path.join(run, 'notes.txt'), 'mine\n');
      const r = await capture(args(roberta, run, '--max-steps', '6', '--save-every', '3', '--keep-last', '5', '--overwrite'));
      expect(r.code, r.err).to.equal(0);
      expect(stepDirs(run)).to.deep.equal(['step-000003', 'step-000006']);
      expect(metricsOf(run).map((s) => s.step)).to.deep.equal([1, 2, 3, 4, 5, 6]);
      expect(fs.existsSync(path.join(run, 'eval.json'))).to.equal(false);
      expect(fs.readFileSync(path.join(run, 'notes.txt'), 'utf8')).to.equal('mine\n');
      expect(fs.readFileSync(path.join(run, 'config.yaml'), 'utf8')).to.match(/^max-steps: 6$/m);
    });

    it('a failed resume leaves no folder it made behind', async () => {
      const out = path.join(tmp, 'none', 'deeper');
      const r = await capture(args(roberta, out, '--resume', path.join(run, 'step-000099')));
      expect(r.code).to.equal(1);
      expect(r.err).to.match(/step-000099 is not a checkpoint folder: it has no state\.json/);
      expect(fs.existsSync(path.join(tmp, 'none'))).to.equal(false);
    });
  });
});
