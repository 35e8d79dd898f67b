// Frozen-weight products with block-quantized weights (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K; core/quant.h),
// which stay quantized in memory. Few rows (decoding): each weight row is dequantised into a
// buffer in L1 and dotted with the rows of x, one pass over the (4-8x smaller) weights on all cores;
// decoding with Q8_0 and Q4_K (M = 1) uses llama.cpp's scheme: x rounded to int8 once per product,
// integer AVX2 dot products per block. Many rows (prompts,
// training): a panel of weight rows is dequantised to f32 and handed to sgemm, as the bf16 path.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/blas.h"
#include "../core/parallel.h"
#include "../core/quant.h"
#include "kernels.h"
#include "simd.h"

#if defined(__x86_64__) || defined(_M_X64)
#define LA_X86 1
#include <immintrin.h>
#endif

namespace la::cpu {
namespace {

constexpr int64_t kSmallM = 8;  // up to this many rows, one pass over w beats sgemm (as matmul.cpp)

#ifdef LA_X86
bool have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
__attribute__((target("avx2,fma"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Decode with Q4_K weights (M = 1), as llama.cpp does it (its q8_K activations): x is quantized
// once per product to int8 per 256 values (xq, scale xd = amax / 127, round to nearest) and a
// super-block's dot is integer arithmetic: per sub-block, u8 nibbles x s8 (maddubs) summed in
// pairs with the sub-block's 6-bit scale as the multiplier (madd), accumulated in i32; then one
// float product d * xd per super-block. The min term uses the integer sums of xq per 32 values.
// The only error beyond f32 rounding is x's int8 rounding: |error| <= sum_k |w_k| * xd(k) / 2
// (the test checks this bound).
struct Q8x {
  std::vector<int8_t> q;     // (K)
  std::vector<float> d;      // (K / 256) scales
  std::vector<int16_t> sum;  // (K / 32) sums of q (|sum| <= 32 * 127)
};
void quantize_x_q8(const float* x, int64_t K, Q8x& out) {
  out.q.resize(size_t(K));
  out.d.resize(size_t(K / 256));
  out.sum.resize(size_t(K / 32));
  for (int64_t b = 0; b < K / 256; b++) {
    float amax = 0;
    for (int j = 0; j < 256; j++) amax = std::max(amax, std::fabs(x[256 * b + j]));
    float d = amax / 127.f, id = d > 0 ? 1.f / d : 0.f;
    for (int j = 0; j < 256; j++) out.q[size_t(256 * b + j)] = int8_t(std::nearbyint(x[256 * b + j] * id));
    out.d[size_t(b)] = d;
  }
  for (int64_t s = 0; s < K / 32; s++) {
    int32_t sum = 0;
    for (int j = 0; j < 32; j++) sum += out.q[size_t(32 * s + j)];
    out.sum[size_t(s)] = int16_t(sum);
  }
}

__attribute__((target("avx2,fma"))) float dot_q4_k_q8_avx2(const Q8x& x, const uint8_t* row, int64_t K) {
  __m256 acc = _mm256_setzero_ps();
  const __m256i low = _mm256_set1_epi8(0x0F);
  float mins = 0;
  for (int64_t b = 0; b < K / 256; b++) {
    const uint8_t* blk = row + b * 144;
    const float d = quant_detail::half_at(blk) * x.d[size_t(b)], dmin = quant_detail::half_at(blk + 2) * x.d[size_t(b)];
    const int8_t* xq = x.q.data() + b * 256;
    // The 8 scales and 8 mins of the 12 packed bytes at once, as 32-bit words (the layout of
    // scale_min_k4: sub-blocks 0-3 in the low 6 bits of bytes 0-3 / 4-7; 4-7 in the nibbles of
    // bytes 8-11 with their top 2 bits in the top bits of bytes 0-3 / 4-7).
    uint32_t u[3], sm[4];
    std::memcpy(u, blk + 4, 12);
    sm[0] = u[0] & 0x3f3f3f3fu;                                                 // scales 0-3
    sm[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);          // scales 4-7
    sm[2] = u[1] & 0x3f3f3f3fu;                                                 // mins 0-3
    sm[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);   // mins 4-7
    const uint8_t* sc = reinterpret_cast<const uint8_t*>(sm);
    __m256i isum = _mm256_setzero_si256();
    for (int i = 0; i < 4; i++) {
      __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16 + 32 * i));
      __m256i lo = _mm256_and_si256(q, low), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
      __m256i p1 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 64 * i)));
      __m256i p2 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 64 * i + 32)));
      isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[2 * i])));
      isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p2, _mm256_set1_epi16(sc[2 * i + 1])));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
    // sum_j m_j * (sum of x's int8 values in sub-block j), in 16-bit pairs into 32 bits
    __m128i mprod = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc + 8))),
                                   _mm_loadu_si128(reinterpret_cast<const __m128i*>(x.sum.data() + b * 8)));
    mprod = _mm_add_epi32(mprod, _mm_shuffle_epi32(mprod, 0x4e));
    mprod = _mm_add_epi32(mprod, _mm_shuffle_epi32(mprod, 0xb1));
    mins += dmin * float(_mm_cvtsi128_si32(mprod));
  }
  return hsum8(acc) - mins;
}
#endif

