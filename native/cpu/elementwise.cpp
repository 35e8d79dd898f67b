// Embedding lookup: memory-bound loops. (SwiGLU lives with the activations: activation.cpp.)
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

}  // namespace la::cpu
