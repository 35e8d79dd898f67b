// The norm family's CUDA bodies. RMSNorm forward and input gradient, LayerNorm forward and backward
// (at the end): one block per row (T rows of C). The row sums are formed in
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

// ---- LayerNorm -----------------------------------------------------------------------------------
// One block per row, as RMSNorm. The mean and the variance come from two block sums in double
// (two passes over the row, as the CPU body), rounded to f32 as the CPU body rounds them.
__device__ inline void row_moments(const float* xt, int64_t C, float eps, float& mean, float& rstd) {
  __shared__ double sh_sum[32], sh_var[32];
  double s = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += xt[c];
  const double m = block_sum(s, sh_sum) / double(C);
  double v = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) v += (xt[c] - m) * (xt[c] - m);
  const double var = block_sum(v, sh_var) / double(C);
  mean = float(m);
  rstd = float(1.0 / sqrt(var + double(eps)));
}

__global__ void layernorm_forward_kernel(float* __restrict__ out, const float* __restrict__ x,
                                         const float* __restrict__ w, const float* __restrict__ b, int64_t C,
                                         float eps) {
  const int64_t t = blockIdx.x;
  const float* xt = x + t * C;
  float* ot = out + t * C;
  float mean, rstd;
  row_moments(xt, C, eps, mean, rstd);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ot[c] = (xt[c] - mean) * rstd * w[c] + b[c];
}

// dx = r * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w; the row's mean and r go to stats
// (T, 2) for the column sums of dw and db.
__global__ void layernorm_dx_kernel(float* __restrict__ dx, float* __restrict__ stats, const float* __restrict__ dy,
                                    const float* __restrict__ x, const float* __restrict__ w, int64_t C, float eps) {
  const int64_t t = blockIdx.x;
  const float* xt = x + t * C;
  const float* gt = dy + t * C;
  float* o = dx + t * C;
  __shared__ double sh[2][32];
  float mean, rstd;
  row_moments(xt, C, eps, mean, rstd);
  double sg = 0, sgx = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const double g = double(gt[c]) * w[c];
    sg += g;
    sgx += g * ((xt[c] - mean) * rstd);
  }
  block_sum2(sg, sgx, sh);
  const float mg = float(sg / double(C)), mgx = float(sgx / double(C));
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
    o[c] = rstd * ((gt[c] * w[c] - mg) - ((xt[c] - mean) * rstd) * mgx);
  if (threadIdx.x == 0) {
    stats[2 * t] = mean;
    stats[2 * t + 1] = rstd;
  }
}

// Rows per block of the column sums, as the CPU body: grid (column blocks, row blocks); thread c
// sums its column over the row block in order, in double, into partial (row blocks, 2, C).
constexpr int64_t kRowBlock = 64;
__global__ void layernorm_columns_kernel(double* __restrict__ partial, const float* __restrict__ dy,
                                         const float* __restrict__ x, const float* __restrict__ stats, int64_t T,
                                         int64_t C) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, k = blockIdx.y;
  if (c >= C) return;
  double sw = 0, sb = 0;
  const int64_t t1 = (k + 1) * kRowBlock < T ? (k + 1) * kRowBlock : T;
  for (int64_t t = k * kRowBlock; t < t1; t++) {
    const float g = dy[t * C + c], xhat = (x[t * C + c] - stats[2 * t]) * stats[2 * t + 1];
    sw += double(g) * xhat;
    sb += g;
  }
  partial[k * 2 * C + c] = sw;
  partial[k * 2 * C + C + c] = sb;
}

// dw, db (C) = the sums of the row blocks' partials, in block order
__global__ void layernorm_reduce_kernel(float* __restrict__ dw, float* __restrict__ db,
                                        const double* __restrict__ partial, int64_t blocks, int64_t C) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double sw = 0, sb = 0;
  for (int64_t k = 0; k < blocks; k++) {
    sw += partial[k * 2 * C + c];
    sb += partial[k * 2 * C + C + c];
  }
  dw[c] = float(sw);
  db[c] = float(sb);
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

void layernorm_forward(float* out, const float* x, const float* w, const float* b, int64_t T, int64_t C, float eps) {
  if (T <= 0 || C <= 0) return;
  LA_LAUNCH(unsigned(T), row_threads(C), 0, layernorm_forward_kernel)(out, x, w, b, C, eps);
  check_launch("layernorm_forward");
}

void layernorm_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int64_t T,
                        int64_t C, float eps) {
  if (T <= 0 || C <= 0) return;
  const int64_t blocks = (T + kRowBlock - 1) / kRowBlock;
  Scratch stats(size_t(T) * 2 * sizeof(float)), partial(size_t(blocks) * 2 * C * sizeof(double));
  LA_LAUNCH(unsigned(T), row_threads(C), 0, layernorm_dx_kernel)(dx, stats.as<float>(), dy, x, w, C, eps);
  check_launch("layernorm_backward (dx)");
  const dim3 grid(blocks_for(C, kMaxThreads), unsigned(blocks));
  LA_LAUNCH(grid, kMaxThreads, 0, layernorm_columns_kernel)(partial.as<double>(), dy, x, stats.as<float>(), T, C);
  check_launch("layernorm_backward (column sums)");
  LA_LAUNCH(blocks_for(C, kMaxThreads), kMaxThreads, 0, layernorm_reduce_kernel)(dw, db, partial.as<double>(), blocks, C);
  check_launch("layernorm_backward (dw, db)");
}

}  // namespace la::cuda
