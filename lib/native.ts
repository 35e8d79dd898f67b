// The only file that loads the native addon (lib/emulator.ts loads its CUDA-emulator test variant).
// The whole native surface is typed here once.
//
// Tensors live in native memory behind handles. Ops are enqueued in order on their device's
// executor and return their output handle at once; `read()` is the awaited synchronisation point,
// and errors raised while executing surface there, naming the op and its shapes. A failed op
// poisons what it writes: ops that read a poisoned tensor are skipped and pass the error on, so
// reading any result downstream of a failure rejects with the original error.
import * as os from 'os';
import * as path from 'path';
import { setOpenblasCoreType } from './blas-env';

/** q8_0 .. q6_k: ggml's block-quantized frozen weights (GGUF), kept quantized; matmul, matmulBackward,
 *  embedding and read() (which dequantises) accept them. */
export type QuantDType = 'q8_0' | 'q4_0' | 'q4_k' | 'q5_k' | 'q6_k';
export type DType = 'f32' | 'bf16' | 'i32' | QuantDType;
/** Element types a weight file may hold (converted to a DType on load). */
export type FileDType = 'f32' | 'f16' | 'bf16' | QuantDType;
export type Device = 'cpu' | 'cuda';
export type RopeLayout = 'interleaved' | 'half';

export interface Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: Device;
  /** Bytes of native memory this handle keeps alive (0 once disposed). */
  readonly bytes: number;
  readonly disposed: boolean;
  /** Waits for every op queued before it, then copies the values out (bf16 reads as f32). */
  read(): Promise<Float32Array | Int32Array>;
  /** Frees the native memory now (idempotent); queued ops that use it keep it until they ran. */
  dispose(): void;
}

/** A read-only memory mapping of a weight file; tensors made from it keep it alive. */
export interface FileMapping {
  readonly path: string;
  readonly size: number;
  close(): void;
}

/** One GPU as the CUDA runtime describes it (capabilities().cuda.deviceList). Clocks in kHz, 0
 *  when the runtime does not report them; memoryPools: cudaDevAttrMemoryPoolsSupported (without
 *  pools the backend allocates with plain cudaMalloc). */
export interface CudaDeviceAttributes {
  name: string;
  /** compute capability, major * 10 + minor */
  sm: number;
  multiprocessors: number;
  clockKHz: number;
  memoryClockKHz: number;
  memoryBusBits: number;
  memoryBytes: number;
  memoryPools: boolean;
}

export interface Capabilities {
  version: string;
  /** the CPU GEMM: "OpenBLAS 0.3.21 (Haswell kernels; /path/libopenblas.so.0, loaded at run time)",
   *  or "own kernels (why OpenBLAS is not used)" */
  blas: string;
  /** OpenBLAS's own thread count (0 when it is not in use) */
  blasThreads: number;
  /** compiled: this build has the CUDA backend; available: a usable GPU is there now (reason says
   *  which, or why not); gemm: the engine of the frozen-weight matmuls ('none' when unavailable) */
  cuda: { compiled: boolean; available: boolean; devices: number; reason: string; gemm: string; deviceList: CudaDeviceAttributes[] };
  threads: number;
  /** setMatmulPrecision's current value */
  matmulPrecision: MatmulPrecision;
  /** what runs the "medium" bf16 products: "avx512bf16", or "widen+sgemm" (no AVX512-BF16, or
   *  LLAMA_ADAPTER_BF16_GEMM=sgemm) */
  bf16Gemm: string;
  /** the CPU's vector extensions (avx2, fma, avx512f, avx512bw, avx512vl, avx512vnni, avx512bf16) */
  simd: string[];
  /** the instruction set the dot-product and quantized kernels use: the best the CPU has, or the
   *  lower one LLAMA_ADAPTER_SIMD names (avx512 | avx2 | scalar) */
  simdLevel: 'avx512' | 'avx2' | 'scalar';
}

/** See NativeBinding.setMatmulPrecision. */
export type MatmulPrecision = 'highest' | 'medium';

/** Collective engines (native/comm): a world of one, Open MPI (CPU ranks), NCCL (GPU ranks). */
export type CommKind = 'none' | 'mpi' | 'nccl';

export interface CommWorld {
  kind: CommKind;
  rank: number;
  size: number;
  /** e.g. "Open MPI v4.1.4" or "NCCL 2.27.3 (libnccl.so.2, device 0)" */
  library: string;
}

