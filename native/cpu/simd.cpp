#include "simd.h"

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "../core/bf16.h"

#include "../core/x86.h"

namespace la::cpu {

const char* simd_name(Simd s) {
  switch (s) {
    case Simd::Avx512: return "avx512";
    case Simd::Avx2: return "avx2";
    default: return "scalar";
  }
}

namespace {
Simd best_simd() {
#ifdef LA_X86
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c"))
    return Simd::Scalar;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vnni"))
    return Simd::Avx512;
  return Simd::Avx2;
#else
  return Simd::Scalar;
#endif
}

Simd chosen_simd() {
  const Simd best = best_simd();
  const char* no_avx2 = std::getenv("LLAMA_ADAPTER_NO_AVX2");
  const char* env = std::getenv("LLAMA_ADAPTER_SIMD");
  if (!env || !*env) return no_avx2 && std::string(no_avx2) == "1" ? Simd::Scalar : best;
  std::string v(env);
  for (char& c : v) c = char(std::tolower(static_cast<unsigned char>(c)));
  Simd want;
  if (v == "avx512") want = Simd::Avx512;
  else if (v == "avx2") want = Simd::Avx2;
  else if (v == "scalar") want = Simd::Scalar;
  else {
    std::fprintf(stderr, "llama-adapter: LLAMA_ADAPTER_SIMD=%s is not one of avx512, avx2, scalar; using %s\n", env,
                 simd_name(best));
    return best;
  }
  if (int(want) > int(best)) {
    std::fprintf(stderr, "llama-adapter: LLAMA_ADAPTER_SIMD=%s: this CPU lacks it; using %s\n", env, simd_name(best));
    return best;
  }
  return want;
}
}  // namespace

Simd simd_level() {
  static const Simd level = chosen_simd();
  return level;
}

namespace {

template <class W>
float load(const W* w, int64_t i);
template <>
float load<float>(const float* w, int64_t i) { return w[i]; }
template <>
float load<uint16_t>(const uint16_t* w, int64_t i) { return bf16_to_f32(w[i]); }

template <class W>
void dots_plain(float* out, const float* x, int64_t ldx, int64_t R, const W* w, int64_t n) {
  for (int64_t r = 0; r < R; r++) {
    const float* xr = x + r * ldx;
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += xr[i] * load(w, i);
    out[r] = s;
  }
}

#ifdef LA_X86
__attribute__((target("avx2,fma"))) inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }
__attribute__((target("avx2,fma"))) inline __m256 load8(const uint16_t* w) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Up to 4 rows of x at once against one row of w: w is loaded once per 8 elements.
template <class W, int R>
__attribute__((target("avx2,fma"))) void dots_avx2_r(float* out, const float* x, int64_t ldx, const W* w, int64_t n) {
  __m256 acc[R][2];
  for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 w0 = load8(w + i), w1 = load8(w + i + 8);
    for (int r = 0; r < R; r++) {
      acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * ldx + i), w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * ldx + i + 8), w1, acc[r][1]);
    }
  }
  for (; i + 8 <= n; i += 8) {
    __m256 w0 = load8(w + i);
    for (int r = 0; r < R; r++) acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * ldx + i), w0, acc[r][0]);
  }
  for (int r = 0; r < R; r++) {
    float s = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
    for (int64_t j = i; j < n; j++) s += x[r * ldx + j] * load(w, j);
    out[r] = s;
  }
}

template <class W>
void dots_avx2(float* out, const float* x, int64_t ldx, int64_t R, const W* w, int64_t n) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) dots_avx2_r<W, 4>(out + r, x + r * ldx, ldx, w, n);
  switch (R - r) {
    case 3: dots_avx2_r<W, 3>(out + r, x + r * ldx, ldx, w, n); break;
    case 2: dots_avx2_r<W, 2>(out + r, x + r * ldx, ldx, w, n); break;
    case 1: dots_avx2_r<W, 1>(out + r, x + r * ldx, ldx, w, n); break;
  }
}


// One row of x against 4 weight rows that lie far apart (4 memory streams in flight per thread
// instead of 1), two accumulators each.
template <class W>
__attribute__((target("avx2,fma"))) void dot_rows4_avx2(float* out, const float* x, const W* const* w, int64_t n) {
  __m256 a[4][2];
  for (int s = 0; s < 4; s++) a[s][0] = a[s][1] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
    for (int s = 0; s < 4; s++) {
      a[s][0] = _mm256_fmadd_ps(x0, load8(w[s] + i), a[s][0]);
      a[s][1] = _mm256_fmadd_ps(x1, load8(w[s] + i + 8), a[s][1]);
    }
  }
  if (i + 8 <= n) {  // short rows (attention keys of a small head size) stay vectorised
    __m256 x0 = _mm256_loadu_ps(x + i);
    for (int s = 0; s < 4; s++) a[s][0] = _mm256_fmadd_ps(x0, load8(w[s] + i), a[s][0]);
    i += 8;
  }
  for (int s = 0; s < 4; s++) {
    float r = hsum(_mm256_add_ps(a[s][0], a[s][1]));
    for (int64_t j = i; j < n; j++) r += x[j] * load(w[s], j);
    out[s] = r;
  }
}

