// The CLIP/ViT loaders (SPEC §7): the tiny random folders of test/golden/encoders (written by
// tools/reference/encoder_reference.py) in every layout and dtype, and bad folders whose errors
// name the tensor or the key.
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native } from '../lib/native';
import { LoadArena } from '../lib/model/weights';
import { readSafetensorsHeader, writeSafetensors, SafetensorsTensor } from '../lib/model/safetensors';
import { loadEncoderWeights, readEncoderConfig, encoderTensors } from '../lib/encoder/config';
import { repoRoot } from './util/paths';

const goldenDir = path.join(repoRoot, 'test', 'golden', 'encoders');
const folder = (name: string) => path.join(goldenDir, name);

/** Loads `dir`, returns the result or the error message; everything made is released. */
function tryLoad(dir: string): string | undefined {
  const arena = new LoadArena();
  try {
    loadEncoderWeights(dir, arena);
    return undefined;
  } catch (e) {
    return (e as Error).message;
  } finally {
    arena.release();
  }
}

/** The F32 tensors of a single-file folder, as writeSafetensors input. */
function f32Tensors(file: string): SafetensorsTensor[] {
  const h = readSafetensorsHeader(file);
  const bytes = fs.readFileSync(file);
  return [...h.tensors].map(([name, e]) => {
    const b = bytes.subarray(e.byteOffset, e.byteOffset + e.byteLength);
    return { name, dtype: 'F32' as const, shape: e.shape, data: new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length)) };
  });
}

