// The optimiser step and the gradient-norm helpers. All state is f32 (SPEC §4).
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/parallel.h"
#include "kernels.h"

#include "../core/x86.h"

namespace la::cpu {

namespace {

// One range of AdamW elements. kSmall picks PyTorch's lerp formula: m + w (g - m) for w < 0.5,
// else g - (g - m) (1 - w).
struct AdamScalars {
  float decay, w1, w1c, b2, w2, neg_step, bc2_sqrt, eps;
};

template <bool kSmall>
void adamw_range(float* p, const float* g, float* m, float* v, int64_t i0, int64_t i1, const AdamScalars& c) {
  for (int64_t i = i0; i < i1; i++) {
    float pi = p[i] * c.decay;
    float gi = g[i];
    float mi = kSmall ? m[i] + c.w1 * (gi - m[i]) : gi - (gi - m[i]) * c.w1c;
    float vi = v[i] * c.b2;
    vi = vi + c.w2 * gi * gi;
    float denom = std::sqrt(vi) / c.bc2_sqrt + c.eps;
    p[i] = pi + c.neg_step * mi / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

#ifdef LA_X86
// The same, 8 lanes at a time (std::sqrt does not vectorise while it may set errno).
template <bool kSmall>
__attribute__((target("avx2,fma"))) void adamw_range_avx2(float* p, const float* g, float* m, float* v, int64_t i0,
                                                           int64_t i1, const AdamScalars& c) {
  const __m256 decay = _mm256_set1_ps(c.decay), w1 = _mm256_set1_ps(c.w1), w1c = _mm256_set1_ps(c.w1c),
               b2 = _mm256_set1_ps(c.b2), w2 = _mm256_set1_ps(c.w2), ns = _mm256_set1_ps(c.neg_step),
               bs = _mm256_set1_ps(c.bc2_sqrt), eps = _mm256_set1_ps(c.eps);
  int64_t i = i0;
  for (; i + 8 <= i1; i += 8) {
    __m256 pi = _mm256_mul_ps(_mm256_loadu_ps(p + i), decay);
    __m256 gi = _mm256_loadu_ps(g + i), mo = _mm256_loadu_ps(m + i);
    __m256 mi = kSmall ? _mm256_add_ps(mo, _mm256_mul_ps(w1, _mm256_sub_ps(gi, mo)))
                       : _mm256_sub_ps(gi, _mm256_mul_ps(_mm256_sub_ps(gi, mo), w1c));
    __m256 vi = _mm256_mul_ps(_mm256_loadu_ps(v + i), b2);
    vi = _mm256_add_ps(vi, _mm256_mul_ps(_mm256_mul_ps(w2, gi), gi));
    __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bs), eps);
    _mm256_storeu_ps(p + i, _mm256_add_ps(pi, _mm256_div_ps(_mm256_mul_ps(ns, mi), denom)));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
  }
  adamw_range<kSmall>(p, g, m, v, i, i1, c);
}
const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif

}  // namespace

// torch.optim.AdamW, single-tensor (non-foreach) path, in its order; scalars are formed in double
// and applied as f32 (as PyTorch does for f32 tensors):
//   param.mul_(1 - lr * wd)
//   exp_avg.lerp_(grad, 1 - beta1)                        m + w (g - m)   (w < 0.5)
//   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
//   step_size = lr / (1 - beta1^step);  bc2_sqrt = sqrt(1 - beta2^step)
//   denom = exp_avg_sq.sqrt() / bc2_sqrt + eps
//   param.addcdiv_(exp_avg, denom, value=-step_size)
void adamw(float* p, const float* g, float* m, float* v, int64_t n, int64_t step, double lr, double beta1,
           double beta2, double eps, double weight_decay) {
  const float decay = float(1.0 - lr * weight_decay);
  const double w1d = 1.0 - beta1;
  const float w1 = float(w1d), w1c = 1.f - w1;  // lerp weight, and 1 - weight for the w >= 0.5 branch
  const float b2 = float(beta2), w2 = float(1.0 - beta2);
  const double bc1 = 1.0 - std::pow(beta1, double(step)), bc2 = 1.0 - std::pow(beta2, double(step));
  const float neg_step = float(-(lr / bc1)), bc2_sqrt = float(std::sqrt(bc2)), epsf = float(eps);
  const AdamScalars c{decay, w1, w1c, b2, w2, neg_step, bc2_sqrt, epsf};
  const bool small = w1d < 0.5;
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
#ifdef LA_X86
    if (has_avx2) {
      if (small) return adamw_range_avx2<true>(p, g, m, v, i0, i1, c);
      return adamw_range_avx2<false>(p, g, m, v, i0, i1, c);
    }
#endif
    if (small) return adamw_range<true>(p, g, m, v, i0, i1, c);
    adamw_range<false>(p, g, m, v, i0, i1, c);
  });
}

double sum_squares(const float* x, int64_t n) {
  // Fixed blocks, each summed in double lanes, then the blocks in order: thread-count independent.
  const int64_t B = 1 << 14;
  int64_t blocks = (n + B - 1) / B;
  std::vector<double> part(static_cast<size_t>(blocks));
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++) {
      int64_t i = b * B, e = std::min(n, i + B);
      double s[4] = {0, 0, 0, 0};
      for (; i + 4 <= e; i += 4)
        for (int l = 0; l < 4; l++) s[l] += double(x[i + l]) * double(x[i + l]);
      for (; i < e; i++) s[0] += double(x[i]) * double(x[i]);
      part[b] = (s[0] + s[1]) + (s[2] + s[3]);
    }
  });
  double total = 0;
  for (double p : part) total += p;
  return total;
}

// s = 0 clears (a NaN or Inf times 0 would stay NaN): scaleInPlace(g, 0) zeroes accumulators.
void scale_inplace(float* x, int64_t n, float s) {
  parallel_for(n, 1 << 15, [&](int64_t i0, int64_t i1) {
    if (s == 0.f)
      std::fill(x + i0, x + i1, 0.f);
    else
      for (int64_t i = i0; i < i1; i++) x[i] *= s;
  });
}

}  // namespace la::cpu
