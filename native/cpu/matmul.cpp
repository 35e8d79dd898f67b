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

// Rows [r0, r1) of y = x · wᵀ for one row of x, as 4 sub-ranges walked in lockstep.
template <class W>
void matvec_range4(float* y, const float* x, const W* w, int64_t r0, int64_t r1, int64_t K) {
  int64_t len = (r1 - r0) / 4;
  for (int64_t i = 0; i < len; i++) {
    const W* rows[4];
    float out[4];
    for (int s = 0; s < 4; s++) rows[s] = w + (r0 + s * len + i) * K;
    if constexpr (sizeof(W) == 4) dot_rows4_f32(out, x, reinterpret_cast<const float* const*>(rows), K);
    else dot_rows4_bf16(out, x, reinterpret_cast<const uint16_t* const*>(rows), K);
    for (int s = 0; s < 4; s++) y[r0 + s * len + i] = out[s];
  }
  for (int64_t r = r0 + 4 * len; r < r1; r++) {
    if constexpr (sizeof(W) == 4) dots_f32(y + r, x, K, 1, reinterpret_cast<const float*>(w) + r * K, K);
    else dots_bf16(y + r, x, K, 1, reinterpret_cast<const uint16_t*>(w) + r * K, K);
  }
}

template <class W>
void matmul_small(float* y, const float* x, const W* w, int64_t M, int64_t N, int64_t K) {
  if (M == 1) {
    // A small matrix is in cache: one pass, a dot product per row. A large one streams from
    // memory: one contiguous range per thread, each walking 4 far-apart rows at once, keeps 4
    // memory streams in flight per core (one row at a time left the bandwidth ~30% short).
    if (N * K < 65536 || N < 16) {
      if constexpr (sizeof(W) == 4) dots_strided_f32(y, x, reinterpret_cast<const float*>(w), K, N, K);
      else dots_strided_bf16(y, x, reinterpret_cast<const uint16_t*>(w), K, N, K);
      return;
    }
    int64_t tasks = std::min<int64_t>(N / 16, num_threads());
    parallel_for(tasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; t++) matvec_range4(y, x, w, N * t / tasks, N * (t + 1) / tasks, K);
    });
    return;
  }
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