describe('image encoder loaders', () => {
  let tmp: string;
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'la-encoder-'));
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('reads the config of each layout', () => {
    const vit = readEncoderConfig(folder('vit-f32'));
    expect(vit).to.deep.include({ family: 'vit', architecture: 'ViTForImageClassification', dim: 16, ffnDim: 24, nHeads: 2, nLayers: 2, imageSize: 8, patchSize: 4, channels: 3, eps: 1e-6, act: 'gelu', numLabels: 5 });
    expect(vit.labels).to.deep.equal(['class A', 'class B', 'class C', 'class D', 'class E']);
    expect(readEncoderConfig(folder('vit-bf16'))).to.deep.include({ architecture: 'ViTModel' }).and.not.have.property('numLabels');
    // CLIPModel: the vision tower's settings come from vision_config, projection_dim from the top
    expect(readEncoderConfig(folder('clip-f32'))).to.deep.include({ family: 'clip', architecture: 'CLIPModel', dim: 16, eps: 1e-5, act: 'quick_gelu', projectionDim: 6 });
    expect(readEncoderConfig(folder('clip-f16'))).to.deep.include({ architecture: 'CLIPVisionModelWithProjection', projectionDim: 6 });
  });

  for (const name of ['vit-f32', 'vit-bf16', 'clip-f32', 'clip-f16'])
    it(`loads ${name}: every tensor in its shape, f32 values as the file's (widened exactly)`, async () => {
      const arena = new LoadArena();
      try {
        const { config, weights } = loadEncoderWeights(folder(name), arena);
        expect(weights.layers.length).to.equal(2);
        expect(weights.patchW.shape).to.deep.equal([16, 48]);
        expect(weights.pos.shape).to.deep.equal([5, 16]);
        expect(weights.cls.shape).to.deep.equal([16]);
        expect(!!weights.patchB).to.equal(config.family === 'vit');
        expect(!!weights.preNorm).to.equal(config.family === 'clip');
        expect(weights.projection?.shape).to.deep.equal(config.family === 'clip' ? [6, 16] : undefined);
        expect(weights.classifier?.w.shape).to.deep.equal(name === 'vit-f32' ? [5, 16] : undefined);
        expect(weights.layers[1].w1.shape).to.deep.equal([24, 16]);
        expect(weights.layers[1].w2.shape).to.deep.equal([16, 24]);
        for (const t of encoderTensors(weights)) expect(t.dtype).to.equal('f32');
        await native.synchronize();
        // the patch weight against the bytes of the file, decoded here
        const files = fs.readdirSync(folder(name)).filter((f) => f.endsWith('.safetensors'));
        const key = config.family === 'clip' ? 'vision_model.embeddings.patch_embedding.weight' : `${name === 'vit-f32' ? 'vit.' : ''}embeddings.patch_embeddings.projection.weight`;
        const file = files.map((f) => path.join(folder(name), f)).find((f) => readSafetensorsHeader(f, { skipUnsupported: true }).tensors.has(key))!;
        const e = readSafetensorsHeader(file, { skipUnsupported: true }).tensors.get(key)!;
        const raw = fs.readFileSync(file).subarray(e.byteOffset, e.byteOffset + e.byteLength);
        const want = new Float32Array(16 * 48);
        for (let i = 0; i < want.length; i++)
          want[i] = e.dtype === 'F32' ? raw.readFloatLE(i * 4) : e.dtype === 'BF16' ? new Float32Array(new Uint32Array([raw.readUInt16LE(i * 2) << 16]).buffer)[0] : f16(raw.readUInt16LE(i * 2));
        expect([...(await weights.patchW.read())]).to.deep.equal([...want]);
      } finally {
        arena.release();
      }
    });

  it('bf16 storage keeps the big matrices bf16 and the rest f32', () => {
    const arena = new LoadArena();
    try {
      const { weights } = loadEncoderWeights(folder('clip-f32'), arena, { dtype: 'bf16' });
      expect([weights.patchW.dtype, weights.layers[0].wq.dtype, weights.layers[0].w2.dtype, weights.projection!.dtype]).to.deep.equal(['bf16', 'bf16', 'bf16', 'bf16']);
      expect([weights.layers[0].bq.dtype, weights.layers[0].ln1w.dtype, weights.pos.dtype, weights.cls.dtype]).to.deep.equal(['f32', 'f32', 'f32', 'f32']);
    } finally {
      arena.release();
    }
  });

  function copyFolder(name: string, edit: (dir: string) => void): string {
    const dir = fs.mkdtempSync(path.join(tmp, name + '-'));
    for (const f of fs.readdirSync(folder(name))) fs.copyFileSync(path.join(folder(name), f), path.join(dir, f));
    edit(dir);
    return dir;
  }
  const editConfig = (dir: string, f: (c: Record<string, any>) => void) => {
    const p = path.join(dir, 'config.json');
    const c = JSON.parse(fs.readFileSync(p, 'utf8'));
    f(c);
    fs.writeFileSync(p, JSON.stringify(c));
  };
  const editTensors = (dir: string, f: (t: SafetensorsTensor[]) => SafetensorsTensor[]) => {
    const p = path.join(dir, 'model.safetensors');
    writeSafetensors(p, f(f32Tensors(p)));
  };

  it('a missing tensor, a wrong shape or a mismatched config names the tensor', () => {
    let dir = copyFolder('vit-f32', (d) => editTensors(d, (ts) => ts.filter((t) => t.name !== 'vit.encoder.layer.1.attention.attention.key.bias')));
    expect(tryLoad(dir)).to.match(/model\.safetensors: missing tensor vit\.encoder\.layer\.1\.attention\.attention\.key\.bias$/);
    dir = copyFolder('vit-f32', (d) =>
      editTensors(d, (ts) => ts.map((t) => (t.name === 'vit.encoder.layer.0.intermediate.dense.weight' ? { ...t, shape: [16, 24] } : t))),
    );
    expect(tryLoad(dir)).to.match(/tensor vit\.encoder\.layer\.0\.intermediate\.dense\.weight has shape \[16, 24\] but config\.json implies \[24, 16\] \(intermediate_size, hidden_size\)/);
    dir = copyFolder('clip-f16', (d) => editConfig(d, (c) => (c.intermediate_size = 32)));
    expect(tryLoad(dir)).to.match(/tensor vision_model\.encoder\.layers\.0\.mlp\.fc1\.weight has shape \[24, 16\] but config\.json implies \[32, 16\]/);
    dir = copyFolder('clip-f32', (d) => editConfig(d, (c) => (c.vision_config.image_size = 12)));
    expect(tryLoad(dir)).to.match(/position_embedding\.weight has shape \[5, 16\] but config\.json implies \[10, 16\]/);
    dir = copyFolder('clip-f32', (d) => editConfig(d, (c) => (c.projection_dim = 7)));
    expect(tryLoad(dir)).to.match(/visual_projection\.weight has shape \[6, 16\] but config\.json implies \[7, 16\] \(projection_dim, hidden_size\)/);
    dir = copyFolder('vit-f32', (d) => editConfig(d, (c) => (c.num_hidden_layers = 1e9)));
    expect(tryLoad(dir)).to.match(/missing tensor vit\.encoder\.layer\.2\.layernorm_before\.weight/);
    dir = copyFolder('vit-f32', (d) => editConfig(d, (c) => { c.num_labels = 3e9; delete c.id2label; }));
    expect(tryLoad(dir)).to.match(/classifier\.weight has shape \[5, 16\] but config\.json implies \[3000000000, 16\]/);
  });

  it('bad configs and folders are clear errors', () => {
    const cases: [string, (d: string) => void, RegExp][] = [
      ['vit-f32', (d) => editConfig(d, (c) => (c.hidden_act = 'gelu_new')), /hidden_act "gelu_new" is not supported/],
      ['vit-f32', (d) => editConfig(d, (c) => { c.architectures = ['BertModel']; c.model_type = 'bert'; }), /not an image encoder this project loads/],
      ['vit-f32', (d) => editConfig(d, (c) => (c.num_attention_heads = 3)), /hidden_size 16 is not a multiple of num_attention_heads 3/],
      ['vit-f32', (d) => editConfig(d, (c) => (c.patch_size = 3)), /image_size 8 is not a multiple of patch_size 3/],
      ['clip-f32', (d) => editConfig(d, (c) => (c.vision_config.hidden_size = -4)), /key "vision_config\.hidden_size" must be a positive integer, got -4/],
      ['vit-f32', (d) => editConfig(d, (c) => (c.num_labels = 4)), /id2label has 5 labels but num_labels is 4/],
      ['vit-f32', (d) => fs.rmSync(path.join(d, 'model.safetensors')), /has neither model\.safetensors nor model\.safetensors\.index\.json/],
      ['clip-f32', (d) => fs.rmSync(path.join(d, 'model-00002-of-00002.safetensors')), /missing shard file model-00002-of-00002\.safetensors/],
      ['vit-f32', (d) => fs.truncateSync(path.join(d, 'model.safetensors'), 5000), /truncated or corrupt file|truncated or not a safetensors file/],
      ['vit-f32', (d) => fs.writeFileSync(path.join(d, 'config.json'), '{'), /config\.json is not valid JSON/],
    ];
    for (const [name, edit, re] of cases) expect(tryLoad(copyFolder(name, edit))).to.match(re);
  });
});

/** IEEE half -> float */
function f16(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
