// The frozen weights of a LLaMA model as native tensors, and the bookkeeping loaders share so that
// a failed load leaves no tensor or mapping behind.
//
// Shapes: C = dim, F = hidden, V = vocab, H heads, Hkv kv heads, d = C / H.
import { native, Tensor, FileMapping, FileDType, Device, QuantDType } from '../native';
import { LlamaConfig } from './config';
import type { SentencePieceModel } from '../tokenizer/sentencepiece';
import type { ByteBpeModel } from '../tokenizer/bpe';

/** A vocabulary a model file carries in its metadata (GGUF's tokenizer.ggml.*): SentencePiece or
 *  byte-level BPE. */
export type GgufTokenizerModel = SentencePieceModel | ByteBpeModel;

export interface LayerWeights {
  attnNorm: Tensor; // (C) f32
  wq: Tensor; // (H*d, C)
  wk: Tensor; // (Hkv*d, C)
  wv: Tensor; // (Hkv*d, C)
  wo: Tensor; // (C, H*d)
  ffnNorm: Tensor; // (C) f32
  w1: Tensor; // (F, C) gate
  w2: Tensor; // (C, F) down
  w3: Tensor; // (F, C) up
}

export interface LlamaWeights {
  embedding: Tensor; // (V, C)
  layers: LayerWeights[];
  finalNorm: Tensor; // (C) f32
  /** (V, C); the same Tensor object as `embedding` when tied */
  classifier: Tensor;
}

export type CheckpointFormat = 'llama2c-v0' | 'llama2c-v1' | 'hf' | 'meta' | 'gguf';

export interface Checkpoint {
  config: LlamaConfig;
  weights: LlamaWeights;
  format: CheckpointFormat;
  path: string;
  tokenizerPath?: string;
  /** the vocabulary a GGUF file carries in its metadata (used when no tokenizer file is given) */
  tokenizerModel?: GgufTokenizerModel;
  /** why a GGUF's vocabulary cannot be used (an unsupported kind or pre-tokenizer), when it cannot */
  tokenizerProblem?: string;
  /** where every weight tensor lives */
  device: Device;
  /** Disposes every tensor and closes the mappings; idempotent. */
  dispose(): void;
}

export interface LoadOptions {
  /** Storage of the big matrices and the embedding; norms are always f32. Default f32. */
  dtype?: 'f32' | 'bf16';
  /** Where the weights live and the model computes: 'cuda' or 'cpu' (default: 'cuda' when
   *  capabilities().cuda.available, else 'cpu'). The files are mapped on the host either way. */
  device?: Device;
  /** false: read the files into memory instead of mapping them (default true). A mapped file that
   *  is truncated or rewritten while the model is in use ends the process with SIGBUS; a copy is
   *  immune to that, at the cost of the weights' size in RAM (on the CPU device). */
  mmap?: boolean;
  /** Told what a long load is doing (merging the model-parallel shards of a Meta folder), at most
   *  about once a second. */
  onProgress?: (message: string) => void;
}

/** Every tensor of `w` once (the classifier is the embedding when tied). */
export function allTensors(w: LlamaWeights): Tensor[] {
  const set = new Set<Tensor>([w.embedding, w.finalNorm, w.classifier]);
  for (const l of w.layers) for (const t of Object.values(l) as Tensor[]) set.add(t);
  return [...set];
}

/**
 * `w` with every tensor copied to `device` (a tied classifier stays the embedding's tensor). Each
 * source handle is released as soon as its copy is queued: the copy keeps the host storage (and so
 * the file mapping it may view) alive only until it ran. The new tensors are also pushed to `made`,
 * so that a caller can free them if a later step fails.
 */
export function moveWeights(w: LlamaWeights, device: Device, made: Tensor[]): LlamaWeights {
  const moved = new Map<Tensor, Tensor>();
  const move = (t: Tensor): Tensor => {
    let d = moved.get(t);
    if (!d) {
      d = native.toDevice(t, device);
      made.push(d);
      moved.set(t, d);
      t.dispose();
    }
    return d;
  };
  const layers = w.layers.map((l) => {
    const out = {} as LayerWeights;
    for (const k of Object.keys(l) as (keyof LayerWeights)[]) out[k] = move(l[k]);
    return out;
  });
  return { embedding: move(w.embedding), layers, finalNorm: move(w.finalNorm), classifier: move(w.classifier) };
}

/**
 * What a loader has created so far: tensors and mappings. On failure `release()` frees it all;
 * on success the tensors pass to the Checkpoint.
 */
export class LoadArena {
  readonly tensors: Tensor[] = [];
  readonly mappings: FileMapping[] = [];

  /** `copy`: map() reads the files into memory instead (LoadOptions.mmap false). */
  constructor(private readonly copy = false) {}

  map(path: string): FileMapping {
    const m = native.mapFile(path, this.copy);
    this.mappings.push(m);
    return m;
  }

  /** A tensor of `shape` at absolute `byteOffset` of `map`; bounds are checked by native. */
  tensor(map: FileMapping, byteOffset: number, shape: number[], fileDtype: FileDType, dtype: 'f32' | 'bf16' | QuantDType, name: string): Tensor {
    const t = native.fromFile(map, byteOffset, shape, fileDtype, dtype, name);
    this.tensors.push(t);
    return t;
  }

  /** Tensors made from a mapping hold it themselves; the handles are no longer needed. */
  closeMappings(): void {
    for (const m of this.mappings) m.close();
  }

  release(): void {
    for (const t of this.tensors) t.dispose();
    this.closeMappings();
  }
}

/** Loaders' common result, before load.ts adds the tokenizer and the finite check. */
export interface LoadedWeights {
  config: LlamaConfig;
  weights: LlamaWeights;
  format: CheckpointFormat;
  tokenizerModel?: GgufTokenizerModel;
  tokenizerProblem?: string;
}
