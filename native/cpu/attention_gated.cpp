// The fused gated split-softmax attention of LLaMA-Adapter (SPEC §2), forward and backward, over
// packed sequences, and the adapter branch of cached inference.
//
// Dimension letters: N tokens (packed rows), S segments (tokens of segment s are seg[s] .. seg[s+1]-1),
// H heads, Hkv kv heads (head h reads kv head h / (H / Hkv)), d head size, K prompt vectors,
// G gate size (H: per head, or 1: one scalar for all heads). Shapes:
//   q, dq (N, H, d)   k, v, dk, dv (N, Hkv, d)   pk, pv, dpk, dpv (K, Hkv, d)   gate, dgate (G)
//   out, dout (N, H, d)   stats (N, H, 2) = [log-sum-exp of the word scores, of the prompt scores]
//
// For query t of head h in segment s, with gamma = tanh(gate[h or 0]) and scale 1/sqrt(d):
//   A_w = softmax(q_t · k_j * scale, j = seg[s] .. t)       (causal within the segment)
//   A_p = softmax(q_t · pk_k * scale, k = 0 .. K-1)          (no mask)
//   out_t = A_w V_w + gamma * A_p V_p
// Without a prompt (pk = pv = gate = null) out_t = A_w V_w and the prompt log-sum-exp is -inf.
//
// Work is split into units that own disjoint outputs, and every output is summed in a fixed order,
// so the results do not depend on the thread count:
//   forward          (head, token)                  -> out, stats rows
//   backward pass P  (head, token)                  -> prompt part of dq, D_w = <dout, out_w>, A_p, dS_p
//   backward pass W  (segment, kv head)             -> dk, dv rows of the segment, word part of dq
//   backward pass K  (kv head)                      -> dpk, dpv (sums over all tokens)
//   dgate            serial, in double, token order
//
// The inner loops are plain C++ compiled twice, for AVX2+FMA and for the baseline ISA, and chosen at
// run time (like simd.cpp), so that one binary serves every x86-64. Score rows use the SIMD dot
// helpers of simd.h; exp is a vectorisable polynomial (Cephes' expf, ~2 ulp).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "../core/parallel.h"
#include "kernels.h"
#include "simd.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define LA_GA_X86 1
#define LA_AVX2 __attribute__((target("avx2,fma")))
#endif
#define LA_INLINE inline __attribute__((always_inline))

namespace la::cpu {
namespace {

// ---- vectorisable building blocks (always inlined into the ISA-specific callers) --------------

// max of a[0..n)
LA_INLINE float max_of(const float* a, int64_t n) {
  float m[8];
  for (int l = 0; l < 8; l++) m[l] = -INFINITY;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; l++) m[l] = a[j + l] > m[l] ? a[j + l] : m[l];
  for (; j < n; j++) m[0] = a[j] > m[0] ? a[j] : m[0];
  float r = m[0];
  for (int l = 1; l < 8; l++) r = m[l] > r ? m[l] : r;
  return r;
}

// e[j] = exp(e[j] * scale - shift) for j < n; returns the sum (8 lanes, fixed order)
LA_INLINE float exp_shifted(float* __restrict e, int64_t n, float scale, float shift) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; l++) {
      float p = exp_poly(e[j + l] * scale - shift);
      e[j + l] = p;
      s[l] += p;
    }
  for (; j < n; j++) {
    e[j] = exp_poly(e[j] * scale - shift);
    s[0] += e[j];
  }
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// o (d) = sum_j w[j] * rows[j] for n rows of stride ld (o is overwritten)
LA_INLINE void weighted_rows(float* __restrict o, const float* __restrict w, const float* __restrict rows, int64_t ld,
                             int64_t n, int64_t d) {
  for (int64_t c = 0; c < d; c++) o[c] = 0.f;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const float *r0 = rows + j * ld, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld;
    float w0 = w[j], w1 = w[j + 1], w2 = w[j + 2], w3 = w[j + 3];
    for (int64_t c = 0; c < d; c++) o[c] += (w0 * r0[c] + w1 * r1[c]) + (w2 * r2[c] + w3 * r3[c]);
  }
  for (; j < n; j++) {
    const float* r0 = rows + j * ld;
    float w0 = w[j];
    for (int64_t c = 0; c < d; c++) o[c] += w0 * r0[c];
  }
}

