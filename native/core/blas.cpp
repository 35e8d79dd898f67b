#include "blas.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "parallel.h"

#ifdef LA_HAVE_CBLAS
#include <cblas.h>
#ifdef LA_HAVE_OPENBLAS
extern "C" void openblas_set_num_threads(int);
extern "C" char* openblas_get_corename(void);
#endif
#endif

namespace la {

#ifdef LA_HAVE_CBLAS

bool blas_available() { return true; }

const char* blas_name() {
#ifdef LA_HAVE_OPENBLAS
  static std::string name = std::string("OpenBLAS (") + openblas_get_corename() + ")";
  return name.c_str();
#else
  return "CBLAS";
#endif
}

// Threading. By default OpenBLAS runs single-threaded and a large sgemm is cut into one block of C
// per thread of our pool (along its longer side), each block one single-threaded sgemm call. With
// OpenBLAS's own threads, its idle workers spin (sched_yield) for a while after every call, and on
// a machine with as many cores as threads they took the cores from our pool's elementwise and
// attention kernels that run between the GEMMs. LLAMA_ADAPTER_GEMM_SPLIT=0 restores OpenBLAS's
// threading (m / n force the split dimension).
namespace {

enum class Split { Off, Auto, Rows, Cols };

Split split_mode() {
  static const Split mode = [] {
#ifdef LA_HAVE_OPENBLAS
    const char* e = std::getenv("LLAMA_ADAPTER_GEMM_SPLIT");
    if (e && std::strcmp(e, "0") == 0) return Split::Off;
    if (e && std::strcmp(e, "m") == 0) return Split::Rows;
    if (e && std::strcmp(e, "n") == 0) return Split::Cols;
    return Split::Auto;
#else
    return Split::Off;  // another CBLAS: its own threading, whatever it is
#endif
  }();
  return mode;
}

void blas_single_threaded() {
#ifdef LA_HAVE_OPENBLAS
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
#endif
}

void call_sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
                float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
              B, ldb, beta, C, ldc);
}

}  // namespace

void blas_set_threads(int n) {
#ifdef LA_HAVE_OPENBLAS
  openblas_set_num_threads(split_mode() == Split::Off ? n : 1);
#else
  (void)n;
#endif
}

void sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
           float beta, float* C, int ldc) {
  const Split mode = split_mode();
  if (mode == Split::Off) return call_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  blas_single_threaded();
  const int threads = num_threads();
  // below ~4 MFLOP a block per thread costs more in wake-ups than it gains
  if (threads == 1 || double(M) * N * K < double(1 << 21))
    return call_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  const bool rows = mode == Split::Rows || (mode == Split::Auto && M >= N);
  const int64_t len = rows ? M : N;
  const int64_t unit = 16;  // block edges on multiples of the micro-kernel's tile
  const int64_t parts = std::min<int64_t>(threads, (len + unit - 1) / unit);
  const int64_t step = ((len + parts - 1) / parts + unit - 1) / unit * unit;
  parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; p++) {
      const int64_t b0 = p * step, b1 = std::min<int64_t>(len, b0 + step);
      if (b0 >= b1) continue;
      const int n = int(b1 - b0);
      if (rows)  // rows b0..b1 of C and of op(A)
        call_sgemm(ta, tb, n, N, K, alpha, ta ? A + b0 : A + b0 * lda, lda, B, ldb, beta, C + b0 * ldc, ldc);
      else  // columns b0..b1 of C and of op(B)
        call_sgemm(ta, tb, M, n, K, alpha, A, lda, tb ? B + b0 * ldb : B + b0, ldb, beta, C + b0, ldc);
    }
  });
}

#else  // portable fallback: cache-blocked, threaded over rows of C

bool blas_available() { return false; }
const char* blas_name() { return "portable (no BLAS found at build time)"; }
void blas_set_threads(int) {}

void sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
           float beta, float* C, int ldc) {
  auto a = [&](int i, int k) { return ta ? A[size_t(k) * lda + i] : A[size_t(i) * lda + k]; };
  // Pack B as (K, N) row-major so the inner loop streams contiguous memory.
  std::vector<float> b(size_t(K) * N);
  for (int k = 0; k < K; k++)
    for (int j = 0; j < N; j++) b[size_t(k) * N + j] = tb ? B[size_t(j) * ldb + k] : B[size_t(k) * ldb + j];
  parallel_for(M, 4, [&](int64_t i0, int64_t i1) {
    std::vector<float> row(N);
    for (int64_t i = i0; i < i1; i++) {
      std::fill(row.begin(), row.end(), 0.f);
      for (int k = 0; k < K; k++) {
        float av = a(int(i), k);
        const float* bk = &b[size_t(k) * N];
        for (int j = 0; j < N; j++) row[j] += av * bk[j];
      }
      float* c = C + size_t(i) * ldc;
      for (int j = 0; j < N; j++) c[j] = alpha * row[j] + (beta == 0.f ? 0.f : beta * c[j]);
    }
  });
}

#endif

}  // namespace la
