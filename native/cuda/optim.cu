// The AdamW step (an elementwise grid-stride loop over float4 units) and the sum of squares for
// gradient norms (fixed chunks of kChunk elements, one block each, summed in double; then one block
// sums the chunks in a fixed tree: the same bits run after run).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "compat.h"
#include "reduce.cuh"
#include "kernels.h"

namespace la::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 8192;  // elements per sum_squares block (32 per thread)

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// The step's scalars, formed on the host in double and rounded to f32 exactly as cpu::adamw.
struct AdamScalars {
  float decay, w1, w1c, b2, w2, neg_step, bc2_sqrt, eps;
};

// One element, in PyTorch's (and the CPU body's) order. kSmall: lerp m + w1 (g - m) (weight < 0.5),
// else g - (g - m) (1 - w1).
template <bool kSmall>
__device__ inline void adam1(float& p, float g, float& m, float& v, const AdamScalars& c) {
  const float pi = p * c.decay;
  const float mi = kSmall ? m + c.w1 * (g - m) : g - (g - m) * c.w1c;
  float vi = v * c.b2;
  vi = vi + c.w2 * g * g;
  const float denom = sqrtf(vi) / c.bc2_sqrt + c.eps;
  p = pi + c.neg_step * mi / denom;
  m = mi;
  v = vi;
}

template <bool kSmall, bool VEC>
__global__ void adamw_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, int64_t n, AdamScalars c) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x, i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (VEC) {
    const int64_t n4 = n / 4;
    float4 *p4 = reinterpret_cast<float4*>(p), *m4 = reinterpret_cast<float4*>(m), *v4 = reinterpret_cast<float4*>(v);
    const float4* g4 = reinterpret_cast<const float4*>(g);
    for (int64_t i = i0; i < n4; i += stride) {
      float4 pp = p4[i], gg = g4[i], mm = m4[i], vv = v4[i];
      adam1<kSmall>(pp.x, gg.x, mm.x, vv.x, c);
      adam1<kSmall>(pp.y, gg.y, mm.y, vv.y, c);
      adam1<kSmall>(pp.z, gg.z, mm.z, vv.z, c);
      adam1<kSmall>(pp.w, gg.w, mm.w, vv.w, c);
      p4[i] = pp;
      m4[i] = mm;
      v4[i] = vv;
    }
    done = n4 * 4;
  }
  for (int64_t i = done + i0; i < n; i += stride) adam1<kSmall>(p[i], g[i], m[i], v[i], c);
}


// Block b sums x[b * kChunk, min(n, (b + 1) * kChunk)) into part[b]; with a single block it writes
// the f32 result itself. VEC: x 16-byte aligned (so is every chunk).
template <bool VEC>
__global__ void sum_squares_kernel(double* __restrict__ part, float* __restrict__ out, const float* __restrict__ x,
                                   int64_t n) {
  __shared__ double sh[32];
  const int64_t b0 = int64_t(blockIdx.x) * kChunk, e = n - b0 < kChunk ? n : b0 + kChunk;
  double s = 0;
  int64_t done = b0;
  if (VEC) {
    const float4* x4 = reinterpret_cast<const float4*>(x);
    const int64_t u1 = e / 4;
    for (int64_t u = b0 / 4 + threadIdx.x; u < u1; u += blockDim.x) {
      float4 q = x4[u];
      s += (squared(q.x) + squared(q.y)) + (squared(q.z) + squared(q.w));
    }
    done = u1 * 4;
  }
  for (int64_t i = done + threadIdx.x; i < e; i += blockDim.x) s += squared(x[i]);
  s = block_sum(s, sh);
  if (threadIdx.x == 0) {
    if (gridDim.x == 1)
      out[0] = float(s);
    else
      part[blockIdx.x] = s;
  }
}

}  // namespace

// Scalars as cpu::adamw (torch.optim.AdamW, single-tensor path):
//   param.mul_(1 - lr * wd); exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
//   denom = exp_avg_sq.sqrt() / sqrt(1 - beta2^step) + eps; param.addcdiv_(exp_avg, denom, -lr / (1 - beta1^step))
void adamw(float* p, const float* g, float* m, float* v, int64_t n, int64_t step, double lr, double beta1,
           double beta2, double eps, double weight_decay) {
  if (n <= 0) return;
  const double w1d = 1.0 - beta1;
  const float w1 = float(w1d);
  const double bc1 = 1.0 - std::pow(beta1, double(step)), bc2 = 1.0 - std::pow(beta2, double(step));
  const AdamScalars c{float(1.0 - lr * weight_decay), w1,   1.f - w1,       float(beta2), float(1.0 - beta2),
                      float(-(lr / bc1)),              float(std::sqrt(bc2)), float(eps)};
  const bool vec = aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v);
  const int64_t units = vec ? n / 4 : n;
  const unsigned grid =
      unsigned(std::max<int64_t>(1, std::min<int64_t>(blocks_for(units, kThreads), int64_t(multiprocessors()) * 8)));
  if (w1d < 0.5) {
    if (vec)
      LA_LAUNCH(grid, kThreads, 0, adamw_kernel<true, true>)(p, g, m, v, n, c);
    else
      LA_LAUNCH(grid, kThreads, 0, adamw_kernel<true, false>)(p, g, m, v, n, c);
  } else {
    if (vec)
      LA_LAUNCH(grid, kThreads, 0, adamw_kernel<false, true>)(p, g, m, v, n, c);
    else
      LA_LAUNCH(grid, kThreads, 0, adamw_kernel<false, false>)(p, g, m, v, n, c);
  }
  check_launch("adamw");
}

void sum_squares(float* out, const float* x, int64_t n) {
  if (n <= 0) {
    fill_zero(out, sizeof(float));
    return;
  }
  const int64_t blocks = (n + kChunk - 1) / kChunk;
  Scratch part(blocks > 1 ? size_t(blocks) * sizeof(double) : 0);
  const bool vec = aligned16(x);
  if (vec)
    LA_LAUNCH(unsigned(blocks), kThreads, 0, sum_squares_kernel<true>)(part.as<double>(), out, x, n);
  else
    LA_LAUNCH(unsigned(blocks), kThreads, 0, sum_squares_kernel<false>)(part.as<double>(), out, x, n);
  check_launch("sum_squares");
  if (blocks > 1) sum_to_float(out, part.as<double>(), blocks, "sum_squares (sum)");
}

}  // namespace la::cuda