LA_INLINE float dot_inl(const float* __restrict a, const float* __restrict b, int64_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; l++) s[l] += a[i + l] * b[i + l];
  for (; i < n; i++) s[0] += a[i] * b[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

struct Dims {
  int64_t N, H, Hkv, d, K, G, group, ldq, ldk;
  float scale;
  Dims(int64_t N_, int64_t H_, int64_t Hkv_, int64_t d_, int64_t K_, int64_t G_)
      : N(N_), H(H_), Hkv(Hkv_), d(d_), K(K_), G(G_), group(H_ / Hkv_), ldq(H_ * d_), ldk(Hkv_ * d_),
        scale(1.f / std::sqrt(float(d_))) {}
  int64_t kv_of(int64_t h) const { return h / group; }
};

// The prompt branch of one query row: a (K) = softmax(q · pk * scale), y (d) = a · pv; returns the
// log-sum-exp of the scores. pkh, pvh point at kv head kvh of row 0 (stride ldk).
LA_INLINE float prompt_softmax(float* __restrict a, float* __restrict y, const float* qi, const float* pkh,
                               const float* pvh, const Dims& g) {
  dots_f32(a, pkh, g.ldk, g.K, qi, g.d);
  float mx = max_of(a, g.K) * g.scale;
  float sum = exp_shifted(a, g.K, g.scale, mx);
  float inv = 1.f / sum;
  for (int64_t k = 0; k < g.K; k++) a[k] *= inv;
  weighted_rows(y, a, pvh, g.ldk, g.K, g.d);
  return mx + std::log(sum);
}

// ---- forward: units (head, token) ------------------------------------------------------------

struct FwdArgs {
  float* out;
  float* stats;
  const float *q, *k, *v, *pk, *pv, *gamma;  // gamma (H) = tanh(gate), or null without a prompt
  const int64_t* seg_start;                  // (N) first token of each token's segment
};

LA_INLINE void forward_units_impl(const FwdArgs& A, const Dims& g, int64_t u0, int64_t u1, float* e, float* a,
                                  float* y) {
  for (int64_t u = u0; u < u1; u++) {
    int64_t h = u / g.N, t = u % g.N, kvh = g.kv_of(h);
    int64_t s0 = A.seg_start[t], n = t - s0 + 1;
    const float* qi = A.q + t * g.ldq + h * g.d;
    const float* kb = A.k + s0 * g.ldk + kvh * g.d;
    const float* vb = A.v + s0 * g.ldk + kvh * g.d;
    float* o = A.out + t * g.ldq + h * g.d;
    float* st = A.stats + (t * g.H + h) * 2;
    dots_f32(e, kb, g.ldk, n, qi, g.d);
    float mx = max_of(e, n) * g.scale;
    float sum = exp_shifted(e, n, g.scale, mx);
    weighted_rows(o, e, vb, g.ldk, n, g.d);
    float inv = 1.f / sum;
    for (int64_t c = 0; c < g.d; c++) o[c] *= inv;
    st[0] = mx + std::log(sum);
    if (A.gamma) {
      st[1] = prompt_softmax(a, y, qi, A.pk + kvh * g.d, A.pv + kvh * g.d, g);
      float gm = A.gamma[h];
      for (int64_t c = 0; c < g.d; c++) o[c] += gm * y[c];
    } else {
      st[1] = -INFINITY;
    }
  }
}

#ifdef LA_GA_X86
LA_AVX2 void forward_units_avx2(const FwdArgs& A, const Dims& g, int64_t u0, int64_t u1, float* e, float* a, float* y) {
  forward_units_impl(A, g, u0, u1, e, a, y);
}
#endif
void forward_units_plain(const FwdArgs& A, const Dims& g, int64_t u0, int64_t u1, float* e, float* a, float* y) {
  forward_units_impl(A, g, u0, u1, e, a, y);
}

// ---- backward ---------------------------------------------------------------------------------

struct BwdArgs {
  float *dq, *dk, *dv;
  const float *dout, *q, *k, *v, *pk, *pv, *gamma, *out, *stats;
  const int64_t* seg_start;
  const int32_t* seg;
  float* Dw;   // (N, H) <dout, out_w>
  float* Ap;   // (N, H, K) prompt probabilities
  float* dSp;  // (N, H, K) prompt score gradients, times scale
  float* Gp;   // (N, H) <dout, Y_p>
};

// Pass P, units (head, token): the prompt branch's share of dq, and D_w.
LA_INLINE void prompt_pass_impl(const BwdArgs& A, const Dims& g, int64_t u0, int64_t u1, float* y, float* dA) {
  for (int64_t u = u0; u < u1; u++) {
    int64_t h = u / g.N, t = u % g.N, kvh = g.kv_of(h), row = t * g.H + h;
    const float* qi = A.q + t * g.ldq + h * g.d;
    const float* doi = A.dout + t * g.ldq + h * g.d;
    const float* oi = A.out + t * g.ldq + h * g.d;
    float* dqi = A.dq + t * g.ldq + h * g.d;
    if (!A.gamma) {
      A.Dw[row] = dot_inl(doi, oi, g.d);
      for (int64_t c = 0; c < g.d; c++) dqi[c] = 0.f;
      continue;
    }
    const float* pkh = A.pk + kvh * g.d;
    const float* pvh = A.pv + kvh * g.d;
    float* a = A.Ap + row * g.K;
    float* ds = A.dSp + row * g.K;
    float gm = A.gamma[h];
    // A_p from the saved log-sum-exp, Y_p = A_p V_p
    dots_f32(a, pkh, g.ldk, g.K, qi, g.d);
    float lse = A.stats[row * 2 + 1];
    for (int64_t k = 0; k < g.K; k++) a[k] = exp_poly(a[k] * g.scale - lse);
    weighted_rows(y, a, pvh, g.ldk, g.K, g.d);
    A.Gp[row] = dot_inl(doi, y, g.d);
    // dA_p = gamma dout V_pᵀ; dS_p = A_p (dA_p - rowsum(A_p dA_p)), kept times scale
    dots_f32(dA, pvh, g.ldk, g.K, doi, g.d);
    float Dp = 0;
    for (int64_t k = 0; k < g.K; k++) {
      dA[k] = gm * dA[k];
      Dp += a[k] * dA[k];
    }
    for (int64_t k = 0; k < g.K; k++) ds[k] = a[k] * (dA[k] - Dp) * g.scale;
    weighted_rows(dqi, ds, pkh, g.ldk, g.K, g.d);  // dq = dS_p K_p / sqrt(d)
    // D_w = <dout, out - gamma Y_p>
    for (int64_t c = 0; c < g.d; c++) y[c] = oi[c] - gm * y[c];
    A.Dw[row] = dot_inl(doi, y, g.d);
  }
}

// One query row against keys 0..n-1 of its segment: p = exp(s - lse), dS = p (dP - D) * scale;
// dv_j += p_j dout_i, dk_j += dS_j q_i, dq_i += sum_j dS_j k_j.
LA_INLINE void word_row(float* __restrict dkb, float* __restrict dvb, float* __restrict acc, const float* __restrict kb,
                        const float* __restrict qi, const float* __restrict doi, const float* __restrict p,
                        const float* __restrict ds, int64_t n, int64_t ld, int64_t d) {
  for (int64_t c = 0; c < d; c++) acc[c] = 0.f;
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) {
    const float *k0 = kb + j * ld, *k1 = k0 + ld;
    float *dk0 = dkb + j * ld, *dk1 = dk0 + ld, *dv0 = dvb + j * ld, *dv1 = dv0 + ld;
    float p0 = p[j], p1 = p[j + 1], s0 = ds[j], s1 = ds[j + 1];
    for (int64_t c = 0; c < d; c++) {
      float qc = qi[c], dc = doi[c];
      dv0[c] += p0 * dc;
      dv1[c] += p1 * dc;
      dk0[c] += s0 * qc;
      dk1[c] += s1 * qc;
      acc[c] += s0 * k0[c] + s1 * k1[c];
    }
  }
  for (; j < n; j++) {
    const float* k0 = kb + j * ld;
    float *dk0 = dkb + j * ld, *dv0 = dvb + j * ld;
    float p0 = p[j], s0 = ds[j];
    for (int64_t c = 0; c < d; c++) {
      dv0[c] += p0 * doi[c];
      dk0[c] += s0 * qi[c];
      acc[c] += s0 * k0[c];
    }
  }
}

