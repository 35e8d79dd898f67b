// The activation family's CPU bodies: SwiGLU, exact GELU and quick_gelu, forward and backward.
// Element-wise and memory-bound: blocks of 4096 elements per step, parallel over blocks.
#include <algorithm>
#include <cmath>

#include "../core/parallel.h"
#include "kernels.h"

namespace la::cpu {
namespace {

constexpr float kQuick = 1.702f;                      // quick_gelu: x * sigmoid(1.702 x)
constexpr float kInvSqrt2 = 0.70710678118654752f;     // 1/sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;   // 1/sqrt(2 pi)

// Φ(x) = 0.5 erfc(-x/sqrt(2)): erfc keeps the tail for negative x, where 1 + erf(x/sqrt(2)) cancels.
inline float normal_cdf(float x) { return 0.5f * std::erfc(-x * kInvSqrt2); }

}  // namespace

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

// out = silu(a) * b, silu(a) = a * sigmoid(a):
//   da = dout * b * sigmoid(a) * (1 + a * (1 - sigmoid(a)));  db = dout * silu(a)
// exp(-a) comes from the vectorised exp_sum in blocks (written into db, then overwritten).
void swiglu_backward(float* da, float* db, const float* dout, const float* a, const float* b, int64_t N) {
  parallel_for(N, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t j0 = i0; j0 < i1; j0 += 4096) {
      int64_t j1 = std::min(i1, j0 + 4096);
      exp_sum(db + j0, a + j0, j1 - j0, -1.f, 0.f);  // db = exp(-a)
      for (int64_t i = j0; i < j1; i++) {
        float s = 1.f / (1.f + db[i]);
        da[i] = dout[i] * b[i] * s * (1.f + a[i] * (1.f - s));
        db[i] = dout[i] * a[i] * s;
      }
    }
  });
}

// gelu: y = x Φ(x). quick_gelu: y = x s, s = sigmoid(1.702 x) = 1 / (1 + exp(-1.702 x)), exp from
// the vectorised exp_sum (as swiglu) written into out first.
void gelu_forward(float* out, const float* x, int64_t n, bool quick) {
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t j0 = i0; j0 < i1; j0 += 4096) {
      const int64_t j1 = std::min(i1, j0 + 4096);
      if (quick) {
        exp_sum(out + j0, x + j0, j1 - j0, -kQuick, 0.f);  // out = exp(-1.702 x)
        for (int64_t i = j0; i < j1; i++) out[i] = x[i] / (1.f + out[i]);
      } else {
        for (int64_t i = j0; i < j1; i++) out[i] = x[i] * normal_cdf(x[i]);
      }
    }
  });
}

// gelu: dx = dy (Φ(x) + x φ(x)), φ(x) = exp(-x²/2) / sqrt(2 pi).
// quick_gelu: dx = dy s (1 + 1.702 x (1 - s)).
void gelu_backward(float* dx, const float* dy, const float* x, int64_t n, bool quick) {
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t j0 = i0; j0 < i1; j0 += 4096) {
      const int64_t j1 = std::min(i1, j0 + 4096);
      if (quick) {
        exp_sum(dx + j0, x + j0, j1 - j0, -kQuick, 0.f);  // dx = exp(-1.702 x), then overwritten
        for (int64_t i = j0; i < j1; i++) {
          const float s = 1.f / (1.f + dx[i]);
          dx[i] = dy[i] * s * (1.f + kQuick * x[i] * (1.f - s));
        }
      } else {
        for (int64_t i = j0; i < j1; i++)
          dx[i] = dy[i] * (normal_cdf(x[i]) + x[i] * kInvSqrt2Pi * std::exp(-0.5f * x[i] * x[i]));
      }
    }
  });
}

}  // namespace la::cpu
