// The CUDA bodies of the ops: host-callable launchers over device pointers, outputs first, then
// inputs, then dimensions, mirroring cpu/kernels.h (the reference each is checked against; the
// same dimension letters). Each launches on cuda::stream() and returns at once; launch errors
// throw la::Error (runtime.h check_launch). Index arrays (tokens, positions, segments, targets,
// rows) are device copies of host arrays the op has already checked, so kernels trust them.
// One source file per op family: elementwise.cu, norm.cu, activation.cu, rope.cu, matmul.cu,
// patches.cu, attention.cu, attention_gated.cu, loss.cu, optim.cu.
#pragma once
#include <cstdint>

// (core/tensor.h's enum, declared here: .cu files include this after compat.h, and the emulator's
// qualifier macros must not meet the standard headers tensor.h pulls in)
namespace la {
enum class DType;
}

namespace la::cuda {

// ---- elementwise.cu -------------------------------------------------------------------------
// out (T, C) = table (V, C)[tokens (T)]; table f32, or bf16 (as uint16_t) when table_bf16
void embedding_forward(float* out, const void* table, bool table_bf16, const int32_t* tokens, int64_t T, int64_t C);
void add_inplace(float* x, const float* y, int64_t n);       // x += y
void scale_inplace(float* x, int64_t n, float s);            // x *= s; s = 0 clears (NaN and Inf too)
void f32_to_bf16(uint16_t* out, const float* x, int64_t n);  // round to nearest even, as core/bf16.h
void bf16_to_f32(float* out, const uint16_t* x, int64_t n);
// out (M, row_bytes) = x[idx (M)]
void gather_rows(void* out, const void* x, const int32_t* idx, int64_t M, int64_t row_bytes);
// dst[idx[m]] += src[m] for m = 0 .. M-1 in order (repeated indices accumulate in index order), rows of C
void scatter_add_rows(float* dst, const int32_t* idx, const float* src, int64_t M, int64_t C);

// ---- norm.cu ----------------------------------------------------------------------------------
// out (T, C) = x * w / sqrt(mean(x^2) + eps); backward: dx (T, C) given dy (w frozen: no dw)
void rmsnorm_forward(float* out, const float* x, const float* w, int64_t T, int64_t C, float eps);
void rmsnorm_backward(float* dx, const float* dy, const float* x, const float* w, int64_t T, int64_t C, float eps);
// LayerNorm with bias, exactly as cpu::layernorm_forward / _backward (dw, db in a fixed order)
void layernorm_forward(float* out, const float* x, const float* w, const float* b, int64_t T, int64_t C, float eps);
void layernorm_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w, int64_t T,
                        int64_t C, float eps);

// ---- activation.cu ----------------------------------------------------------------------------
// out (n) = silu(a) * b; backward: da, db (n) given dout
void swiglu_forward(float* out, const float* a, const float* b, int64_t n);
void swiglu_backward(float* da, float* db, const float* dout, const float* a, const float* b, int64_t n);
// out (n) = x Φ(x) (exact, erf), or x sigmoid(1.702 x) when quick; backward: dx (n) given dy
void gelu_forward(float* out, const float* x, int64_t n, bool quick);
void gelu_backward(float* dx, const float* dy, const float* x, int64_t n, bool quick);

// ---- patches.cu -------------------------------------------------------------------------------
// out (B * Hi/P * Wi/P, Cin * P * P) = the patches of images (B, Cin, Hi, Wi), as cpu::patches
void patches(float* out, const float* images, int64_t B, int64_t Cin, int64_t Hi, int64_t Wi, int64_t P);

// ---- rope.cu ----------------------------------------------------------------------------------
// x (T, H, d) rotated in place at positions pos0 + t (rope_forward) or pos (N) (rope_at; inverse
// rotates by -angle). Layouts and frequencies exactly as cpu::rope_forward.
void rope_forward(float* x, int64_t T, int64_t H, int64_t d, int64_t pos0, float theta, bool interleaved);
void rope_at(float* x, const int32_t* pos, int64_t N, int64_t H, int64_t d, float theta, bool interleaved,
             bool inverse);