// The sums of 8 vectors as one vector: [sum(a[0]), ..., sum(a[7])].
__attribute__((target("avx2,fma"))) inline __m256 hsum8(const __m256* a) {
  __m256 h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
  __m256 h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
  __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);  // per 128-bit half
  return _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20), _mm256_permute2f128_ps(h0123, h4567, 0x31));
}

template <class W>
__attribute__((target("avx2,fma"))) void dots_strided_avx2(float* out, const float* x, const W* w, int64_t ld,
                                                           int64_t rows, int64_t n) {
  const int64_t n8 = n & ~int64_t(7);
  int64_t s = 0;
  for (; s + 8 <= rows; s += 8) {
    __m256 a[8];
    for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n8; i += 8) {
      __m256 xv = _mm256_loadu_ps(x + i);
      for (int r = 0; r < 8; r++) a[r] = _mm256_fmadd_ps(xv, load8(w + (s + r) * ld + i), a[r]);
    }
    __m256 sums = hsum8(a);
    if (n8 < n) {  // odd head sizes: the tail per row
      alignas(32) float t[8];
      _mm256_store_ps(t, sums);
      for (int r = 0; r < 8; r++)
        for (int64_t i = n8; i < n; i++) t[r] += x[i] * load(w, (s + r) * ld + i);
      sums = _mm256_load_ps(t);
    }
    _mm256_storeu_ps(out + s, sums);
  }
  for (; s < rows; s++) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t i = 0; i < n8; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), load8(w + s * ld + i), a);
    float r = hsum(a);
    for (int64_t i = n8; i < n; i++) r += x[i] * load(w, s * ld + i);
    out[s] = r;
  }
}

__attribute__((target("avx2,fma"))) void weighted_rows_avx2(float* y, const float* a, const float* x, int64_t ld,
                                                            int64_t rows, int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {  // 32 columns at a time, held in 4 registers over all rows
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t s = 0; s < rows; s++) {
      __m256 as = _mm256_set1_ps(a[s]);
      const float* xs = x + s * ld + i;
      for (int j = 0; j < 4; j++) acc[j] = _mm256_fmadd_ps(as, _mm256_loadu_ps(xs + 8 * j), acc[j]);
    }
    for (int j = 0; j < 4; j++) _mm256_storeu_ps(y + i + 8 * j, acc[j]);
  }
  for (; i + 8 <= n; i += 8) {  // 8 columns (a small head): 4 rows at a time into 4 sums
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t s = 0;
    for (; s + 4 <= rows; s += 4)
      for (int j = 0; j < 4; j++)
        acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(a[s + j]), _mm256_loadu_ps(x + (s + j) * ld + i), acc[j]);
    for (; s < rows; s++) acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(a[s]), _mm256_loadu_ps(x + s * ld + i), acc[0]);
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  }
  for (; i < n; i++) {
    float acc = 0;
    for (int64_t s = 0; s < rows; s++) acc += a[s] * x[s * ld + i];
    y[i] = acc;
  }
}

// ---- AVX-512: the same loops 16 floats wide; tails as masked loads (zeros past the end).
LA_TARGET_AVX512 inline __m512 load16(const float* w) { return _mm512_loadu_ps(w); }
LA_TARGET_AVX512 inline __m512 load16(const uint16_t* w) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
LA_TARGET_AVX512 inline __m512 load16(const float* w, __mmask16 k) { return _mm512_maskz_loadu_ps(k, w); }
LA_TARGET_AVX512 inline __m512 load16(const uint16_t* w, __mmask16 k) {
  __m256i h = _mm256_maskz_loadu_epi16(k, w);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
LA_TARGET_AVX512 inline __mmask16 tail_mask(int64_t m) { return __mmask16((1u << m) - 1); }  // m < 16

template <class W, int R>
LA_TARGET_AVX512 void dots_avx512_r(float* out, const float* x, int64_t ldx, const W* w, int64_t n) {
  __m512 acc[R][2];
  for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512 w0 = load16(w + i), w1 = load16(w + i + 16);
    for (int r = 0; r < R; r++) {
      acc[r][0] = _mm512_fmadd_ps(_mm512_loadu_ps(x + r * ldx + i), w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(_mm512_loadu_ps(x + r * ldx + i + 16), w1, acc[r][1]);
    }
  }
  for (; i + 16 <= n; i += 16) {
    __m512 w0 = load16(w + i);
    for (int r = 0; r < R; r++) acc[r][0] = _mm512_fmadd_ps(_mm512_loadu_ps(x + r * ldx + i), w0, acc[r][0]);
  }
  if (i < n) {
    __mmask16 k = tail_mask(n - i);
    __m512 w0 = load16(w + i, k);
    for (int r = 0; r < R; r++) acc[r][1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, x + r * ldx + i), w0, acc[r][1]);
  }
  for (int r = 0; r < R; r++) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
}

