// The last step of the deterministic double-precision sums (cross-entropy's loss, sum of squares):
// partial sums reduced by one block in a fixed order and rounded to f32.
#include <algorithm>

#include "reduce.cuh"

namespace la::cuda {
namespace {

// out[0] = the sum of x (n): strided per-thread sums, then a fixed tree.
__global__ void __launch_bounds__(1024) sum_to_float_kernel(float* __restrict__ out, const double* __restrict__ x,
                                                            int64_t n) {
  __shared__ double sh[32];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  s = block_sum(s, sh);
  if (threadIdx.x == 0) out[0] = float(s);
}

}  // namespace

void sum_to_float(float* out, const double* x, int64_t n, const char* what) {
  const unsigned threads = unsigned(std::min<int64_t>(1024, std::max<int64_t>(32, (n + 31) / 32 * 32)));
  LA_LAUNCH(1, threads, 0, sum_to_float_kernel)(out, x, n);
  check_launch(what);
}

}  // namespace la::cuda
