// Input gradients of the frozen model's ops (no weight gradient is ever formed) and the row
// gather/scatter that move activations between packed rows and loss rows.
//
// Dimension letters: T tokens (rows), C channels, N packed tokens, H heads, d head size, M/N/K
// matmul sizes. PyTorch formula beside each loop.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/bf16.h"
#include "../core/blas.h"
#include "../core/parallel.h"
#include "kernels.h"

namespace la::cpu {

// y = x * w * r, r = 1/sqrt(mean(x^2) + eps):
//   dx = r * (dy * w) - x * r^3 / C * sum(dy * w * x)
// r is computed exactly as rmsnorm_forward does.
double row_sum_squares(const float* x, int64_t C);  // norm.cpp: rmsnorm_forward's sum

void rmsnorm_backward(float* dx, const float* dy, const float* x, const float* w, int64_t T, int64_t C, float eps) {
  parallel_for(T, std::max<int64_t>(1, 16384 / C), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
      const float* xt = x + t * C;
      const float* gt = dy + t * C;
      float* o = dx + t * C;
      const double ss = row_sum_squares(xt, C);
      double g0 = 0, g1 = 0, g2 = 0, g3 = 0;  // interleaved partial sums (not one latency-bound chain)
      int64_t c = 0;
      for (; c + 4 <= C; c += 4) {
        g0 += double(gt[c]) * w[c] * xt[c];
        g1 += double(gt[c + 1]) * w[c + 1] * xt[c + 1];
        g2 += double(gt[c + 2]) * w[c + 2] * xt[c + 2];
        g3 += double(gt[c + 3]) * w[c + 3] * xt[c + 3];
      }
      for (; c < C; c++) g0 += double(gt[c]) * w[c] * xt[c];
      const double gx = (g0 + g1) + (g2 + g3);
      float r = float(1.0 / std::sqrt(ss / double(C) + double(eps)));
      float coef = float(double(r) * r * r * gx / double(C));
      for (int64_t c = 0; c < C; c++) o[c] = r * (gt[c] * w[c]) - coef * xt[c];
    }
  });
}

// out = silu(a) * b, silu(a) = a * sigmoid(a):
//   da = dout * b * sigmoid(a) * (1 + a * (1 - sigmoid(a)));  db = dout * silu(a)
// exp(-a) comes from the vectorised exp_sum in blocks (written into db, then overwritten).
void swiglu_backward(float* da, float* db, const float* dout, const float* a, const float* b, int64_t N) {
  parallel_for(N, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t j0 = i0; j0 < i1; j0 += 4096) {
      int64_t j1 = std::min(i1, j0 + 4096);
      exp_sum(db + j0, a + j0, j1 - j0, -1.f, 0.f);  // db = exp(-a)
      for (int64_t i = j0; i < j1; i++) {
        float s = 1.f / (1.f + db[i]);
        da[i] = dout[i] * b[i] * s * (1.f + a[i] * (1.f - s));
        db[i] = dout[i] * a[i] * s;
      }
    }
  });
}

// y = x · wᵀ  =>  dx (M, K) = dy (M, N) · w (N, K)
void matmul_backward(float* dx, const float* dy, const float* w, int64_t M, int64_t N, int64_t K) {
  sgemm(false, false, int(M), int(K), int(N), 1.f, dy, int(N), w, int(K), 0.f, dx, int(K));
}

void matmul_backward_bf16(float* dx, const float* dy, const uint16_t* w, int64_t M, int64_t N, int64_t K) {
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

void gather_rows(void* out, const void* x, const int32_t* idx, int64_t M, int64_t row_bytes) {
  char* o = static_cast<char*>(out);
  const char* s = static_cast<const char*>(x);
  parallel_for(M, std::max<int64_t>(1, 65536 / row_bytes), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; m++)
      std::memcpy(o + m * row_bytes, s + int64_t(idx[m]) * row_bytes, size_t(row_bytes));
  });
}

// Threads own column ranges and walk all rows in order: repeated indices accumulate in index
// order, with no races and the same result for any thread count.
void scatter_add_rows(float* dst, const int32_t* idx, const float* src, int64_t M, int64_t C) {
  int64_t grain = std::max<int64_t>(64, (int64_t(1) << 16) / std::max<int64_t>(1, M));
  parallel_for(C, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t m = 0; m < M; m++) {
      float* d = dst + int64_t(idx[m]) * C;
      const float* s = src + m * C;
      for (int64_t c = c0; c < c1; c++) d[c] += s[c];
    }
  });
}

}  // namespace la::cpu
