// Embedding lookup and SwiGLU: memory-bound loops.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "../core/bf16.h"
#include "../core/parallel.h"
#include "kernels.h"

namespace la::cpu {

void embedding_forward(float* out, const float* table, const int32_t* tokens, int64_t T, int64_t C) {
  for (int64_t t = 0; t < T; t++) std::memcpy(out + t * C, table + int64_t(tokens[t]) * C, size_t(C) * 4);
}

void embedding_forward_bf16(float* out, const uint16_t* table, const int32_t* tokens, int64_t T, int64_t C) {
  for (int64_t t = 0; t < T; t++) {
    const uint16_t* row = table + int64_t(tokens[t]) * C;
    for (int64_t c = 0; c < C; c++) out[t * C + c] = bf16_to_f32(row[c]);
  }
}

// silu(a) * b = a / (1 + exp(-a)) * b. exp(-a) comes from the vectorised exp_sum (the exp of the
// attention softmax and of swiglu_backward, so the forward and the backward agree), in blocks
// written into out and then overwritten: the scalar std::exp made this op several % of a step.
void swiglu_forward(float* out, const float* a, const float* b, int64_t N) {
  parallel_for(N, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t j0 = i0; j0 < i1; j0 += 4096) {
      int64_t j1 = std::min(i1, j0 + 4096);
      exp_sum(out + j0, a + j0, j1 - j0, -1.f, 0.f);  // out = exp(-a)
      for (int64_t i = j0; i < j1; i++) out[i] = a[i] / (1.f + out[i]) * b[i];
    }
  });
}

}  // namespace la::cpu
