// Writes a Hugging Face ViT folder (config.json, preprocessor_config.json, model.safetensors) with
// seeded random weights: the frozen encoder of the image-classification demo (no pretrained ViT can
// be downloaded here) and of the tests. Initialisation: every Linear and the patch Conv2d as
// PyTorch's default (weight and bias uniform in ±1/sqrt(fan_in)), LayerNorms w = 1, b = 0, the class
// token and position embeddings N(0, 0.02²) (as HF's ViT). The same options give the same bytes.
//
//   node dist/tools/make-random-vit.js OUT_DIR [--image 28] [--patch 4] [--hidden 128] [--layers 4]
//        [--heads 4] [--mlp 512] [--seed 0] [--labels a,b,c (a ViTForImageClassification head)]
import * as fs from 'fs';
import * as path from 'path';
import { parseArgs } from 'util';
import { Random } from '../lib/generate/random';
import { SafetensorsTensor, writeSafetensors } from '../lib/model/safetensors';

export interface RandomViTOptions {
  image: number; // image size (square)
  patch: number;
  hidden: number;
  layers: number;
  heads: number;
  mlp: number; // intermediate size
  seed: number;
  channels?: number; // default 3
  eps?: number; // LayerNorm eps (default 1e-12, as HF's ViT)
  /** with labels: a ViTForImageClassification folder (`vit.` prefix, a random classifier, id2label) */
  labels?: string[];
}

export const demoViT: RandomViTOptions = { image: 28, patch: 4, hidden: 128, layers: 4, heads: 4, mlp: 512, seed: 0 };

/** The folder's tensors in HF ViT layout, in a fixed order (values drawn in that order). */
export function randomViTTensors(o: RandomViTOptions): SafetensorsTensor[] {
  const rng = new Random(o.seed >>> 0);
  const C = o.channels ?? 3;
  const D = o.hidden;
  const grid = o.image / o.patch;
  const uniform = (n: number, fanIn: number) => {
    const a = new Float32Array(n);
    const bound = 1 / Math.sqrt(fanIn);
    for (let i = 0; i < n; i++) a[i] = (2 * rng.next() - 1) * bound;
    return a;
  };
  const normal = (n: number, std: number) => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = std * Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());
    return a;
  };
  const p = o.labels ? 'vit.' : '';
  const t: SafetensorsTensor[] = [];
  const add = (name: string, shape: number[], data: Float32Array) => t.push({ name: p + name, dtype: 'F32', shape, data });
  const linear = (name: string, out: number, inp: number) => {
    add(`${name}.weight`, [out, inp], uniform(out * inp, inp));
    add(`${name}.bias`, [out], uniform(out, inp));
  };
  const layerNorm = (name: string) => {
    add(`${name}.weight`, [D], new Float32Array(D).fill(1));
    add(`${name}.bias`, [D], new Float32Array(D));
  };
  add('embeddings.cls_token', [1, 1, D], normal(D, 0.02));
  add('embeddings.position_embeddings', [1, grid * grid + 1, D], normal((grid * grid + 1) * D, 0.02));
  const fanIn = C * o.patch * o.patch;
  add('embeddings.patch_embeddings.projection.weight', [D, C, o.patch, o.patch], uniform(D * fanIn, fanIn));
  add('embeddings.patch_embeddings.projection.bias', [D], uniform(D, fanIn));
  for (let i = 0; i < o.layers; i++) {
    const l = `encoder.layer.${i}`;
    layerNorm(`${l}.layernorm_before`);
    for (const w of ['query', 'key', 'value']) linear(`${l}.attention.attention.${w}`, D, D);
    linear(`${l}.attention.output.dense`, D, D);
    layerNorm(`${l}.layernorm_after`);
    linear(`${l}.intermediate.dense`, o.mlp, D);
    linear(`${l}.output.dense`, D, o.mlp);
  }
  layerNorm('layernorm');
  if (o.labels) {
    t.push({ name: 'classifier.weight', dtype: 'F32', shape: [o.labels.length, D], data: uniform(o.labels.length * D, D) });
    t.push({ name: 'classifier.bias', dtype: 'F32', shape: [o.labels.length], data: uniform(o.labels.length, D) });
  }
  return t;
}

