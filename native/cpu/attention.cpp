// Causal grouped-query attention of new tokens against a KV cache (inference).
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/parallel.h"
#include "kernels.h"
#include "simd.h"

namespace la::cpu {

void attention_forward(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t H,
                       int64_t Hkv, int64_t d, int64_t pos0) {
  const int64_t group = H / Hkv;
  const float scale = 1.f / std::sqrt(float(d));
  parallel_for(T * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> score(size_t(pos0 + T));
    for (int64_t i = i0; i < i1; i++) {
      int64_t t = i / H, h = i % H, kvh = h / group, keys = pos0 + t + 1;
      const float* qi = q + i * d;
      float mx = -INFINITY;
      for (int64_t s = 0; s < keys; s++) {
        score[s] = dot_f32(qi, k + (s * Hkv + kvh) * d, d) * scale;
        mx = std::max(mx, score[s]);
      }
      float sum = 0;
      for (int64_t s = 0; s < keys; s++) sum += (score[s] = std::exp(score[s] - mx));
      float* o = out + i * d;
      std::fill(o, o + d, 0.f);
      for (int64_t s = 0; s < keys; s++) {
        const float* vs = v + (s * Hkv + kvh) * d;
        float p = score[s] / sum;
        for (int64_t j = 0; j < d; j++) o[j] += p * vs[j];
      }
    }
  });
}

}  // namespace la::cpu
