// llama-adapter: the public API.
export { native } from './native';
export type { Tensor, DType, Device, Capabilities, FileMapping } from './native';
export { Llama, KVCache } from './model/llama';
export { loadCheckpoint } from './model/load';
export type { LlamaConfig, RopeLayout } from './model/config';
export type { Checkpoint, LlamaWeights, LayerWeights, LoadOptions } from './model/weights';
export { loadTokenizer, StreamDecoder } from './tokenizer';
export type { Tokenizer } from './tokenizer';
export { generate, generateTokens } from './generate/generate';
export type { GenerateOptions } from './generate/generate';
export { Sampler, argmax } from './generate/sampler';
export type { SamplerOptions } from './generate/sampler';
export { Random } from './generate/random';
