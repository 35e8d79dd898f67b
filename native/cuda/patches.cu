// Patch extraction (im2col) for the patch embedding, as cpu::patches: one thread per output
// element, grid-stride; consecutive threads write consecutive columns (kx fastest), whose source
// pixels are consecutive within each patch row.
#include <algorithm>
#include <cstdint>

#include "compat.h"
#include "kernels.h"

namespace la::cuda {
namespace {

constexpr int kThreads = 256;

// out row (b, gy, gx), column (c, ky, kx) = images[b, c, gy P + ky, gx P + kx]
__global__ void patches_kernel(float* __restrict__ out, const float* __restrict__ images, int64_t n, int64_t Cin,
                               int64_t Hi, int64_t Wi, int64_t P) {
  const int64_t GH = Hi / P, GW = Wi / P, row = Cin * P * P;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t r = i / row, col = i % row;
    const int64_t b = r / (GH * GW), gy = r / GW % GH, gx = r % GW;
    const int64_t c = col / (P * P), ky = col / P % P, kx = col % P;
    out[i] = images[((b * Cin + c) * Hi + gy * P + ky) * Wi + gx * P + kx];
  }
}

}  // namespace

void patches(float* out, const float* images, int64_t B, int64_t Cin, int64_t Hi, int64_t Wi, int64_t P) {
  const int64_t n = B * (Hi / P) * (Wi / P) * Cin * P * P;
  if (n <= 0) return;
  const unsigned grid =
      unsigned(std::max<int64_t>(1, std::min<int64_t>(blocks_for(n, kThreads), int64_t(multiprocessors()) * 8)));
  LA_LAUNCH(grid, kThreads, 0, patches_kernel)(out, images, n, Cin, Hi, Wi, P);
  check_launch("patches");
}

}  // namespace la::cuda