export interface CommInfo extends CommWorld {
  /** commInit() was called (until then the world is one rank, kind 'none') */
  initialized: boolean;
  /** whether this build has the MPI engine (CMake found Open MPI), and which */
  mpi: { compiled: boolean; library: string };
  /** float all-reduces run so far: how many, their bytes, and seconds inside the collective */
  stats: { allreduces: number; bytes: number; seconds: number };
}

export interface CommOptions {
  /** the longest any collective waits for the other ranks before it fails (default 600) */
  timeoutS?: number;
  /** nccl: this rank's CUDA device (default 0) */
  device?: number;
  /** nccl: the file to load first (default: libnccl.so.2 from the loader's search path) */
  ncclLibrary?: string;
  /** nccl: take rank and size from MPI (started by mpirun) and broadcast the NCCL id over it */
  mpi?: boolean;
}

/** One decoder layer's frozen weights: norms (C) f32; wq (H*d, C), wk, wv (Hkv*d, C), wo (C, H*d),
 *  w1, w3 (F, C), w2 (C, F) f32 or bf16. */
export interface DecoderWeights {
  attnNorm: Tensor;
  wq: Tensor;
  wk: Tensor;
  wv: Tensor;
  wo: Tensor;
  ffnNorm: Tensor;
  w1: Tensor;
  w2: Tensor;
  w3: Tensor;
}

export interface DecoderShape {
  heads: number;
  kvHeads: number;
  eps: number;
  theta: number;
  layout: RopeLayout;
}

/** An adapted layer's prompt keys/values (K, Hkv, d) and raw gate (H) or (1). */
export interface LayerPrompt {
  pk: Tensor;
  pv: Tensor;
  gate: Tensor;
}

/** A model's weights for whole-model inference: embedding (V, C), finalNorm (C) f32, classifier
 *  (V, C), the layers, and optionally one adapter prompt (or null) per layer. */
export interface ModelWeights {
  embedding: Tensor;
  finalNorm: Tensor;
  classifier: Tensor;
  layers: DecoderWeights[];
  prompts?: (LayerPrompt | null | undefined)[];
}

// --- attention family (ops-attention) ---
/** Options of gatedAttention / gatedAttentionBackward. */
export interface AttentionOptions {
  /** true (the default): a token sees its segment's tokens up to itself; false: all of them. */
  causal?: boolean;
}
// --- end attention family ---

/** A handle on checked model weights (native.model); it keeps them alive until disposed. */
export interface ModelHandle {
  readonly layers: number;
  readonly device: Device;
  readonly disposed: boolean;
  dispose(): void;
}

export interface NativeBinding {
  capabilities(): Capabilities;
  /** Threads for CPU kernels and BLAS (>= 1). */
  setThreads(n: number): void;
  /** How CPU products with a bf16-stored weight treat their f32 input (x · wᵀ and its input gradient,
   *  more than 8 rows), process-wide like PyTorch's set_float32_matmul_precision: "highest" (default)
   *  keeps it f32 and widens the weight (exact products); "medium" rounds it to bf16 as the CUDA
   *  backend always does, and runs on AVX512-BF16 when the CPU has it (capabilities().bf16Gemm) —
   *  about twice the f32 rate there. Decoding (matrix-vector products) keeps f32 either way. */
  setMatmulPrecision(precision: MatmulPrecision): void;
  /** Waits until every queued op has run; rejects with the first failure since the previous call. */
  synchronize(): Promise<void>;

