// Image input for the encoders (SPEC §7): decoding and preprocessing.
export { decodeImage, checkRgbImage } from './decode';
export type { RgbImage } from './decode';
export { resizeRgb, PIL_RESAMPLE } from './resample';
export type { Resample } from './resample';
export {
  PREPROCESSOR_CONFIG, CLIP_MEAN, CLIP_STD, defaultPreprocess, readPreprocessConfig, preprocessImage, outputSize,
} from './preprocess';
export type { PreprocessConfig, Size2 } from './preprocess';
