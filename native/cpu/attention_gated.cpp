// The fused gated split-softmax attention of LLaMA-Adapter (SPEC §2), forward and backward, over
// packed sequences, and the adapter branch of cached inference.
//
// Dimension letters: N tokens (packed rows), S segments (tokens of segment s are seg[s] .. seg[s+1]-1),
// L a segment's length, H heads, Hkv kv heads (head h reads kv head h / (H / Hkv)), d head size,
// K prompt vectors, G gate size (H: per head, or 1: one scalar for all heads). Shapes:
//   q, dq (N, H, d)   k, v, dk, dv (N, Hkv, d)   gate, dgate (G)
//   pk, pv, dpk, dpv (K, Hkv, d) shared by all segments, or (S, K, Hkv, d) per segment (SPEC §8)
//   out, dout (N, H, d)   stats (N, H, 2) = [log-sum-exp of the word scores, of the prompt scores]
//
// For query t of head h in segment s, with gamma = tanh(gate[h or 0]) and scale 1/sqrt(d):
//   A_w = softmax(q_t · k_j * scale, j = seg[s] .. t)       (causal within the segment)
//      or softmax(q_t · k_j * scale, j = seg[s] .. seg[s+1]-1)  (non-causal: the whole segment)
//   A_p = softmax(q_t · pk_k * scale, k = 0 .. K-1)          (no mask; pk[s] when per segment)
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
// Work units own disjoint outputs and every sum runs in a fixed order, so results are bit-identical
// for any thread count. A group is a run of consecutive segments of >= 128 tokens (a longer segment
// alone), fixed by the offsets:
//   forward   (group, head)       -> out, stats rows of its segments
//   backward  (group, kv head)    -> dk, dv rows of its segments, dq rows of the heads that read the
//                                    kv head, and a partial dpk, dpv tile; then the tiles are summed
//                                    in group order, and dgate in double, in token order (per-segment
//                                    prompts: each segment's tile is its own dpk[s], dpv[s] rows)
//
// A unit packs a segment's keys and values once into zero-padded tiles (head size padded to dp, a
// multiple of 8, keys to a multiple of 8; strides kept off multiples of 128 bytes), then walks
// blocks of kBq queries (without the causal mask, every row of a block sees all the segment's
// keys). The products (S = Q Kᵀ, P V, and backward dout Vᵀ, Pᵀ dout, dSᵀ Q, dS K, and the same
// against the K prompt keys, packed once per op) run in register-tiled micro-kernels
// (AVX2+FMA when the CPU has it, plain loops otherwise) over data that stays in L1/L2; softmax rows
// use a vectorised exp. Causality trims each 4-row group to the keys its last row sees. The T x T
// probabilities are recomputed from the saved log-sum-exps, never stored.

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../core/parallel.h"
#include "kernels.h"
#include "simd.h"

#include "../core/x86.h"

#ifdef LA_X86
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

#ifdef LA_X86
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
// A block has R query rows (its buffers hold round_up(R, 4) rows, the extra ones zero) and nkeys
// keys; row r sees keys 0 .. min(rel + r, nkeys - 1): causal with rel = the block's first query
// within its segment (nkeys = rel + R), unmasked with rel = nkeys (the prompt keys). dp is a
// multiple of 8; key dimensions of packed buffers are zero-padded to a multiple of 8.
//
//   scores: C (R, keys) = A (R, dp) · Bt (dp, keys), for each 4-row group the keys its last row
//           sees, rounded up to 8 (Bt needs those zero-padded columns)
//   rowmix: C (R, dp) = A (R, keys) · B (keys, dp), each 4-row group over the keys its last row sees
//   accum:  C (keys, dp) += Aᵀ (keys, R) · B (R, dp) in tiles of 4 keys (C has round_up(nkeys, 4)
//           rows, A that many zero-padded columns); the rows that cannot see a key tile are skipped

