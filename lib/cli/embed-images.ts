// llama-adapter embed-images --encoder DIR [--feature-layers -1|1,2,3] [--batch-size B]
//   [--device cuda|cpu] [--dtype f32|bf16] [--matmul-precision highest|medium] --out FEATURES.safetensors (IMAGE... | --images-from FILE)
// -> the SPEC §7 features file: one F32 tensor per image, named by its path exactly as given.
import * as fs from 'fs';
import { ImageEncoder } from '../encoder/encoder';
import { FeaturesWriter } from '../data/features';
import { describeDevice, resolveDevice } from '../device';
import { UsageError, numberFlag, parseFlags, requireString, stringFlag } from './args';
import { applyMatmulPrecision, matmulPrecisionUsage } from './model-flags';

export const usage = `Usage: llama-adapter embed-images --encoder DIR --out FILE [flags] IMAGE...

Writes the global features of each image (SPEC §7) to a safetensors file: one F32 tensor per image,
named by its path exactly as given, of shape [M, D] ([D] when M = 1), M = the number of feature
layers, D = the encoder's feature size (CLIP: projection_dim; ViT: hidden_size). The file appears
only when every image is done. Images: PNG, JPEG or WebP.

  --encoder DIR           Hugging Face CLIP or ViT folder (config.json + safetensors,
                          optional preprocessor_config.json)
  --out FILE              the features file to write
  --images-from FILE      read image paths from FILE, one a line (besides any given as arguments)
  --feature-layers LIST   encoder layers whose [cls] gives a feature: 1-based, negative counts from
                          the end, comma-separated (default -1, the last)
  --batch-size N          images per forward pass (default 32)
  --device cuda|cpu       where the encoder runs (default: cuda when available)
  --dtype f32|bf16        storage of the encoder's matrices (default f32)
${matmulPrecisionUsage(26)}`;

/** "-1" or "1,2,3" -> [-1] or [1, 2, 3] (range checked by the encoder, which knows its depth). */
function parseLayers(raw: string): number[] {
  const parts = raw.split(',').map((p) => p.trim());
  const layers = parts.map(Number);
  if (!parts.length || parts.some((p) => !/^-?\d+$/.test(p)))
    throw new UsageError(`--feature-layers must be comma-separated non-zero integers such as -1 or 1,2,3, got '${raw}'`);
  return layers;
}

/** A progress bar on a terminal; nothing otherwise (the summary line follows either way). */
function progressBar(out: NodeJS.WriteStream) {
  const started = Date.now();
  let open = false;
  return {
    update(done: number, total: number) {
      if (!out.isTTY) return;
      const width = 24;
      const filled = Math.round((width * done) / total);
      const s = (Date.now() - started) / 1000;
      const rate = done / Math.max(s, 1e-3);
      const eta = (total - done) / Math.max(rate, 1e-9);
      out.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} images | ${rate.toFixed(1)} images/s | ETA ${Math.ceil(eta)}s   `);
      open = true;
    },
    end() {
      if (open) out.write('\n');
      open = false;
    },
  };
}

export async function run(argv: string[], out: NodeJS.WritableStream = process.stdout, err: NodeJS.WriteStream = process.stderr): Promise<void> {
  const { values, positionals } = parseFlags(
    argv,
    {
      encoder: { type: 'string' },
      out: { type: 'string' },
      'images-from': { type: 'string' },
      'feature-layers': { type: 'string' },
      'batch-size': { type: 'string' },
      device: { type: 'string' },
      dtype: { type: 'string' },
      'matmul-precision': { type: 'string' },
    },
    usage,
  );
  if (values.help) {
    out.write(usage + '\n');
    return;
  }
  const encoderDir = requireString(values, 'encoder', usage);
  const outPath = requireString(values, 'out', usage);
  const featureLayers = parseLayers(stringFlag(values, 'feature-layers') ?? '-1');
  const batchSize = numberFlag(values, 'batch-size', { integer: true, min: 1 }) ?? 32;
  const device = resolveDevice(stringFlag(values, 'device'), '--device');
  const dtype = stringFlag(values, 'dtype') ?? 'f32';
  if (dtype !== 'f32' && dtype !== 'bf16') throw new UsageError(`--dtype must be f32 or bf16, got '${dtype}'`);
  applyMatmulPrecision(values, dtype);

  const listed = [...positionals];
  const from = stringFlag(values, 'images-from');
  if (from !== undefined) {
    let text: string;
    try {
      text = fs.readFileSync(from, 'utf8');
    } catch (e) {
      throw new Error(`--images-from ${from}: ${(e as Error).message}`);
    }
    // one path a line, exactly as written (a trailing \r of Windows files dropped); blank lines skipped
    for (const line of text.split('\n')) {
      const p = line.replace(/\r$/, '');
      if (p.trim() !== '') listed.push(p);
    }
  }
  if (!listed.length) throw new UsageError(`no images: give IMAGE paths or --images-from FILE\n\n${usage}`);
  // the same image listed twice (e.g. one per caption) gets one tensor
  const images = [...new Set(listed)];
  if (images.length < listed.length) err.write(`embed-images: ${listed.length - images.length} repeated path(s) embedded once\n`);
  // fail before loading the encoder when a file is missing
  for (const p of images) {
    let st: fs.Stats;
    try {
      st = fs.statSync(p);
    } catch {
      throw new Error(`${p}: no such image file`);
    }
    if (!st.isFile()) throw new Error(`${p}: not a file`);
  }

  const encoder = await ImageEncoder.load(encoderDir, { device, dtype });
  let writer: FeaturesWriter | undefined;
  const bar = progressBar(err);
  try {
    const c = encoder.config;
    const M = featureLayers.length;
    const D = encoder.featureDim;
    writer = new FeaturesWriter(outPath, images, {
      M,
      D,
      metadata: {
        encoder: encoderDir,
        architecture: c.architecture,
        feature_layers: featureLayers.join(','),
        feature_dim: String(D),
      },
    });
    err.write(`embed-images: ${images.length} image(s), ${c.architecture} ${c.imageSize}x${c.imageSize}, M = ${M}, D = ${D}, on ${describeDevice(encoder.device)}\n`);
    const t0 = Date.now();
    for await (const { start, features } of encoder.embedBatches(images, { featureLayers, batchSize, onProgress: (d, n) => bar.update(d, n) }))
      features.forEach((f, i) => writer!.add(images[start + i], f));
    writer.finish();
    bar.end();
    const s = (Date.now() - t0) / 1000;
    err.write(`embed-images: wrote ${outPath} (${images.length} images in ${s.toFixed(1)} s, ${(images.length / s).toFixed(1)} images/s)\n`);
  } catch (e) {
    bar.end();
    writer?.abort();
    throw e;
  } finally {
    encoder.dispose();
  }
}
