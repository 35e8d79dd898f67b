// The fused gated split-softmax attention of LLaMA-Adapter (SPEC §2), forward and backward, over
// packed sequences, and the adapter branch of cached inference.
//
// Dimension letters: N tokens (packed rows), S segments (tokens of segment s are seg[s] .. seg[s+1]-1),
// L a segment's length, H heads, Hkv kv heads (head h reads kv head h / (H / Hkv)), d head size,
// K prompt vectors, G gate size (H: per head, or 1: one scalar for all heads). Shapes:
//   q, dq (N, H, d)   k, v, dk, dv (N, Hkv, d)   pk, pv, dpk, dpv (K, Hkv, d)   gate, dgate (G)
//   out, dout (N, H, d)   stats (N, H, 2) = [log-sum-exp of the word scores, of the prompt scores]
//
// For query t of head h in segment s, with gamma = tanh(gate[h or 0]) and scale 1/sqrt(d):
//   A_w = softmax(q_t · k_j * scale, j = seg[s] .. t)       (causal within the segment)
//   A_p = softmax(q_t · pk_k * scale, k = 0 .. K-1)          (no mask)
//   out_t = A_w V_w + gamma * A_p V_p
// Without a prompt (pk = pv = gate = null) out_t = A_w V_w and the prompt log-sum-exp is -inf.
//
// Backward (SPEC §2; flash-attention style, the T x T probabilities are recomputed from the saved
// log-sum-exps, never stored): with Y_p = A_p V_p recomputed (K is small) and out_w = out - gamma Y_p,
//   word:   P = exp(S - lse_w), D = rowsum(dout * out_w), dS = P (dout Vᵀ - D) * scale
//           dV = Pᵀ dout, dK = dSᵀ Q, dQ = dS K
//   prompt: dA_p = gamma dout V_pᵀ, dS_p = A_p (dA_p - rowsum(A_p dA_p)) * scale
//           dQ += dS_p K_p, dK_p = sum dS_pᵀ Q, dV_p = sum gamma A_pᵀ dout, dgate = (1 - gamma²) sum <dout, Y_p>
//
// Work units own disjoint outputs and every sum runs in a fixed order, so results do not depend on
// the thread count:
//   forward          (segment, head)          -> out, stats rows of the segment
//   backward pass P  (head, token)            -> prompt part of dq, D_w, A_p, dS_p, <dout, Y_p>
//   backward pass W  (segment, kv head)       -> dk, dv rows of the segment, word part of dq
//   backward pass K  (kv head)                -> dpk, dpv (sums over all tokens)
//   dgate            serial, in double, token order
//
// A unit packs its segment's keys and values once into zero-padded tiles (head size padded to
// dp = a multiple of 8, keys to a multiple of 8), then walks blocks of Bq queries: the score block
// S = Q Kᵀ, the softmax rows and the products with V (or, backward, the five products) run in
// register-tiled micro-kernels (AVX2+FMA when the CPU has it, plain loops otherwise) over data that
// stays in L1/L2. Causality trims each 4-row group to the keys its last row sees.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../core/parallel.h"
#include "kernels.h"
#include "simd.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define LA_GA_X86 1
#include <immintrin.h>
#define LA_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace la::cpu {
namespace {

constexpr int64_t kBq = 32;  // query rows per block

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---- exp --------------------------------------------------------------------------------------

// Cephes' expf: round x / ln2 to the nearest integer n, reduce by a two-part ln2, degree-6
// polynomial, scale by 2^n through the exponent bits.
constexpr float kExpLo = -87.33654f, kExpHi = 88.37626f, kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f,
                kLn2Lo = -2.12194440e-4f, kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f,
                kP3 = 4.1665795894e-2f, kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

float exp_scalar(float x) {
  if (x != x) return x;
  if (x < kExpLo) return 0.f;
  float xc = std::min(x, kExpHi);
  float n = std::nearbyint(xc * kLog2e);
  float r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float y = kP0;
  y = y * r + kP1;
  y = y * r + kP2;
  y = y * r + kP3;
  y = y * r + kP4;
  y = y * r + kP5;
  y = y * (r * r) + r + 1.f;
  int32_t bits = (int32_t(n) + 127) << 23;
  float s;
  std::memcpy(&s, &bits, 4);
  return y * s;
}

#ifdef LA_GA_X86
LA_AVX2 inline __m256 exp8(__m256 x) {
  __m256 xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kExpLo)), _mm256_set1_ps(kExpHi));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 y = _mm256_set1_ps(kP0);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP1));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP2));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP3));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP4));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(kP5));
  y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.f));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  y = _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(kExpLo), _CMP_LT_OQ), y);  // underflow, -inf -> 0
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));             // NaN stays NaN
}

