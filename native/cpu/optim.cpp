// The optimiser step and the gradient-norm helpers. All state is f32 (SPEC §4).
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/parallel.h"
#include "kernels.h"

namespace la::cpu {

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
  const bool small = w1d < 0.5;
  const float b2 = float(beta2), w2 = float(1.0 - beta2);
  const double bc1 = 1.0 - std::pow(beta1, double(step)), bc2 = 1.0 - std::pow(beta2, double(step));
  const float neg_step = float(-(lr / bc1)), bc2_sqrt = float(std::sqrt(bc2)), epsf = float(eps);
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) {
      float pi = p[i] * decay;
      float gi = g[i], mi = m[i];
      mi = small ? mi + w1 * (gi - mi) : gi - (gi - mi) * w1c;
      float vi = v[i] * b2;
      vi = vi + w2 * gi * gi;
      float denom = std::sqrt(vi) / bc2_sqrt + epsf;
      p[i] = pi + neg_step * mi / denom;
      m[i] = mi;
      v[i] = vi;
    }
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