export function randomViTConfig(o: RandomViTOptions): Record<string, unknown> {
  if (o.image % o.patch !== 0) throw new RangeError(`image size ${o.image} is not a multiple of the patch size ${o.patch}`);
  if (o.hidden % o.heads !== 0) throw new RangeError(`hidden size ${o.hidden} is not a multiple of the heads ${o.heads}`);
  return {
    architectures: [o.labels ? 'ViTForImageClassification' : 'ViTModel'],
    model_type: 'vit',
    hidden_size: o.hidden,
    num_hidden_layers: o.layers,
    num_attention_heads: o.heads,
    intermediate_size: o.mlp,
    hidden_act: 'gelu',
    hidden_dropout_prob: 0,
    attention_probs_dropout_prob: 0,
    initializer_range: 0.02,
    layer_norm_eps: o.eps ?? 1e-12,
    image_size: o.image,
    patch_size: o.patch,
    num_channels: o.channels ?? 3,
    qkv_bias: true,
    ...(o.labels
      ? {
          id2label: Object.fromEntries(o.labels.map((l, i) => [String(i), l])),
          label2id: Object.fromEntries(o.labels.map((l, i) => [l, i])),
        }
      : {}),
    llama_adapter_note: `random weights (seed ${o.seed}) written by tools/make-random-vit.ts, not a pretrained model`,
  };
}

/** Writes the folder (into a temporary folder renamed into place: never half-written). */
export function writeRandomViT(dir: string, o: RandomViTOptions): string {
  const config = randomViTConfig(o);
  const tmp = `${dir.replace(/\/+$/, '')}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  try {
    fs.writeFileSync(path.join(tmp, 'config.json'), JSON.stringify(config, null, 2) + '\n');
    const preprocessor = {
      image_processor_type: 'ViTImageProcessor',
      do_resize: true,
      size: { height: o.image, width: o.image },
      resample: 2,
      do_rescale: true,
      rescale_factor: 1 / 255,
      do_normalize: true,
      image_mean: [0.5, 0.5, 0.5],
      image_std: [0.5, 0.5, 0.5],
    };
    fs.writeFileSync(path.join(tmp, 'preprocessor_config.json'), JSON.stringify(preprocessor, null, 2) + '\n');
    writeSafetensors(path.join(tmp, 'model.safetensors'), randomViTTensors(o), { format: 'pt' });
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(path.dirname(path.resolve(dir)), { recursive: true });
    fs.renameSync(tmp, dir);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  return dir;
}

if (require.main === module) {
  const { values, positionals } = parseArgs({
    options: Object.fromEntries(['image', 'patch', 'hidden', 'layers', 'heads', 'mlp', 'seed', 'labels'].map((k) => [k, { type: 'string' as const }])),
    allowPositionals: true,
  });
  if (positionals.length !== 1) {
    process.stderr.write('usage: node dist/tools/make-random-vit.js OUT_DIR [--image 28] [--patch 4] [--hidden 128] [--layers 4] [--heads 4] [--mlp 512] [--seed 0] [--labels a,b,...]\n');
    process.exit(2);
  }
  const int = (k: keyof RandomViTOptions) => {
    const raw = values[k];
    if (raw === undefined) return demoViT[k] as number;
    const v = Number(raw);
    if (!Number.isInteger(v) || v < (k === 'seed' ? 0 : 1)) {
      process.stderr.write(`--${k} must be an integer >= ${k === 'seed' ? 0 : 1}, got '${raw}'\n`);
      process.exit(2);
    }
    return v;
  };
  const o: RandomViTOptions = {
    image: int('image'),
    patch: int('patch'),
    hidden: int('hidden'),
    layers: int('layers'),
    heads: int('heads'),
    mlp: int('mlp'),
    seed: int('seed'),
    labels: typeof values.labels === 'string' ? values.labels.split(',') : undefined,
  };
  try {
    process.stdout.write(writeRandomViT(positionals[0], o) + '\n');
  } catch (err) {
    process.stderr.write(`make-random-vit: error: ${(err as Error).message}\n`);
    process.exit(1);
  }
}
