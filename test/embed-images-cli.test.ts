// llama-adapter embed-images: the features file (SPEC §7) through the real CLI process, read back
// with lib/data/features.ts; bad images exit 1 naming the file and leave no output behind.
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';
import { openFeatures } from '../lib/data/features';
import { withMatmulPrecision } from './util/precision';
import { ImageEncoder } from '../lib/encoder/encoder';
import { dataPath, repoRoot } from './util/paths';

const cli = path.join(repoRoot, 'dist', 'lib', 'cli', 'main.js');
const encoderDir = path.join(repoRoot, 'test', 'golden', 'encoders', 'clip-f16');

function runCli(args: string[], cwd: string) {
  const r = spawnSync(process.execPath, [cli, 'embed-images', ...args], { cwd, encoding: 'utf8' });
  return { code: r.status, stderr: r.stderr, stdout: r.stdout };
}

describe('embed-images CLI', () => {
  let tmp: string;
  const fm = (i: number) => dataPath('fashion-mnist', 'images', 'test', `0000${i}.png`);
  before(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'la-embed-cli-'));
    fs.mkdirSync(path.join(tmp, 'img'));
    const bird = fs.readFileSync(dataPath('vision', 'bird.rgb'));
    await sharp(bird, { raw: { width: 224, height: 224, channels: 3 } }).jpeg().toFile(path.join(tmp, 'img', 'bird.jpg'));
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('writes one tensor per image named by the path as given, equal to ImageEncoder.embed', async () => {
    fs.writeFileSync(path.join(tmp, 'list.txt'), `img/bird.jpg\r\n\n${fm(1)}\n${fm(0)}\n`);
    const r = runCli(['--encoder', encoderDir, '--device', 'cpu', '--batch-size', '2', '--out', 'f.safetensors', fm(0), '--images-from', 'list.txt'], tmp);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stderr).to.match(/1 repeated path\(s\) embedded once/);
    expect(r.stderr).to.match(/wrote f\.safetensors \(3 images/);
    const f = openFeatures(path.join(tmp, 'f.safetensors'));
    try {
      expect(f.keys).to.deep.equal([fm(0), 'img/bird.jpg', fm(1)]);
      expect([f.M, f.D]).to.deep.equal([1, 6]);
      expect(f.metadata.feature_layers).to.equal('-1');
      const enc = await ImageEncoder.load(encoderDir, { device: 'cpu' });
      const want = await enc.embed([fm(0), path.join(tmp, 'img', 'bird.jpg'), fm(1)], { batchSize: 2 }); // the CLI's batches
      enc.dispose();
      f.keys.forEach((k, i) => expect([...f.get(k)]).to.deep.equal([...want[i]]));
    } finally {
      f.close();
    }
    // two feature layers: [2, D] per image
    const r2 = runCli(['--encoder', encoderDir, '--device', 'cpu', '--feature-layers', '1,-1', '--out', 'g.safetensors', fm(2)], tmp);
    expect(r2.code, r2.stderr).to.equal(0);
    const g = openFeatures(path.join(tmp, 'g.safetensors'));
    expect([g.M, g.D, g.keys.length]).to.deep.equal([2, 6, 1]);
    g.close();
  });

  it('--dtype bf16 --matmul-precision medium: the library\'s bf16 products, not the f32 ones', async () => {
    const r = runCli(['--encoder', encoderDir, '--device', 'cpu', '--dtype', 'bf16', '--matmul-precision', 'medium', '--out', 'm.safetensors', fm(0), fm(1)], tmp);
    expect(r.code, r.stderr).to.equal(0);
    const f = openFeatures(path.join(tmp, 'm.safetensors'));
    const enc = await ImageEncoder.load(encoderDir, { device: 'cpu', dtype: 'bf16' });
    try {
      const highest = await enc.embed([fm(0), fm(1)]);
      const medium = await withMatmulPrecision('medium', () => enc.embed([fm(0), fm(1)]));
      f.keys.forEach((k, i) => expect([...f.get(k)], k).to.deep.equal([...medium[i]]));
      expect([...medium[0]]).to.not.deep.equal([...highest[0]]); // the precision reached the products
    } finally {
      enc.dispose();
      f.close();
    }
  });

  it('a missing or truncated image exits 1 naming it, and writes nothing', () => {
    const full = fs.readFileSync(fm(3));
    fs.writeFileSync(path.join(tmp, 'cut.png'), full.subarray(0, full.length - 40));
    for (const [img, re] of [
      ['nope.png', /nope\.png: no such image file/],
      ['cut.png', /cut\.png: cannot decode the PNG image/],
      [dataPath('vision', 'cat.bmp'), /cat\.bmp: (not a readable image|unsupported image format)/],
    ] as [string, RegExp][]) {
      const r = runCli(['--encoder', encoderDir, '--device', 'cpu', '--batch-size', '1', '--out', 'bad.safetensors', fm(0), img], tmp);
      expect(r.code, r.stderr).to.equal(1);
      expect(r.stderr).to.match(re);
      expect(fs.readdirSync(tmp).filter((f) => f.includes('bad.safetensors'))).to.deep.equal([]);
    }
  });

  it('bad flags exit 2 with the usage; --help documents every flag', () => {
    let r = runCli(['--encoder', encoderDir, '--out', 'x.safetensors', '--feature-layers', 'last', fm(0)], tmp);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.match(/--feature-layers must be comma-separated/);
    r = runCli(['--encoder', encoderDir, '--out', 'x.safetensors'], tmp);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.match(/no images/);
    r = runCli(['--encoder', encoderDir, '--device', 'cpu', '--out', 'x.safetensors', '--feature-layers', '5', fm(0)], tmp);
    expect(r.code).to.equal(1);
    expect(r.stderr).to.match(/feature layer 5 is outside 1\.\.2/);
    r = runCli(['--encoder', encoderDir, '--out', 'x.safetensors', '--matmul-precision', 'low', fm(0)], tmp);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.match(/--matmul-precision must be highest or medium, got 'low'/);
    r = runCli(['--help'], tmp);
    expect(r.code).to.equal(0);
    for (const flag of ['--encoder', '--out', '--images-from', '--feature-layers', '--batch-size', '--device', '--dtype', '--matmul-precision']) expect(r.stdout).to.include(flag);
  });
});
