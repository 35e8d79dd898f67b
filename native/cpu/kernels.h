// The CPU bodies of the ops: plain free functions over raw pointers, outputs first, then inputs,
// then dimensions (llm.c style). Each is the reference the CUDA bodies are checked against.
//
// Dimension letters: T tokens (rows), C channels, H heads, Hkv key/value heads, d head size,
// S cache length, V vocabulary, F FFN hidden size, M/N/K matmul sizes.
#pragma once
#include <cstdint>

#include "../core/tensor.h"

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
// One row x (K) (decoding) times several weights of one dtype (f32, bf16 or quantized) and one K:
// y_i (N_i) = x · w_iᵀ in one parallel region — one thread hand-off instead of one per weight, and
// quantized x made once — equal bit for bit to matmul_forward* of each with M = 1.
struct MatvecTarget {
  float* y;
  const void* w;
  int64_t N;
};
void matvec_many(const MatvecTarget* targets, int count, const float* x, DType t, int64_t K);
void matvec_many_q(const MatvecTarget* targets, int count, const float* x, DType t, int64_t K);  // quant.cpp
// quant.cpp: w (N, K) block-quantized as dtype t (core/quant.h), kept quantized.
// y (M, N) = x (M, K) · wᵀ;  dx (M, K) = dy (M, N) · w;  out (T, C) = table (V, C)[tokens]
void matmul_forward_q(float* y, const float* x, const void* w, DType t, int64_t M, int64_t N, int64_t K);
void matmul_backward_q(float* dx, const float* dy, const void* w, DType t, int64_t M, int64_t N, int64_t K);
void embedding_forward_q(float* out, const void* table, DType t, const int32_t* tokens, int64_t T, int64_t C);
// out (rows, K) = w (rows, K) dequantised, exactly as ggml's dequantize_row_* (any weight dtype)
void dequantize_rows(float* out, const void* w, DType t, int64_t rows, int64_t K);

// out (T, H, d): causal attention of q (T, H, d) at positions pos0 + t over caches (S, Hkv, d),
// keys 0 .. pos0 + t; head h reads kv head h / (H / Hkv); scale 1/sqrt(d)
void attention_forward(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t H,
                       int64_t Hkv, int64_t d, int64_t pos0);

// out (N) = silu(a) * b
void swiglu_forward(float* out, const float* a, const float* b, int64_t N);

// ---- training (attention_gated.cpp, backward.cpp, loss.cpp, optim.cpp) -------------------------
// Packed rows: N tokens in S segments, seg (S+1) offsets 0 = seg[0] <= .. <= seg[S] = N (checked by
// the op); K prompt vectors; G gate size (H per head, or 1 scalar). Backward bodies form input
// gradients only (the frozen weights get none).

// out (T, H, d) += tanh(gate) * softmax(q · pkᵀ / sqrt(d)) · pv: the adapter branch of cached
// inference; pk, pv (K, Hkv, d), gate (G)
void attention_prompt_add(float* out, const float* q, const float* pk, const float* pv, const float* gate, int64_t G,
                          int64_t T, int64_t H, int64_t Hkv, int64_t d, int64_t K);

// The fused gated split-softmax attention (SPEC §2, §8, §9; see attention_gated.cpp): q (N, H, d),
// k, v (N, Hkv, d), within each segment causal (causal) or bidirectional; pk, pv (K, Hkv, d) shared,
// or (S, K, Hkv, d) when per_segment, and gate (G), or all null (plain attention). out (N, H, d),
// stats (N, H, 2) = log-sum-exp of the word and the prompt scores (-inf without a prompt).
void gated_attention_forward(float* out, float* stats, const float* q, const float* k, const float* v,
                             const int32_t* seg, int64_t S, const float* pk, const float* pv, const float* gate,
                             int64_t G, int64_t N, int64_t H, int64_t Hkv, int64_t d, int64_t K, bool causal,
                             bool per_segment);
// dq (N, H, d), dk, dv (N, Hkv, d); with a prompt also dpk, dpv of pk's shape (shared: summed over
// all tokens; per segment: each segment's own) and dgate (G) (ignored, may be null, without one)
void gated_attention_backward(float* dq, float* dk, float* dv, float* dpk, float* dpv, float* dgate,
                              const float* dout, const float* q, const float* k, const float* v, const int32_t* seg,
                              int64_t S, const float* pk, const float* pv, const float* gate, int64_t G,
                              const float* out, const float* stats, int64_t N, int64_t H, int64_t Hkv, int64_t d,
                              int64_t K, bool causal, bool per_segment);

