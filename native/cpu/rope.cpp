#include <cmath>
#include <vector>

#include "../core/parallel.h"
#include "kernels.h"

namespace la::cpu {

void rope_forward(float* x, int64_t T, int64_t H, int64_t d, int64_t pos0, float theta, bool interleaved) {
  const int64_t half = d / 2;
  std::vector<double> freq(half);  // theta^(-2i/d)
  for (int64_t i = 0; i < half; i++) freq[i] = std::pow(double(theta), -double(2 * i) / double(d));
  parallel_for(T, std::max<int64_t>(1, 4096 / (H * d)), [&](int64_t t0, int64_t t1) {
    std::vector<float> cs(half), sn(half);
    for (int64_t t = t0; t < t1; t++) {
      double p = double(pos0 + t);
      for (int64_t i = 0; i < half; i++) {
        cs[i] = float(std::cos(p * freq[i]));
        sn[i] = float(std::sin(p * freq[i]));
      }
      for (int64_t h = 0; h < H; h++) {
        float* v = x + (t * H + h) * d;
        for (int64_t i = 0; i < half; i++) {
          float* a = interleaved ? v + 2 * i : v + i;
          float* b = interleaved ? v + 2 * i + 1 : v + i + half;
          float x0 = *a, x1 = *b;
          *a = x0 * cs[i] - x1 * sn[i];
          *b = x0 * sn[i] + x1 * cs[i];
        }
      }
    }
  });
}

}  // namespace la::cpu
