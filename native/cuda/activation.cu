// The activation family's CUDA bodies: SwiGLU, exact GELU and quick_gelu, forward and backward,
// each formula in the CPU body's order (cpu/activation.cpp). Grid-stride loops over float4 units
// when every pointer is 16-byte aligned (views may not be), with a scalar tail.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "compat.h"
#include "kernels.h"

namespace la::cuda {
namespace {

constexpr int kThreads = 256;

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Blocks for a grid-stride loop over `units`: one full wave of kThreads-thread blocks at most.
inline unsigned grid_for(int64_t units) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(blocks_for(units, kThreads), int64_t(multiprocessors()) * 8)));
}

// ---- SwiGLU -------------------------------------------------------------------------------------
// silu(a) * b = a / (1 + exp(-a)) * b, in the CPU body's order.
__device__ inline float swiglu1(float a, float b) { return a / (1.f + expf(-a)) * b; }

template <bool VEC>
__global__ void swiglu_forward_kernel(float* __restrict__ out, const float* __restrict__ a,
                                      const float* __restrict__ b, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x, i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (VEC) {
    const int64_t n4 = n / 4;
    for (int64_t i = i0; i < n4; i += stride) {
      float4 x = reinterpret_cast<const float4*>(a)[i], y = reinterpret_cast<const float4*>(b)[i];
      reinterpret_cast<float4*>(out)[i] = make_float4(swiglu1(x.x, y.x), swiglu1(x.y, y.y), swiglu1(x.z, y.z),
                                                       swiglu1(x.w, y.w));
    }
    done = n4 * 4;
  }
  for (int64_t i = done + i0; i < n; i += stride) out[i] = swiglu1(a[i], b[i]);
}

// s = sigmoid(a): da = dout * b * s * (1 + a * (1 - s)); db = dout * a * s (the CPU body's order).
__device__ inline void swiglu_grad1(float& da, float& db, float g, float a, float b) {
  float s = 1.f / (1.f + expf(-a));
  da = g * b * s * (1.f + a * (1.f - s));
  db = g * a * s;
}

template <bool VEC>
__global__ void swiglu_backward_kernel(float* __restrict__ da, float* __restrict__ db, const float* __restrict__ dout,
                                       const float* __restrict__ a, const float* __restrict__ b, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x, i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (VEC) {
    const int64_t n4 = n / 4;
    for (int64_t i = i0; i < n4; i += stride) {
      float4 g = reinterpret_cast<const float4*>(dout)[i], x = reinterpret_cast<const float4*>(a)[i],
             y = reinterpret_cast<const float4*>(b)[i], ra, rb;
      swiglu_grad1(ra.x, rb.x, g.x, x.x, y.x);
      swiglu_grad1(ra.y, rb.y, g.y, x.y, y.y);
      swiglu_grad1(ra.z, rb.z, g.z, x.z, y.z);
      swiglu_grad1(ra.w, rb.w, g.w, x.w, y.w);
      reinterpret_cast<float4*>(da)[i] = ra;
      reinterpret_cast<float4*>(db)[i] = rb;
    }
    done = n4 * 4;
  }
  for (int64_t i = done + i0; i < n; i += stride) swiglu_grad1(da[i], db[i], dout[i], a[i], b[i]);
}

// ---- GELU, quick_gelu -------------------------------------------------------------------------
// gelu: y = x Φ(x), Φ(x) = 0.5 erfc(-x / sqrt(2)); dx = dy (Φ(x) + x φ(x)), φ(x) = exp(-x²/2) / sqrt(2 pi)
// quick_gelu: y = x s, s = 1 / (1 + exp(-1.702 x)); dx = dy s (1 + 1.702 x (1 - s))
constexpr float kQuick = 1.702f;
constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

__device__ inline float gelu1(float x, bool quick) {
  return quick ? x / (1.f + expf(-kQuick * x)) : x * (0.5f * erfcf(-x * kInvSqrt2));
}
__device__ inline float gelu_grad1(float g, float x, bool quick) {
  if (quick) {
    const float s = 1.f / (1.f + expf(-kQuick * x));
    return g * s * (1.f + kQuick * x * (1.f - s));
  }
  return g * (0.5f * erfcf(-x * kInvSqrt2) + x * kInvSqrt2Pi * expf(-0.5f * x * x));
}

