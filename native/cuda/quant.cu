// Frozen-weight products and embedding lookups with block-quantized weights (core/quant.h), kept
// quantized in GPU memory: the CUDA bodies of cpu/quant.cpp. Few rows (decoding): one warp per
// weight row walks its blocks (lane b, b + 32, ...), dequantises each in registers and dots it with
// the rows of x. Many rows: the weights are dequantised to a transient f32 buffer (stream-ordered
// scratch, freed after the product) and multiplied by the f32 kernels of matmul.cu.
#include "../core/quant.h"
#include "compat.h"
#include "kernels.h"

namespace la::cuda {
namespace {

constexpr int64_t kSmallM = 8;

// out (rows, K): thread i dequantises block i (row i / nb, block i % nb).
__global__ void dequant_kernel(float* __restrict__ out, const uint8_t* __restrict__ w, DType t, int64_t rows,
                               int64_t K) {
  const int64_t be = block_elems(t), bb = block_bytes(t), nb = K / be;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * nb) return;
  const int64_t r = i / nb, b = i % nb;
  dequant_block(t, w + r * (nb * bb) + b * bb, out + r * K + b * be);
}

// out (T, C) row t = table row tokens[t] dequantised; grid (T, blocks of C / be per 64 threads)
__global__ void embedding_q_kernel(float* __restrict__ out, const uint8_t* __restrict__ table, DType t,
                                   const int32_t* __restrict__ tokens, int64_t C) {
  const int64_t be = block_elems(t), bb = block_bytes(t), nb = C / be;
  const int64_t b = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (b >= nb) return;
  const int64_t row = tokens[blockIdx.x];
  dequant_block(t, table + row * (nb * bb) + b * bb, out + int64_t(blockIdx.x) * C + b * be);
}

// y (M, N) = x (M, K) · wᵀ for M <= kSmallM: block n = weight row n, one warp.
__global__ void matvec_q_kernel(float* __restrict__ y, const float* __restrict__ x, const uint8_t* __restrict__ w,
                                DType t, int64_t M, int64_t N, int64_t K) {
  const int64_t be = block_elems(t), bb = block_bytes(t), nb = K / be;
  const int64_t n = blockIdx.x;
  const int lane = threadIdx.x;
  float acc[kSmallM];
  for (int m = 0; m < kSmallM; m++) acc[m] = 0.f;
  float vals[256];
  for (int64_t b = lane; b < nb; b += 32) {
    dequant_block(t, w + n * (nb * bb) + b * bb, vals);
    for (int64_t m = 0; m < M; m++) {
      const float* xb = x + m * K + b * be;
      float s = 0.f;
      for (int64_t j = 0; j < be; j++) s += vals[j] * xb[j];
      acc[m] += s;
    }
  }
  for (int64_t m = 0; m < M; m++) {
    float s = acc[m];
    for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) y[m * N + n] = s;
  }
}

void dequant_to(float* out, const void* w, DType t, int64_t rows, int64_t K) {
  const int64_t blocks = rows * (K / block_elems(t));
  LA_LAUNCH(blocks_for(blocks, 128), 128, 0, dequant_kernel)(out, static_cast<const uint8_t*>(w), t, rows, K);
  check_launch("dequantize");
}

}  // namespace

void dequantize_rows(float* out, const void* w, DType t, int64_t rows, int64_t K) {
  if (rows <= 0 || K <= 0) return;
  dequant_to(out, w, t, rows, K);
}

void matmul_forward_q(float* y, const float* x, const void* w, DType t, int64_t M, int64_t N, int64_t K) {
  if (M <= 0 || N <= 0) return;
  if (M <= kSmallM) {
    LA_LAUNCH(unsigned(N), 32, 0, matvec_q_kernel)(y, x, static_cast<const uint8_t*>(w), t, M, N, K);
    check_launch("matmul_forward (quantized matrix-vector)");
    return;
  }
  Scratch wf(size_t(N * K) * sizeof(float));
  dequant_to(wf.as<float>(), w, t, N, K);
  matmul_forward(y, x, wf.as<float>(), false, M, N, K);
}

void matmul_backward_q(float* dx, const float* dy, const void* w, DType t, int64_t M, int64_t N, int64_t K) {
  if (M <= 0 || K <= 0) return;
  Scratch wf(size_t(N * K) * sizeof(float));
  dequant_to(wf.as<float>(), w, t, N, K);
  matmul_backward(dx, dy, wf.as<float>(), false, M, N, K);
}

void embedding_forward_q(float* out, const void* table, DType t, const int32_t* tokens, int64_t T, int64_t C) {
  if (T <= 0 || C <= 0) return;
  const int64_t nb = C / block_elems(t);
  const dim3 grid(unsigned(T), blocks_for(nb, 64));
  LA_LAUNCH(grid, 64, 0, embedding_q_kernel)(out, static_cast<const uint8_t*>(table), t, tokens, C);
  check_launch("embedding_forward (quantized)");
}

}  // namespace la::cuda
