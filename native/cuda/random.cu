// Seeded uniform fills on the GPU (core/random.h), e.g. the weights of a random 7B-shape model made
// on the device without passing 13 GB through the host.
#include "../core/bf16.h"
#include "../core/random.h"
#include "compat.h"
#include "kernels.h"

namespace la::cuda {
namespace {

__global__ void fill_uniform_kernel(float* x, uint16_t* xb, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float u = uniform_at(seed, uint64_t(i)) * scale;
    if (xb)
      xb[i] = ::la::f32_to_bf16(u);  // the scalar one of core/bf16.h
    else
      x[i] = u;
  }
}

}  // namespace

void fill_uniform(void* x, bool bf16, int64_t n, uint64_t seed, float scale) {
  if (n <= 0) return;
  unsigned blocks = unsigned(std::min<int64_t>(blocks_for(n, 256), int64_t(multiprocessors()) * 16));
  LA_LAUNCH(blocks, 256, 0, fill_uniform_kernel)
  (bf16 ? nullptr : static_cast<float*>(x), bf16 ? static_cast<uint16_t*>(x) : nullptr, n, seed, scale);
  check_launch("fill_uniform");
}

}  // namespace la::cuda
