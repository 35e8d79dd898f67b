#include "blas.h"

#include <algorithm>
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

void blas_set_threads(int n) {
#ifdef LA_HAVE_OPENBLAS
  openblas_set_num_threads(n);
#else
  (void)n;
#endif
}

void sgemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
           float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
              B, ldb, beta, C, ldc);
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
