// bf16 products on the CPU (bf16_gemm.cpp): the GEMM behind matmul precision "medium", where a
// product with a bf16-stored weight rounds its f32 input to bf16 too, as the CUDA backend always
// does, and runs on AVX512-BF16 when the CPU has it.
#pragma once
#include <cstdint>

namespace la {

// C (M, N) (row stride ldc) = bf16(A) (M, K) (f32, row stride lda) · B (K, N), B(k, n) = b[k*sk + n*sn]
// (bf16 bits), sums in f32.
void bf16_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const uint16_t* b, int64_t sk, int64_t sn,
               float* C, int64_t ldc);
// true when bf16_gemm runs on AVX512-BF16 (LLAMA_ADAPTER_BF16_GEMM=sgemm forces the widen + sgemm path)
bool bf16_gemm_native();

// "highest": products with bf16 weights keep the other input in f32 (the weight widened, exact);
// "medium": they round it to bf16 and use bf16_gemm (faster, CUDA's numerics). Process-wide, like
// PyTorch's set_float32_matmul_precision; matrix-vector products (decoding, <= 8 rows) always keep f32.
enum class MatmulPrecision { Highest, Medium };
void set_matmul_precision(MatmulPrecision p);
MatmulPrecision matmul_precision();

}  // namespace la
