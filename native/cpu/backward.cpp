// The row gather/scatter that move activations between packed rows and loss rows. (The norm,
// activation and matmul gradients live with their families: norm.cpp, activation.cpp, matmul.cpp.)
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/bf16.h"
#include "../core/blas.h"
#include "../core/parallel.h"
#include "kernels.h"

namespace la::cpu {

void gather_rows(void* out, const void* x, const int32_t* idx, int64_t M, int64_t row_bytes) {
  char* o = static_cast<char*>(out);
  const char* s = static_cast<const char*>(x);
  parallel_for(M, std::max<int64_t>(1, 65536 / row_bytes), [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; m++)
      std::memcpy(o + m * row_bytes, s + int64_t(idx[m]) * row_bytes, size_t(row_bytes));
  });
}

// Threads own column ranges and walk all rows in order: repeated indices accumulate in index
// order, with no races and the same result for any thread count.
void scatter_add_rows(float* dst, const int32_t* idx, const float* src, int64_t M, int64_t C) {
  int64_t grain = std::max<int64_t>(64, (int64_t(1) << 16) / std::max<int64_t>(1, M));
  parallel_for(C, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t m = 0; m < M; m++) {
      float* d = dst + int64_t(idx[m]) * C;
      const float* s = src + m * C;
      for (int64_t c = c0; c < c1; c++) d[c] += s[c];
    }
  });
}

}  // namespace la::cpu
