// RMSNorm forward and input gradient: one block per row (T rows of C). The row sums are formed in
// double, as the CPU body's, and reduced in a fixed tree (warp shuffles, then one value per warp in
// shared memory), so a row's result does not depend on scheduling. The second pass re-reads the
// row, which the first pass has just brought into L1/L2.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "compat.h"
#include "reduce.cuh"
#include "kernels.h"

namespace la::cuda {
namespace {

constexpr int kMaxThreads = 256;

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// A multiple of 32 up to kMaxThreads, about one unit per thread for short rows.
inline unsigned row_threads(int64_t units) {
  return unsigned(std::min<int64_t>(kMaxThreads, std::max<int64_t>(32, (units + 31) / 32 * 32)));
}


// 1 / sqrt(mean(x^2) + eps) rounded to f32, exactly as the CPU body forms it.
__device__ inline float inv_rms(double ss, int64_t C, float eps) {
  return float(1.0 / sqrt(ss / double(C) + double(eps)));
}

// out (T, C) = x * inv_rms * w; grid T, VEC: float4 units (C % 4 == 0, aligned rows).
template <bool VEC>
__global__ void rmsnorm_forward_kernel(float* __restrict__ out, const float* __restrict__ x,
                                       const float* __restrict__ w, int64_t C, float eps) {
  const int64_t t = blockIdx.x;
  const float* xt = x + t * C;
  float* ot = out + t * C;
  __shared__ double sh[2][32];
  double ss = 0, unused = 0;
  if (VEC) {
    const float4* x4 = reinterpret_cast<const float4*>(xt);
    for (int64_t u = threadIdx.x; u < C / 4; u += blockDim.x) {
      float4 v = x4[u];
      ss += squared(v.x) + squared(v.y) + (squared(v.z) + squared(v.w));
    }
  } else {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += squared(xt[c]);
  }
  block_sum2(ss, unused, sh);
  const float inv = inv_rms(ss, C, eps);
  if (VEC) {
    const float4 *x4 = reinterpret_cast<const float4*>(xt), *w4 = reinterpret_cast<const float4*>(w);
    for (int64_t u = threadIdx.x; u < C / 4; u += blockDim.x) {
      float4 v = x4[u], g = w4[u];
      reinterpret_cast<float4*>(ot)[u] =
          make_float4(v.x * inv * g.x, v.y * inv * g.y, v.z * inv * g.z, v.w * inv * g.w);
    }
  } else {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ot[c] = xt[c] * inv * w[c];
  }
}

// dx = r * (dy * w) - coef * x, r = inv_rms, coef = r^3 / C * sum(dy * w * x) (in double).
__device__ inline float rms_dx(float g, float w, float x, float r, float coef) { return r * (g * w) - coef * x; }
__device__ inline double gwx(float g, float w, float x) { return double(g) * double(w) * double(x); }

template <bool VEC>
__global__ void rmsnorm_backward_kernel(float* __restrict__ dx, const float* __restrict__ dy,
                                        const float* __restrict__ x, const float* __restrict__ w, int64_t C,
                                        float eps) {
  const int64_t t = blockIdx.x;
  const float* xt = x + t * C;
  const float* gt = dy + t * C;
  float* o = dx + t * C;
  __shared__ double sh[2][32];
  double ss = 0, gx = 0;
  if (VEC) {
    const float4 *x4 = reinterpret_cast<const float4*>(xt), *g4 = reinterpret_cast<const float4*>(gt),
                 *w4 = reinterpret_cast<const float4*>(w);
    for (int64_t u = threadIdx.x; u < C / 4; u += blockDim.x) {
      float4 v = x4[u], g = g4[u], k = w4[u];
      ss += squared(v.x) + squared(v.y) + (squared(v.z) + squared(v.w));
      gx += gwx(g.x, k.x, v.x) + gwx(g.y, k.y, v.y) + (gwx(g.z, k.z, v.z) + gwx(g.w, k.w, v.w));
    }
  } else {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      ss += squared(xt[c]);
      gx += gwx(gt[c], w[c], xt[c]);
    }
  }
  block_sum2(ss, gx, sh);
  const float r = inv_rms(ss, C, eps);
  const float coef = float(double(r) * r * r * gx / double(C));
  if (VEC) {
    const float4 *x4 = reinterpret_cast<const float4*>(xt), *g4 = reinterpret_cast<const float4*>(gt),
                 *w4 = reinterpret_cast<const float4*>(w);
    for (int64_t u = threadIdx.x; u < C / 4; u += blockDim.x) {
      float4 v = x4[u], g = g4[u], k = w4[u];
      reinterpret_cast<float4*>(o)[u] = make_float4(rms_dx(g.x, k.x, v.x, r, coef), rms_dx(g.y, k.y, v.y, r, coef),
                                                    rms_dx(g.z, k.z, v.z, r, coef), rms_dx(g.w, k.w, v.w, r, coef));
    }
  } else {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = rms_dx(gt[c], w[c], xt[c], r, coef);
  }
}

}  // namespace

void rmsnorm_forward(float* out, const float* x, const float* w, int64_t T, int64_t C, float eps) {
  if (T <= 0 || C <= 0) return;
  const bool vec = C % 4 == 0 && aligned16(out) && aligned16(x) && aligned16(w);
  const unsigned threads = row_threads(vec ? C / 4 : C);
  if (vec)
    LA_LAUNCH(unsigned(T), threads, 0, rmsnorm_forward_kernel<true>)(out, x, w, C, eps);
  else
    LA_LAUNCH(unsigned(T), threads, 0, rmsnorm_forward_kernel<false>)(out, x, w, C, eps);
  check_launch("rmsnorm_forward");
}

void rmsnorm_backward(float* dx, const float* dy, const float* x, const float* w, int64_t T, int64_t C, float eps) {
  if (T <= 0 || C <= 0) return;
  const bool vec = C % 4 == 0 && aligned16(dx) && aligned16(dy) && aligned16(x) && aligned16(w);
  const unsigned threads = row_threads(vec ? C / 4 : C);
  if (vec)
    LA_LAUNCH(unsigned(T), threads, 0, rmsnorm_backward_kernel<true>)(dx, dy, x, w, C, eps);
  else
    LA_LAUNCH(unsigned(T), threads, 0, rmsnorm_backward_kernel<false>)(dx, dy, x, w, C, eps);
  check_launch("rmsnorm_backward");
}

}  // namespace la::cuda
