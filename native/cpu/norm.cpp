#include <algorithm>
#include <cmath>

#include "../core/parallel.h"
#include "kernels.h"

namespace la::cpu {

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

}  // namespace la::cpu