// Pass W, units (segment, kv head): dk, dv of the segment's rows of that kv head, and the word part
// of dq for the heads that read it.
LA_INLINE void word_pass_impl(const BwdArgs& A, const Dims& g, const int64_t* units, int64_t u0, int64_t u1, float* sc,
                              float* dp, float* acc) {
  for (int64_t u = u0; u < u1; u++) {
    int64_t s = units[u] / g.Hkv, kvh = units[u] % g.Hkv;
    int64_t s0 = A.seg[s], s1 = A.seg[s + 1];
    const float* kb = A.k + s0 * g.ldk + kvh * g.d;
    const float* vb = A.v + s0 * g.ldk + kvh * g.d;
    float* dkb = A.dk + s0 * g.ldk + kvh * g.d;
    float* dvb = A.dv + s0 * g.ldk + kvh * g.d;
    for (int64_t t = s0; t < s1; t++)
      for (int64_t c = 0; c < g.d; c++) dkb[(t - s0) * g.ldk + c] = dvb[(t - s0) * g.ldk + c] = 0.f;
    for (int64_t h = kvh * g.group; h < (kvh + 1) * g.group; h++)
      for (int64_t t = s0; t < s1; t++) {
        int64_t n = t - s0 + 1, row = t * g.H + h;
        const float* qi = A.q + t * g.ldq + h * g.d;
        const float* doi = A.dout + t * g.ldq + h * g.d;
        dots_f32(sc, kb, g.ldk, n, qi, g.d);
        dots_f32(dp, vb, g.ldk, n, doi, g.d);
        float lse = A.stats[row * 2], D = A.Dw[row];
        for (int64_t j = 0; j < n; j++) {
          float pj = exp_poly(sc[j] * g.scale - lse);
          sc[j] = pj;
          dp[j] = pj * (dp[j] - D) * g.scale;
        }
        word_row(dkb, dvb, acc, kb, qi, doi, sc, dp, n, g.ldk, g.d);
        float* dqi = A.dq + t * g.ldq + h * g.d;
        for (int64_t c = 0; c < g.d; c++) dqi[c] += acc[c];
      }
  }
}

