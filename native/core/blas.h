// The BLAS this build found (OpenBLAS, or another CBLAS), or the portable fallback.
#pragma once

namespace la {

const char* blas_name();
void blas_set_threads(int n);
bool blas_available();
// C(M,N) = alpha * op(A) op(B) + beta * C, row-major; op = transpose when trans_* is true.
void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc);

}  // namespace la