template <bool VEC>
__global__ void gelu_forward_kernel(float* __restrict__ out, const float* __restrict__ x, int64_t n, bool quick) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x, i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (VEC) {
    const int64_t n4 = n / 4;
    for (int64_t i = i0; i < n4; i += stride) {
      float4 v = reinterpret_cast<const float4*>(x)[i];
      reinterpret_cast<float4*>(out)[i] =
          make_float4(gelu1(v.x, quick), gelu1(v.y, quick), gelu1(v.z, quick), gelu1(v.w, quick));
    }
    done = n4 * 4;
  }
  for (int64_t i = done + i0; i < n; i += stride) out[i] = gelu1(x[i], quick);
}

template <bool VEC>
__global__ void gelu_backward_kernel(float* __restrict__ dx, const float* __restrict__ dy,
                                     const float* __restrict__ x, int64_t n, bool quick) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x, i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (VEC) {
    const int64_t n4 = n / 4;
    for (int64_t i = i0; i < n4; i += stride) {
      float4 g = reinterpret_cast<const float4*>(dy)[i], v = reinterpret_cast<const float4*>(x)[i];
      reinterpret_cast<float4*>(dx)[i] = make_float4(gelu_grad1(g.x, v.x, quick), gelu_grad1(g.y, v.y, quick),
                                                     gelu_grad1(g.z, v.z, quick), gelu_grad1(g.w, v.w, quick));
    }
    done = n4 * 4;
  }
  for (int64_t i = done + i0; i < n; i += stride) dx[i] = gelu_grad1(dy[i], x[i], quick);
}

}  // namespace

void swiglu_forward(float* out, const float* a, const float* b, int64_t n) {
  if (n <= 0) return;
  const bool vec = aligned16(out) && aligned16(a) && aligned16(b);
  const unsigned grid = grid_for(vec ? n / 4 : n);
  if (vec)
    LA_LAUNCH(grid, kThreads, 0, swiglu_forward_kernel<true>)(out, a, b, n);
  else
    LA_LAUNCH(grid, kThreads, 0, swiglu_forward_kernel<false>)(out, a, b, n);
  check_launch("swiglu_forward");
}

void swiglu_backward(float* da, float* db, const float* dout, const float* a, const float* b, int64_t n) {
  if (n <= 0) return;
  const bool vec = aligned16(da) && aligned16(db) && aligned16(dout) && aligned16(a) && aligned16(b);
  const unsigned grid = grid_for(vec ? n / 4 : n);
  if (vec)
    LA_LAUNCH(grid, kThreads, 0, swiglu_backward_kernel<true>)(da, db, dout, a, b, n);
  else
    LA_LAUNCH(grid, kThreads, 0, swiglu_backward_kernel<false>)(da, db, dout, a, b, n);
  check_launch("swiglu_backward");
}

void gelu_forward(float* out, const float* x, int64_t n, bool quick) {
  if (n <= 0) return;
  const bool vec = aligned16(out) && aligned16(x);
  const unsigned grid = grid_for(vec ? n / 4 : n);
  if (vec)
    LA_LAUNCH(grid, kThreads, 0, gelu_forward_kernel<true>)(out, x, n, quick);
  else
    LA_LAUNCH(grid, kThreads, 0, gelu_forward_kernel<false>)(out, x, n, quick);
  check_launch("gelu_forward");
}

void gelu_backward(float* dx, const float* dy, const float* x, int64_t n, bool quick) {
  if (n <= 0) return;
  const bool vec = aligned16(dx) && aligned16(dy) && aligned16(x);
  const unsigned grid = grid_for(vec ? n / 4 : n);
  if (vec)
    LA_LAUNCH(grid, kThreads, 0, gelu_backward_kernel<true>)(dx, dy, x, n, quick);
  else
    LA_LAUNCH(grid, kThreads, 0, gelu_backward_kernel<false>)(dx, dy, x, n, quick);
  check_launch("gelu_backward");
}

}  // namespace la::cuda
