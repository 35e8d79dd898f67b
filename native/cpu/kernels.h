// The CPU bodies of the ops: plain free functions over raw pointers, outputs first, then inputs,
// then dimensions (llm.c style). Each is the reference the CUDA bodies are checked against.
//
// Dimension letters: T tokens (rows), C channels, H heads, Hkv key/value heads, d head size,
// S cache length, V vocabulary, F FFN hidden size, M/N/K matmul sizes.
#pragma once
#include <cstdint>

namespace la::cpu {

// out (T, C) = table (V, C)[tokens (T)]; table is f32 or bf16 (as uint16_t)
void embedding_forward(float* out, const float* table, const int32_t* tokens, int64_t T, int64_t C);
void embedding_forward_bf16(float* out, const uint16_t* table, const int32_t* tokens, int64_t T, int64_t C);

// out (T, C) = x * w / sqrt(mean(x^2) + eps)
void rmsnorm_forward(float* out, const float* x, const float* w, int64_t T, int64_t C, float eps);

// x (T, H, d) rotated in place by positions pos0 + t. interleaved: pairs (2i, 2i+1) (Meta, llama2.c);
// otherwise halves (i, i + d/2) (Hugging Face). Frequency theta^(-2i/d) for pair i.
void rope_forward(float* x, int64_t T, int64_t H, int64_t d, int64_t pos0, float theta, bool interleaved);

// y (M, N) = x (M, K) · wᵀ, w (N, K) f32 or bf16
void matmul_forward(float* y, const float* x, const float* w, int64_t M, int64_t N, int64_t K);
void matmul_forward_bf16(float* y, const float* x, const uint16_t* w, int64_t M, int64_t N, int64_t K);

// out (T, H, d): causal attention of q (T, H, d) at positions pos0 + t over caches (S, Hkv, d),
// keys 0 .. pos0 + t; head h reads kv head h / (H / Hkv); scale 1/sqrt(d)
void attention_forward(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t H,
                       int64_t Hkv, int64_t d, int64_t pos0);

// out (N) = silu(a) * b
void swiglu_forward(float* out, const float* a, const float* b, int64_t N);

}  // namespace la::cpu
