// bf16 products on the CPU: C (M, N) = bf16(A) (M, K) · B (K, N) with f32 sums, B a bf16 matrix read
// through strides (wᵀ for the forward of a frozen bf16 weight w (N, K), w itself for its input
// gradient). The inputs rounded to bf16 (nearest even) make every product exact in f32, so the
// result is the f32 sum of exact products in either path below:
//   - AVX512-BF16 (vdpbf16ps: 16 lanes x 2 products per instruction, twice the f32 FMA rate): A is
//     rounded into a row-major bf16 copy; each task packs the slice of B it is about to use (32
//     columns x 128 k-pairs) and a 12 x 32 register tile (24 accumulators) walks it;
//   - otherwise: A rounded in an f32 copy and B widened to f32, then sgemm.
// The two differ only in the order of the f32 sums (both checked against a float64 reference in
// test/matmul-precision.test.ts).
#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "bf16.h"
#include "bf16_gemm.h"
#include "blas.h"
#include "parallel.h"
#include "x86.h"

namespace la {
namespace {

constexpr int kNR = 32;    // columns of a packed panel: two zmm registers of f32 sums
constexpr int kMR = 12;    // rows of the register tile: 12 x 2 accumulators + 2 panel loads fit 32 zmm
constexpr int64_t kMC = 192;  // rows whose bf16 inputs (kMC x kKC x 2 bytes = 96 KiB) stay in L2
constexpr int64_t kKC = 256;  // k per pass: a panel slice (32 x 256 x 2 bytes = 16 KiB) stays in L1

// k-pairs [p0, p0 + np) of panel j of B (columns 32j ..): for each pair, 32 u32 words (one per
// column, the even k in the low half, as vdpbf16ps pairs them); columns past N and k past K are zero.
void pack_plain(uint32_t* out, const uint16_t* b, int64_t sk, int64_t sn, int64_t K, int64_t N, int64_t j, int64_t p0,
                int64_t np) {
  const int64_t n0 = j * kNR, cols = std::min<int64_t>(kNR, N - n0);
  for (int64_t p = p0; p < p0 + np; p++) {
    uint32_t* o = out + (p - p0) * kNR;
    const int64_t k = 2 * p;
    for (int64_t c = 0; c < cols; c++) {
      const uint16_t* col = b + (n0 + c) * sn;
      uint32_t lo = col[k * sk], hi = k + 1 < K ? col[(k + 1) * sk] : 0;
      o[c] = lo | (hi << 16);
    }
    for (int64_t c = cols; c < kNR; c++) o[c] = 0;
  }
}

bool detect_avx512bf16() {
  if (const char* e = std::getenv("LLAMA_ADAPTER_BF16_GEMM")) {
    if (!std::strcmp(e, "sgemm")) return false;  // force the widen-and-sgemm path (tests, comparisons)
  }
#ifdef LA_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

#ifdef LA_X86
#define LA_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// rows [r0, r1) of A (f32, lda) -> ab (bf16, ld = Kp), the pad column (odd K) zero
LA_BF16_TARGET void round_rows_avx512(uint16_t* ab, int64_t Kp, const float* A, int64_t lda, int64_t K, int64_t r0,
                                      int64_t r1) {
  for (int64_t r = r0; r < r1; r++) {
    const float* a = A + r * lda;
    uint16_t* o = ab + r * Kp;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(a + k + 16), _mm512_loadu_ps(a + k));
      _mm512_storeu_si512(o + k, (__m512i)h);
    }
    for (; k < K; k++) o[k] = f32_to_bf16(a[k]);
    if (Kp > K) o[K] = 0;
  }
}

// 16 x 16 transpose of u32 words: r[i] (row i) -> r[i] (column i)
LA_BF16_TARGET inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; i++) {  // 128-bit lanes: rows i, i+4, i+8, i+12 hold lane groups
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; i++) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// A whole panel (32 columns) of an even-K matrix, vectorised. wᵀ (forward, sk = 1, sn = K): the
// columns are rows of w whose k-pairs are u32 words, so each 16 x 16 block of words is transposed.
// w (input gradient, sk = K, sn = 1): rows 2p and 2p+1 of w are interleaved 16 bits at a time.
LA_BF16_TARGET void pack_avx512(uint32_t* out, const uint16_t* b, int64_t sk, int64_t sn, int64_t j, int64_t p0,
                                int64_t np) {
  const int64_t n0 = j * kNR;
  if (sk == 1) {
    int64_t q = 0;  // pairs done
    for (; q + 16 <= np; q += 16)
      for (int h = 0; h < 2; h++) {  // columns n0 + 16h .. + 15
        __m512i r[16];
        for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512(b + (n0 + 16 * h + i) * sn + 2 * (p0 + q));
        transpose16(r);
        for (int i = 0; i < 16; i++) _mm512_storeu_si512(out + (q + i) * kNR + 16 * h, r[i]);
      }
    for (; q < np; q++)
      for (int c = 0; c < kNR; c++) {
        const uint16_t* col = b + (n0 + c) * sn + 2 * (p0 + q);
        out[q * kNR + c] = uint32_t(col[0]) | (uint32_t(col[1]) << 16);
      }
    return;
  }
  for (int64_t q = 0; q < np; q++) {  // sn == 1
    const int64_t p = p0 + q;
    const __m512i even = _mm512_loadu_si512(b + 2 * p * sk + n0), odd = _mm512_loadu_si512(b + (2 * p + 1) * sk + n0);
    // unpack works within 128-bit lanes: columns (0-3, 8-11, 16-19, 24-27) and (4-7, 12-15, ...)
    const __m512i lo = _mm512_unpacklo_epi16(even, odd), hi = _mm512_unpackhi_epi16(even, odd);
    const __m512i first = _mm512_permutex2var_epi64(lo, _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), hi);
    const __m512i second = _mm512_permutex2var_epi64(lo, _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15), hi);
    _mm512_storeu_si512(out + q * kNR, first);
    _mm512_storeu_si512(out + q * kNR + 16, second);
  }
}