LA_AVX2 float exp_sum_avx2(float* e, const float* x, int64_t n, float scale, float shift) {
  __m256 s = _mm256_setzero_ps(), sc = _mm256_set1_ps(scale), sh = _mm256_set1_ps(shift);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 p = exp8(_mm256_fmsub_ps(_mm256_loadu_ps(x + j), sc, sh));
    _mm256_storeu_ps(e + j, p);
    s = _mm256_add_ps(s, p);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, s);
  float tail = 0;
  for (; j < n; j++) tail += (e[j] = exp_scalar(x[j] * scale - shift));
  return (((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))) + tail;
}
LA_AVX2 float max_avx2(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + j));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float r = lanes[0];
  for (int l = 1; l < 8; l++) r = std::max(r, lanes[l]);
  for (; j < n; j++) r = std::max(r, x[j]);
  return r;
}
const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif

float exp_sum_plain(float* e, const float* x, int64_t n, float scale, float shift) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; l++) s[l] += (e[j + l] = exp_scalar(x[j + l] * scale - shift));
  float tail = 0;
  for (; j < n; j++) tail += (e[j] = exp_scalar(x[j] * scale - shift));
  return (((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))) + tail;
}

// ---- micro-kernels over packed, zero-padded tiles ---------------------------------------------
//
// A block has R query rows (its buffers hold round_up(R, 4) rows, the extra ones zero); row r of
// the block is query rel + r of its segment and sees keys 0 .. rel + r. dp is a multiple of 8; key
// dimensions of packed buffers are zero-padded to a multiple of 8.
//
//   scores: C (R, keys) = A (R, dp) · Bt (dp, keys), for each 4-row group the keys up to
//           round_up(rel + last row + 1, 8)
//   rowmix: C (R, dp) = A (R, keys) · B (keys, dp), each 4-row group over the keys its last row sees
//   accum:  C (keys, dp) += Aᵀ (keys, R) · B (R, dp), keys = rel + R (rounded up to 4 in C's rows);
//           the rows that cannot see a key tile are skipped

struct Kernels {
  void (*scores)(float* C, int64_t ldc, const float* A, int64_t lda, const float* Bt, int64_t ldb, int64_t R,
                 int64_t rel, int64_t dp);
  void (*rowmix)(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb, int64_t R,
                 int64_t rel, int64_t dp);
  void (*accum)(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb, int64_t R,
                int64_t rel, int64_t dp);
  float (*exp_sum)(float* e, const float* x, int64_t n, float scale, float shift);
  float (*max)(const float* x, int64_t n);
};

float max_plain(const float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t j = 0; j < n; j++) m = std::max(m, x[j]);
  return m;
}

void scores_plain(float* C, int64_t ldc, const float* A, int64_t lda, const float* Bt, int64_t ldb, int64_t R,
                  int64_t rel, int64_t dp) {
  for (int64_t r0 = 0; r0 < R; r0 += 4) {
    int64_t cols = round_up(rel + std::min(r0 + 4, R), 8);
    for (int64_t r = r0; r < r0 + 4; r++) {
      float* c = C + r * ldc;
      std::fill(c, c + cols, 0.f);
      for (int64_t k = 0; k < dp; k++) {
        float a = A[r * lda + k];
        const float* b = Bt + k * ldb;
        for (int64_t j = 0; j < cols; j++) c[j] += a * b[j];
      }
    }
  }
}

void rowmix_plain(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb, int64_t R,
                  int64_t rel, int64_t dp) {
  for (int64_t r0 = 0; r0 < R; r0 += 4) {
    int64_t keys = rel + std::min(r0 + 4, R);
    for (int64_t r = r0; r < r0 + 4; r++) {
      float* c = C + r * ldc;
      std::fill(c, c + dp, 0.f);
      for (int64_t j = 0; j < keys; j++) {
        float a = A[r * lda + j];
        const float* b = B + j * ldb;
        for (int64_t k = 0; k < dp; k++) c[k] += a * b[k];
      }
    }
  }
}

void accum_plain(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb, int64_t R,
                 int64_t rel, int64_t dp) {
  int64_t keys = rel + R;
  for (int64_t j = 0; j < keys; j++) {
    float* c = C + j * ldc;
    for (int64_t r = std::max<int64_t>(0, j - rel); r < R; r++) {
      float a = A[r * lda + j];
      const float* b = B + r * ldb;
      for (int64_t k = 0; k < dp; k++) c[k] += a * b[k];
    }
  }
}

