// Patch extraction (im2col) for the patch embedding: a copy, one patch row per task.
#include <algorithm>
#include <cstring>

#include "../core/parallel.h"
#include "kernels.h"

namespace la::cpu {

// out row (b, gy, gx), column (c, ky, kx) = images[b, c, gy P + ky, gx P + kx]
void patches(float* out, const float* images, int64_t B, int64_t Cin, int64_t Hi, int64_t Wi, int64_t P) {
  const int64_t GH = Hi / P, GW = Wi / P, row = Cin * P * P;
  parallel_for(B * GH * GW, std::max<int64_t>(1, 16384 / row), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const int64_t b = r / (GH * GW), gy = r / GW % GH, gx = r % GW;
      float* o = out + r * row;
      for (int64_t c = 0; c < Cin; c++)
        for (int64_t ky = 0; ky < P; ky++) {
          const float* src = images + ((b * Cin + c) * Hi + gy * P + ky) * Wi + gx * P;
          std::memcpy(o + (c * P + ky) * P, src, size_t(P) * sizeof(float));
        }
    }
  });
}

}  // namespace la::cpu