template <class W>
void dots_avx512(float* out, const float* x, int64_t ldx, int64_t R, const W* w, int64_t n) {
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) dots_avx512_r<W, 4>(out + r, x + r * ldx, ldx, w, n);
  switch (R - r) {
    case 3: dots_avx512_r<W, 3>(out + r, x + r * ldx, ldx, w, n); break;
    case 2: dots_avx512_r<W, 2>(out + r, x + r * ldx, ldx, w, n); break;
    case 1: dots_avx512_r<W, 1>(out + r, x + r * ldx, ldx, w, n); break;
  }
}

template <class W>
LA_TARGET_AVX512 void dot_rows4_avx512(float* out, const float* x, const W* const* w, int64_t n) {
  __m512 a[4][2];
  for (int s = 0; s < 4; s++) a[s][0] = a[s][1] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512 x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + 16);
    for (int s = 0; s < 4; s++) {
      a[s][0] = _mm512_fmadd_ps(x0, load16(w[s] + i), a[s][0]);
      a[s][1] = _mm512_fmadd_ps(x1, load16(w[s] + i + 16), a[s][1]);
    }
  }
  for (; i < n; i += 16) {
    __mmask16 k = n - i >= 16 ? __mmask16(0xFFFF) : tail_mask(n - i);
    __m512 x0 = _mm512_maskz_loadu_ps(k, x + i);
    for (int s = 0; s < 4; s++) a[s][0] = _mm512_fmadd_ps(x0, load16(w[s] + i, k), a[s][0]);
  }
  for (int s = 0; s < 4; s++) out[s] = _mm512_reduce_add_ps(_mm512_add_ps(a[s][0], a[s][1]));
}

// 8 rows per pass (as the AVX2 loop), each a 16-wide accumulator; the 8 sums folded to 256 bits
// and reduced together.
template <class W>
LA_TARGET_AVX512 void dots_strided_avx512(float* out, const float* x, const W* w, int64_t ld, int64_t rows,
                                          int64_t n) {
  const int64_t n16 = n & ~int64_t(15);
  const __mmask16 k = tail_mask(n - n16);
  int64_t s = 0;
  for (; s + 8 <= rows; s += 8) {
    __m512 a[8];
    for (int r = 0; r < 8; r++) a[r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n16; i += 16) {
      __m512 xv = _mm512_loadu_ps(x + i);
      for (int r = 0; r < 8; r++) a[r] = _mm512_fmadd_ps(xv, load16(w + (s + r) * ld + i), a[r]);
    }
    if (n16 < n) {
      __m512 xv = _mm512_maskz_loadu_ps(k, x + n16);
      for (int r = 0; r < 8; r++) a[r] = _mm512_fmadd_ps(xv, load16(w + (s + r) * ld + n16, k), a[r]);
    }
    __m256 h[8];
    for (int r = 0; r < 8; r++)
      h[r] = _mm256_add_ps(_mm512_castps512_ps256(a[r]), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a[r]), 1)));
    _mm256_storeu_ps(out + s, hsum8(h));
  }
  for (; s < rows; s++) {
    __m512 a = _mm512_setzero_ps();
    for (int64_t i = 0; i < n16; i += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), load16(w + s * ld + i), a);
    if (n16 < n) a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, x + n16), load16(w + s * ld + n16, k), a);
    out[s] = _mm512_reduce_add_ps(a);
  }
}

