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
  // A (token, head) item costs ~4·keys·d flops: at decode a small model's heads are a few hundred
  // ns each, less than waking a pool thread, so threads share only chunks worth ~64k flops.
  const int64_t grain = std::max<int64_t>(1, 16384 / ((pos0 + T) * d));
  parallel_for(T * H, grain, [&](int64_t i0, int64_t i1) {
    thread_local std::vector<float> score;  // kept: no allocation per call
    score.resize(size_t(pos0 + T));
    float* e = score.data();
    for (int64_t i = i0; i < i1; i++) {
      int64_t t = i / H, h = i % H, kvh = h / group, keys = pos0 + t + 1;
      const float* qi = q + i * d;
      const int64_t ld = Hkv * d;  // cache row stride
      dots_strided_f32(e, qi, k + kvh * d, ld, keys, d);  // unscaled scores
      // softmax(scale · e): exp(scale e - scale max), vectorised, summed in a fixed order
      float mx = max_of(e, keys);
      float inv = 1.f / exp_sum(e, e, keys, scale, mx * scale);
      for (int64_t s = 0; s < keys; s++) e[s] *= inv;
      weighted_rows_f32(out + i * d, e, v + kvh * d, ld, keys, d);
    }
  });
}

}  // namespace la::cpu
