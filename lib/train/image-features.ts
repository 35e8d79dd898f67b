// Where an image-conditioned run gets its global image features g_1 .. g_M (SPEC §7): a features
// file (--image-features; the records' "image" values are its tensor names) or a frozen image
// encoder (--encoder; the records' "image" values are paths under --image-root). Either way each
// image's features are computed or read once per run and kept (M·D floats per image).
import * as fs from 'fs';
import * as path from 'path';
import type { ImageEncoder } from '../encoder/encoder';
import { FeaturesFile } from '../data/features';
import { ImageSource } from '../data/dataset';
import { ImageProjConfig } from '../model/adapter';

export interface ImageFeatureSource {
  /** feature vectors per image */
  readonly M: number;
  /** size of one feature vector */
  readonly D: number;
  /** the encoder layers the vectors come from, when known (a features file may not say) */
  readonly layers?: number[];
  /** what the features come from, for messages */
  readonly describe: string;
  /** Where records' images are found, for lib/data/dataset.ts's checkImages (every record, up front). */
  readonly imageSource: ImageSource;
  /** An error naming the problem when `key` cannot be read. */
  check(key: string): string | undefined;
  /** (M·D) the features of one image */
  get(key: string): Promise<Float32Array>;
  /** Computes the features of these images now (an encoder, in batches); optional. */
  prepare?(keys: Iterable<string>, onProgress?: (done: number, total: number) => void): Promise<void>;
  close(): void;
}

/** Features read from a SPEC §7 features file, each image once. */
export class FeaturesFileSource implements ImageFeatureSource {
  readonly M: number;
  readonly D: number;
  readonly layers?: number[];
  readonly describe: string;
  private readonly file: FeaturesFile;
  private readonly cache = new Map<string, Float32Array>();

  constructor(readonly filePath: string) {
    this.file = FeaturesFile.open(filePath);
    this.M = this.file.M;
    this.D = this.file.D;
    this.describe = `features file ${filePath}`;
    const meta = this.file.metadata.layers ?? this.file.metadata.feature_layers;
    if (meta !== undefined) {
      const layers = meta.split(',').map((v) => Number(v.trim()));
      if (layers.length === this.M && layers.every((n) => Number.isInteger(n) && n !== 0)) this.layers = layers;
    }
  }

  get imageSource(): ImageSource {
    return { features: { path: this.filePath, has: (k: string) => this.file.has(k) } };
  }

  check(key: string): string | undefined {
    return this.file.has(key) ? undefined : `image "${key}" is not in the features file ${this.filePath} (it holds ${this.file.size} images)`;
  }

  async get(key: string): Promise<Float32Array> {
    let v = this.cache.get(key);
    if (!v) {
      v = this.file.get(key);
      this.cache.set(key, v);
    }
    return v;
  }

  close(): void {
    this.file.close();
    this.cache.clear();
  }
}

/**
 * The projection config that fits `source`: its M and D, the feature layers (the flag's, else the
 * source's, else [-1] when M = 1), width R. Errors name what disagrees.
 */
export function projConfigFor(source: ImageFeatureSource, width: number, featureLayers?: number[]): ImageProjConfig {
  const layers = featureLayers ?? source.layers ?? (source.M === 1 ? [-1] : undefined);
  if (!layers)
    throw new Error(`${source.describe} has ${source.M} feature vectors per image but does not say which encoder layers they are: pass --feature-layers (${source.M} values)`);
  if (layers.length !== source.M)
    throw new Error(`--feature-layers names ${layers.length} layer(s) (${layers.join(',')}) but ${source.describe} has ${source.M} feature vector(s) per image`);
  return { featureLayers: layers, featureSize: source.D, width };
}

/** Checks that an adapter's projection reads what `source` gives. */
export function checkProjFits(adapterFile: string, proj: ImageProjConfig, source: ImageFeatureSource): void {
  if (proj.featureSize !== source.D || proj.featureLayers.length !== source.M)
    throw new Error(
      `${adapterFile} projects ${proj.featureLayers.length} feature vector(s) of size ${proj.featureSize} but ${source.describe} gives ${source.M} of size ${source.D}`,
    );
}