LA_TARGET_AVX512 void weighted_rows_avx512(float* y, const float* a, const float* x, int64_t ld, int64_t rows,
                                           int64_t n) {
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {  // 64 columns at a time, held in 4 registers over all rows
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t s = 0; s < rows; s++) {
      __m512 as = _mm512_set1_ps(a[s]);
      const float* xs = x + s * ld + i;
      for (int j = 0; j < 4; j++) acc[j] = _mm512_fmadd_ps(as, _mm512_loadu_ps(xs + 16 * j), acc[j]);
    }
    for (int j = 0; j < 4; j++) _mm512_storeu_ps(y + i + 16 * j, acc[j]);
  }
  for (; i < n; i += 16) {  // 16 columns (or the masked rest): 4 rows at a time into 4 sums
    const __mmask16 k = n - i >= 16 ? __mmask16(0xFFFF) : tail_mask(n - i);
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t s = 0;
    for (; s + 4 <= rows; s += 4)
      for (int j = 0; j < 4; j++)
        acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(a[s + j]), _mm512_maskz_loadu_ps(k, x + (s + j) * ld + i), acc[j]);
    for (; s < rows; s++)
      acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(a[s]), _mm512_maskz_loadu_ps(k, x + s * ld + i), acc[0]);
    _mm512_mask_storeu_ps(y + i, k, _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
  }
}
#endif

template <class W>
void dots(float* out, const float* x, int64_t ldx, int64_t R, const W* w, int64_t n) {
#ifdef LA_X86
  if (simd_level() == Simd::Avx512) return dots_avx512(out, x, ldx, R, w, n);
  if (simd_level() == Simd::Avx2) return dots_avx2(out, x, ldx, R, w, n);
#endif
  dots_plain(out, x, ldx, R, w, n);
}

// The matrix-vector product of decoding streams the weights from memory 4 rows at once. For f32
// rows the 256-bit loop stays: with 512-bit loads the 110M shape's f32 decode measured ~15%
// slower here (the loop is bound by memory, not arithmetic); bf16 rows gain from 512 bits (the
// widening is arithmetic).
template <class W>
void dot_rows4(float* out, const float* x, const W* const* w, int64_t n) {
#ifdef LA_X86
  if (simd_level() == Simd::Avx512 && sizeof(W) == 2) return dot_rows4_avx512(out, x, w, n);
  if (simd_level() != Simd::Scalar) return dot_rows4_avx2(out, x, w, n);
#endif
  for (int s = 0; s < 4; s++) dots_plain(out + s, x, n, 1, w[s], n);
}

}  // namespace

template <class W>
void dots_strided(float* out, const float* x, const W* w, int64_t ld, int64_t rows, int64_t n) {
#ifdef LA_X86
  if (simd_level() == Simd::Avx512) return dots_strided_avx512(out, x, w, ld, rows, n);
  if (simd_level() == Simd::Avx2) return dots_strided_avx2(out, x, w, ld, rows, n);
#endif
  for (int64_t s = 0; s < rows; s++) dots_plain(out + s, x, n, 1, w + s * ld, n);
}
void dots_strided_f32(float* out, const float* x, const float* w, int64_t ld, int64_t rows, int64_t n) {
  dots_strided(out, x, w, ld, rows, n);
}
void dots_strided_bf16(float* out, const float* x, const uint16_t* w, int64_t ld, int64_t rows, int64_t n) {
  dots_strided(out, x, w, ld, rows, n);
}

void weighted_rows_f32(float* y, const float* a, const float* x, int64_t ld, int64_t rows, int64_t n) {
#ifdef LA_X86
  if (simd_level() == Simd::Avx512) return weighted_rows_avx512(y, a, x, ld, rows, n);
  if (simd_level() == Simd::Avx2) return weighted_rows_avx2(y, a, x, ld, rows, n);
#endif
  for (int64_t i = 0; i < n; i++) {
    float acc = 0;
    for (int64_t s = 0; s < rows; s++) acc += a[s] * x[s * ld + i];
    y[i] = acc;
  }
}

void dot_rows4_f32(float* out, const float* x, const float* const* w, int64_t n) { dot_rows4(out, x, w, n); }
void dot_rows4_bf16(float* out, const float* x, const uint16_t* const* w, int64_t n) { dot_rows4(out, x, w, n); }

float dot_f32(const float* a, const float* b, int64_t n) {
  float r;
  dots(&r, a, n, 1, b, n);
  return r;
}
float dot_bf16(const float* a, const uint16_t* b, int64_t n) {
  float r;
  dots(&r, a, n, 1, b, n);
  return r;
}
void dots_f32(float* out, const float* x, int64_t ldx, int64_t R, const float* w, int64_t n) {
  dots(out, x, ldx, R, w, n);
}
void dots_bf16(float* out, const float* x, int64_t ldx, int64_t R, const uint16_t* w, int64_t n) {
  dots(out, x, ldx, R, w, n);
}

}  // namespace la::cpu
