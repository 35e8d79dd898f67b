// The attention family's op definitions (attention.cpp): cached causal attention for inference
// and the fused gated split-softmax attention of training over packed segments (SPEC §2, §8, §9),
// each with its checks. Bodies: cpu/attention.cpp, cpu/attention_gated.cpp, cuda/attention.cu,
// cuda/attention_gated.cu, chosen in dispatch.h.
//
// Packed rows: N tokens in S segments, segments (S+1) i32 offsets 0 = seg[0] <= .. <= seg[S] = N
// (checked when the op runs: a bad one poisons the outputs, the error surfaces at read()); K prompt
// vectors; the gate is (H) per head or (1) scalar. Shape letters as in cpu/kernels.h.
#pragma once
#include "../core/tensor.h"

namespace la::ops {

// Checks the adapter prompt arguments of an attention op: all three null (returns 0) or pk, pv
// (K, Hkv, d) f32 and gate (H) or (1) f32 (returns K). With segments >= 0 (S), pk, pv may also be
// (S, K, Hkv, d): one prompt per segment.
int64_t check_prompt(const char* op, const TensorPtr& pk, const TensorPtr& pv, const TensorPtr& gate, int64_t H,
                     int64_t Hkv, int64_t d, int64_t segments = -1);

// Cached inference. With pk, pv (K,Hkv,d) and gate (H) or (1) (all three or none): adds the adapter
// branch tanh(gate) * softmax(q pkᵀ / sqrt(d)) pv (no mask, its own softmax; SPEC §2).
TensorPtr attention(const TensorPtr& q /*(T,H,d)*/, const TensorPtr& k /*(S,Hkv,d)*/,
                    const TensorPtr& v /*(S,Hkv,d)*/, int64_t pos0, const TensorPtr& pk = nullptr,
                    const TensorPtr& pv = nullptr, const TensorPtr& gate = nullptr);  // -> (T,H,d)

struct AttentionOptions {
  // true: query t sees the keys of its segment up to itself (LLaMA); false: all the keys of its
  // segment (encoders: one segment per image or text, SPEC §9)
  bool causal = true;
};

struct GatedAttentionResult {
  TensorPtr out;    // (N, H, d)
  TensorPtr stats;  // (N, H, 2) = [log-sum-exp of the word scores, of the prompt scores]
};
// pk, pv: (K,Hkv,d) shared by every segment, (S,K,Hkv,d) one per segment (SPEC §8), or null
GatedAttentionResult gated_attention(const TensorPtr& q /*(N,H,d)*/, const TensorPtr& k /*(N,Hkv,d)*/,
                                     const TensorPtr& v /*(N,Hkv,d)*/, const TensorPtr& segments /*(S+1) i32*/,
                                     const TensorPtr& pk, const TensorPtr& pv,
                                     const TensorPtr& gate /*(H) or (1) or null*/,
                                     const AttentionOptions& options = {});

struct GatedAttentionGrads {
  TensorPtr dq, dk, dv;       // shapes of q, k, v
  TensorPtr dpk, dpv, dgate;  // shapes of pk, pv, gate (per segment: not summed); null without a prompt
};
GatedAttentionGrads gated_attention_backward(const TensorPtr& dout, const TensorPtr& q, const TensorPtr& k,
                                             const TensorPtr& v, const TensorPtr& segments, const TensorPtr& pk,
                                             const TensorPtr& pv, const TensorPtr& gate, const TensorPtr& out,
                                             const TensorPtr& stats, const AttentionOptions& options = {});

}  // namespace la::ops