// Pass K, units (kv head): dpk = sum dS_p q, dpv = sum gamma A_p dout over tokens and heads.
LA_INLINE void prompt_grad_impl(const BwdArgs& A, const Dims& g, float* dpk, float* dpv, int64_t kvh) {
  for (int64_t k = 0; k < g.K; k++)
    for (int64_t c = 0; c < g.d; c++) dpk[k * g.ldk + kvh * g.d + c] = dpv[k * g.ldk + kvh * g.d + c] = 0.f;
  for (int64_t t = 0; t < g.N; t++)
    for (int64_t h = kvh * g.group; h < (kvh + 1) * g.group; h++) {
      int64_t row = t * g.H + h;
      const float* qi = A.q + t * g.ldq + h * g.d;
      const float* doi = A.dout + t * g.ldq + h * g.d;
      const float* a = A.Ap + row * g.K;
      const float* ds = A.dSp + row * g.K;
      float gm = A.gamma[h];
      for (int64_t k = 0; k < g.K; k++) {
        float* __restrict pkr = dpk + k * g.ldk + kvh * g.d;
        float* __restrict pvr = dpv + k * g.ldk + kvh * g.d;
        float sk = ds[k], ak = gm * a[k];
        for (int64_t c = 0; c < g.d; c++) {
          pkr[c] += sk * qi[c];
          pvr[c] += ak * doi[c];
        }
      }
    }
}