  // --- creation ----------------------------------------------------------------------------
  /** A tensor of the values (f32 data may be stored as bf16) on `device` (default 'cpu'). */
  fromArray(data: Float32Array | Int32Array, shape: number[], dtype?: DType, device?: Device): Tensor;
  zeros(shape: number[], dtype?: DType, device?: Device): Tensor;
  /** A copy of x on `device`, queued in order with the ops; the same device gives a new handle
   *  sharing x's storage. Integer index tensors (tokens, positions, segments, targets, rows) may
   *  stay on the CPU for CUDA ops: the op checks their values on the host and uploads them. */
  toDevice(x: Tensor, device: Device): Tensor;
  /** Element i uniform in [-scale, scale), a function of (seed, i) only: the same values on every
   *  device and thread count (random-weight models for benchmarks and tests). */
  randomUniform(shape: number[], dtype: DType, device: Device, seed: number, scale: number): Tensor;
  /** Device memory of the CUDA backend in bytes: live tensors, their peak since cudaResetPeak(),
   *  and what its pool holds (all 0 before the first CUDA tensor); and the allocator: the
   *  stream-ordered pool, or plain cudaMalloc on a device without memory pools ('' before). */
  cudaMemory(): { inUse: number; peak: number; reserved: number; allocator: string };
  cudaResetPeak(): void;
  /** `copy`: read the file into memory instead of mapping it (immune to the file changing later). */
  mapFile(path: string, copy?: boolean): FileMapping;
  /** A tensor of `shape` whose elements start at `byteOffset` of the mapping, stored as
   *  `dtype` (a view of the mapping when no conversion is needed and it is aligned). Bounds are
   *  checked at once; a NaN/Inf fails the load at the next read()/synchronize(), naming `name`. */
  fromFile(map: FileMapping, byteOffset: number, shape: number[], fileDtype: FileDType, dtype: DType, name?: string): Tensor;
  // --- training ops (packed rows: N tokens of S segments, segments (S+1) i32 offsets 0..N; ---
  // --- the adapter's K prompts per layer; every op's backward forms input gradients only)  ---
  /** x (N, H, d) rotated in place by per-token positions (N) i32 (>= 0, checked when it runs);
   *  `inverse` rotates by -angle, which is rope's backward (and its inverse). At positions
   *  pos0 + t it equals rope(x, pos0, ...) bit for bit. */
  ropeAt(x: Tensor, positions: Tensor, theta: number, layout: RopeLayout, inverse: boolean): void;
  /** The fused gated split-softmax attention (SPEC §2, §8, §9) over packed sequences: causal
   *  within each segment, or with `{ causal: false }` bidirectional (every token sees every token
   *  of its own segment: encoders, one segment per image or text). q (N, H, d) and k (N, Hkv, d)
   *  already rotated, v (N, Hkv, d); prompt keys/values pk, pv (no RoPE) and the raw gate (H) or
   *  (1) (tanh applied inside), or all three null for plain attention. pk, pv are (K, Hkv, d),
   *  shared by every segment, or (S, K, Hkv, d): segment s uses pk[s], pv[s] (per-example
   *  prompts). Returns [out (N, H, d), stats (N, H, 2): log-sum-exp of the word and the prompt
   *  scores (scaled by 1/sqrt(d); the prompt one is -Infinity without a prompt), kept for the
   *  backward]. The offsets must rise (non-decreasing; empty segments are allowed) from 0 to N;
   *  they are checked when the op runs (a bad one rejects at read()). */
  gatedAttention(
    q: Tensor, k: Tensor, v: Tensor, segments: Tensor, pk: Tensor | null, pv: Tensor | null, gate: Tensor | null,
    options?: AttentionOptions,
  ): [Tensor, Tensor];
  /** Backward of gatedAttention (the same options) given dout (N, H, d) and its out and stats:
   *  [dq, dk, dv, dpk, dpv (the shape of pk, pv), dgate (shape of gate: per head, or summed over
   *  heads for a scalar gate)]; a shared prompt's gradients are summed over all tokens, per-segment
   *  ones are each segment's own; null without a prompt. Deterministic: the same inputs give
   *  bit-identical gradients for any thread count. */
  gatedAttentionBackward(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, segments: Tensor,
    pk: Tensor | null, pv: Tensor | null, gate: Tensor | null, out: Tensor, stats: Tensor,
    options?: AttentionOptions,
  ): [Tensor, Tensor, Tensor, Tensor | null, Tensor | null, Tensor | null];
  /** dx (T, C) of rmsnorm given dy (T, C), its input x and weight w (no dw: w is frozen). */
  rmsnormBackward(dy: Tensor, x: Tensor, w: Tensor, eps: number): Tensor;
  /** [da, db] (T, F) of out = silu(a) * b given dout (T, F). */
  swigluBackward(dout: Tensor, a: Tensor, b: Tensor): [Tensor, Tensor];
  /** dx (M, K) = dy (M, N) · w (N, K) f32|bf16: the input gradient of matmul; no dW is formed. */
  matmulBackward(dy: Tensor, w: Tensor): Tensor;
  /** x (N, C) rows idx (M) i32 -> (M, C); any dtype, any trailing dims; an index outside [0, N)
   *  rejects at read() */
  gatherRows(x: Tensor, idx: Tensor): Tensor;
  /** dst (N, C) rows idx (M) += src (M, C), in place, f32 (repeated indices accumulate, in index
   *  order); an index outside [0, N) fails the op (dst is then poisoned) */
  scatterAddRows(dst: Tensor, idx: Tensor, src: Tensor): void;
  /** Cross-entropy of logits (M, V) against targets (M) i32: [loss (1) = sum over rows of
   *  -log softmax[target] (summed in double), dlogits (M, V) = scale * (softmax - onehot)]. A
   *  target outside [0, V) rejects at read(), naming the row. */
  crossEntropy(logits: Tensor, targets: Tensor, scale: number): [Tensor, Tensor];
  /** Decoupled AdamW (SPEC §4), in place on f32 param, m, v given grad; `step` counts from 1.
   *  Exactly torch.optim.AdamW's (non-foreach) order: p *= 1 - lr wd; m = lerp(m, g, 1 - b1);
   *  v = b2 v + (1 - b2) g²; p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps). */
  adamw(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, step: number, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number): void;
  /** (1) f32: the sum of squares of x (in double precision) */
  sumSquares(x: Tensor): Tensor;
  /** x *= s, in place; s = 0 clears x (NaN and Inf included), for zeroing accumulators */
  scaleInPlace(x: Tensor, s: number): void;
  /** The same storage seen with another shape of equal element count (no copy). */
  reshape(x: Tensor, shape: number[]): Tensor;
  /** f32 <-> bf16 copy */
  convert(x: Tensor, dtype: DType): Tensor;