#ifdef LA_GA_X86
// The AVX2 tiles: 4 rows of C by 16 (or 8) columns, accumulators in named registers (GCC keeps
// an array of __m256 accumulators on the stack). One step of the reduction loop broadcasts four A
// values against one or two loaded B vectors.
//   c[i] (+)= sum_k A[i * lda + k * sa] * B[k * ldb + 0..15]
// scores: sa = 1 (A rows are queries, k runs over dp), B = Bt rows; rowmix: k runs over keys.
// accum uses the transposed roles: c[j] += sum_r A[r * lda + j] * B[r * ldb + ...].
#define LA_TILE_STEP16(a0, a1, a2, a3, bp)              \
  {                                                     \
    __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps((bp) + 8); \
    __m256 x = _mm256_broadcast_ss(a0);                 \
    c00 = _mm256_fmadd_ps(x, b0, c00);                  \
    c01 = _mm256_fmadd_ps(x, b1, c01);                  \
    x = _mm256_broadcast_ss(a1);                        \
    c10 = _mm256_fmadd_ps(x, b0, c10);                  \
    c11 = _mm256_fmadd_ps(x, b1, c11);                  \
    x = _mm256_broadcast_ss(a2);                        \
    c20 = _mm256_fmadd_ps(x, b0, c20);                  \
    c21 = _mm256_fmadd_ps(x, b1, c21);                  \
    x = _mm256_broadcast_ss(a3);                        \
    c30 = _mm256_fmadd_ps(x, b0, c30);                  \
    c31 = _mm256_fmadd_ps(x, b1, c31);                  \
  }
#define LA_TILE_STEP8(a0, a1, a2, a3, bp)                                   \
  {                                                                         \
    __m256 b0 = _mm256_loadu_ps(bp);                                        \
    c00 = _mm256_fmadd_ps(_mm256_broadcast_ss(a0), b0, c00);                \
    c10 = _mm256_fmadd_ps(_mm256_broadcast_ss(a1), b0, c10);                \
    c20 = _mm256_fmadd_ps(_mm256_broadcast_ss(a2), b0, c20);                \
    c30 = _mm256_fmadd_ps(_mm256_broadcast_ss(a3), b0, c30);                \
  }

// C[i][0..16) = sum_k A[i][k] B[k][0..16) for 4 rows i, k < n (A row stride lda, B row stride ldb)
LA_AVX2 inline void tile16_set(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb,
                               int64_t n) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * lda, *a3 = A + 3 * lda;
  for (int64_t k = 0; k < n; k++) LA_TILE_STEP16(a0 + k, a1 + k, a2 + k, a3 + k, B + k * ldb)
  _mm256_storeu_ps(C, c00);
  _mm256_storeu_ps(C + 8, c01);
  _mm256_storeu_ps(C + ldc, c10);
  _mm256_storeu_ps(C + ldc + 8, c11);
  _mm256_storeu_ps(C + 2 * ldc, c20);
  _mm256_storeu_ps(C + 2 * ldc + 8, c21);
  _mm256_storeu_ps(C + 3 * ldc, c30);
  _mm256_storeu_ps(C + 3 * ldc + 8, c31);
}
LA_AVX2 inline void tile8_set(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb,
                              int64_t n) {
  __m256 c00 = _mm256_setzero_ps(), c10 = c00, c20 = c00, c30 = c00;
  const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * lda, *a3 = A + 3 * lda;
  for (int64_t k = 0; k < n; k++) LA_TILE_STEP8(a0 + k, a1 + k, a2 + k, a3 + k, B + k * ldb)
  _mm256_storeu_ps(C, c00);
  _mm256_storeu_ps(C + ldc, c10);
  _mm256_storeu_ps(C + 2 * ldc, c20);
  _mm256_storeu_ps(C + 3 * ldc, c30);
}
// C[j][0..16) += sum_r A[r][j] B[r][0..16) for 4 key rows j, block rows r0 <= r < R
LA_AVX2 inline void tile16_acc_t(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb,
                                 int64_t r0, int64_t R) {
  __m256 c00 = _mm256_loadu_ps(C), c01 = _mm256_loadu_ps(C + 8), c10 = _mm256_loadu_ps(C + ldc),
         c11 = _mm256_loadu_ps(C + ldc + 8), c20 = _mm256_loadu_ps(C + 2 * ldc),
         c21 = _mm256_loadu_ps(C + 2 * ldc + 8), c30 = _mm256_loadu_ps(C + 3 * ldc),
         c31 = _mm256_loadu_ps(C + 3 * ldc + 8);
  for (int64_t r = r0; r < R; r++) {
    const float* a = A + r * lda;
    LA_TILE_STEP16(a, a + 1, a + 2, a + 3, B + r * ldb)
  }
  _mm256_storeu_ps(C, c00);
  _mm256_storeu_ps(C + 8, c01);
  _mm256_storeu_ps(C + ldc, c10);
  _mm256_storeu_ps(C + ldc + 8, c11);
  _mm256_storeu_ps(C + 2 * ldc, c20);
  _mm256_storeu_ps(C + 2 * ldc + 8, c21);
  _mm256_storeu_ps(C + 3 * ldc, c30);
  _mm256_storeu_ps(C + 3 * ldc + 8, c31);
}
LA_AVX2 inline void tile8_acc_t(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb,
                                int64_t r0, int64_t R) {
  __m256 c00 = _mm256_loadu_ps(C), c10 = _mm256_loadu_ps(C + ldc), c20 = _mm256_loadu_ps(C + 2 * ldc),
         c30 = _mm256_loadu_ps(C + 3 * ldc);
  for (int64_t r = r0; r < R; r++) {
    const float* a = A + r * lda;
    LA_TILE_STEP8(a, a + 1, a + 2, a + 3, B + r * ldb)
  }
  _mm256_storeu_ps(C, c00);
  _mm256_storeu_ps(C + ldc, c10);
  _mm256_storeu_ps(C + 2 * ldc, c20);
  _mm256_storeu_ps(C + 3 * ldc, c30);
}
#undef LA_TILE_STEP16
#undef LA_TILE_STEP8

