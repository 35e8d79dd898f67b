#include <cmath>

#include "../core/parallel.h"
#include "kernels.h"

namespace la::cpu {

void rmsnorm_forward(float* out, const float* x, const float* w, int64_t T, int64_t C, float eps) {
  parallel_for(T, std::max<int64_t>(1, 32768 / C), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
      const float* xt = x + t * C;
      float* ot = out + t * C;
      double ss = 0;  // sum of squares in double: C can be 8192
      for (int64_t c = 0; c < C; c++) ss += double(xt[c]) * xt[c];
      float inv = float(1.0 / std::sqrt(ss / double(C) + double(eps)));
      for (int64_t c = 0; c < C; c++) ot[c] = xt[c] * inv * w[c];
    }
  });
}

}  // namespace la::cpu
