// The flags of the image-conditioned adapter (SPEC §8) that eval and generate share with train:
// --image-features FILE or --encoder DIR (with --image-root and --feature-layers). An adapter with
// an image projection needs one of them, and they need such an adapter: either mismatch is an error.
import { Adapter } from '../model/adapter';
import { checkProjFits, ImageFeatureSource } from '../train/image-features';
import { openImageSource } from '../train/trainer';
import { Flags, FlagSpec, stringFlag, UsageError } from './args';

export const imageFlagSpec: FlagSpec = {
  'image-features': { type: 'string' },
  encoder: { type: 'string' },
  'image-root': { type: 'string' },
  'feature-layers': { type: 'string' },
};

export const imageFlagUsage = `  --image-features FILE  image-conditioned adapter: SPEC §7 features file (records' "image" = tensor names)
  --encoder DIR          image-conditioned adapter: features from this frozen CLIP/ViT encoder
  --image-root DIR       with --encoder: folder of the image paths (default: the data file's, else .)
  --feature-layers L     encoder layers of the features, e.g. -1 or -2,-1 (default: the adapter's)`;

/**
 * The image feature source the flags name, checked against the adapter: an image-conditioned
 * adapter needs one, a text-only adapter (or none) refuses one, and its projection must read what
 * the source gives.
 */
export async function openAdapterImages(
  values: Flags,
  adapter: Adapter | undefined,
  adapterPath: string | undefined,
  dataFile?: string,
  device?: 'cpu' | 'cuda',
  /** where the data's image paths are relative to (lib/data/dataset.ts's Dataset.imageRoot) */
  imageRoot?: string,
): Promise<ImageFeatureSource | undefined> {
  const flags = {
    'image-features': stringFlag(values, 'image-features'),
    encoder: stringFlag(values, 'encoder'),
    'image-root': stringFlag(values, 'image-root'),
    // the adapter file records its feature layers; the flag may only repeat them
    'feature-layers': stringFlag(values, 'feature-layers') ?? adapter?.config.image?.featureLayers.join(','),
  };
  const wantsImages = flags['image-features'] !== undefined || flags.encoder !== undefined;
  if (adapter?.config.image && !wantsImages)
    throw new UsageError(`${adapterPath} is an image-conditioned adapter (it has image_proj.*): pass --image-features FILE or --encoder DIR`);
  if (wantsImages && !adapter?.config.image)
    throw new UsageError(
      `${flags['image-features'] ? '--image-features' : '--encoder'} needs an image-conditioned adapter, but ${adapterPath ? `${adapterPath} has no image_proj.* tensors` : 'no --adapter was given'}`,
    );
  const source = await openImageSource(flags, dataFile, device, imageRoot);
  if (source && adapter?.config.image) {
    try {
      checkProjFits(adapterPath ?? 'the adapter', adapter.config.image, source);
      if (source.layers && source.layers.join(',') !== adapter.config.image.featureLayers.join(','))
        throw new Error(`${adapterPath} was trained on feature layers ${adapter.config.image.featureLayers.join(',')} but ${source.describe} has ${source.layers.join(',')}`);
    } catch (err) {
      source.close();
      throw err;
    }
  }
  return source;
}