LA_AVX2 void scores_avx2(float* C, int64_t ldc, const float* A, int64_t lda, const float* Bt, int64_t ldb, int64_t R,
                         int64_t rel, int64_t dp) {
  for (int64_t r0 = 0; r0 < R; r0 += 4) {
    int64_t cols = round_up(rel + std::min(r0 + 4, R), 8), j = 0;
    for (; j + 16 <= cols; j += 16) tile16_set(C + r0 * ldc + j, ldc, A + r0 * lda, lda, Bt + j, ldb, dp);
    if (j < cols) tile8_set(C + r0 * ldc + j, ldc, A + r0 * lda, lda, Bt + j, ldb, dp);
  }
}

LA_AVX2 void rowmix_avx2(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb, int64_t R,
                         int64_t rel, int64_t dp) {
  for (int64_t r0 = 0; r0 < R; r0 += 4) {
    int64_t keys = rel + std::min(r0 + 4, R), k = 0;
    for (; k + 16 <= dp; k += 16) tile16_set(C + r0 * ldc + k, ldc, A + r0 * lda, lda, B + k, ldb, keys);
    if (k < dp) tile8_set(C + r0 * ldc + k, ldc, A + r0 * lda, lda, B + k, ldb, keys);
  }
}

LA_AVX2 void accum_avx2(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb, int64_t R,
                        int64_t rel, int64_t dp) {
  int64_t keys = rel + R;
  for (int64_t j0 = 0; j0 < keys; j0 += 4) {
    int64_t r0 = std::max<int64_t>(0, j0 - rel), k = 0;
    for (; k + 16 <= dp; k += 16) tile16_acc_t(C + j0 * ldc + k, ldc, A + j0, lda, B + k, ldb, r0, R);
    if (k < dp) tile8_acc_t(C + j0 * ldc + k, ldc, A + j0, lda, B + k, ldb, r0, R);
  }
}
#endif

// LLAMA_ADAPTER_NO_AVX2=1 selects the portable loops on any CPU (for testing them).
const Kernels& kernels() {
  static const Kernels plain{scores_plain, rowmix_plain, accum_plain, exp_sum_plain, max_plain};
#ifdef LA_GA_X86
  static const Kernels avx2{scores_avx2, rowmix_avx2, accum_avx2, exp_sum_avx2, max_avx2};
  static const bool use_avx2 = has_avx2 && !(std::getenv("LLAMA_ADAPTER_NO_AVX2") &&
                                             std::string(std::getenv("LLAMA_ADAPTER_NO_AVX2")) == "1");
  if (use_avx2) return avx2;
#endif
  return plain;
}

// ---- packing ----------------------------------------------------------------------------------

// dst (n rows, dp) = src rows (stride ld), d columns, zero-padded to dp columns and to `rows` rows
void pack_rows(float* dst, int64_t dp, const float* src, int64_t ld, int64_t n, int64_t rows, int64_t d) {
  for (int64_t j = 0; j < rows; j++) {
    float* o = dst + j * dp;
    if (j < n) {
      std::memcpy(o, src + j * ld, size_t(d) * 4);
      std::fill(o + d, o + dp, 0.f);
    } else {
      std::fill(o, o + dp, 0.f);
    }
  }
}

