// Dot products, the inner loop of matmul and attention: AVX-512 or AVX2+FMA when the CPU has it
// (chosen at run time, so one binary serves every x86-64), a plain loop otherwise.
#pragma once
#include <cstdint>

namespace la::cpu {

// The instruction set the dot-product and quantized kernels (this file, quant.cpp) use: the best
// the CPU has (AVX-512 needs F, BW, VL and VNNI; AVX2 needs FMA and F16C), or a lower one named by
// LLAMA_ADAPTER_SIMD=avx512|avx2|scalar (LLAMA_ADAPTER_NO_AVX2=1 also means scalar), read once.
// A level the CPU lacks falls back to the best it has, with a warning on stderr.
enum class Simd : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };
Simd simd_level();
const char* simd_name(Simd s);

// The target of the AVX-512 bodies (the ISA simd_level() checks for Simd::Avx512).
#define LA_TARGET_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

float dot_f32(const float* a, const float* b, int64_t n);
// a (n) f32 · b (n) bf16
float dot_bf16(const float* a, const uint16_t* b, int64_t n);
// out[r] = dot(x_r, w) for R rows of x (stride ldx): one pass over w for all rows
void dots_f32(float* out, const float* x, int64_t ldx, int64_t R, const float* w, int64_t n);
void dots_bf16(float* out, const float* x, int64_t ldx, int64_t R, const uint16_t* w, int64_t n);

// out[s] = dot(x, w[s]) for 4 weight rows anywhere in memory
void dot_rows4_f32(float* out, const float* x, const float* const* w, int64_t n);
void dot_rows4_bf16(float* out, const float* x, const uint16_t* const* w, int64_t n);

// Rows `ld` elements apart: a matrix's rows (ld = n), or one kv head's keys in a cache:
// out[s] = dot(x, w + s*ld) for s < rows (n each); 8 rows per pass, reduced together.
void dots_strided_f32(float* out, const float* x, const float* w, int64_t ld, int64_t rows, int64_t n);
void dots_strided_bf16(float* out, const float* x, const uint16_t* w, int64_t ld, int64_t rows, int64_t n);
// y (n) = sum over s < rows of a[s] * (x + s*ld); y is overwritten (accumulated in registers).
void weighted_rows_f32(float* y, const float* a, const float* x, int64_t ld, int64_t rows, int64_t n);

}  // namespace la::cpu