#ifdef LA_GA_X86
LA_AVX2 void prompt_pass_avx2(const BwdArgs& A, const Dims& g, int64_t u0, int64_t u1, float* y, float* dA) {
  prompt_pass_impl(A, g, u0, u1, y, dA);
}
LA_AVX2 void word_pass_avx2(const BwdArgs& A, const Dims& g, const int64_t* units, int64_t u0, int64_t u1, float* sc,
                            float* dp, float* acc) {
  word_pass_impl(A, g, units, u0, u1, sc, dp, acc);
}
LA_AVX2 void prompt_grad_avx2(const BwdArgs& A, const Dims& g, float* dpk, float* dpv, int64_t kvh) {
  prompt_grad_impl(A, g, dpk, dpv, kvh);
}
const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
const bool has_avx2 = false;
#endif
void prompt_pass_plain(const BwdArgs& A, const Dims& g, int64_t u0, int64_t u1, float* y, float* dA) {
  prompt_pass_impl(A, g, u0, u1, y, dA);
}
void word_pass_plain(const BwdArgs& A, const Dims& g, const int64_t* units, int64_t u0, int64_t u1, float* sc,
                     float* dp, float* acc) {
  word_pass_impl(A, g, units, u0, u1, sc, dp, acc);
}
void prompt_grad_plain(const BwdArgs& A, const Dims& g, float* dpk, float* dpv, int64_t kvh) {
  prompt_grad_impl(A, g, dpk, dpv, kvh);
}

// ISA dispatch (one branch per chunk of work, not per row)
void forward_units(const FwdArgs& A, const Dims& g, int64_t u0, int64_t u1, float* e, float* a, float* y) {
#ifdef LA_GA_X86
  if (has_avx2) return forward_units_avx2(A, g, u0, u1, e, a, y);
#endif
  forward_units_plain(A, g, u0, u1, e, a, y);
}
void prompt_pass(const BwdArgs& A, const Dims& g, int64_t u0, int64_t u1, float* y, float* dA) {
#ifdef LA_GA_X86
  if (has_avx2) return prompt_pass_avx2(A, g, u0, u1, y, dA);
#endif
  prompt_pass_plain(A, g, u0, u1, y, dA);
}
void word_pass(const BwdArgs& A, const Dims& g, const int64_t* units, int64_t u0, int64_t u1, float* sc, float* dp,
               float* acc) {
#ifdef LA_GA_X86
  if (has_avx2) return word_pass_avx2(A, g, units, u0, u1, sc, dp, acc);
#endif
  word_pass_plain(A, g, units, u0, u1, sc, dp, acc);
}
void prompt_grad(const BwdArgs& A, const Dims& g, float* dpk, float* dpv, int64_t kvh) {
#ifdef LA_GA_X86
  if (has_avx2) return prompt_grad_avx2(A, g, dpk, dpv, kvh);
#endif
  prompt_grad_plain(A, g, dpk, dpv, kvh);
}

// seg_start (N): the first token of each token's segment; returns the longest segment's length.
int64_t segment_starts(std::vector<int64_t>& seg_start, const int32_t* seg, int64_t S, int64_t N) {
  seg_start.resize(static_cast<size_t>(N));
  int64_t longest = 0;
  for (int64_t s = 0; s < S; s++) {
    for (int64_t t = seg[s]; t < seg[s + 1]; t++) seg_start[t] = seg[s];
    longest = std::max<int64_t>(longest, seg[s + 1] - seg[s]);
  }
  return longest;
}

std::vector<float> tanh_gate(const float* gate, int64_t G, int64_t H) {
  std::vector<float> gamma(static_cast<size_t>(H));
  for (int64_t h = 0; h < H; h++) gamma[h] = std::tanh(gate[G == 1 ? 0 : h]);
  return gamma;
}

}  // namespace

