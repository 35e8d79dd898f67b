// train / eval --task classify and the classify command end to end on a tiny random ViT and a small
// separable image set: outputs, metrics, the loss going down, bit-identical resume, a folder's own
// classifier, and a clear error (exit 1 or 2, no adapter file) for each kind of bad input.
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { readSafetensorsHeader } from '../lib/model/safetensors';
import { writeRandomViT } from '../tools/make-random-vit';
import { repoRoot } from './util/paths';
import { Rng } from './util/reference';

const cli = path.join(repoRoot, 'dist', 'lib', 'cli', 'main.js');
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
const vit = { image: 8, patch: 4, hidden: 16, layers: 2, heads: 2, mlp: 32, seed: 1 };

/** An 8x8 grey image, light or dark, with noise. */
async function writeGrey(file: string, light: boolean, rng: Rng): Promise<void> {
  const px = Buffer.alloc(64);
  for (let i = 0; i < 64; i++) px[i] = Math.max(0, Math.min(255, Math.round((light ? 170 : 70) + 40 * rng.normal())));
  fs.mkdirSync(path.dirname(file), { recursive: true });
  await sharp(px, { raw: { width: 8, height: 8, channels: 1 } }).png().toFile(file);
}

function adapterMeta(file: string) {
  return readSafetensorsHeader(file).metadata;
}

