// The matmul family's CPU bodies. Frozen-weight matmul y = x · wᵀ: few rows (decoding) stream the
// weights once through SIMD dot products on all cores, which is bound by memory bandwidth; many
// rows go to BLAS sgemm (bf16 weights are widened to f32 one block of rows at a time). Its input
// gradient; and for trainable f32 weights the weight gradient, the bias add and the bias gradient.
#include <algorithm>
#include <vector>

#include "../core/bf16.h"
#include "../core/bf16_gemm.h"
#include "../core/blas.h"
#include "../core/parallel.h"
#include "../core/quant.h"
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

// A small matrix is in cache: one pass, a dot product per row. A large one streams from memory:
// one contiguous range per thread, each walking 4 far-apart rows at once, keeps 4 memory streams in
// flight per core (one row at a time left the bandwidth ~30% short).
bool matvec_is_small(int64_t N, int64_t K) { return N * K < 65536 || N < 16; }
int64_t matvec_tasks(int64_t N) { return std::min<int64_t>(N / 16, num_threads()); }

template <class W>
void matvec_small(float* y, const float* x, const W* w, int64_t N, int64_t K) {
  if constexpr (sizeof(W) == 4) dots_strided_f32(y, x, reinterpret_cast<const float*>(w), K, N, K);
  else dots_strided_bf16(y, x, reinterpret_cast<const uint16_t*>(w), K, N, K);
}

// y_i = x · w_iᵀ for every target: the same pieces as one call each (so the same sums), as one
// parallel region
template <class W>
void matvec_many_of(const MatvecTarget* targets, int count, const float* x, int64_t K) {
  struct Piece {
    int i;
    int64_t r0, r1;  // rows; r1 < 0: the whole small matrix in one pass
  };
  std::vector<Piece> pieces;
  for (int i = 0; i < count; i++) {
    const int64_t N = targets[i].N;
    if (matvec_is_small(N, K)) {
      pieces.push_back({i, 0, -1});
      continue;
    }
    const int64_t tasks = matvec_tasks(N);
    for (int64_t t = 0; t < tasks; t++) pieces.push_back({i, N * t / tasks, N * (t + 1) / tasks});
  }
  parallel_for(int64_t(pieces.size()), 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; p++) {
      const Piece& c = pieces[size_t(p)];
      const MatvecTarget& t = targets[c.i];
      const W* w = static_cast<const W*>(t.w);
      if (c.r1 < 0) matvec_small(t.y, x, w, t.N, K);
      else matvec_range4(t.y, x, w, c.r0, c.r1, K);
    }
  });
}

template <class W>
void matmul_small(float* y, const float* x, const W* w, int64_t M, int64_t N, int64_t K) {
  if (M == 1) {
    if (matvec_is_small(N, K)) return matvec_small(y, x, w, N, K);
    int64_t tasks = matvec_tasks(N);
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

void matvec_many(const MatvecTarget* targets, int count, const float* x, DType t, int64_t K) {
  if (is_quantized(t)) return matvec_many_q(targets, count, x, t, K);
  if (t == DType::BF16) return matvec_many_of<uint16_t>(targets, count, x, K);
  matvec_many_of<float>(targets, count, x, K);
}

void matmul_forward(float* y, const float* x, const float* w, int64_t M, int64_t N, int64_t K) {
  if (M <= kSmallM) return matmul_small(y, x, w, M, N, K);
  sgemm(false, true, int(M), int(N), int(K), 1.f, x, int(K), w, int(K), 0.f, y, int(N));
}

void matmul_forward_bf16(float* y, const float* x, const uint16_t* w, int64_t M, int64_t N, int64_t K) {
  if (M <= kSmallM) return matmul_small(y, x, w, M, N, K);
  // precision "medium": y = bf16(x) · wᵀ, B(k, n) = w[n*K + k]
  if (matmul_precision() == MatmulPrecision::Medium) return bf16_gemm(M, N, K, x, K, w, 1, K, y, N);
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

// y = x · wᵀ  =>  dx (M, K) = dy (M, N) · w (N, K)
void matmul_backward(float* dx, const float* dy, const float* w, int64_t M, int64_t N, int64_t K) {
  sgemm(false, false, int(M), int(K), int(N), 1.f, dy, int(N), w, int(K), 0.f, dx, int(K));
}

void matmul_backward_bf16(float* dx, const float* dy, const uint16_t* w, int64_t M, int64_t N, int64_t K) {
  // precision "medium": dx = bf16(dy) · w, B(n, k) = w[n*K + k]
  if (M > kSmallM && matmul_precision() == MatmulPrecision::Medium) return bf16_gemm(M, K, N, dy, N, w, K, 1, dx, K);
  // Widen blocks of about 4 MiB of weight rows (as matmul_forward_bf16), then
  // dx += dy[:, n0:n0+nb] · w_block, the first block overwriting dx.
  int64_t nb = std::max<int64_t>(64, (int64_t(1) << 20) / K);
  std::vector<float> block(size_t(std::min(nb, N)) * K);
  for (int64_t n0 = 0; n0 < N; n0 += nb) {
    int64_t rows = std::min(nb, N - n0);
    parallel_for(rows * K, 1 << 16, [&](int64_t i0, int64_t i1) {
      const uint16_t* src = w + n0 * K;
      for (int64_t i = i0; i < i1; i++) block[i] = bf16_to_f32(src[i]);
    });
    sgemm(false, false, int(M), int(K), int(rows), 1.f, dy + n0, int(N), block.data(), int(K), n0 == 0 ? 0.f : 1.f,
          dx, int(K));
  }
}


// y = x · Wᵀ  =>  dW (N, K) = dyᵀ (N, M) · x (M, K). sgemm splits the output, never the sum over M,
// between threads, so the result does not depend on the thread count.
void matmul_weight_grad(float* dw, const float* dy, const float* x, int64_t M, int64_t N, int64_t K) {
  sgemm(true, false, int(N), int(K), int(M), 1.f, dy, int(N), x, int(K), 0.f, dw, int(K));
}

void add_bias(float* x, const float* b, int64_t M, int64_t N) {
  parallel_for(M, std::max<int64_t>(1, 32768 / N), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; m++) {
      float* xm = x + m * N;
      for (int64_t n = 0; n < N; n++) xm[n] += b[n];
    }
  });
}

// Column sums in double over fixed blocks of rows (each block in row order, then the blocks in
// order): the same result for any thread count.
void bias_grad(float* db, const float* dy, int64_t M, int64_t N) {
  constexpr int64_t kRowBlock = 64;
  const int64_t blocks = (M + kRowBlock - 1) / kRowBlock;
  std::vector<double> partial(size_t(blocks * N));
  parallel_for(blocks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; k++) {
      double* p = partial.data() + k * N;
      std::fill(p, p + N, 0.0);
      for (int64_t m = k * kRowBlock; m < std::min(M, (k + 1) * kRowBlock); m++)
        for (int64_t n = 0; n < N; n++) p[n] += dy[m * N + n];
    }
  });
  parallel_for(N, 256, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++) {
      double s = 0;
      for (int64_t k = 0; k < blocks; k++) s += partial[size_t(k * N + n)];
      db[n] = float(s);
    }
  });
}

}  // namespace la::cpu