/** Parses --feature-layers: comma-separated nonzero integers (1-based, negative from the end). */
export function parseFeatureLayers(raw: string | undefined, flag = '--feature-layers'): number[] | undefined {
  if (raw === undefined) return undefined;
  const layers = String(raw)
    .split(',')
    .map((v) => v.trim());
  const nums = layers.map(Number);
  if (!layers.length || layers.some((v) => v === '') || nums.some((n) => !Number.isInteger(n) || n === 0))
    throw new Error(`${flag} must be comma-separated nonzero integers (1-based, negative from the end, e.g. -1 or -2,-1), got '${raw}'`);
  return nums;
}

/** The default image root: the data file's folder (SPEC §8: image paths are relative to it). */
export function defaultImageRoot(dataFile: string): string {
  return path.dirname(path.resolve(dataFile));
}

/**
 * Features computed by a frozen CLIP/ViT encoder (SPEC §7) from the image files under `root`
 * (the records' "image" values are paths relative to it), each image once per run: prepare()
 * encodes the run's images in batches up front; get() encodes any other one on first use.
 */
export class EncoderSource implements ImageFeatureSource {
  readonly M: number;
  readonly D: number;
  readonly describe: string;
  private readonly cache = new Map<string, Float32Array>();

  private constructor(
    private readonly encoder: ImageEncoder,
    readonly root: string,
    readonly layers: number[],
  ) {
    this.M = layers.length;
    this.D = encoder.featureDim;
    this.describe = `encoder ${encoder.dir} (${encoder.config.family}, layers ${layers.join(',')})`;
  }

  static async open(dir: string, root: string, layers: number[], device?: 'cpu' | 'cuda'): Promise<EncoderSource> {
    // loaded here, not at the top: the encoder brings sharp (libvips), which a features-file run never needs
    const { ImageEncoder, resolveFeatureLayers } = await import('../encoder/encoder');
    const encoder = await ImageEncoder.load(dir, { device });
    try {
      resolveFeatureLayers(layers, encoder.config.nLayers); // a clear error for a layer the encoder lacks
    } catch (err) {
      encoder.dispose();
      throw new Error(`--feature-layers ${layers.join(',')}: ${(err as Error).message}`);
    }
    return new EncoderSource(encoder, root, layers);
  }

  get imageSource(): ImageSource {
    return { root: this.root };
  }

  private file(key: string): string {
    return path.resolve(this.root, key);
  }

  check(key: string): string | undefined {
    try {
      if (fs.statSync(this.file(key)).isFile()) return undefined;
    } catch {
      // reported below
    }
    return `image "${key}" not found: no file ${this.file(key)}`;
  }

  /** Encodes every image of `keys` not yet encoded (batches; progress through onProgress). */
  async prepare(keys: Iterable<string>, onProgress?: (done: number, total: number) => void): Promise<void> {
    const todo = [...new Set(keys)].filter((k) => !this.cache.has(k));
    if (!todo.length) return;
    const feats = await this.encoder.embed(
      todo.map((k) => this.file(k)),
      { featureLayers: this.layers, onProgress },
    );
    todo.forEach((k, i) => this.cache.set(k, feats[i]));
  }

  async get(key: string): Promise<Float32Array> {
    if (!this.cache.has(key)) await this.prepare([key]);
    return this.cache.get(key)!;
  }

  close(): void {
    this.encoder.dispose();
    this.cache.clear();
  }
}

/** Features computed by a frozen CLIP/ViT encoder (SPEC §7) from the images under `root`. */
export async function openEncoderSource(dir: string, root: string, layers: number[], device?: 'cpu' | 'cuda'): Promise<ImageFeatureSource> {
  return EncoderSource.open(dir, root, layers, device);
}