// dst (dp, ldt) = transpose of src rows (stride ld): dst[k][j] = src[j][k], zero-padded
void pack_transposed(float* dst, int64_t ldt, const float* src, int64_t ld, int64_t n, int64_t d, int64_t dp) {
  std::fill(dst, dst + dp * ldt, 0.f);
  int64_t j0 = 0;
  for (; j0 + 8 <= n; j0 += 8)  // 8 source rows at a time: 8 contiguous stores per column
    for (int64_t k = 0; k < d; k++)
      for (int64_t j = 0; j < 8; j++) dst[k * ldt + j0 + j] = src[(j0 + j) * ld + k];
  for (; j0 < n; j0++)
    for (int64_t k = 0; k < d; k++) dst[k * ldt + j0] = src[j0 * ld + k];
}

// Strides of the packed tiles: padded away from multiples of 128 bytes, whose rows would all fall
// into a few L1 sets (the kernels walk 4..64 rows of a tile in lock step).
int64_t row_stride(int64_t dp) { return dp % 32 == 0 ? dp + 8 : dp; }
int64_t key_stride(int64_t L) {
  int64_t l = round_up(L, 8);
  return l % 32 == 0 ? l + 8 : l;
}

struct Dims {
  int64_t N, H, Hkv, d, dp, ldr, K, G, group, ldq, ldk;
  float scale;
  Dims(int64_t N_, int64_t H_, int64_t Hkv_, int64_t d_, int64_t K_, int64_t G_)
      : N(N_), H(H_), Hkv(Hkv_), d(d_), dp(round_up(d_, 8)), ldr(row_stride(dp)), K(K_), G(G_), group(H_ / Hkv_),
        ldq(H_ * d_), ldk(Hkv_ * d_), scale(1.f / std::sqrt(float(d_))) {}
  int64_t kv_of(int64_t h) const { return h / group; }
};

// ---- the prompt branch of one row (K is small: plain loops and the SIMD dot helpers) ------------

// a (K) = softmax(q · pk * scale), y (d) = a · pv; returns the log-sum-exp. pkh, pvh: kv head's row 0.
float prompt_softmax(float* a, float* y, const float* qi, const float* pkh, const float* pvh, const Dims& g) {
  dots_f32(a, pkh, g.ldk, g.K, qi, g.d);
  float mx = -INFINITY;
  for (int64_t k = 0; k < g.K; k++) mx = std::max(mx, a[k]);
  mx *= g.scale;
  float sum = kernels().exp_sum(a, a, g.K, g.scale, mx);
  float inv = 1.f / sum;
  for (int64_t k = 0; k < g.K; k++) a[k] *= inv;
  std::fill(y, y + g.d, 0.f);
  for (int64_t k = 0; k < g.K; k++) {
    const float* v = pvh + k * g.ldk;
    for (int64_t c = 0; c < g.d; c++) y[c] += a[k] * v[c];
  }
  return mx + std::log(sum);
}

int64_t longest_segment(const int32_t* seg, int64_t S) {
  int64_t L = 0;
  for (int64_t s = 0; s < S; s++) L = std::max<int64_t>(L, seg[s + 1] - seg[s]);
  return L;
}

// Units (segment, x) for x < X, longest segments first (empty ones dropped): a balanced schedule
// for parallel_for's contiguous chunks; the outputs do not depend on it.
std::vector<int64_t> segment_units(const int32_t* seg, int64_t S, int64_t X) {
  std::vector<int64_t> units;
  for (int64_t s = 0; s < S; s++)
    if (seg[s + 1] > seg[s])
      for (int64_t x = 0; x < X; x++) units.push_back(s * X + x);
  std::stable_sort(units.begin(), units.end(), [&](int64_t a, int64_t b) {
    return seg[a / X + 1] - seg[a / X] > seg[b / X + 1] - seg[b / X];
  });
  return units;
}

std::vector<float> tanh_gate(const float* gate, int64_t G, int64_t H) {
  std::vector<float> gamma(static_cast<size_t>(H));
  for (int64_t h = 0; h < H; h++) gamma[h] = std::tanh(gate[G == 1 ? 0 : h]);
  return gamma;
}

// Per-chunk scratch of a unit walking one segment, sized for the longest segment: ldt = its key
// stride, rows of ldr floats. Transposed tiles (dp, ldt); row tiles (ldt, ldr); blocks (kBq, .).
struct Scratch {
  std::vector<float> kt, vt, kr, vr, qb, ob, sb, pb, dkr, dvr, y, a;
  Scratch(int64_t ldt, const Dims& g, bool backward)
      : kt(size_t(g.dp * ldt)), vr(size_t(ldt * g.ldr)), qb(size_t(kBq * g.ldr)), ob(size_t(kBq * g.ldr)),
        sb(size_t(kBq * ldt)), y(size_t(g.d)), a(size_t(std::max<int64_t>(1, g.K))) {
    if (backward) {
      vt.resize(size_t(g.dp * ldt));
      kr.resize(size_t(ldt * g.ldr));
      pb.resize(size_t(kBq * ldt));
      dkr.resize(size_t(ldt * g.ldr));
      dvr.resize(size_t(ldt * g.ldr));
    }
  }
};

}  // namespace

