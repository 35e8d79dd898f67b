// Cross-entropy of logits (M, V), one block per row:
//   pass 1 (one read): each thread keeps a running max and the sum of exp(l - max) in double over
//     its elements, taking 16 at a time and rescaling its sum only when a group raises its max (so
//     at most a few double exps per thread); the block then combines them around the row max;
//   pass 2 (read + write): dlogits = exp(l - max) * (scale / sum), then the target entry -= scale.
// The target logit is read before anything is written, so dlogits may be logits. Each row's loss
// (lse - logit[target], double) goes to a scratch array that one block sums in a fixed order.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "compat.h"
#include "reduce.cuh"
#include "kernels.h"

namespace la::cuda {
namespace {

constexpr int kMaxThreads = 1024;
constexpr int kGroup = 4;  // units (float4 or float) a thread loads at once

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Running (max, sum of exp(x - max)) of one thread: adds n values at once.
template <int N>
__device__ inline void online_add(float& mx, double& sum, const float (&x)[N]) {
  float gm = x[0];
  for (int k = 1; k < N; k++) gm = fmaxf(gm, x[k]);
  if (gm > mx) {  // rare after the first groups; sum is 0 while mx is -inf
    sum = mx == -INFINITY ? 0.0 : sum * exp(double(mx) - double(gm));
    mx = gm;
  }
  if (mx == -INFINITY) return;  // only -inf so far: exps of 0 (not -inf - -inf = NaN)
  float part = 0.f;
  for (int k = 0; k < N; k++) part += expf(x[k] - mx);
  sum += double(part);
}

// grid M; row_loss (M) double. VEC: float4 units (V % 4 == 0, aligned rows).
// (Up to 1024 threads: __launch_bounds__ keeps that launchable wherever the PTX is compiled.)
template <bool VEC>
__global__ void __launch_bounds__(kMaxThreads)
    cross_entropy_kernel(double* __restrict__ row_loss, float* dlogits, const float* logits,
                         const int32_t* __restrict__ targets, int64_t V, float scale) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  const int64_t m = blockIdx.x;
  const float* l = logits + m * V;
  float* dl = dlogits + m * V;
  const int32_t tgt = targets[m];
  const float lt = l[tgt];  // before any write (in place)

  float mx = -INFINITY;
  double sum = 0;
  if (VEC) {
    const float4* l4 = reinterpret_cast<const float4*>(l);
    const int64_t units = V / 4, step = int64_t(blockDim.x) * kGroup;
    int64_t u = threadIdx.x;
    for (; u + int64_t(blockDim.x) * (kGroup - 1) < units; u += step) {
      float4 q[kGroup];
      for (int k = 0; k < kGroup; k++) q[k] = l4[u + int64_t(k) * blockDim.x];  // independent loads in flight
      float x[4 * kGroup];
      for (int k = 0; k < kGroup; k++) {
        x[4 * k] = q[k].x;
        x[4 * k + 1] = q[k].y;
        x[4 * k + 2] = q[k].z;
        x[4 * k + 3] = q[k].w;
      }
      online_add(mx, sum, x);
    }
    for (; u < units; u += blockDim.x) {
      float4 q = l4[u];
      const float x[4] = {q.x, q.y, q.z, q.w};
      online_add(mx, sum, x);
    }
  } else {
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float x[1] = {l[j]};
      online_add(mx, sum, x);
    }
  }
  const float row_max = block_max(mx, shf);
  // Threads without elements (mx = -inf) add 0.
  const double total = block_sum(mx == -INFINITY ? 0.0 : sum * exp(double(mx) - double(row_max)), shd);
  const float f = float(double(scale) / total);

  if (VEC) {
    const float4* l4 = reinterpret_cast<const float4*>(l);
    float4* d4 = reinterpret_cast<float4*>(dl);
    for (int64_t u = threadIdx.x; u < V / 4; u += blockDim.x) {
      float4 q = l4[u];
      d4[u] = make_float4(expf(q.x - row_max) * f, expf(q.y - row_max) * f, expf(q.z - row_max) * f,
                          expf(q.w - row_max) * f);
    }
  } else {
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) dl[j] = expf(l[j] - row_max) * f;
  }
  __syncthreads();  // the block's writes are visible to thread 0
  if (threadIdx.x == 0) {
    dl[tgt] -= scale;
    row_loss[m] = double(row_max) + log(total) - double(lt);
  }
}

}  // namespace

void cross_entropy(float* loss, float* dlogits, const float* logits, const int32_t* targets, int64_t M, int64_t V,
                   float scale) {
  if (M <= 0 || V <= 0) {
    fill_zero(loss, sizeof(float));
    return;
  }
  Scratch row_loss(size_t(M) * sizeof(double));
  const bool vec = V % 4 == 0 && aligned16(logits) && aligned16(dlogits);
  // About 2 groups per thread for V = 32000, 8 for 128256: enough bytes in flight per SM.
  const int64_t units = vec ? V / 4 : V;
  const unsigned threads =
      unsigned(std::min<int64_t>(kMaxThreads, std::max<int64_t>(32, (units / (2 * kGroup) + 31) / 32 * 32)));
  double* rows = row_loss.as<double>();
  if (vec)
    LA_LAUNCH(unsigned(M), threads, 0, cross_entropy_kernel<true>)(rows, dlogits, logits, targets, V, scale);
  else
    LA_LAUNCH(unsigned(M), threads, 0, cross_entropy_kernel<false>)(rows, dlogits, logits, targets, V, scale);
  check_launch("cross_entropy");
  sum_to_float(loss, rows, M, "cross_entropy (sum)");
}

}  // namespace la::cuda
