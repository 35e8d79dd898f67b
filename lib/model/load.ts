// One entry point for every base checkpoint format: a folder with config.json is Hugging Face, one
// with params.json is Meta's (consolidated.NN.pth), a file is llama2.c (v1 by its magic, else v0). Weights are mapped, never read into the JS heap.
import * as fs from 'fs';
import * as nodePath from 'path';
import { native, Tensor } from '../native';
import { resolveDevice } from '../device';
import { Checkpoint, LoadArena, LoadOptions, LoadedWeights, allTensors, moveWeights } from './weights';
import { loadLlama2c } from './llama2c';
import { HF_CONFIG, loadHf } from './hf';
import { isGguf, loadGguf } from './gguf';
import { findTokenizer } from './config';
import { META_PARAMS, loadMeta } from './meta';

export { findTokenizer };

export async function loadCheckpoint(path: string, opts: LoadOptions = {}): Promise<Checkpoint> {
  if (opts.dtype !== undefined && opts.dtype !== 'f32' && opts.dtype !== 'bf16')
    throw new Error(`loadCheckpoint: dtype must be 'f32' or 'bf16', got ${JSON.stringify(opts.dtype)}`);
  const device = resolveDevice(opts.device, 'loadCheckpoint: device');
  if (opts.onProgress !== undefined && typeof opts.onProgress !== 'function')
    throw new Error(`loadCheckpoint: onProgress must be a function`);
  if (opts.mmap !== undefined && typeof opts.mmap !== 'boolean')
    throw new Error(`loadCheckpoint: mmap must be true or false, got ${JSON.stringify(opts.mmap)}`);
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(code === 'ENOENT' ? `checkpoint not found: ${path} does not exist` : `cannot read checkpoint ${path}: ${(e as Error).message}`);
  }
  const isDir = st.isDirectory();
  const isMeta = isDir && !fs.existsSync(nodePath.join(path, HF_CONFIG)) && fs.existsSync(nodePath.join(path, META_PARAMS));
  if (isDir && !isMeta && !fs.existsSync(nodePath.join(path, HF_CONFIG)))
    throw new Error(
      `${path} is a directory without ${HF_CONFIG} or ${META_PARAMS}: expected a Hugging Face model folder ` +
        `(config.json + model.safetensors), a Meta folder (params.json + consolidated.00.pth) a llama2.c .bin file or a GGUF file`,
    );
  if (!isDir && !st.isFile()) throw new Error(`${path} is neither a regular file nor a directory`);
  if (!isDir && /(\.safetensors|\.json)$/.test(path))
    throw new Error(`${path}: pass the Hugging Face model folder, not one of its files`);
  if (!isDir && /\.pth$/.test(path)) throw new Error(`${path}: pass the Meta checkpoint folder (params.json + consolidated.NN.pth), not one of its files`);

  const arena = new LoadArena(opts.mmap === false);
  let loaded: LoadedWeights;
  try {
    loaded = isMeta ? loadMeta(path, arena, opts) : isDir ? loadHf(path, arena, opts) : isGguf(path) ? loadGguf(path, arena, opts) : loadLlama2c(path, arena, opts);
  } catch (e) {
    arena.release();
    throw e;
  }
  try {
    // Conversions and the NaN/Inf check run on the executor: wait for them so a bad weight fails
    // here, naming its tensor, rather than poisoning the first forward pass.
    await native.synchronize();
  } catch (e) {
    arena.release();
    throw new Error(`failed to load ${path}: ${(e as Error).message}`);
  }
  const { config, format } = loaded;
  let weights = loaded.weights;
  if (device !== 'cpu') {
    // Mapped (or converted) on the host, then copied: each host tensor is released once its copy
    // is queued, so the mappings live only until the copies ran.
    const made: Tensor[] = [];
    try {
      weights = moveWeights(weights, device, made);
      arena.closeMappings();
      await native.synchronize();
    } catch (e) {
      for (const t of made) t.dispose();
      arena.release();
      throw new Error(`failed to load ${path} onto ${device}: ${(e as Error).message}`);
    }
  } else {
    // Every tensor holds its own reference to its mapping; the handles are not needed any more.
    arena.closeMappings();
  }

  // A GGUF's own vocabulary comes before any tokenizer file that happens to lie beside it;
  // Meta's downloads keep tokenizer.model beside the model folders (llama/7B, llama/tokenizer.model)
  const tokenizerModel = loaded.tokenizerModel;
  const tokenizerPath = tokenizerModel
    ? undefined
    : findTokenizer(isDir ? path : nodePath.dirname(path), config.vocabSize) ??
      (isMeta ? findTokenizer(nodePath.dirname(nodePath.resolve(path)), config.vocabSize) : undefined);
  let disposed = false;
  return {
    config,
    weights,
    format,
    path,
    tokenizerPath,
    tokenizerModel,
    tokenizerProblem: loaded.tokenizerProblem,
    device,
    dispose(): void {
      if (disposed) return;
      disposed = true;
      for (const t of allTensors(weights)) t.dispose();
      arena.release(); // the host tensors (already released when moved; idempotent) and the mappings
    },
  };
}