  // --- image-encoder ops (native/napi/encoder_ops.cpp; ops-encoder) --------------------------
  // f32 throughout; T rows, C channels; M/N/K as in matmul. Each family's CPU and CUDA bodies
  // agree within f32 rounding (test/backend-ops.test.ts; CPU vs float64: test/encoder-ops.test.ts).
  /** x (T, C), w (C), b (C) -> (T, C): (x - mean) / sqrt(var + eps) * w + b (biased variance,
   *  per row; torch.nn.LayerNorm). */
  layerNorm(x: Tensor, w: Tensor, b: Tensor, eps: number): Tensor;
  /** [dx (T, C), dw (C), db (C)] of layerNorm given dy (T, C); dw and db are sums over the rows in
   *  a fixed order (the same for any thread count). */
  layerNormBackward(dy: Tensor, x: Tensor, w: Tensor, eps: number): [Tensor, Tensor, Tensor];
  /** Element-wise, any shape: 'gelu' = exact erf GELU x·Φ(x) (torch.nn.GELU()); 'quick_gelu' =
   *  x·sigmoid(1.702x) (CLIP). */
  gelu(x: Tensor, kind: 'gelu' | 'quick_gelu'): Tensor;
  /** dx of gelu given dy (same shape as x). */
  geluBackward(dy: Tensor, x: Tensor, kind: 'gelu' | 'quick_gelu'): Tensor;
  /** x (M, N) += b (N) on every row, in place. */
  addBias(x: Tensor, b: Tensor): void;
  /** db (N) = column sums of dy (M, N), in double in a fixed order (deterministic): the bias
   *  gradient. */
  biasGrad(dy: Tensor): Tensor;
  /** dW (N, K) = dyᵀ (N, M) · x (M, K): the weight gradient of matmul(x, W) for a trainable f32 W. */
  matmulWeightGrad(dy: Tensor, x: Tensor): Tensor;
  /** images (B, Cin, Hi, Wi) -> (B * (Hi/P) * (Wi/P), Cin * P * P): one row per patch, patches
   *  row-major over each image's grid, columns in Conv2d weight order (c, ky, kx); Hi and Wi must
   *  be multiples of P. Patch embedding = matmul(patches, Wpatch reshaped (D, Cin * P * P)). */
  patches(images: Tensor, patch: number): Tensor;
  // --- end of image-encoder ops --------------------------------------------------------------

  // --- communication (data parallelism: one process per rank; native/comm) -------------------
  // Collectives are queued on the executor in order with the ops (an all-reduce of gradients runs
  // after the backward that wrote them); each waits at most timeoutS for the other ranks, then
  // fails saying so. A world of one (before commInit, or kind 'none') makes them the identity.
  /** Joins the world (synchronously; 'mpi' and 'nccl' with mpi: true need the process to have been
   *  started by mpirun). Once per process; calling it again with the same kind returns the world. */
  commInit(kind: CommKind, opts?: CommOptions): CommWorld;
  commInfo(): CommInfo;
  /** Every tensor (f32, one device) becomes the sum over the ranks of that tensor, in place; one
   *  collective for all of them. Resolves once it ran; rejects with the error (and poisons them). */
  allreduceSum(tensors: Tensor[]): Promise<void>;
  /** The element-wise sum over the ranks, in float64. */
  allreduceScalars(values: Float64Array): Promise<Float64Array>;
  /** The root's bytes on every rank (the other ranks pass null). */
  broadcast(data: Uint8Array | null, root?: number): Promise<Uint8Array>;
  commBarrier(): Promise<void>;
  /** Leaves the world (MPI_Finalize after the queued work); collectives fail afterwards. */
  commFinalize(): Promise<void>;
  /** Ends every rank of the world now with `code` (MPI_Abort; a world of one exits). */
  commAbort(code?: number): never;

