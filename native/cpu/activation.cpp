// The activation family's CPU bodies: SwiGLU, exact GELU and quick_gelu, forward and backward.
// Element-wise: blocks of elements per step (exps from the vectorised exp_sum), parallel over blocks.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "../core/parallel.h"
#include "kernels.h"

namespace la::cpu {
namespace {

constexpr float kQuick = 1.702f;                      // quick_gelu: x * sigmoid(1.702 x)
constexpr float kInvSqrt2 = 0.70710678118654752f;     // 1/sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;   // 1/sqrt(2 pi)
constexpr int64_t kBlock = 1024;                      // elements per step (the scratch rows below)

// Φ(x) (and φ(x) when pdf is not null) for a block of n <= kBlock values, without a scalar erf:
// erfc(z) = t exp(-z² + P(t)), t = 1 / (1 + z/2), z = |x| / sqrt(2), P Numerical Recipes' erfcc
// polynomial (relative error below 1.2e-7 for every z >= 0, so both tails keep their digits);
// Φ(x) = erfc(z) / 2 for x < 0, 1 - erfc(z) / 2 otherwise. z² = x²/2 is split as s²/2 + d,
// d = (|x| - s)(|x| + s)/2 with s = |x| to 12 bits (s² exact), so that exp(-z²) keeps its
// precision for large |x| (rounding z² itself costs 1e-5 relative at x = -13). The three
// exps come from the vectorised exp_sum; the rest is plain arithmetic that the compiler vectorises.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))  // 8 lanes where the CPU has AVX2 (chosen at load time)
#endif
void normal_cdf_block(float* cdf, float* pdf, const float* x, int64_t n) {
  float a[kBlock] = {}, b[kBlock] = {}, t[kBlock] = {};  // (zeroed: keeps -Wmaybe-uninitialized quiet)
  for (int64_t i = 0; i < n; i++) {
    // |x| clamped to 16 (beyond, Φ(-|x|) < 1e-57 is 0 in f32; +inf would make inf - inf = NaN),
    // in integer arithmetic on the bits (a float min is a branch under trapping math)
    uint32_t bits;
    std::memcpy(&bits, x + i, 4);
    bits &= 0x7fffffffu;
    bits = bits < 0x41800000u ? bits : 0x41800000u;  // 16.0f; NaN's bits are larger too
    float ax, s;  // s = |x| to 12 bits: s² is exact, z² = x²/2 = s²/2 + d
    std::memcpy(&ax, &bits, 4);
    bits &= 0xfffff000u;
    std::memcpy(&s, &bits, 4);
    const float z = ax * kInvSqrt2;
    const float d = 0.5f * ((ax - s) * (ax + s));
    const float u = 1.f / (1.f + 0.5f * z);
    const float p =
        -1.26551223f +
        u * (1.00002368f +
             u * (0.37409196f +
                  u * (0.09678418f +
                       u * (-0.18628806f +
                            u * (0.27886807f +
                                 u * (-1.13520398f + u * (1.48851587f + u * (-0.82215223f + u * 0.17087277f))))))));
    a[i] = -0.5f * (s * s);
    b[i] = p - d;
    t[i] = u;
    if (pdf) pdf[i] = -d;
  }
  exp_sum(a, a, n, 1.f, 0.f);  // exp(-s²/2)
  exp_sum(b, b, n, 1.f, 0.f);  // exp(P(t) - d)
  if (pdf) exp_sum(pdf, pdf, n, 1.f, 0.f);  // exp(-d)
  // cdf = x < 0 ? half_erfc : 1 - half_erfc, as a select on x's sign bit: a branch on random
  // signs mispredicts, and the compiler vectorises only the bit arithmetic
  for (int64_t i = 0; i < n; i++) {
    const float lo = 0.5f * (t[i] * a[i] * b[i]), hi = 1.f - lo;
    uint32_t xb, lb, hb;
    std::memcpy(&xb, x + i, 4);
    std::memcpy(&lb, &lo, 4);
    std::memcpy(&hb, &hi, 4);
    const uint32_t neg = 0u - (xb >> 31);  // all ones when x < 0 (or -0)
    const uint32_t r = (lb & neg) | (hb & ~neg);
    std::memcpy(cdf + i, &r, 4);
  }
  if (pdf)
    for (int64_t i = 0; i < n; i++) pdf[i] = kInvSqrt2Pi * (a[i] * pdf[i]);  // exp(-x²/2) = exp(-s²/2) exp(-d)
}

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
        for (int64_t k0 = j0; k0 < j1; k0 += kBlock) {
          const int64_t k1 = std::min(j1, k0 + kBlock);
          normal_cdf_block(out + k0, nullptr, x + k0, k1 - k0);  // out = Φ(x)
          for (int64_t i = k0; i < k1; i++) out[i] *= x[i];
        }
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
        float pdf[kBlock];
        for (int64_t k0 = j0; k0 < j1; k0 += kBlock) {
          const int64_t k1 = std::min(j1, k0 + kBlock);
          normal_cdf_block(dx + k0, pdf, x + k0, k1 - k0);  // dx = Φ(x), then overwritten
          for (int64_t i = k0; i < k1; i++) dx[i] = dy[i] * (dx[i] + x[i] * pdf[i - k0]);
        }
      }
    }
  });
}

}  // namespace la::cpu
