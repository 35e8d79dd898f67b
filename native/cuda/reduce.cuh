// Warp and block reductions shared by the row kernels (loss, norm, optim). Butterfly shuffles and
// a fixed tree over the warps: the same result in every thread and on every run (deterministic),
// for blocks whose size is a multiple of 32.
#pragma once
#include <cmath>

#include "compat.h"

namespace la::cuda {

__device__ inline double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;  // the same in every lane (each butterfly step adds the same two values)
}

__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Every thread gets the block's total; sh: the kernel's __shared__ double[32].
__device__ inline double block_sum(double v, double* sh) {
  v = warp_sum(v);
  const unsigned lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  if (lane == 0) sh[threadIdx.x >> 5] = v;
  __syncthreads();
  return warp_sum(lane < warps ? sh[lane] : 0.0);  // every warp reduces the partials: no broadcast
}

// Every thread gets the block's maximum; sh: the kernel's __shared__ float[32].
__device__ inline float block_max(float v, float* sh) {
  v = warp_max(v);
  const unsigned lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  if (lane == 0) sh[threadIdx.x >> 5] = v;
  __syncthreads();
  return warp_max(lane < warps ? sh[lane] : -INFINITY);
}

// Two sums at once (one barrier); sh: the kernel's __shared__ double[2][32].
__device__ inline void block_sum2(double& a, double& b, double (*sh)[32]) {
  a = warp_sum(a);
  b = warp_sum(b);
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) {
    sh[0][warp] = a;
    sh[1][warp] = b;
  }
  __syncthreads();
  a = warp_sum(lane < warps ? sh[0][lane] : 0.0);
  b = warp_sum(lane < warps ? sh[1][lane] : 0.0);
}

__device__ inline double squared(float v) { return double(v) * double(v); }

// out[0] (device) = float(sum of x (n) doubles on the device), one block, fixed order (reduce.cu).
void sum_to_float(float* out, const double* x, int64_t n, const char* what);

}  // namespace la::cuda