// ---- matmul.cu --------------------------------------------------------------------------------
// Frozen-weight matmuls, fp32 accumulation. w (N, K) f32, or bf16 (as uint16_t) when w_bf16.
// y (M, N) = x (M, K) · wᵀ;  dx (M, K) = dy (M, N) · w
void matmul_forward(float* y, const float* x, const void* w, bool w_bf16, int64_t M, int64_t N, int64_t K);
void matmul_backward(float* dx, const float* dy, const void* w, bool w_bf16, int64_t M, int64_t N, int64_t K);
// Trainable f32 weights: dw (N, K) = dyᵀ (N, M) · x (M, K); x (M, N) += b (N) on every row;
// db (N) = column sums of dy (M, N) in a fixed order (deterministic)
void matmul_weight_grad(float* dw, const float* dy, const float* x, int64_t M, int64_t N, int64_t K);
void add_bias(float* x, const float* b, int64_t M, int64_t N);
void bias_grad(float* db, const float* dy, int64_t M, int64_t N);

// ---- quant.cu ---------------------------------------------------------------------------------
// The same with w (N, K) block-quantized as dtype t (core/quant.h), as cpu/quant.cpp; and
// out (T, C) = table (V, C)[tokens], out (rows, K) = w dequantised.
void matmul_forward_q(float* y, const float* x, const void* w, DType t, int64_t M, int64_t N, int64_t K);
void matmul_backward_q(float* dx, const float* dy, const void* w, DType t, int64_t M, int64_t N, int64_t K);
void embedding_forward_q(float* out, const void* table, DType t, const int32_t* tokens, int64_t T, int64_t C);
void dequantize_rows(float* out, const void* w, DType t, int64_t rows, int64_t K);

// ---- attention.cu (cached inference) ----------------------------------------------------------
// out (T, H, d): causal attention of q (T, H, d) at positions pos0 + t over caches k, v (S, Hkv, d),
// keys 0 .. pos0 + t; head h reads kv head h / (H / Hkv); scale 1/sqrt(d). With pk (not null):
// plus tanh(gate) * softmax(q · pkᵀ / sqrt(d)) · pv, pk, pv (K, Hkv, d), gate (G) (G = H or 1).
void attention_forward(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t H,
                       int64_t Hkv, int64_t d, int64_t S, int64_t pos0, const float* pk, const float* pv,
                       const float* gate, int64_t G, int64_t K);

// ---- attention_gated.cu (training) ------------------------------------------------------------
// The fused gated split-softmax attention over packed segments, as cpu::gated_attention_forward /
// _backward (same arguments, same outputs, same stats layout). seg is on the device; seg_host is
// the same S+1 offsets on the host (already checked), for scheduling. pk, pv, gate null: plain
// attention (stats' prompt log-sum-exp = -inf; dpk, dpv, dgate ignored). causal: within each
// segment (else bidirectional); per_segment: pk, pv, dpk, dpv (S, K, Hkv, d), segment s uses pk[s].
void gated_attention_forward(float* out, float* stats, const float* q, const float* k, const float* v,
                             const int32_t* seg, const int32_t* seg_host, int64_t S, const float* pk, const float* pv,
                             const float* gate, int64_t G, int64_t N, int64_t H, int64_t Hkv, int64_t d, int64_t K,
                             bool causal, bool per_segment);
void gated_attention_backward(float* dq, float* dk, float* dv, float* dpk, float* dpv, float* dgate,
                              const float* dout, const float* q, const float* k, const float* v, const int32_t* seg,
                              const int32_t* seg_host, int64_t S, const float* pk, const float* pv, const float* gate,
                              int64_t G, const float* out, const float* stats, int64_t N, int64_t H, int64_t Hkv,
                              int64_t d, int64_t K, bool causal, bool per_segment);

// ---- loss.cu ----------------------------------------------------------------------------------
// loss (1) = sum over rows of -log softmax(logits (M, V))[target] (accumulated in double, in a fixed
// order); dlogits (M, V) = scale * (softmax - onehot). dlogits may equal logits (in place).
void cross_entropy(float* loss, float* dlogits, const float* logits, const int32_t* targets, int64_t M, int64_t V,
                   float scale);

// ---- optim.cu ---------------------------------------------------------------------------------
// PyTorch's AdamW step (non-foreach), exactly as cpu::adamw, in place on p, m, v (n) given g
void adamw(float* p, const float* g, float* m, float* v, int64_t n, int64_t step, double lr, double beta1,
           double beta2, double eps, double weight_decay);
// out (1) = sum of x[i]^2, accumulated in double in a fixed order (deterministic)
void sum_squares(float* out, const float* x, int64_t n);

}  // namespace la::cuda

// ---- random.cu --------------------------------------------------------------------------------
namespace la::cuda {
// x (n) f32, or bf16 when bf16: element i = uniform_at(seed, i) * scale (core/random.h), the same
// values as cpu::fill_uniform
void fill_uniform(void* x, bool bf16, int64_t n, uint64_t seed, float scale);
}  // namespace la::cuda