// Decode with Q8_0 weights (M = 1), as llama.cpp does it: x as int8 per 32 values (its own scale),
// each block's dot in integers (|w| x sign-adjusted x: maddubs, madd), times d_w * d_x in float.
// The same error bound as Q4_K's with 32-value blocks of x.
struct Q8x32 {
  std::vector<int8_t> q;  // (K)
  std::vector<float> d;   // (K / 32)
};
void quantize_x_q8_32(const float* x, int64_t K, Q8x32& out) {
  out.q.resize(size_t(K));
  out.d.resize(size_t(K / 32));
  for (int64_t b = 0; b < K / 32; b++) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(x[32 * b + j]));
    float d = amax / 127.f, id = d > 0 ? 1.f / d : 0.f;
    for (int j = 0; j < 32; j++) out.q[size_t(32 * b + j)] = int8_t(std::nearbyint(x[32 * b + j] * id));
    out.d[size_t(b)] = d;
  }
}

__attribute__((target("avx2,fma"))) float dot_q8_0_q8_avx2(const Q8x32& x, const uint8_t* row, int64_t K) {
  __m256 acc = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < K / 32; b++) {
    const uint8_t* blk = row + b * 34;
    __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
    __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q.data() + 32 * b));
    // maddubs takes one unsigned operand: |w| and x with w's sign (w = -128 never occurs: |q| <= 127)
    __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w)), ones);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(quant_detail::half_at(blk) * x.d[size_t(b)]), _mm256_cvtepi32_ps(p), acc);
  }
  return hsum8(acc);
}

// out[r] = dot(x_r, w) for R rows of x (stride K) against one quantized row; buf holds K floats.
void dots_q(float* out, const float* x, int64_t R, const uint8_t* wrow, DType t, int64_t K, float* buf) {
  dequant_row(t, wrow, buf, K);
  dots_f32(out, x, K, R, buf, K);
}

// Rows [n0, n0 + rows) of w as f32 into panel (rows, K), in parallel.
void dequant_panel(float* panel, const uint8_t* w, DType t, int64_t n0, int64_t rows, int64_t K) {
  int64_t rb = row_bytes(t, K);
  parallel_for(rows, std::max<int64_t>(1, 16384 / K), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) dequant_row(t, w + (n0 + r) * rb, panel + r * K, K);
  });
}

// Weight rows per dequantised panel: about 4 MiB of f32.
int64_t panel_rows(int64_t N, int64_t K) { return std::min(N, std::max<int64_t>(64, (int64_t(1) << 20) / K)); }

}  // namespace

void dequantize_rows(float* out, const void* w, DType t, int64_t rows, int64_t K) {
  dequant_panel(out, static_cast<const uint8_t*>(w), t, 0, rows, K);
}

void matmul_forward_q(float* y, const float* x, const void* wv, DType t, int64_t M, int64_t N, int64_t K) {
  const uint8_t* w = static_cast<const uint8_t*>(wv);
  int64_t rb = row_bytes(t, K);
#ifdef LA_X86
  if (M == 1 && t == DType::Q4_K && have_avx2()) {
    Q8x xq;
    quantize_x_q8(x, K, xq);
    parallel_for(N, std::max<int64_t>(1, 16384 / K), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; n++) y[n] = dot_q4_k_q8_avx2(xq, w + n * rb, K);
    });
    return;
  }
  if (M == 1 && t == DType::Q8_0 && have_avx2()) {
    Q8x32 xq;
    quantize_x_q8_32(x, K, xq);
    parallel_for(N, std::max<int64_t>(1, 16384 / K), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; n++) y[n] = dot_q8_0_q8_avx2(xq, w + n * rb, K);
    });
    return;
  }
#endif
  if (M <= kSmallM) {
    // y (M, N): each weight row is read once, dequantised (or dotted directly) for every row of x.
    parallel_for(N, std::max<int64_t>(1, 16384 / K), [&](int64_t n0, int64_t n1) {
      std::vector<float> buf(static_cast<size_t>(K));
      float acc[kSmallM];
      for (int64_t n = n0; n < n1; n++) {
        dots_q(acc, x, M, w + n * rb, t, K, buf.data());
        for (int64_t m = 0; m < M; m++) y[m * N + n] = acc[m];
      }
    });
    return;
  }
  // y[:, n0:n0+nb] = x · panelᵀ, one panel of dequantised weight rows at a time.
  int64_t nb = panel_rows(N, K);
  std::vector<float> panel(size_t(nb) * K);
  for (int64_t n0 = 0; n0 < N; n0 += nb) {
    int64_t rows = std::min(nb, N - n0);
    dequant_panel(panel.data(), w, t, n0, rows, K);
    sgemm(false, true, int(M), int(rows), int(K), 1.f, x, int(K), panel.data(), int(K), 0.f, y + n0, int(N));
  }
}

void matmul_backward_q(float* dx, const float* dy, const void* wv, DType t, int64_t M, int64_t N, int64_t K) {
  // dx (M, K) = sum over panels of dy[:, n0:n0+nb] · panel, the first panel overwriting dx.
  const uint8_t* w = static_cast<const uint8_t*>(wv);
  int64_t nb = panel_rows(N, K);
  std::vector<float> panel(size_t(nb) * K);
  for (int64_t n0 = 0; n0 < N; n0 += nb) {
    int64_t rows = std::min(nb, N - n0);
    dequant_panel(panel.data(), w, t, n0, rows, K);
    sgemm(false, false, int(M), int(K), int(rows), 1.f, dy + n0, int(N), panel.data(), int(K), n0 == 0 ? 0.f : 1.f,
          dx, int(K));
  }
}

void embedding_forward_q(float* out, const void* table, DType t, const int32_t* tokens, int64_t T, int64_t C) {
  const uint8_t* w = static_cast<const uint8_t*>(table);
  int64_t rb = row_bytes(t, C);
  for (int64_t i = 0; i < T; i++) dequant_row(t, w + int64_t(tokens[i]) * rb, out + i * C, C);
}

}  // namespace la::cpu
