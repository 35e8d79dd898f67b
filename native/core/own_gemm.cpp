// The own GEMM kernel, run when OpenBLAS is not there (blas.cpp): the usual blocked scheme (as in
// GotoBLAS/BLIS) in a few dozen lines. C is cut into one block per thread (along its longer side);
// each block walks panels of op(B) (KC x NC) and op(A) (MC x KC), packed so that a micro-kernel
// reads both contiguously and keeps an MR x NR tile of C in registers: 6 x 16 floats = 12 AVX2
// registers, with an FMA per register per k. A plain C++ micro-kernel of the same shape serves CPUs
// without AVX2+FMA (or LLAMA_ADAPTER_NO_AVX2=1, to test it).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "blas.h"
#include "parallel.h"

#include "x86.h"

namespace la {
namespace {

constexpr int MR = 6, NR = 16;  // the register tile of C
constexpr int KC = 256;         // k depth of the packed panels: an MR x KC panel of A stays in L1
constexpr int MC = 96;          // rows of A packed at once (MC x KC floats = 96 KiB, L2)
constexpr int NC = 2048;        // columns of B packed at once (KC x NC floats = 2 MiB, L2/L3)

// A (MR x NR) tile: C = alpha * acc + beta * C for its mr x nr valid part (beta == 0: C not read,
// so that garbage or NaN in an output buffer never leaks in).
inline void store_tile(const float* acc, float* C, int ldc, int mr, int nr, float alpha, float beta) {
  for (int i = 0; i < mr; i++) {
    float* c = C + size_t(i) * ldc;
    const float* a = acc + i * NR;
    if (beta == 0.f)
      for (int j = 0; j < nr; j++) c[j] = alpha * a[j];
    else
      for (int j = 0; j < nr; j++) c[j] = alpha * a[j] + beta * c[j];
  }
}

// acc (MR x NR) = sum over k < kc of a[k] (MR) outer b[k] (NR); a, b packed panels. Two rows at a
// time: their 2 x 16 sums fit the 16 SSE registers of any x86-64 (all six rows would spill).
void micro_plain(int kc, const float* a, const float* b, float* C, int ldc, int mr, int nr, float alpha, float beta) {
  float acc[MR * NR];
  for (int i0 = 0; i0 < MR; i0 += 2) {
    float r0[NR] = {}, r1[NR] = {};
    const float* ak = a + i0;
    const float* bk = b;
    for (int k = 0; k < kc; k++, ak += MR, bk += NR)
      for (int j = 0; j < NR; j++) {
        r0[j] += ak[0] * bk[j];
        r1[j] += ak[1] * bk[j];
      }
    std::memcpy(acc + i0 * NR, r0, sizeof r0);
    std::memcpy(acc + (i0 + 1) * NR, r1, sizeof r1);
  }
  store_tile(acc, C, ldc, mr, nr, alpha, beta);
}

#ifdef LA_X86
__attribute__((target("avx2,fma"))) void micro_avx2(int kc, const float* a, const float* b, float* C, int ldc, int mr,
                                                    int nr, float alpha, float beta) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
         c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int k = 0; k < kc; k++, a += MR, b += NR) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    __m256 ai = _mm256_broadcast_ss(a + 0);
    c00 = _mm256_fmadd_ps(ai, b0, c00), c01 = _mm256_fmadd_ps(ai, b1, c01);
    ai = _mm256_broadcast_ss(a + 1);
    c10 = _mm256_fmadd_ps(ai, b0, c10), c11 = _mm256_fmadd_ps(ai, b1, c11);
    ai = _mm256_broadcast_ss(a + 2);
    c20 = _mm256_fmadd_ps(ai, b0, c20), c21 = _mm256_fmadd_ps(ai, b1, c21);
    ai = _mm256_broadcast_ss(a + 3);
    c30 = _mm256_fmadd_ps(ai, b0, c30), c31 = _mm256_fmadd_ps(ai, b1, c31);
    ai = _mm256_broadcast_ss(a + 4);
    c40 = _mm256_fmadd_ps(ai, b0, c40), c41 = _mm256_fmadd_ps(ai, b1, c41);
    ai = _mm256_broadcast_ss(a + 5);
    c50 = _mm256_fmadd_ps(ai, b0, c50), c51 = _mm256_fmadd_ps(ai, b1, c51);
  }
  const __m256 rows[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  if (mr == MR && nr == NR) {
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    for (int i = 0; i < MR; i++) {
      float* c = C + size_t(i) * ldc;
      for (int h = 0; h < 2; h++) {
        __m256 v = _mm256_mul_ps(va, rows[i][h]);
        if (beta != 0.f) v = _mm256_fmadd_ps(vb, _mm256_loadu_ps(c + 8 * h), v);
        _mm256_storeu_ps(c + 8 * h, v);
      }
    }
    return;
  }
  alignas(32) float acc[MR * NR];  // a ragged edge tile
  for (int i = 0; i < MR; i++) {
    _mm256_store_ps(acc + i * NR, rows[i][0]);
    _mm256_store_ps(acc + i * NR + 8, rows[i][1]);
  }
  store_tile(acc, C, ldc, mr, nr, alpha, beta);
}
#endif

using Micro = void (*)(int, const float*, const float*, float*, int, int, int, float, float);

