// The norm family's CPU bodies: RMSNorm (forward, input gradient) and LayerNorm with bias (forward;
// backward with dw and db). One row per task; row statistics in double.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/parallel.h"
#include "kernels.h"

namespace la::cpu {
namespace {

// The sum of squares of a row in double (C can be 8192), in four interleaved partial sums: one
// chain of dependent adds made the row latency-bound. rmsnorm_backward recomputes it with this.
double row_sum_squares(const float* x, int64_t C) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t c = 0;
  for (; c + 4 <= C; c += 4) {
    s0 += double(x[c]) * x[c];
    s1 += double(x[c + 1]) * x[c + 1];
    s2 += double(x[c + 2]) * x[c + 2];
    s3 += double(x[c + 3]) * x[c + 3];
  }
  for (; c < C; c++) s0 += double(x[c]) * x[c];
  return (s0 + s1) + (s2 + s3);
}

// The mean of a row and 1/sqrt(var + eps) (biased variance), in double over two passes, rounded
// to f32: the forward and the backward use the same two values.
inline __attribute__((always_inline)) void row_moments(const float* x, int64_t C, float eps, float& mean, float& rstd) {
  double s[4] = {0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 4 <= C; c += 4)
    for (int j = 0; j < 4; j++) s[j] += x[c + j];
  for (; c < C; c++) s[0] += x[c];
  const double m = ((s[0] + s[1]) + (s[2] + s[3])) / double(C);
  double v[4] = {0, 0, 0, 0};
  for (c = 0; c + 4 <= C; c += 4)
    for (int j = 0; j < 4; j++) v[j] += (x[c + j] - m) * (x[c + j] - m);
  for (; c < C; c++) v[0] += (x[c] - m) * (x[c] - m);
  const double var = ((v[0] + v[1]) + (v[2] + v[3])) / double(C);
  mean = float(m);
  rstd = float(1.0 / std::sqrt(var + double(eps)));
}

// Rows per block of the column sums (dw, db): fixed, so that the sums do not depend on the
// thread count (each block sums its rows in order; the blocks are then added in order).
constexpr int64_t kRowBlock = 64;

// The row loops of LayerNorm, also compiled for AVX2 (8 float / 4 double lanes; chosen at load time).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LA_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define LA_CLONES
#endif

LA_CLONES void layernorm_row(float* ot, const float* xt, const float* w, const float* b, int64_t C, float eps) {
  float mean, rstd;
  row_moments(xt, C, eps, mean, rstd);
  for (int64_t c = 0; c < C; c++) ot[c] = (xt[c] - mean) * rstd * w[c] + b[c];
}

// One row of the backward: dx, and the row's dy * xhat and dy added to the block's sums pw, pb.
// xhat (C) is scratch. The loops are split so that each vectorises (the row sums in 4 partial
// doubles, the column updates lane by lane).
LA_CLONES void layernorm_row_backward(float* o, double* pw, double* pb, float* xhat, const float* gt, const float* xt,
                                      const float* w, int64_t C, float eps) {
  float mean, rstd;
  row_moments(xt, C, eps, mean, rstd);
  for (int64_t c = 0; c < C; c++) xhat[c] = (xt[c] - mean) * rstd;
  double sg[4] = {0, 0, 0, 0}, sgx[4] = {0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 4 <= C; c += 4)
    for (int j = 0; j < 4; j++) {
      const double g = double(gt[c + j]) * w[c + j];
      sg[j] += g;
      sgx[j] += g * xhat[c + j];
    }
  for (; c < C; c++) {
    const double g = double(gt[c]) * w[c];
    sg[0] += g;
    sgx[0] += g * xhat[c];
  }
  for (c = 0; c < C; c++) {
    pw[c] += double(gt[c]) * xhat[c];
    pb[c] += gt[c];
  }
  const float mg = float(((sg[0] + sg[1]) + (sg[2] + sg[3])) / double(C));
  const float mgx = float(((sgx[0] + sgx[1]) + (sgx[2] + sgx[3])) / double(C));
  for (c = 0; c < C; c++) o[c] = rstd * ((gt[c] * w[c] - mg) - xhat[c] * mgx);
}

}  // namespace

void rmsnorm_forward(float* out, const float* x, const float* w, int64_t T, int64_t C, float eps) {
  parallel_for(T, std::max<int64_t>(1, 32768 / C), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
      const float* xt = x + t * C;
      float* ot = out + t * C;
      double ss = row_sum_squares(xt, C);
      float inv = float(1.0 / std::sqrt(ss / double(C) + double(eps)));
      for (int64_t c = 0; c < C; c++) ot[c] = xt[c] * inv * w[c];
    }
  });
}

// y = x * w * r, r = 1/sqrt(mean(x^2) + eps):
//   dx = r * (dy * w) - x * r^3 / C * sum(dy * w * x)
// r is computed exactly as rmsnorm_forward does.
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

void layernorm_forward(float* out, const float* x, const float* w, const float* b, int64_t T, int64_t C, float eps) {
  parallel_for(T, std::max<int64_t>(1, 16384 / C), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) layernorm_row(out + t * C, x + t * C, w, b, C, eps);
  });
}

// y = xhat * w + b, xhat = (x - mean) * r, r = 1/sqrt(var + eps), g = dy * w:
//   dx = r * (g - mean(g) - xhat * mean(g * xhat));  dw = sum over rows of dy * xhat;  db = sum of dy
void layernorm_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int64_t T,
                        int64_t C, float eps) {
  const int64_t blocks = (T + kRowBlock - 1) / kRowBlock;
  std::vector<double> partial(size_t(blocks) * 2 * C);  // per block: dw (C), then db (C)
  parallel_for(blocks, 1, [&](int64_t k0, int64_t k1) {
    std::vector<float> xhat(static_cast<size_t>(C));
    for (int64_t k = k0; k < k1; k++) {
      double* pw = partial.data() + k * 2 * C;
      double* pb = pw + C;
      std::fill(pw, pw + 2 * C, 0.0);
      for (int64_t t = k * kRowBlock; t < std::min(T, (k + 1) * kRowBlock); t++)
        layernorm_row_backward(dx + t * C, pw, pb, xhat.data(), dy + t * C, x + t * C, w, C, eps);
    }
  });
  parallel_for(C, 256, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c++) {
      double sw = 0, sb = 0;
      for (int64_t k = 0; k < blocks; k++) {
        sw += partial[size_t(k * 2 * C + c)];
        sb += partial[size_t(k * 2 * C + C + c)];
      }
      dw[c] = float(sw);
      db[c] = float(sb);
    }
  });
}

}  // namespace la::cpu