struct Kernels {
  void (*scores)(float* C, int64_t ldc, const float* A, int64_t lda, const float* Bt, int64_t ldb, int64_t R,
                 int64_t nkeys, int64_t rel, int64_t dp);
  void (*rowmix)(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb, int64_t R,
                 int64_t nkeys, int64_t rel, int64_t dp);
  void (*accum)(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb, int64_t R,
                int64_t nkeys, int64_t rel, int64_t dp);
  float (*exp_sum)(float* e, const float* x, int64_t n, float scale, float shift);
  float (*max)(const float* x, int64_t n);
};

float max_plain(const float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t j = 0; j < n; j++) m = std::max(m, x[j]);
  return m;
}

void scores_plain(float* C, int64_t ldc, const float* A, int64_t lda, const float* Bt, int64_t ldb, int64_t R,
                  int64_t nkeys, int64_t rel, int64_t dp) {
  for (int64_t r0 = 0; r0 < R; r0 += 4) {
    int64_t cols = round_up(std::min(nkeys, rel + std::min(r0 + 4, R)), 8);
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
                  int64_t nkeys, int64_t rel, int64_t dp) {
  for (int64_t r0 = 0; r0 < R; r0 += 4) {
    int64_t keys = std::min(nkeys, rel + std::min(r0 + 4, R));
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
                 int64_t nkeys, int64_t rel, int64_t dp) {
  for (int64_t j = 0; j < nkeys; j++) {
    float* c = C + j * ldc;
    for (int64_t r = std::max<int64_t>(0, j - rel); r < R; r++) {
      float a = A[r * lda + j];
      const float* b = B + r * ldb;
      for (int64_t k = 0; k < dp; k++) c[k] += a * b[k];
    }
  }
}

#ifdef LA_X86
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
                         int64_t nkeys, int64_t rel, int64_t dp) {
  for (int64_t r0 = 0; r0 < R; r0 += 4) {
    int64_t cols = round_up(std::min(nkeys, rel + std::min(r0 + 4, R)), 8), j = 0;
    for (; j + 16 <= cols; j += 16) tile16_set(C + r0 * ldc + j, ldc, A + r0 * lda, lda, Bt + j, ldb, dp);
    if (j < cols) tile8_set(C + r0 * ldc + j, ldc, A + r0 * lda, lda, Bt + j, ldb, dp);
  }
}

LA_AVX2 void rowmix_avx2(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb, int64_t R,
                         int64_t nkeys, int64_t rel, int64_t dp) {
  for (int64_t r0 = 0; r0 < R; r0 += 4) {
    int64_t keys = std::min(nkeys, rel + std::min(r0 + 4, R)), k = 0;
    for (; k + 16 <= dp; k += 16) tile16_set(C + r0 * ldc + k, ldc, A + r0 * lda, lda, B + k, ldb, keys);
    if (k < dp) tile8_set(C + r0 * ldc + k, ldc, A + r0 * lda, lda, B + k, ldb, keys);
  }
}

LA_AVX2 void accum_avx2(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb, int64_t R,
                        int64_t nkeys, int64_t rel, int64_t dp) {
  for (int64_t j0 = 0; j0 < nkeys; j0 += 4) {
    int64_t r0 = std::max<int64_t>(0, j0 - rel), k = 0;
    for (; k + 16 <= dp; k += 16) tile16_acc_t(C + j0 * ldc + k, ldc, A + j0, lda, B + k, ldb, r0, R);
    if (k < dp) tile8_acc_t(C + j0 * ldc + k, ldc, A + j0, lda, B + k, ldb, r0, R);
  }
}
#endif

// AVX2+FMA when the CPU has it, unless LLAMA_ADAPTER_NO_AVX2=1 (to test the portable loops).
bool avx2_enabled() {
#ifdef LA_X86
  static const bool on = has_avx2 && !(std::getenv("LLAMA_ADAPTER_NO_AVX2") &&
                                       std::string(std::getenv("LLAMA_ADAPTER_NO_AVX2")) == "1");
  return on;
#else
  return false;
#endif
}

const Kernels& kernels() {
  static const Kernels plain{scores_plain, rowmix_plain, accum_plain, exp_sum_plain, max_plain};
#ifdef LA_X86
  static const Kernels avx2{scores_avx2, rowmix_avx2, accum_avx2, exp_sum_avx2, max_avx2};
  if (avx2_enabled()) return avx2;
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

#ifdef LA_X86
// dst rows 0..7 (stride ldt) = the transpose of src rows 0..7 (stride ld), 8 columns
LA_AVX2 inline void transpose8(float* dst, int64_t ldt, const float* src, int64_t ld) {
  __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ld), r2 = _mm256_loadu_ps(src + 2 * ld),
         r3 = _mm256_loadu_ps(src + 3 * ld), r4 = _mm256_loadu_ps(src + 4 * ld), r5 = _mm256_loadu_ps(src + 5 * ld),
         r6 = _mm256_loadu_ps(src + 6 * ld), r7 = _mm256_loadu_ps(src + 7 * ld);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
         t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
         t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
         u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
         u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
         u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(dst + ldt, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(dst + 2 * ldt, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(dst + 3 * ldt, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(dst + 4 * ldt, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(dst + 5 * ldt, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(dst + 6 * ldt, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(dst + 7 * ldt, _mm256_permute2f128_ps(u3, u7, 0x31));
}
LA_AVX2 int64_t transpose_blocks_avx2(float* dst, int64_t ldt, const float* src, int64_t ld, int64_t n, int64_t d) {
  int64_t j0 = 0;
  for (; j0 + 8 <= n; j0 += 8)
    for (int64_t k = 0; k + 8 <= d; k += 8) transpose8(dst + k * ldt + j0, ldt, src + j0 * ld + k, ld);
  return j0;  // rows done (all columns below d rounded down to 8)
}
#endif

// dst (dp, ldt) = transpose of src rows (stride ld): dst[k][j] = src[j][k], zero-padded
void pack_transposed(float* dst, int64_t ldt, const float* src, int64_t ld, int64_t n, int64_t d, int64_t dp) {
  std::fill(dst, dst + dp * ldt, 0.f);
  int64_t done = 0, kfull = 0;
#ifdef LA_X86
  if (avx2_enabled()) {
    done = transpose_blocks_avx2(dst, ldt, src, ld, n, d);
    kfull = d / 8 * 8;
  }
#endif
  for (int64_t j0 = 0; j0 < done; j0 += 8)  // the columns past the 8x8 blocks
    for (int64_t k = kfull; k < d; k++)
      for (int64_t j = 0; j < 8; j++) dst[k * ldt + j0 + j] = src[(j0 + j) * ld + k];
  int64_t j0 = done;
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

// Work groups: runs of consecutive segments, each closed once it holds >= kGroupTokens tokens (a
// long segment is a group of its own). They depend on the offsets alone, never on the thread
// count, and bound the number of partial dpk/dpv tiles (one per group and kv head) by N / 128 + 1.
constexpr int64_t kGroupTokens = 128;
struct Groups {
  std::vector<int64_t> first;  // group i holds segments first[i] .. first[i + 1] - 1
  int64_t count() const { return int64_t(first.size()) - 1; }
};
Groups make_groups(const int32_t* seg, int64_t S) {
  Groups g;
  g.first.push_back(0);
  int64_t start = 0;
  for (int64_t s = 0; s < S; s++)
    if (seg[s + 1] - seg[start] >= kGroupTokens || s == S - 1) {
      g.first.push_back(s + 1);
      start = s + 1;
    }
  return g;
}

// Units (group, x) for x < X, the costliest groups (sum of squared lengths) first: a balanced
// schedule for parallel_for's contiguous chunks; the outputs do not depend on it.
std::vector<int64_t> group_units(const Groups& gr, const int32_t* seg, int64_t X) {
  std::vector<int64_t> cost(size_t(gr.count()), 0), units;
  for (int64_t i = 0; i < gr.count(); i++) {
    for (int64_t s = gr.first[i]; s < gr.first[i + 1]; s++) {
      int64_t L = seg[s + 1] - seg[s];
      cost[i] += L * L;
    }
    if (cost[i])
      for (int64_t x = 0; x < X; x++) units.push_back(i * X + x);
  }
  std::stable_sort(units.begin(), units.end(), [&](int64_t a, int64_t b) { return cost[a / X] > cost[b / X]; });
  return units;
}

std::vector<float> tanh_gate(const float* gate, int64_t G, int64_t H) {
  std::vector<float> gamma(static_cast<size_t>(H));
  for (int64_t h = 0; h < H; h++) gamma[h] = std::tanh(gate[G == 1 ? 0 : h]);
  return gamma;
}

// The prompt keys and values of every kv head, packed once per op: transposed (dp, ldt) for
// scores, rows (round_up(K, 8), ldr) for products. ldt = key_stride(K). P sets: one shared by all
// segments, or one per segment (pk, pv (S, K, Hkv, d)); set p starts at pk + p K Hkv d.
struct PromptTiles {
  int64_t K = 0, ldt = 0, rows = 0, sets = 0;
  std::vector<float> kt, vt, kr, vr;  // per (set, kv head), one after another
  PromptTiles(const float* pk, const float* pv, const Dims& g, int64_t P) {
    if (!pk) return;
    K = g.K;
    ldt = key_stride(K);
    rows = round_up(K, 8);
    sets = P;
    kt.resize(size_t(P * g.Hkv * g.dp * ldt));
    vt.resize(kt.size());
    kr.resize(size_t(P * g.Hkv * rows * g.ldr));
    vr.resize(kr.size());
    parallel_for(P * g.Hkv, 8, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; i++) {
        const float* pki = pk + i / g.Hkv * K * g.ldk + i % g.Hkv * g.d;
        const float* pvi = pv + i / g.Hkv * K * g.ldk + i % g.Hkv * g.d;
        pack_transposed(&kt[i * g.dp * ldt], ldt, pki, g.ldk, K, g.d, g.dp);
        pack_transposed(&vt[i * g.dp * ldt], ldt, pvi, g.ldk, K, g.d, g.dp);
        pack_rows(&kr[i * rows * g.ldr], g.ldr, pki, g.ldk, K, rows, g.d);
        pack_rows(&vr[i * rows * g.ldr], g.ldr, pvi, g.ldk, K, rows, g.d);
      }
    });
  }
  // the tiles of segment s's prompt (set 0 when shared), kv head kvh
  int64_t set_of(int64_t s, int64_t kvh, const Dims& g) const { return (sets > 1 ? s : 0) * g.Hkv + kvh; }
  const float* kt_of(int64_t s, int64_t kvh, const Dims& g) const { return &kt[set_of(s, kvh, g) * g.dp * ldt]; }
  const float* vt_of(int64_t s, int64_t kvh, const Dims& g) const { return &vt[set_of(s, kvh, g) * g.dp * ldt]; }
  const float* kr_of(int64_t s, int64_t kvh, const Dims& g) const { return &kr[set_of(s, kvh, g) * rows * g.ldr]; }
  const float* vr_of(int64_t s, int64_t kvh, const Dims& g) const { return &vr[set_of(s, kvh, g) * rows * g.ldr]; }
};

// Per-chunk scratch of a unit walking one segment, sized for the longest segment: ldt = its key
// stride, rows of ldr floats. Transposed tiles (dp, ldt); row tiles (ldt, ldr); blocks (kBq, .).
// The prompt blocks: sp (kBq, prompt ldt) scores, yb (kBq, ldr).
struct Scratch {
  std::vector<float> kt, vt, kr, vr, qb, ob, sb, pb, dkr, dvr, sp, yb;
  Scratch(int64_t ldt, const Dims& g, const PromptTiles& pt, bool backward)
      : kt(size_t(g.dp * ldt)), vr(size_t(ldt * g.ldr)), qb(size_t(kBq * g.ldr)), ob(size_t(kBq * g.ldr)),
        sb(size_t(kBq * ldt)), sp(size_t(kBq * std::max<int64_t>(8, pt.ldt))), yb(size_t(kBq * g.ldr)) {
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
float max_of(const float* x, int64_t n) { return kernels().max(x, n); }

void gated_attention_forward(float* out, float* stats, const float* q, const float* k, const float* v,
                             const int32_t* seg, int64_t S, const float* pk, const float* pv, const float* gate,
                             int64_t G, int64_t N, int64_t H, int64_t Hkv, int64_t d, int64_t K, bool causal,
                             bool per_segment) {
  const Kernels& kn = kernels();
  Dims g(N, H, Hkv, d, pk ? K : 0, G);
  const int64_t ldt_max = key_stride(longest_segment(seg, S)), dp = g.dp, ldr = g.ldr;
  std::vector<float> gamma;
  if (pk) gamma = tanh_gate(gate, G, H);
  const PromptTiles pt(pk, pv, g, per_segment ? S : 1);
  const Groups groups = make_groups(seg, S);
  std::vector<int64_t> units = group_units(groups, seg, H);
  parallel_for(int64_t(units.size()), 1, [&](int64_t u0, int64_t u1) {
    Scratch w(ldt_max, g, pt, false);
    float lse[kBq], inv[kBq], lsep[kBq];
    for (int64_t u = u0; u < u1; u++) {
      const int64_t grp = units[u] / H, h = units[u] % H, kvh = g.kv_of(h);
      for (int64_t s = groups.first[grp]; s < groups.first[grp + 1]; s++) {
        int64_t s0 = seg[s], L = seg[s + 1] - s0;
        if (L == 0) continue;
        int64_t ldt = key_stride(L);
        pack_transposed(w.kt.data(), ldt, k + s0 * g.ldk + kvh * d, g.ldk, L, d, dp);
        pack_rows(w.vr.data(), ldr, v + s0 * g.ldk + kvh * d, g.ldk, L, round_up(L, 8), d);
        for (int64_t rel = 0; rel < L; rel += kBq) {
          // keys: those the block's rows see (causal: up to its last row; else the whole segment);
          // seen: the kernels' mask offset (row r sees keys < seen + r + 1; seen = keys: all)
          int64_t R = std::min(kBq, L - rel), R4 = round_up(R, 4), keys = causal ? rel + R : L,
                  seen = causal ? rel : L;
          pack_rows(w.qb.data(), ldr, q + (s0 + rel) * g.ldq + h * d, g.ldq, R, R4, d);
          // word branch: S = Q Kᵀ, softmax rows (masked when causal), O = P V (normalised below)
          kn.scores(w.sb.data(), ldt, w.qb.data(), ldr, w.kt.data(), ldt, R, keys, seen, dp);
          for (int64_t r = 0; r < R4; r++) {
            float* row = w.sb.data() + r * ldt;
            int64_t n = r < R ? std::min(keys, seen + r + 1) : 0;
            if (n) {
              float mx = kn.max(row, n) * g.scale;
              float sum = kn.exp_sum(row, row, n, g.scale, mx);
              lse[r] = mx + std::log(sum);
              inv[r] = 1.f / sum;
            }
            std::fill(row + n, row + keys, 0.f);  // causal mask (and the padding rows)
          }
          kn.rowmix(w.ob.data(), ldr, w.sb.data(), ldt, w.vr.data(), ldr, R, keys, seen, dp);
          // prompt branch: A_p = softmax(Q K_pᵀ), Y_p = A_p V_p
          if (pk) {
            kn.scores(w.sp.data(), pt.ldt, w.qb.data(), ldr, pt.kt_of(s, kvh, g), pt.ldt, R, K, K, dp);
            for (int64_t r = 0; r < R; r++) {
              float* row = w.sp.data() + r * pt.ldt;
              float mx = kn.max(row, K) * g.scale;
              float sum = kn.exp_sum(row, row, K, g.scale, mx);
              lsep[r] = mx + std::log(sum);
              float iv = 1.f / sum;
              for (int64_t j = 0; j < K; j++) row[j] *= iv;
            }
            kn.rowmix(w.yb.data(), ldr, w.sp.data(), pt.ldt, pt.vr_of(s, kvh, g), ldr, R, K, K, dp);
          }
          for (int64_t r = 0; r < R; r++) {
            int64_t t = s0 + rel + r;
            float* o = out + t * g.ldq + h * d;
            const float* ob = w.ob.data() + r * ldr;
            float* st = stats + (t * H + h) * 2;
            st[0] = lse[r];
            if (pk) {
              const float* y = w.yb.data() + r * ldr;
              float gm = gamma[h];
              for (int64_t c = 0; c < d; c++) o[c] = ob[c] * inv[r] + gm * y[c];
              st[1] = lsep[r];
            } else {
              for (int64_t c = 0; c < d; c++) o[c] = ob[c] * inv[r];
              st[1] = -INFINITY;
            }
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
                              int64_t K, bool causal, bool per_segment) {
  const Kernels& kn = kernels();
  const bool prompt = pk != nullptr;
  Dims g(N, H, Hkv, d, prompt ? K : 0, G);
  const int64_t ldt_max = key_stride(longest_segment(seg, S)), dp = g.dp, ldr = g.ldr;
  const PromptTiles pt(pk, pv, g, per_segment ? S : 1);
  const int64_t K4 = round_up(std::max<int64_t>(K, 1), 4), ldtp = std::max<int64_t>(8, pt.ldt);
  std::vector<float> gamma, Gp;
  if (prompt) {
    gamma = tanh_gate(gate, G, H);
    Gp.resize(size_t(N * H));  // (N, H): <dout, Y_p>
  }
  // One pass, units (group of segments, kv head): dk, dv rows of its segments, dq rows of its
  // heads, and the unit's share of dpk, dpv (shared prompt: partial tiles, summed afterwards in
  // group order; per-segment prompts: each segment's tile, written to its own dpk[s], dpv[s]).
  const int64_t pstride = K * g.ldk;  // one segment's prompt gradient (K, Hkv, d)
  if (prompt && per_segment)
    for (int64_t s = 0; s < S; s++)
      if (seg[s + 1] == seg[s]) {  // no token: no unit visits it
        std::fill(dpk + s * pstride, dpk + (s + 1) * pstride, 0.f);
        std::fill(dpv + s * pstride, dpv + (s + 1) * pstride, 0.f);
      }
  const Groups groups = make_groups(seg, S);
  std::vector<int64_t> units = group_units(groups, seg, Hkv);
  const int64_t part = prompt ? K4 * ldr : 0;
  std::vector<float> parts(size_t(2 * part * groups.count() * Hkv));  // per (group, kv head): dpk, dpv tiles
  parallel_for(int64_t(units.size()), 1, [&](int64_t u0, int64_t u1) {
    Scratch w(ldt_max, g, pt, true);
    std::vector<float> da(size_t(kBq * ldtp)), ag(size_t(kBq * ldtp));
    float D[kBq];
    for (int64_t u = u0; u < u1; u++) {
      const int64_t grp = units[u] / Hkv, kvh = units[u] % Hkv;
      float* cpk = prompt ? &parts[units[u] * 2 * part] : nullptr;
      float* cpv = prompt ? cpk + part : nullptr;
      if (prompt) std::fill(cpk, cpk + 2 * part, 0.f);
      for (int64_t s = groups.first[grp]; s < groups.first[grp + 1]; s++) {
        int64_t s0 = seg[s], L = seg[s + 1] - s0;
        if (L == 0) continue;
        if (prompt && per_segment) std::fill(cpk, cpk + 2 * part, 0.f);
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
            int64_t R = std::min(kBq, L - rel), R4 = round_up(R, 4), keys = causal ? rel + R : L,
                    seen = causal ? rel : L, t0 = s0 + rel;
            pack_rows(w.qb.data(), ldr, q + t0 * g.ldq + h * d, g.ldq, R, R4, d);
            pack_rows(w.ob.data(), ldr, dout + t0 * g.ldq + h * d, g.ldq, R, R4, d);  // dout block

            // -- prompt branch: A_p from the saved log-sum-exp, Y_p = A_p V_p, dA_p = gamma dout V_pᵀ,
            //    dS_p = A_p (dA_p - rowsum(A_p dA_p)) * scale; dq = dS_p K_p, D = <dout, out - gamma Y_p>
            if (prompt) {
              float gm = gamma[h];
              kn.scores(w.sp.data(), ldtp, w.qb.data(), ldr, pt.kt_of(s, kvh, g), ldtp, R, K, K, dp);
              kn.scores(da.data(), ldtp, w.ob.data(), ldr, pt.vt_of(s, kvh, g), ldtp, R, K, K, dp);
              for (int64_t r = 0; r < R4; r++) {
                float* a = w.sp.data() + r * ldtp;
                float* ds = da.data() + r * ldtp;
                float* gr = ag.data() + r * ldtp;
                if (r < R) {
                  kn.exp_sum(a, a, K, g.scale, stats[((t0 + r) * H + h) * 2 + 1]);
                  float Dp = 0;
                  for (int64_t j = 0; j < K; j++) {
                    ds[j] *= gm;
                    Dp += a[j] * ds[j];
                  }
                  for (int64_t j = 0; j < K; j++) {
                    ds[j] = a[j] * (ds[j] - Dp) * g.scale;
                    gr[j] = gm * a[j];
                  }
                } else {
                  std::fill(a, a + K, 0.f);
                  std::fill(ds, ds + K, 0.f);
                  std::fill(gr, gr + K, 0.f);
                }
                std::fill(ds + K, ds + K4, 0.f);
                std::fill(gr + K, gr + K4, 0.f);
              }
              kn.rowmix(w.yb.data(), ldr, w.sp.data(), ldtp, pt.vr_of(s, kvh, g), ldr, R, K, K, dp);  // Y_p
              kn.accum(cpk, ldr, da.data(), ldtp, w.qb.data(), ldr, R, K, K, dp);  // dpk += dS_pᵀ Q
              kn.accum(cpv, ldr, ag.data(), ldtp, w.ob.data(), ldr, R, K, K, dp);  // dpv += (gamma A_p)ᵀ dout
              for (int64_t r = 0; r < R; r++) {
                int64_t row = (t0 + r) * H + h;
                const float* doi = dout + row * d;
                const float* oi = out + row * d;
                float* y = w.yb.data() + r * ldr;
                Gp[row] = dot_f32(doi, y, d);
                for (int64_t c = 0; c < d; c++) y[c] = oi[c] - gm * y[c];  // out_w
                D[r] = dot_f32(doi, y, d);  // as without a prompt: at gamma = 0 the same bits
              }
              kn.rowmix(w.yb.data(), ldr, da.data(), ldtp, pt.kr_of(s, kvh, g), ldr, R, K, K, dp);  // dS_p K_p
              for (int64_t r = 0; r < R; r++)
                std::memcpy(dq + ((t0 + r) * H + h) * d, w.yb.data() + r * ldr, size_t(d) * 4);
            } else {
              for (int64_t r = 0; r < R; r++) {
                int64_t row = (t0 + r) * H + h;
                D[r] = dot_f32(dout + row * d, out + row * d, d);
                std::fill(dq + row * d, dq + row * d + d, 0.f);
              }
            }

            // -- word branch: P = exp(S - lse), dS = P (dout Vᵀ - D) * scale; dV += Pᵀ dout,
            //    dK += dSᵀ Q, dq += dS K. The kernels read P and dS up to `kfill` columns: zero
            //    everything a row cannot see.
            int64_t kfill = round_up(keys, 4);
            kn.scores(w.sb.data(), ldt, w.qb.data(), ldr, w.kt.data(), ldt, R, keys, seen, dp);  // S
            kn.scores(w.pb.data(), ldt, w.ob.data(), ldr, w.vt.data(), ldt, R, keys, seen, dp);  // dP = dout Vᵀ
            for (int64_t r = 0; r < R4; r++) {
              float* P = w.sb.data() + r * ldt;
              float* dS = w.pb.data() + r * ldt;
              int64_t n = r < R ? std::min(keys, seen + r + 1) : 0;
              if (n) {
                kn.exp_sum(P, P, n, g.scale, stats[((t0 + r) * H + h) * 2]);
                for (int64_t j = 0; j < n; j++) dS[j] = P[j] * (dS[j] - D[r]) * g.scale;
              }
              std::fill(P + n, P + kfill, 0.f);
              std::fill(dS + n, dS + kfill, 0.f);
            }
            kn.accum(w.dvr.data(), ldr, w.sb.data(), ldt, w.ob.data(), ldr, R, keys, seen, dp);  // dV += Pᵀ dout
            kn.accum(w.dkr.data(), ldr, w.pb.data(), ldt, w.qb.data(), ldr, R, keys, seen, dp);  // dK += dSᵀ Q
            kn.rowmix(w.qb.data(), ldr, w.pb.data(), ldt, w.kr.data(), ldr, R, keys, seen, dp);  // dQ = dS K, into Q's
            for (int64_t r = 0; r < R; r++) {
              float* dqi = dq + ((t0 + r) * H + h) * d;
              const float* src = w.qb.data() + r * ldr;
              for (int64_t c = 0; c < d; c++) dqi[c] += src[c];
            }
          }
        for (int64_t j = 0; j < L; j++) {
          std::memcpy(dk + (s0 + j) * g.ldk + kvh * d, w.dkr.data() + j * ldr, size_t(d) * 4);
          std::memcpy(dv + (s0 + j) * g.ldk + kvh * d, w.dvr.data() + j * ldr, size_t(d) * 4);
        }
        if (prompt && per_segment)  // this segment's dpk[s], dpv[s] rows of kv head kvh
          for (int64_t j = 0; j < K; j++) {
            std::memcpy(dpk + s * pstride + j * g.ldk + kvh * d, cpk + j * ldr, size_t(d) * 4);
            std::memcpy(dpv + s * pstride + j * g.ldk + kvh * d, cpv + j * ldr, size_t(d) * 4);
          }
      }
    }
  });
  if (!prompt) return;
  // dpk, dpv: the units' partial tiles summed in group order (the same for any thread count)
  if (!per_segment) parallel_for(Hkv, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t kvh = h0; kvh < h1; kvh++)
      for (int64_t j = 0; j < K; j++) {
        float* opk = dpk + j * g.ldk + kvh * d;
        float* opv = dpv + j * g.ldk + kvh * d;
        std::fill(opk, opk + d, 0.f);
        std::fill(opv, opv + d, 0.f);
        for (int64_t i = 0; i < groups.count(); i++) {
          const float* cpk = &parts[(i * Hkv + kvh) * 2 * part + j * ldr];
          const float* cpv = cpk + part;
          for (int64_t c = 0; c < d; c++) {
            opk[c] += cpk[c];
            opv[c] += cpv[c];
          }
        }
      }
  });
  // dgate = (1 - gamma²) sum <dout, Y_p>, in double, in token order
  std::vector<double> per_head(static_cast<size_t>(H), 0.0);
  for (int64_t t = 0; t < N; t++)
    for (int64_t h = 0; h < H; h++) per_head[h] += double(Gp[t * H + h]);
  if (G == 1) {
    double sum = 0;
    for (int64_t h = 0; h < H; h++) sum += per_head[h];
    dgate[0] = float((1.0 - double(gamma[0]) * double(gamma[0])) * sum);
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
