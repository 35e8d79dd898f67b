// The own GEMM kernel (native/core/own_gemm.cpp) against a plain double-precision loop: every
// transpose, alpha and beta (beta = 0: C is never read, so NaN there must not leak), leading
// dimensions wider than the rows (the padding never written), ragged edges and shapes past its
// block sizes, 1 and 2 threads, and either micro-kernel (LLAMA_ADAPTER_NO_AVX2=1 selects the plain
// one). Built and run by test/blas.test.ts; exit code 0 when every case is within 1e-6 of the sum of
// |terms| of each entry.
#include <array>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "blas.h"
#include "parallel.h"

int main() {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> uniform(-1, 1);
  const std::vector<std::array<int, 3>> shapes = {{7, 5, 3},     {100, 40, 600}, {12, 2100, 20},
                                                  {97, 33, 257}, {130, 150, 120}, {1, 1, 1}};
  int bad = 0, cases = 0;
  for (int threads : {1, 2}) {
    la::set_num_threads(threads);
    for (auto [M, N, K] : shapes)
      for (bool ta : {false, true})
        for (bool tb : {false, true})
          for (float beta : {0.f, 0.5f}) {
            const float alpha = 1.5f;
            const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 5;
            // A is op(A) (M, K) stored transposed when ta; likewise B (K, N)
            std::vector<float> A(size_t(ta ? K : M) * lda), B(size_t(tb ? N : K) * ldb), C(size_t(M) * ldc);
            for (float& v : A) v = uniform(rng);
            for (float& v : B) v = uniform(rng);
            for (int i = 0; i < M; i++)
              for (int j = 0; j < ldc; j++) C[size_t(i) * ldc + j] = j < N && beta == 0.f ? NAN : uniform(rng);
            const std::vector<float> C0 = C;
            la::own_sgemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
            double worst = 0;
            bool padding = true;
            for (int i = 0; i < M; i++) {
              for (int j = 0; j < N; j++) {
                double sum = 0, abs = 0;
                for (int k = 0; k < K; k++) {
                  double a = ta ? A[size_t(k) * lda + i] : A[size_t(i) * lda + k];
                  double b = tb ? B[size_t(j) * ldb + k] : B[size_t(k) * ldb + j];
                  sum += a * b;
                  abs += std::fabs(a * b);
                }
                const double c0 = beta == 0.f ? 0 : beta * double(C0[size_t(i) * ldc + j]);
                const double err = std::fabs(C[size_t(i) * ldc + j] - (alpha * sum + c0)) / (alpha * abs + std::fabs(c0) + 1e-30);
                worst = std::isnan(err) ? INFINITY : std::max(worst, err);
              }
              for (int j = N; j < ldc; j++) padding = padding && C[size_t(i) * ldc + j] == C0[size_t(i) * ldc + j];
            }
            cases++;
            if (worst > 1e-6 || !padding) {
              bad++;
              std::printf("FAIL: %d threads, M %d N %d K %d, ta %d tb %d, beta %g: relative error %g%s\n", threads, M, N,
                          K, ta, tb, beta, worst, padding ? "" : ", padding of C written");
            }
          }
  }
  std::printf("%d of %d cases within 1e-6\n", cases - bad, cases);
  return bad ? 1 : 0;
}
