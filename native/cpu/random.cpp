#include "../core/bf16.h"
#include "../core/parallel.h"
#include "../core/random.h"
#include "kernels.h"

namespace la::cpu {

void fill_uniform(void* x, bool bf16, int64_t n, uint64_t seed, float scale) {
  parallel_for(n, 1 << 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) {
      float u = uniform_at(seed, uint64_t(i)) * scale;
      if (bf16)
        static_cast<uint16_t*>(x)[i] = f32_to_bf16(u);
      else
        static_cast<float*>(x)[i] = u;
    }
  });
}

}  // namespace la::cpu