// x (N, H, d) rotated in place by per-token positions pos (N) (>= 0), as rope_forward; inverse
// rotates by -angle (rope's backward)
void rope_at(float* x, const int32_t* pos, int64_t N, int64_t H, int64_t d, float theta, bool interleaved,
             bool inverse);
// dx (T, C) of out = x * w / sqrt(mean(x^2) + eps), given dy (T, C)
void rmsnorm_backward(float* dx, const float* dy, const float* x, const float* w, int64_t T, int64_t C, float eps);
// da, db (N) of out = silu(a) * b, given dout (N)
void swiglu_backward(float* da, float* db, const float* dout, const float* a, const float* b, int64_t N);
// dx (M, K) = dy (M, N) · w (N, K), w f32 or bf16 (as uint16_t)
void matmul_backward(float* dx, const float* dy, const float* w, int64_t M, int64_t N, int64_t K);
void matmul_backward_bf16(float* dx, const float* dy, const uint16_t* w, int64_t M, int64_t N, int64_t K);
// out (M, row_bytes) = x[idx (M)] (indices checked by the op)
void gather_rows(void* out, const void* x, const int32_t* idx, int64_t M, int64_t row_bytes);
// dst[idx[m]] += src[m] for m = 0 .. M-1 in order (repeated indices accumulate), rows of C
void scatter_add_rows(float* dst, const int32_t* idx, const float* src, int64_t M, int64_t C);

// Cross-entropy of logits (M, V) against targets (M) in [0, V): returns sum over rows of
// -log softmax[target] (in double); dlogits (M, V) = scale * (softmax - onehot)
double cross_entropy(float* dlogits, const float* logits, const int32_t* targets, int64_t M, int64_t V, float scale);

// PyTorch's AdamW step (non-foreach), in place on p, m, v (n) given g; step counts from 1
void adamw(float* p, const float* g, float* m, float* v, int64_t n, int64_t step, double lr, double beta1,
           double beta2, double eps, double weight_decay);
// sum of x[i]^2 in double, in fixed blocks (the same result for any thread count)
double sum_squares(const float* x, int64_t n);
// x *= s; s = 0 clears (NaN and Inf included)
void scale_inplace(float* x, int64_t n, float s);

// ---- encoder families (norm.cpp, activation.cpp, matmul.cpp, patches.cpp) -----------------------
// out (T, C) = (x - mean) / sqrt(var + eps) * w + b per row (biased variance; mean and 1/sqrt in
// double, rounded to f32)
void layernorm_forward(float* out, const float* x, const float* w, const float* b, int64_t T, int64_t C, float eps);
// dx (T, C), dw (C), db (C) of layernorm_forward given dy (T, C); dw, db summed in double over fixed
// blocks of rows (the same for any thread count)
void layernorm_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int64_t T,
                        int64_t C, float eps);
// out (n) = x Φ(x) (exact, erf), or x sigmoid(1.702 x) when quick; backward: dx (n) given dy
void gelu_forward(float* out, const float* x, int64_t n, bool quick);
void gelu_backward(float* dx, const float* dy, const float* x, int64_t n, bool quick);
// dw (N, K) = dyᵀ (N, M) · x (M, K): the weight gradient of y = x · wᵀ
void matmul_weight_grad(float* dw, const float* dy, const float* x, int64_t M, int64_t N, int64_t K);
// x (M, N) += b (N) on every row
void add_bias(float* x, const float* b, int64_t M, int64_t N);
// db (N) = column sums of dy (M, N), in double over fixed blocks of rows (thread-count independent)
void bias_grad(float* db, const float* dy, int64_t M, int64_t N);
// out (B * Hi/P * Wi/P, Cin * P * P): row (b, gy, gx), column (c, ky, kx) = images (B, Cin, Hi, Wi)
// [b, c, gy P + ky, gx P + kx]
void patches(float* out, const float* images, int64_t B, int64_t Cin, int64_t Hi, int64_t Wi, int64_t P);

// e[j] = exp(x[j] * scale - shift) for j < n (e may be x); returns the sum of the e[j] (f32 lanes
// in a fixed order). Vectorised (AVX2 when the CPU has it; Cephes' expf polynomial, ~2 ulp, results
// below ~1e-38 flush to 0). The inner loop of softmax rows (attention_gated.cpp, loss.cpp).
float exp_sum(float* e, const float* x, int64_t n, float scale, float shift);
// max of x[0 .. n) (n >= 1), vectorised like exp_sum
float max_of(const float* x, int64_t n);

// x (n) f32, or bf16 when bf16: element i = uniform_at(seed, i) * scale (core/random.h; the same
// values on every backend and thread count)
void fill_uniform(void* x, bool bf16, int64_t n, uint64_t seed, float scale);

}  // namespace la::cpu
