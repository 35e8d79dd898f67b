// The CPU GEMM: OpenBLAS's cblas_sgemm, loaded at run time (dlopen) when the machine has it, else
// the project's own kernel (blas.cpp says how the library is found and how to choose).
#pragma once

namespace la {

// e.g. "OpenBLAS 0.3.21 (Haswell kernels; /lib/x86_64-linux-gnu/libopenblas.so.0, loaded at run
// time)", or "own kernels (libopenblas.so.0 could not be loaded: ...)"
const char* blas_name();
void blas_set_threads(int n);
// OpenBLAS's own thread count (openblas_get_num_threads), 0 when it is not in use
int blas_threads();
bool blas_available();
// C(M,N) = alpha * op(A) op(B) + beta * C, row-major; op = transpose when trans_* is true.
void sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
           const float* B, int ldb, float beta, float* C, int ldc);
// The same with the project's own kernel (own_gemm.cpp), whatever sgemm uses.
void own_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
               const float* B, int ldb, float beta, float* C, int ldc);

}  // namespace la
