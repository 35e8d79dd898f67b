// llama-adapter: the public API.
export { native } from './native';
export type { Tensor, DType, Device, Capabilities } from './native';
