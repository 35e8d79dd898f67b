// Cross-entropy of next-token logits. M rows (loss tokens), V vocabulary.
//
//   lse_m = log sum_j exp(logits[m, j])              (stable: shifted by the row maximum)
//   loss  = sum_m lse_m - logits[m, target_m]        (summed in double, in row order)
//   dlogits[m] = scale * (softmax(logits[m]) - onehot(target_m))
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/parallel.h"
#include "kernels.h"

namespace la::cpu {

double cross_entropy(float* dlogits, const float* logits, const int32_t* targets, int64_t M, int64_t V, float scale) {
  std::vector<double> loss(static_cast<size_t>(M));
  parallel_for(M, std::max<int64_t>(1, 32768 / V), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; m++) {
      const float* l = logits + m * V;
      float* dl = dlogits + m * V;
      float mx = max_of(l, V);
      // e = exp(l - max) into dl; the row sum in double over blocks of 256 (f32 lanes inside)
      double sum = 0;
      for (int64_t b = 0; b < V; b += 256)
        sum += double(exp_sum(dl + b, l + b, std::min<int64_t>(256, V - b), 1.f, mx));
      float f = float(double(scale) / sum);
      for (int64_t j = 0; j < V; j++) dl[j] *= f;
      int32_t t = targets[m];
      dl[t] -= scale;
      loss[m] = double(mx) + std::log(sum) - double(l[t]);
    }
  });
  double total = 0;
  for (int64_t m = 0; m < M; m++) total += loss[m];
  return total;
}

}  // namespace la::cpu
