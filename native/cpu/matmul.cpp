// Frozen-weight matmul y = x · wᵀ. Few rows (decoding) stream the weights once through SIMD dot
// products on all cores, which is bound by memory bandwidth; many rows go to BLAS sgemm (bf16
// weights are widened to f32 one block of rows at a time).
#include <algorithm>
#include <vector>

#include "../core/bf16.h"
#include "../core/blas.h"
#include "../core/parallel.h"
#include "kernels.h"
#include "simd.h"

namespace la::cpu {
namespace {

constexpr int64_t kSmallM = 8;  // up to this many rows, one pass over w beats sgemm

template <class W>
void matmul_small(float* y, const float* x, const W* w, int64_t M, int64_t N, int64_t K) {
  // y (M, N): each weight row n is read once and dotted with every row of x
  parallel_for(N, std::max<int64_t>(1, 16384 / K), [&](int64_t n0, int64_t n1) {
    float acc[kSmallM];
    for (int64_t n = n0; n < n1; n++) {
      if constexpr (sizeof(W) == 4)
        dots_f32(acc, x, K, M, reinterpret_cast<const float*>(w) + n * K, K);
      else
        dots_bf16(acc, x, K, M, reinterpret_cast<const uint16_t*>(w) + n * K, K);
      for (int64_t m = 0; m < M; m++) y[m * N + n] = acc[m];
    }
  });
}

}  // namespace

void matmul_forward(float* y, const float* x, const float* w, int64_t M, int64_t N, int64_t K) {
  if (M <= kSmallM) return matmul_small(y, x, w, M, N, K);
  sgemm(false, true, int(M), int(N), int(K), 1.f, x, int(K), w, int(K), 0.f, y, int(N));
}

void matmul_forward_bf16(float* y, const float* x, const uint16_t* w, int64_t M, int64_t N, int64_t K) {
  if (M <= kSmallM) return matmul_small(y, x, w, M, N, K);
  // Widen blocks of about 4 MiB of weight rows, then y[:, n0:n0+nb] = x · w_blockᵀ.
  int64_t nb = std::max<int64_t>(64, (int64_t(1) << 20) / K);
  std::vector<float> block(size_t(std::min(nb, N)) * K);
  for (int64_t n0 = 0; n0 < N; n0 += nb) {
    int64_t rows = std::min(nb, N - n0);
    parallel_for(rows * K, 1 << 16, [&](int64_t i0, int64_t i1) {
      const uint16_t* src = w + n0 * K;
      for (int64_t i = i0; i < i1; i++) block[i] = bf16_to_f32(src[i]);
    });
    sgemm(false, true, int(M), int(rows), int(K), 1.f, x, int(K), block.data(), int(K), 0.f, y + n0, int(N));
  }
}

}  // namespace la::cpu