describe('train / eval --task classify and classify (tiny random ViT)', function () {
  this.timeout(120_000);
  let dir: string;
  let enc: string;
  let tree: string;
  const small = ['--task', 'classify', '--batch-size', '8', '--lr', '2e-2', '--warmup-steps', '2', '--seed', '3'];

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-cls-cli-'));
    enc = writeRandomViT(path.join(dir, 'vit'), vit);
    tree = path.join(dir, 'tree');
    const rng = new Rng(7);
    for (let i = 0; i < 8; i++) {
      await writeGrey(path.join(tree, 'light', `l${i}.png`), true, rng);
      await writeGrey(path.join(tree, 'dark', `d${i}.png`), false, rng);
    }
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  function steps(out: string): { step: number; loss: number; accuracy: number; images: number }[] {
    return fs
      .readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
      .filter((l) => 'loss' in l);
  }

  it('trains zero-init prompts + head: adapter file, metrics per step, the loss going down', () => {
    const out = path.join(dir, 'run');
    const r = run('train', ...small, '--encoder', enc, '--data', tree, '--out', out, '--adapter-layers', '1', '--adapter-len', '4', '--max-steps', '24');
    expect(r.status, r.stderr).to.equal(0);
    expect(r.stdout.trim()).to.equal(path.join(out, 'adapter.safetensors'));
    expect(r.stderr).to.match(/step 24\/24 \| epoch 12\.00 \| loss \d+\.\d+ \| norm \d+\.\d+ \| lr [\d.e+-]+ \| \d+ ms \| \d+ img\/s/);
    expect(r.stderr).to.match(/prompts: top 1 layers, 4 prompts, zero gates; 2 classes, 16 training and 0 validation images/);
    const s = steps(out);
    expect(s.map((l) => l.step)).to.deep.equal(Array.from({ length: 24 }, (_, i) => i + 1));
    expect(s[0].loss).to.be.closeTo(Math.log(2), 1e-6); // a zero head: uniform over the two classes
    const late = s.slice(-4).reduce((a, l) => a + l.loss, 0) / 4;
    expect(late).to.be.below(0.5 * Math.log(2));
    const m = adapterMeta(path.join(out, 'adapter.safetensors'));
    expect(JSON.parse(m.labels)).to.deep.equal(['dark', 'light']);
    expect(m).to.include({ task: 'classify', hidden_size: '16', num_hidden_layers: '2', num_attention_heads: '2', patch_size: '4', image_size: '8', adapter_layers: '1', adapter_len: '4', gate_init: 'zero' });
    const h = readSafetensorsHeader(path.join(out, 'adapter.safetensors'));
    expect(h.tensors.get('adapter_query.weight')!.shape).to.deep.equal([4, 16]);
    expect(h.tensors.get('layers.1.attention.gate')!.shape).to.deep.equal([1, 2, 1, 1]);
    expect(h.tensors.get('head.weight')!.shape).to.deep.equal([2, 16]);
    expect(fs.readFileSync(path.join(out, 'config.yaml'), 'utf8')).to.match(/^task: classify$/m);
  });

  it('eval --task classify prints accuracy, loss and examples; classify prints the top classes', () => {
    const adapter = path.join(dir, 'run', 'adapter.safetensors');
    const r = run('eval', '--task', 'classify', '--encoder', enc, '--adapter', adapter, '--data', tree);
    expect(r.status, r.stderr).to.equal(0);
    const e = JSON.parse(r.stdout);
    expect(Object.keys(e)).to.deep.equal(['accuracy', 'loss', 'examples']);
    expect(e.examples).to.equal(16);
    expect(e.accuracy).to.be.at.least(0.9);
    expect(e.loss).to.be.below(0.5 * Math.log(2));
    const imgs = [path.join(tree, 'light', 'l0.png'), path.join(tree, 'dark', 'd1.png')];
    const c = run('classify', '--encoder', enc, '--adapter', adapter, '--top-k', '2', ...imgs);
    expect(c.status, c.stderr).to.equal(0);
    const lines = c.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => l.image)).to.deep.equal(imgs);
    expect(lines[0].top.map((t: { label: string }) => t.label)).to.deep.equal(['light', 'dark']);
    expect(lines[1].top[0]).to.include({ index: 0, label: 'dark' });
    for (const l of lines) expect(l.top[0].logit).to.be.above(l.top[1].logit);
    const one = JSON.parse(run('classify', '--encoder', enc, '--adapter', adapter, '--top-k', '1', imgs[0]).stdout);
    expect(one.top).to.have.length(1);
  });

  it('--head-only trains the linear probe (no prompts), --gate-init random starts from N(0, 1) gates', () => {
    const out = path.join(dir, 'probe');
    const r = run('train', ...small, '--encoder', enc, '--data', tree, '--out', out, '--head-only', '--max-steps', '24');
    expect(r.status, r.stderr).to.equal(0);
    expect(r.stderr).to.match(/head only \(linear probe\)/);
    const h = readSafetensorsHeader(path.join(out, 'adapter.safetensors'));
    expect([...h.tensors.keys()].sort()).to.deep.equal(['head.bias', 'head.weight']);
    const s = steps(out);
    expect(s[s.length - 1].loss).to.be.below(s[0].loss);
    const rnd = path.join(dir, 'random');
    const q = run('train', ...small, '--encoder', enc, '--data', tree, '--out', rnd, '--adapter-layers', '1', '--adapter-len', '4', '--gate-init', 'random', '--max-steps', '2');
    expect(q.status, q.stderr).to.equal(0);
    expect(adapterMeta(path.join(rnd, 'adapter.safetensors')).gate_init).to.equal('random');
  });

  it('--val-split holds images out and --eval-every scores them (loss and accuracy)', () => {
    const out = path.join(dir, 'val');
    const r = run('train', ...small, '--encoder', enc, '--data', tree, '--out', out, '--head-only', '--max-steps', '4', '--val-split', '0.25', '--eval-every', '2');
    expect(r.status, r.stderr).to.equal(0);
    expect(r.stderr).to.match(/12 training and 4 validation images/);
    expect(r.stderr).to.match(/eval at step 2: val loss \d+\.\d+, accuracy \d+\.\d+% over 4 images/);
    const evals = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((l) => 'val_loss' in l);
    expect(evals.map((l) => [l.step, l.val_examples])).to.deep.equal([[2, 4], [4, 4]]);
    for (const l of evals) expect(l.val_accuracy).to.be.within(0, 1);
  });

  it('a YAML --config with task: classify, and --init-adapter from a trained adapter (checked against the run)', () => {
    const cfg = path.join(dir, 'run.yaml');
    fs.writeFileSync(cfg, `task: classify\nencoder: ${enc}\ndata: ${tree}\nadapter-layers: 1\nadapter-len: 4\nbatch-size: 8\nmax-steps: 2\n`);
    const out = path.join(dir, 'init');
    const r = run('train', '--config', cfg, '--out', out, '--init-adapter', path.join(dir, 'run', 'adapter.safetensors'));
    expect(r.status, r.stderr).to.equal(0);
    // starting from the trained adapter: the first step's loss is already below the zero head's ln 2
    expect(steps(out)[0].loss).to.be.below(0.5 * Math.log(2));
    // a fresh folder: reusing `out` would be refused as a folder holding a run (test/reliability.test.ts)
    const bad = run('train', '--config', cfg, '--out', path.join(dir, 'init-bad'), '--adapter-len', '5', '--init-adapter', path.join(dir, 'run', 'adapter.safetensors'));
    expect(bad.status).to.equal(1);
    expect(bad.stderr).to.match(/--init-adapter .* has 1 adapted layers, 4 prompts and labels \["dark","light"\]; the run asks for 1, 5/);
    // the LLaMA trainer's run-folder rules hold for --task classify too
    const again = run('train', '--config', cfg, '--out', out);
    expect(again.status).to.equal(1);
    expect(again.stderr).to.match(/--out .*init already holds a run \(.*config\.yaml.*\): continue it with --resume auto, or pass --overwrite/);
    const t0 = Date.now();
    const proc = run('train', '--config', cfg, '--out', '/proc/la-classify/run');
    expect(proc.status).to.equal(1);
    expect(proc.stderr).to.match(/\/proc/);
    expect(Date.now() - t0).to.be.below(20000);
    expect(fs.existsSync(path.join(dir, 'init-bad'))).to.equal(false); // the failed start left no folder
  });

  it('a CLIP vision tower (F32 and F16 folders): the head sits on post_layernorm(h[cls]), before the projection', () => {
    for (const name of ['clip-f32', 'clip-f16']) {
      const clip = path.join(repoRoot, 'test', 'golden', 'encoders', name);
      const out = path.join(dir, name);
      const r = run('train', ...small, '--encoder', clip, '--data', tree, '--out', out, '--adapter-layers', '1', '--adapter-len', '2', '--max-steps', '4');
      expect(r.status, r.stderr).to.equal(0);
      const h = readSafetensorsHeader(path.join(out, 'adapter.safetensors'));
      expect(h.metadata).to.include({ encoder_family: 'clip', hidden_size: '16', num_hidden_layers: '2' });
      expect(h.tensors.get('head.weight')!.shape).to.deep.equal([2, 16]); // hidden 16, not projection_dim 6
      const e = run('eval', '--task', 'classify', '--encoder', clip, '--adapter', path.join(out, 'adapter.safetensors'), '--data', tree);
      expect(e.status, e.stderr).to.equal(0);
      expect(JSON.parse(e.stdout).examples).to.equal(16);
    }
  });

  it('--resume continues bit for bit', () => {
    const out = path.join(dir, 'resume');
    const args = ['train', ...small, '--encoder', enc, '--data', tree, '--out', out, '--adapter-layers', '1', '--adapter-len', '4', '--max-steps', '6', '--save-every', '3'];
    expect(run(...args).status).to.equal(0);
    const whole = fs.readFileSync(path.join(out, 'adapter.safetensors'));
    fs.rmSync(path.join(out, 'adapter.safetensors'));
    const r = run(...args, '--resume', path.join(out, 'step-000003'));
    expect(r.status, r.stderr).to.equal(0);
    expect(r.stderr).to.match(/resuming from .*step-000003 at step 3\/6/);
    expect(fs.readFileSync(path.join(out, 'adapter.safetensors')).equals(whole)).to.equal(true);
  });

  it("classify without --adapter uses a ViTForImageClassification folder's own classifier and id2label", () => {
    const withHead = writeRandomViT(path.join(dir, 'vit-cls'), { ...vit, labels: ['sky', 'sea', 'sand'] });
    const img = path.join(tree, 'light', 'l1.png');
    const c = run('classify', '--encoder', withHead, '--top-k', '3', img);
    expect(c.status, c.stderr).to.equal(0);
    const line = JSON.parse(c.stdout);
    expect(line.top.map((t: { label: string }) => t.label).sort()).to.deep.equal(['sand', 'sea', 'sky']);
    expect(line.top[0].logit).to.be.at.least(line.top[1].logit);
    const none = run('classify', '--encoder', enc, img);
    expect(none.status).to.equal(1);
    expect(none.stderr).to.include(`${enc} has no classifier`).and.match(/give --adapter/);
    const ev = run('eval', '--task', 'classify', '--encoder', enc, '--data', tree);
    expect(ev.status).to.equal(1);
    expect(ev.stderr).to.match(/has no classifier/);
  });

  it('bad inputs are clear errors and leave no adapter file', async () => {
    const adapter = path.join(dir, 'run', 'adapter.safetensors');
    // a label the head does not know
    const other = path.join(dir, 'other');
    fs.cpSync(tree, other, { recursive: true });
    fs.cpSync(path.join(tree, 'light'), path.join(other, 'left'), { recursive: true });
    const u = run('eval', '--task', 'classify', '--encoder', enc, '--adapter', adapter, '--data', other);
    expect(u.status).to.equal(1);
    expect(u.stderr).to.match(/other\/left: unknown label 'left' \(the head's labels are 'dark', 'light'\)/);
    // an empty class folder
    const empty = path.join(dir, 'empty');
    fs.cpSync(tree, empty, { recursive: true });
    fs.mkdirSync(path.join(empty, 'nothing'));
    const e = run('train', ...small, '--encoder', enc, '--data', empty, '--out', path.join(dir, 'e-out'), '--max-steps', '1');
    expect(e.status).to.equal(1);
    expect(e.stderr).to.match(/empty\/nothing: the class folder 'nothing' holds no image/);
    // a file that is not an image
    const bad = path.join(dir, 'bad');
    fs.cpSync(tree, bad, { recursive: true });
    fs.writeFileSync(path.join(bad, 'light', 'notes.png'), 'not a png');
    const bOut = path.join(dir, 'b-out');
    const b = run('train', ...small, '--encoder', enc, '--data', bad, '--out', bOut, '--max-steps', '1');
    expect(b.status).to.equal(1);
    expect(b.stderr).to.include(path.join(bad, 'light', 'notes.png')).and.match(/not a readable image/);
    expect(fs.existsSync(path.join(bOut, 'adapter.safetensors'))).to.equal(false);
    const c = run('classify', '--encoder', enc, '--adapter', adapter, path.join(bad, 'light', 'notes.png'));
    expect(c.status).to.equal(1);
    expect(c.stderr).to.match(/notes\.png: not a readable image/);
    const gone = run('classify', '--encoder', enc, '--adapter', adapter, path.join(dir, 'missing.png'));
    expect(gone.status).to.equal(1);
    expect(gone.stderr).to.include(path.join(dir, 'missing.png')).and.match(/no such image file/);
    expect(run('classify', '--encoder', path.join(dir, 'no-encoder'), path.join(tree, 'light', 'l0.png')).stderr).to.match(/no-encoder does not exist/);
    // an adapter for another encoder
    const wide = writeRandomViT(path.join(dir, 'vit-wide'), { ...vit, hidden: 32, heads: 4 });
    const w = run('classify', '--encoder', wide, '--adapter', adapter, path.join(tree, 'light', 'l0.png'));
    expect(w.status).to.equal(1);
    expect(w.stderr).to.match(/was trained for another encoder: hidden_size 16 in the adapter, 32 in the encoder; num_attention_heads 2 in the adapter, 4 in the encoder/);
    // flags of the other task, a missing encoder, no image
    expect(run('train', ...small, '--encoder', enc, '--data', tree, '--out', bOut, '--tokenizer', 'x').stderr).to.match(/--tokenizer does not apply to --task classify/);
    const m = run('train', '--task', 'classify', '--data', tree, '--out', bOut);
    expect(m.status).to.equal(2);
    expect(m.stderr).to.match(/--encoder is required with --task classify/);
    const n = run('classify', '--encoder', enc);
    expect(n.status).to.equal(2);
    expect(n.stderr).to.match(/no image given/);
    expect(run('train', '--task', 'classify', '--encoder', enc, '--data', tree, '--out', bOut, '--head-only', '--gate-init', 'random').stderr).to.match(
      /--head-only trains no prompts or gates/,
    );
  });
});