// out (np, 32) = pairs [p0, p0 + np) of panel j, vectorised where the panel is whole and K even
void pack(uint32_t* out, const uint16_t* b, int64_t sk, int64_t sn, int64_t K, int64_t N, int64_t j, int64_t p0,
          int64_t np) {
  const bool whole = (j + 1) * kNR <= N && K % 2 == 0 && (sk == 1 || sn == 1);
  if (whole) return pack_avx512(out, b, sk, sn, j, p0, np);
  pack_plain(out, b, sk, sn, K, N, j, p0, np);
}

// C tile (MR, cols) (+)= a (MR rows, ld lda, `pairs` k-pairs) · panel slice bp
template <int MR>
LA_BF16_TARGET void tile(int64_t pairs, const uint16_t* a, int64_t lda, const uint32_t* bp, float* c, int64_t ldc,
                         int cols, bool accumulate) {
  __m512 s0[MR], s1[MR];
#pragma GCC unroll 12
  for (int i = 0; i < MR; i++) s0[i] = s1[i] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; p++) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + p * kNR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + p * kNR + 16);
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) {
      int32_t pair;
      std::memcpy(&pair, a + i * lda + 2 * p, 4);
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(pair);
      s0[i] = _mm512_dpbf16_ps(s0[i], ai, b0);
      s1[i] = _mm512_dpbf16_ps(s1[i], ai, b1);
    }
  }
  const __mmask16 m0 = cols >= 16 ? __mmask16(0xffff) : __mmask16((1u << cols) - 1);
  const __mmask16 m1 = cols >= 32 ? __mmask16(0xffff) : cols > 16 ? __mmask16((1u << (cols - 16)) - 1) : __mmask16(0);
#pragma GCC unroll 12
  for (int i = 0; i < MR; i++) {
    float* ci = c + i * ldc;
    if (accumulate) {
      s0[i] = _mm512_add_ps(s0[i], _mm512_maskz_loadu_ps(m0, ci));
      s1[i] = _mm512_add_ps(s1[i], _mm512_maskz_loadu_ps(m1, ci + 16));
    }
    _mm512_mask_storeu_ps(ci, m0, s0[i]);
    _mm512_mask_storeu_ps(ci + 16, m1, s1[i]);
  }
}

using TileFn = void (*)(int64_t, const uint16_t*, int64_t, const uint32_t*, float*, int64_t, int, bool);
template <int... R>
constexpr std::array<TileFn, sizeof...(R)> tiles_of(std::integer_sequence<int, R...>) {
  return {&tile<R + 1>...};
}