float exp_sum(float* e, const float* x, int64_t n, float scale, float shift) {
  return kernels().exp_sum(e, x, n, scale, shift);
}

void gated_attention_forward(float* out, float* stats, const float* q, const float* k, const float* v,
                             const int32_t* seg, int64_t S, const float* pk, const float* pv, const float* gate,
                             int64_t G, int64_t N, int64_t H, int64_t Hkv, int64_t d, int64_t K) {
  const Kernels& kn = kernels();
  Dims g(N, H, Hkv, d, pk ? K : 0, G);
  const int64_t ldt_max = key_stride(longest_segment(seg, S)), dp = g.dp, ldr = g.ldr;
  std::vector<float> gamma;
  if (pk) gamma = tanh_gate(gate, G, H);
  std::vector<int64_t> units = segment_units(seg, S, H);
  parallel_for(int64_t(units.size()), 1, [&](int64_t u0, int64_t u1) {
    Scratch w(ldt_max, g, false);
    float lse[kBq], inv[kBq];
    for (int64_t u = u0; u < u1; u++) {
      int64_t s = units[u] / H, h = units[u] % H, kvh = g.kv_of(h), s0 = seg[s], L = seg[s + 1] - s0;
      int64_t ldt = key_stride(L);
      pack_transposed(w.kt.data(), ldt, k + s0 * g.ldk + kvh * d, g.ldk, L, d, dp);
      pack_rows(w.vr.data(), ldr, v + s0 * g.ldk + kvh * d, g.ldk, L, round_up(L, 8), d);
      for (int64_t rel = 0; rel < L; rel += kBq) {
        int64_t R = std::min(kBq, L - rel), R4 = round_up(R, 4), keys = rel + R;
        pack_rows(w.qb.data(), ldr, q + (s0 + rel) * g.ldq + h * d, g.ldq, R, R4, d);
        kn.scores(w.sb.data(), ldt, w.qb.data(), ldr, w.kt.data(), ldt, R, rel, dp);
        for (int64_t r = 0; r < R4; r++) {
          float* row = w.sb.data() + r * ldt;
          int64_t n = r < R ? rel + r + 1 : 0;
          if (n) {
            float mx = kn.max(row, n) * g.scale;
            float sum = kn.exp_sum(row, row, n, g.scale, mx);
            lse[r] = mx + std::log(sum);
            inv[r] = 1.f / sum;
          }
          std::fill(row + n, row + keys, 0.f);  // causal mask (and the padding rows)
        }
        kn.rowmix(w.ob.data(), ldr, w.sb.data(), ldt, w.vr.data(), ldr, R, rel, dp);
        for (int64_t r = 0; r < R; r++) {
          int64_t t = s0 + rel + r;
          float* o = out + t * g.ldq + h * d;
          const float* ob = w.ob.data() + r * ldr;
          for (int64_t c = 0; c < d; c++) o[c] = ob[c] * inv[r];
          float* st = stats + (t * H + h) * 2;
          st[0] = lse[r];
          if (pk) {
            st[1] = prompt_softmax(w.a.data(), w.y.data(), q + t * g.ldq + h * d, pk + kvh * d, pv + kvh * d, g);
            float gm = gamma[h];
            for (int64_t c = 0; c < d; c++) o[c] += gm * w.y[c];
          } else {
            st[1] = -INFINITY;
          }
        }
      }
    }
  });
}