  // --- forward ops (shape comments: T tokens, C channels, H heads, Hkv kv heads, d head size) ---
  /** table (V, C) f32|bf16, tokens (T) i32 -> (T, C) f32 */
  embedding(table: Tensor, tokens: Tensor): Tensor;
  /** x (T, C), w (C) -> (T, C): x * w / sqrt(mean(x^2) + eps) */
  rmsnorm(x: Tensor, w: Tensor, eps: number): Tensor;
  /** x (T, H, d) rotated in place by positions pos0 .. pos0+T-1 */
  rope(x: Tensor, pos0: number, theta: number, layout: RopeLayout): void;
  /** x (M, K), w (N, K) f32|bf16 -> (M, N) = x · wᵀ */
  matmul(x: Tensor, w: Tensor): Tensor;
  /** cache (S, Hkv, d) [pos0 .. pos0+T) = src (T, Hkv, d), in place */
  kvWrite(cache: Tensor, src: Tensor, pos0: number): void;
  /** q (T, H, d) at positions pos0.., caches (S, Hkv, d) -> (T, H, d); causal over keys 0..pos.
   *  With the adapter branch (SPEC §2): prompt keys/values pk, pv (K, Hkv, d) (no RoPE) and the raw
   *  gate (H) or (1) (all three, or none/null) add tanh(gate) * softmax(q pkᵀ / sqrt(d)) pv, a
   *  separate softmax over the K prompt keys, unmasked. */
  attention(q: Tensor, kCache: Tensor, vCache: Tensor, pos0: number, pk?: Tensor | null, pv?: Tensor | null, gate?: Tensor | null): Tensor;
  /** One decoder layer of cached inference as a single op: x (T, C) += attention block, then
   *  += feed-forward block (SPEC §1), writing the layer's keys/values to the caches (S, Hkv, d)
   *  at pos0 .. pos0+T-1; with pk, pv, gate the adapter branch as in attention(). The same
   *  kernels in the same order as the op-by-op forward (equal bit for bit), queued once. */
  decoderLayer(
    x: Tensor, weights: DecoderWeights, kCache: Tensor, vCache: Tensor, pos0: number,
    shape: DecoderShape,
    pk?: Tensor | null, pv?: Tensor | null, gate?: Tensor | null,
  ): void;
  /** Checks a whole model's weights (shapes, dtypes, one device) once and returns a handle for
   *  modelForward. */
  model(weights: ModelWeights, shape: DecoderShape): ModelHandle;
  /** The whole cached forward pass as one op: `tokens` at positions pos0 .., every layer's keys and
   *  values written to kCaches[l], vCaches[l] (S, Hkv, d); returns the logits (1, V) of the last
   *  token, or (T, V) with allLogits. Equal bit for bit to embedding + decoderLayer per layer +
   *  rmsnorm + matmul. */
  modelForward(model: ModelHandle, tokens: Int32Array | number[], kCaches: Tensor[], vCaches: Tensor[], pos0: number, allLogits?: boolean): Tensor;
  /** a, b (T, F) -> silu(a) * b */
  swiglu(a: Tensor, b: Tensor): Tensor;
  /** x += y, in place (same shape) */
  addInPlace(x: Tensor, y: Tensor): void;
  /** rows (start .. start+count) of x (T, ...) -> (count, ...) */
  sliceRows(x: Tensor, start: number, count: number): Tensor;
}

function loadBinding(): NativeBinding {
  setOpenblasCoreType();
  const root = path.resolve(__dirname, '..', '..');
  try {
    // node-gyp-build: build/Release first, then prebuilds/<platform>-<arch>/
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    return require('node-gyp-build')(root) as NativeBinding;
  } catch (err) {
    const reason = err instanceof Error ? err.message.split('\n')[0] : String(err);
    throw new Error(
      `llama-adapter: the native addon could not be loaded (${reason}).\n` +
        `Looked in ${path.join(root, 'build', 'Release')} and ${path.join(root, 'prebuilds', `${os.platform()}-${os.arch()}`)}.\n` +
        'Possible fixes:\n' +
        '  - build it from source: `npm run build:native` (needs cmake >= 3.18 and a C++17 compiler:\n' +
        '    `apt-get install cmake g++`);\n' +
        '  - reinstall the package so that its install step builds it: `npm rebuild llama-adapter`;\n' +
        `  - use a prebuilt binary for ${os.platform()}-${os.arch()} (node ${process.versions.node}, N-API ${process.versions.napi}) under prebuilds/.`,
    );
  }
}

export const native: NativeBinding = loadBinding();