LA_BF16_TARGET void gemm_avx512bf16(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const uint16_t* b,
                                    int64_t sk, int64_t sn, float* C, int64_t ldc) {
  static constexpr auto kTiles = tiles_of(std::make_integer_sequence<int, kMR>{});
  const int64_t Kp = (K + 1) & ~int64_t(1), pairs = Kp / 2;
  const int64_t panels = (N + kNR - 1) / kNR;
  std::vector<uint16_t> ab(size_t(M * Kp));
  parallel_for(M, std::max<int64_t>(1, 16384 / Kp), [&](int64_t r0, int64_t r1) {
    round_rows_avx512(ab.data(), Kp, A, lda, K, r0, r1);
  });
  // tasks: blocks of kMC rows x groups of panels; few rows (small M) are split by panel groups instead.
  // Each task packs the panel slice it is about to use (16 KiB, then hot in L1 for all its row
  // tiles), so a weight streamed from memory is read once and never written back packed.
  const int64_t mblocks = (M + kMC - 1) / kMC;
  const int64_t want = 4 * int64_t(num_threads());
  const int64_t groups = std::min<int64_t>(panels, std::max<int64_t>(1, (want + mblocks - 1) / mblocks));
  parallel_for(mblocks * groups, 1, [&](int64_t t0, int64_t t1) {
    alignas(64) uint32_t slice[kKC / 2 * kNR];
    for (int64_t t = t0; t < t1; t++) {
      const int64_t mb = t / groups, g = t % groups;
      const int64_t r0 = mb * kMC, r1 = std::min(M, r0 + kMC);
      const int64_t j0 = panels * g / groups, j1 = panels * (g + 1) / groups;
      for (int64_t p0 = 0; p0 < pairs; p0 += kKC / 2) {
        const int64_t np = std::min<int64_t>(kKC / 2, pairs - p0);
        for (int64_t j = j0; j < j1; j++) {
          pack(slice, b, sk, sn, K, N, j, p0, np);
          const int cols = int(std::min<int64_t>(kNR, N - j * kNR));
          for (int64_t r = r0; r < r1; r += kMR) {
            const int rows = int(std::min<int64_t>(kMR, r1 - r));
            kTiles[rows - 1](np, ab.data() + r * Kp + 2 * p0, Kp, slice, C + r * ldc + j * kNR, ldc, cols, p0 > 0);
          }
        }
      }
    }
  });
}

#endif  // LA_X86

void gemm_widened(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const uint16_t* b, int64_t sk,
                  int64_t sn, float* C, int64_t ldc) {
  std::vector<float> a(size_t(M * K)), w(size_t(K * N));
  parallel_for(M, std::max<int64_t>(1, 16384 / K), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++)
      for (int64_t k = 0; k < K; k++) a[size_t(r * K + k)] = bf16_to_f32(f32_to_bf16(A[r * lda + k]));
  });
  parallel_for(K, std::max<int64_t>(1, 16384 / N), [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; k++)
      for (int64_t n = 0; n < N; n++) w[size_t(k * N + n)] = bf16_to_f32(b[k * sk + n * sn]);
  });
  sgemm(false, false, int(M), int(N), int(K), 1.f, a.data(), int(K), w.data(), int(N), 0.f, C, int(ldc));
}

std::atomic<MatmulPrecision> g_precision{MatmulPrecision::Highest};

}  // namespace

void set_matmul_precision(MatmulPrecision p) { g_precision = p; }
MatmulPrecision matmul_precision() { return g_precision; }

bool bf16_gemm_native() {
  static const bool yes = detect_avx512bf16();
  return yes;
}

void bf16_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const uint16_t* b, int64_t sk, int64_t sn,
               float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K == 0) {
    for (int64_t m = 0; m < M; m++) std::fill(C + m * ldc, C + m * ldc + N, 0.f);
    return;
  }
#ifdef LA_X86
  if (bf16_gemm_native()) return gemm_avx512bf16(M, N, K, A, lda, b, sk, sn, C, ldc);
#endif
  gemm_widened(M, N, K, A, lda, b, sk, sn, C, ldc);
}

}  // namespace la