void gated_attention_backward(float* dq, float* dk, float* dv, float* dpk, float* dpv, float* dgate,
                              const float* dout, const float* q, const float* k, const float* v, const int32_t* seg,
                              int64_t S, const float* pk, const float* pv, const float* gate, int64_t G,
                              const float* out, const float* stats, int64_t N, int64_t H, int64_t Hkv, int64_t d,
                              int64_t K) {
  const Kernels& kn = kernels();
  const bool prompt = pk != nullptr;
  Dims g(N, H, Hkv, d, prompt ? K : 0, G);
  const int64_t ldt_max = key_stride(longest_segment(seg, S)), dp = g.dp, ldr = g.ldr;
  std::vector<float> gamma, Dw(size_t(N * H)), Ap, dSp, Gp;
  if (prompt) {
    gamma = tanh_gate(gate, G, H);
    Ap.resize(size_t(N * H * K));
    dSp.resize(size_t(N * H * K));
    Gp.resize(size_t(N * H));
  }

  // Pass P, units (token, head): the prompt branch's share of dq (or dq = 0), and D_w.
  parallel_for(N * H, 64, [&](int64_t u0, int64_t u1) {
    std::vector<float> y(static_cast<size_t>(d)), dA(static_cast<size_t>(std::max<int64_t>(1, g.K)));
    for (int64_t u = u0; u < u1; u++) {
      int64_t t = u / H, h = u % H, kvh = g.kv_of(h);
      const float* doi = dout + u * d;
      const float* oi = out + u * d;
      float* dqi = dq + u * d;
      if (!prompt) {
        Dw[u] = dot_f32(doi, oi, d);
        std::fill(dqi, dqi + d, 0.f);
        continue;
      }
      const float* qi = q + u * d;
      const float* pkh = pk + kvh * d;
      const float* pvh = pv + kvh * d;
      float* a = Ap.data() + u * K;
      float* ds = dSp.data() + u * K;
      float gm = gamma[h];
      // A_p from the saved log-sum-exp; Y_p = A_p V_p; G = <dout, Y_p>
      dots_f32(a, pkh, g.ldk, K, qi, d);
      kn.exp_sum(a, a, K, g.scale, stats[u * 2 + 1]);
      std::fill(y.begin(), y.end(), 0.f);
      for (int64_t j = 0; j < K; j++)
        for (int64_t c = 0; c < d; c++) y[c] += a[j] * pvh[j * g.ldk + c];
      Gp[u] = dot_f32(doi, y.data(), d);
      // dA_p = gamma dout V_pᵀ; dS_p = A_p (dA_p - rowsum(A_p dA_p)), kept times scale
      dots_f32(dA.data(), pvh, g.ldk, K, doi, d);
      float Dp = 0;
      for (int64_t j = 0; j < K; j++) {
        dA[j] = gm * dA[j];
        Dp += a[j] * dA[j];
      }
      for (int64_t j = 0; j < K; j++) ds[j] = a[j] * (dA[j] - Dp) * g.scale;
      std::fill(dqi, dqi + d, 0.f);  // dq = dS_p K_p / sqrt(d)
      for (int64_t j = 0; j < K; j++)
        for (int64_t c = 0; c < d; c++) dqi[c] += ds[j] * pkh[j * g.ldk + c];
      // D_w = <dout, out - gamma Y_p>
      for (int64_t c = 0; c < d; c++) y[c] = oi[c] - gm * y[c];
      Dw[u] = dot_f32(doi, y.data(), d);
      (void)t;
    }
  });

  // Pass W, units (segment, kv head): dk, dv rows of the segment and the word part of dq
  std::vector<int64_t> units = segment_units(seg, S, Hkv);
  parallel_for(int64_t(units.size()), 1, [&](int64_t u0, int64_t u1) {
    Scratch w(ldt_max, g, true);
    for (int64_t u = u0; u < u1; u++) {
      int64_t s = units[u] / Hkv, kvh = units[u] % Hkv, s0 = seg[s], L = seg[s + 1] - s0;
      int64_t ldt = key_stride(L), rows = round_up(L, 8);
      const float* kb = k + s0 * g.ldk + kvh * d;
      const float* vb = v + s0 * g.ldk + kvh * d;
      pack_transposed(w.kt.data(), ldt, kb, g.ldk, L, d, dp);
      pack_transposed(w.vt.data(), ldt, vb, g.ldk, L, d, dp);
      pack_rows(w.kr.data(), ldr, kb, g.ldk, L, rows, d);
      std::fill(w.dkr.begin(), w.dkr.begin() + rows * ldr, 0.f);
      std::fill(w.dvr.begin(), w.dvr.begin() + rows * ldr, 0.f);
      for (int64_t h = kvh * g.group; h < (kvh + 1) * g.group; h++)
        for (int64_t rel = 0; rel < L; rel += kBq) {
          // the micro-kernels read P and dS up to `kfill` columns: zero everything a row cannot see
          int64_t R = std::min(kBq, L - rel), R4 = round_up(R, 4), kfill = round_up(rel + R, 4);
          const float* qsrc = q + (s0 + rel) * g.ldq + h * d;
          const float* dosrc = dout + (s0 + rel) * g.ldq + h * d;
          pack_rows(w.qb.data(), ldr, qsrc, g.ldq, R, R4, d);
          pack_rows(w.ob.data(), ldr, dosrc, g.ldq, R, R4, d);  // dout block
          kn.scores(w.sb.data(), ldt, w.qb.data(), ldr, w.kt.data(), ldt, R, rel, dp);  // S
          kn.scores(w.pb.data(), ldt, w.ob.data(), ldr, w.vt.data(), ldt, R, rel, dp);  // dP = dout Vᵀ
          for (int64_t r = 0; r < R4; r++) {
            float* P = w.sb.data() + r * ldt;
            float* dS = w.pb.data() + r * ldt;
            int64_t n = r < R ? rel + r + 1 : 0;
            if (n) {
              int64_t row = (s0 + rel + r) * H + h;
              kn.exp_sum(P, P, n, g.scale, stats[row * 2]);
              float D = Dw[row];
              for (int64_t j = 0; j < n; j++) dS[j] = P[j] * (dS[j] - D) * g.scale;
            }
            std::fill(P + n, P + kfill, 0.f);
            std::fill(dS + n, dS + kfill, 0.f);
          }
          kn.accum(w.dvr.data(), ldr, w.sb.data(), ldt, w.ob.data(), ldr, R, rel, dp);  // dV += Pᵀ dout
          kn.accum(w.dkr.data(), ldr, w.pb.data(), ldt, w.qb.data(), ldr, R, rel, dp);  // dK += dSᵀ Q
          kn.rowmix(w.qb.data(), ldr, w.pb.data(), ldt, w.kr.data(), ldr, R, rel, dp);  // dQ = dS K (into Q's tile)
          for (int64_t r = 0; r < R; r++) {
            float* dqi = dq + (s0 + rel + r) * g.ldq + h * d;
            const float* src = w.qb.data() + r * ldr;
            for (int64_t c = 0; c < d; c++) dqi[c] += src[c];
          }
        }
      for (int64_t j = 0; j < L; j++) {
        std::memcpy(dk + (s0 + j) * g.ldk + kvh * d, w.dkr.data() + j * ldr, size_t(d) * 4);
        std::memcpy(dv + (s0 + j) * g.ldk + kvh * d, w.dvr.data() + j * ldr, size_t(d) * 4);
      }
    }
  });

  if (!prompt) return;
  // Pass K, units (kv head): dpk = sum dS_p q, dpv = sum gamma A_p dout over tokens and heads
  parallel_for(Hkv, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t kvh = h0; kvh < h1; kvh++) {
      for (int64_t j = 0; j < K; j++) {
        std::fill(dpk + j * g.ldk + kvh * d, dpk + j * g.ldk + kvh * d + d, 0.f);
        std::fill(dpv + j * g.ldk + kvh * d, dpv + j * g.ldk + kvh * d + d, 0.f);
      }
      for (int64_t t = 0; t < N; t++)
        for (int64_t h = kvh * g.group; h < (kvh + 1) * g.group; h++) {
          int64_t u = t * H + h;
          const float* qi = q + u * d;
          const float* doi = dout + u * d;
          float gm = gamma[h];
          for (int64_t j = 0; j < K; j++) {
            float* __restrict pkr = dpk + j * g.ldk + kvh * d;
            float* __restrict pvr = dpv + j * g.ldk + kvh * d;
            float sj = dSp[u * K + j], aj = gm * Ap[u * K + j];
            for (int64_t c = 0; c < d; c++) {
              pkr[c] += sj * qi[c];
              pvr[c] += aj * doi[c];
            }
          }
        }
    }
  });
  // dgate = (1 - gamma²) sum <dout, Y_p>, in double, in token order
  std::vector<double> per_head(static_cast<size_t>(H), 0.0);
  for (int64_t t = 0; t < N; t++)
    for (int64_t h = 0; h < H; h++) per_head[h] += double(Gp[t * H + h]);
  if (G == 1) {
    double s = 0;
    for (int64_t h = 0; h < H; h++) s += per_head[h];
    dgate[0] = float((1.0 - double(gamma[0]) * double(gamma[0])) * s);
  } else {
    for (int64_t h = 0; h < H; h++) dgate[h] = float((1.0 - double(gamma[h]) * double(gamma[h])) * per_head[h]);
  }
}

void attention_prompt_add(float* out, const float* q, const float* pk, const float* pv, const float* gate, int64_t G,
                          int64_t T, int64_t H, int64_t Hkv, int64_t d, int64_t K) {
  // The adapter branch of cached decoding: the same per-row computation as the fused forward.
  Dims g(T, H, Hkv, d, K, G);
  std::vector<float> gamma = tanh_gate(gate, G, H);
  parallel_for(T * H, 16, [&](int64_t u0, int64_t u1) {
    std::vector<float> a(static_cast<size_t>(K)), y(static_cast<size_t>(d));
    for (int64_t u = u0; u < u1; u++) {
      int64_t h = u % H, kvh = g.kv_of(h);
      float* o = out + u * d;
      prompt_softmax(a.data(), y.data(), q + u * d, pk + kvh * d, pv + kvh * d, g);
      float gm = gamma[h];
      for (int64_t c = 0; c < d; c++) o[c] += gm * y[c];
    }
  });
}

}  // namespace la::cpu