Micro micro_kernel() {
#ifdef LA_X86
  static const Micro m = [] {
    const char* off = std::getenv("LLAMA_ADAPTER_NO_AVX2");
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !(off && std::string(off) == "1");
    return avx2 ? Micro(micro_avx2) : Micro(micro_plain);
  }();
  return m;
#else
  return micro_plain;
#endif
}

// op(B)[k0 .. k0+kc, j0 .. j0+nc] -> panels of NR columns, each (kc, NR) row-major, zero-padded.
void pack_b(float* dst, bool tb, const float* B, int ldb, int k0, int kc, int j0, int nc) {
  for (int jp = 0; jp < nc; jp += NR) {
    const int w = std::min(NR, nc - jp);
    float* p = dst + size_t(jp) * kc;  // panel jp / NR starts at jp * kc
    if (w < NR) std::memset(p, 0, sizeof(float) * size_t(kc) * NR);
    if (tb)  // op(B)[k][j] = B[j][k]: each of the panel's columns is a contiguous row of B
      for (int j = 0; j < w; j++) {
        const float* src = B + size_t(j0 + jp + j) * ldb + k0;
        for (int k = 0; k < kc; k++) p[k * NR + j] = src[k];
      }
    else
      for (int k = 0; k < kc; k++) std::memcpy(p + k * NR, B + size_t(k0 + k) * ldb + j0 + jp, sizeof(float) * w);
  }
}

// op(A)[i0 .. i0+mc, k0 .. k0+kc] -> panels of MR rows, each (kc, MR) row-major, zero-padded.
void pack_a(float* dst, bool ta, const float* A, int lda, int i0, int mc, int k0, int kc) {
  for (int ip = 0; ip < mc; ip += MR) {
    const int h = std::min(MR, mc - ip);
    float* p = dst + size_t(ip) * kc;
    if (h < MR) std::memset(p, 0, sizeof(float) * size_t(kc) * MR);
    if (ta)  // op(A)[i][k] = A[k][i]: a panel's k-th row is contiguous in A
      for (int k = 0; k < kc; k++) std::memcpy(p + k * MR, A + size_t(k0 + k) * lda + i0 + ip, sizeof(float) * h);
    else
      for (int i = 0; i < h; i++) {
        const float* src = A + size_t(i0 + ip + i) * lda + k0;
        for (int k = 0; k < kc; k++) p[k * MR + i] = src[k];
      }
  }
}

// One thread's block of C: all of the blocked loops, single-threaded.
void gemm_block(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                float beta, float* C, int ldc) {
  const Micro micro = micro_kernel();
  const int nc_max = std::min(NC, (N + NR - 1) / NR * NR), kc_max = std::min(KC, K);
  std::vector<float> bp(size_t(nc_max) * kc_max), ap(size_t(MC) * kc_max);
  for (int jc = 0; jc < N; jc += NC) {
    const int nc = std::min(NC, N - jc);
    for (int pc = 0; pc < K; pc += KC) {
      const int kc = std::min(KC, K - pc);
      const float b_eff = pc == 0 ? beta : 1.f;  // later k panels add to what the first wrote
      pack_b(bp.data(), tb, B, ldb, pc, kc, jc, nc);
      for (int ic = 0; ic < M; ic += MC) {
        const int mc = std::min(MC, M - ic);
        pack_a(ap.data(), ta, A, lda, ic, mc, pc, kc);
        for (int jr = 0; jr < nc; jr += NR)
          for (int ir = 0; ir < mc; ir += MR)
            micro(kc, ap.data() + size_t(ir) * kc, bp.data() + size_t(jr) * kc, C + size_t(ic + ir) * ldc + jc + jr,
                  ldc, std::min(MR, mc - ir), std::min(NR, nc - jr), alpha, b_eff);
      }
    }
  }
}

}  // namespace

void own_sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
               float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // C = beta * C
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) C[size_t(i) * ldc + j] = beta == 0.f ? 0.f : beta * C[size_t(i) * ldc + j];
    return;
  }
  // One block of C per thread along its longer side, edges on multiples of the register tile;
  // below ~1 MFLOP one thread does it all.
  const int threads = double(M) * N * K < double(1 << 20) ? 1 : num_threads();
  const bool rows = M >= N;
  const int64_t len = rows ? M : N, unit = rows ? MR : NR;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, (len + unit - 1) / unit));
  const int64_t step = ((len + parts - 1) / parts + unit - 1) / unit * unit;
  auto block = [&](int64_t p) {
    const int64_t b0 = p * step, b1 = std::min<int64_t>(len, b0 + step);
    if (b0 >= b1) return;
    const int n = int(b1 - b0);
    if (rows)  // rows b0..b1 of C and of op(A)
      gemm_block(ta, tb, n, N, K, alpha, ta ? A + b0 : A + b0 * lda, lda, B, ldb, beta, C + b0 * ldc, ldc);
    else  // columns b0..b1 of C and of op(B)
      gemm_block(ta, tb, M, n, K, alpha, A, lda, tb ? B + b0 * ldb : B + b0, ldb, beta, C + b0, ldc);
  };
  if (parts == 1) return block(0);
  parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; p++) block(p);
  });
}

}  // namespace la