void gated_attention_forward(float* out, float* stats, const float* q, const float* k, const float* v,
                             const int32_t* seg, int64_t S, const float* pk, const float* pv, const float* gate,
                             int64_t G, int64_t N, int64_t H, int64_t Hkv, int64_t d, int64_t K) {
  Dims g(N, H, Hkv, d, pk ? K : 0, G);
  std::vector<int64_t> seg_start;
  int64_t longest = segment_starts(seg_start, seg, S, N);
  std::vector<float> gamma;
  if (pk) gamma = tanh_gate(gate, G, H);
  FwdArgs A{out, stats, q, k, v, pk, pv, pk ? gamma.data() : nullptr, seg_start.data()};
  parallel_for(N * H, 16, [&](int64_t u0, int64_t u1) {
    std::vector<float> e(static_cast<size_t>(longest)), a(static_cast<size_t>(std::max<int64_t>(1, g.K))), y(static_cast<size_t>(d));
    forward_units(A, g, u0, u1, e.data(), a.data(), y.data());
  });
}

void gated_attention_backward(float* dq, float* dk, float* dv, float* dpk, float* dpv, float* dgate,
                              const float* dout, const float* q, const float* k, const float* v, const int32_t* seg,
                              int64_t S, const float* pk, const float* pv, const float* gate, int64_t G,
                              const float* out, const float* stats, int64_t N, int64_t H, int64_t Hkv, int64_t d,
                              int64_t K) {
  const bool prompt = pk != nullptr;
  Dims g(N, H, Hkv, d, prompt ? K : 0, G);
  std::vector<int64_t> seg_start;
  int64_t longest = segment_starts(seg_start, seg, S, N);
  std::vector<float> gamma, Dw(size_t(N * H)), Ap, dSp, Gp;
  if (prompt) {
    gamma = tanh_gate(gate, G, H);
    Ap.resize(size_t(N * H * K));
    dSp.resize(size_t(N * H * K));
    Gp.resize(size_t(N * H));
  }
  BwdArgs A{dq,        dk,         dv,       dout,         q,         k,          v,
            pk,        pv,         prompt ? gamma.data() : nullptr,      out,       stats,
            seg_start.data(),      seg,      Dw.data(),    Ap.data(), dSp.data(), Gp.data()};

  // Pass P: prompt branch per row (sets dq), D_w
  parallel_for(N * H, 16, [&](int64_t u0, int64_t u1) {
    std::vector<float> y(static_cast<size_t>(d)), dA(static_cast<size_t>(std::max<int64_t>(1, g.K)));
    prompt_pass(A, g, u0, u1, y.data(), dA.data());
  });

  // Pass W: units (segment, kv head), longest segments first for balance
  std::vector<int64_t> units;
  units.reserve(size_t(S * Hkv));
  for (int64_t s = 0; s < S; s++)
    if (seg[s + 1] > seg[s])
      for (int64_t kvh = 0; kvh < Hkv; kvh++) units.push_back(s * Hkv + kvh);
  std::stable_sort(units.begin(), units.end(), [&](int64_t x, int64_t y) {
    return seg[x / Hkv + 1] - seg[x / Hkv] > seg[y / Hkv + 1] - seg[y / Hkv];
  });
  parallel_for(int64_t(units.size()), 1, [&](int64_t u0, int64_t u1) {
    std::vector<float> sc(static_cast<size_t>(longest)), dp(static_cast<size_t>(longest)), acc(static_cast<size_t>(d));
    word_pass(A, g, units.data(), u0, u1, sc.data(), dp.data(), acc.data());
  });

  if (!prompt) return;
  // Pass K: prompt key/value gradients per kv head
  parallel_for(Hkv, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t kvh = h0; kvh < h1; kvh++) prompt_grad(A, g, dpk, dpv, kvh);
  });
  // dgate = (1 - gamma^2) sum <dout, Y_p>, in double, in token order
  std::vector<double> per_head(size_t(H), 0.0);
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
      int64_t t = u / H, h = u % H, kvh = g.kv_of(h);
      const float* qi = q + t * g.ldq + h * d;
      float* o = out + t * g.ldq + h * d;
      prompt_softmax(a.data(), y.data(), qi, pk + kvh * d, pv + kvh * d, g);
      float gm = gamma[h];
      for (int64_t c = 0; c < d; c++) o[c] += gm * y[c];
    }
  });
}

}  // namespace la::cpu
