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

#if defined(__x86_64__) && defined(__GNUC__)
#define LA_CE_X86 1
#endif

namespace la::cpu {
namespace {

// One row: e = exp(l - max) into dl, sum in double (8 float lanes flushed every 256 elements), then
// dl = e * scale / sum, dl[target] -= scale. Returns this row's loss.
inline __attribute__((always_inline)) double ce_row(float* __restrict dl, const float* __restrict l, int32_t target,
                                                    int64_t V, float scale) {
  float m8[8];
  for (int k = 0; k < 8; k++) m8[k] = -INFINITY;
  int64_t j = 0;
  for (; j + 8 <= V; j += 8)
    for (int k = 0; k < 8; k++) m8[k] = l[j + k] > m8[k] ? l[j + k] : m8[k];
  for (; j < V; j++) m8[0] = l[j] > m8[0] ? l[j] : m8[0];
  float mx = m8[0];
  for (int k = 1; k < 8; k++) mx = m8[k] > mx ? m8[k] : mx;
  double sum = 0;
  for (int64_t b = 0; b < V; b += 256) {
    int64_t e = std::min(V, b + 256);
    float s8[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = b;
    for (; i + 8 <= e; i += 8)
      for (int k = 0; k < 8; k++) {
        float p = exp_poly(l[i + k] - mx);
        dl[i + k] = p;
        s8[k] += p;
      }
    for (; i < e; i++) {
      dl[i] = exp_poly(l[i] - mx);
      s8[0] += dl[i];
    }
    sum += double(((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7])));
  }
  float f = float(double(scale) / sum);
  for (int64_t i = 0; i < V; i++) dl[i] *= f;
  dl[target] -= scale;
  return double(mx) + std::log(sum) - double(l[target]);
}

#ifdef LA_CE_X86
__attribute__((target("avx2,fma"))) double ce_row_avx2(float* dl, const float* l, int32_t target, int64_t V,
                                                       float scale) {
  return ce_row(dl, l, target, V, scale);
}
const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
double ce_row_plain(float* dl, const float* l, int32_t target, int64_t V, float scale) {
  return ce_row(dl, l, target, V, scale);
}

}  // namespace

double cross_entropy(float* dlogits, const float* logits, const int32_t* targets, int64_t M, int64_t V, float scale) {
  std::vector<double> loss(static_cast<size_t>(M));
  parallel_for(M, std::max<int64_t>(1, 32768 / V), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; m++) {
#ifdef LA_CE_X86
      if (has_avx2) {
        loss[m] = ce_row_avx2(dlogits + m * V, logits + m * V, targets[m], V, scale);
        continue;
      }
#endif
      loss[m] = ce_row_plain(dlogits + m * V, logits + m * V, targets[m], V, scale);
    }
  });
  double total = 0;
  for (int64_t m = 0; m < M; m++) total += loss[m];
  return total;
}

}  // namespace la::cpu
