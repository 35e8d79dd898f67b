// Where an image-conditioned run gets its global image features g_1 .. g_M (SPEC §7): a features
// file (--image-features; the records' "image" values are its tensor names) or a frozen image
// encoder (--encoder; the records' "image" values are paths under --image-root). Either way each
// image's features are computed or read once per run and kept (M·D floats per image).
import * as path from 'path';
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

/** Features computed by a frozen CLIP/ViT encoder (SPEC §7) from the images under `root`. */
export async function openEncoderSource(dir: string, root: string, layers: number[], device?: 'cpu' | 'cuda'): Promise<ImageFeatureSource> {
  void root;
  void layers;
  void device;
  throw new Error(`--encoder ${dir}: this build has no image encoder (lib/encoder is not merged yet); compute a features file and pass --image-features`);
}
