// The training op definitions (backward passes, loss, optimiser), defined like ops.h's: inputs'
// shapes and dtypes are checked at once (a la::Error naming the op, the argument and the shapes),
// outputs allocated, the body queued with queue_op. Values that only the body can see (segment
// offsets, positions, row indices, targets) are checked there: a bad one poisons the outputs and
// the error surfaces at read()/synchronize().
//
// Packed rows: N tokens in S segments, segments (S+1) i32 offsets 0 = seg[0] <= .. <= seg[S] = N;
// K prompt vectors per adapted layer; the gate is (H) per head or (1) scalar. Shape letters as in
// cpu/kernels.h.
#pragma once
#include <utility>

#include "../core/tensor.h"
#include "activation.h"  // swiglu_backward
#include "matmul.h"      // matmul_backward
#include "norm.h"        // rmsnorm_backward

namespace la::ops {

// Checks the adapter prompt arguments of an attention op: all three null (returns 0) or pk, pv
// (K, Hkv, d) f32 and gate (H) or (1) f32 (returns K).
int64_t check_prompt(const char* op, const TensorPtr& pk, const TensorPtr& pv, const TensorPtr& gate, int64_t H,
                     int64_t Hkv, int64_t d);

// x (N, H, d) rotated in place by per-token positions (N) i32 (>= 0); inverse: by -angle
void rope_at(const TensorPtr& x, const TensorPtr& positions, float theta, bool interleaved, bool inverse);

struct GatedAttentionResult {
  TensorPtr out;    // (N, H, d)
  TensorPtr stats;  // (N, H, 2)
};
GatedAttentionResult gated_attention(const TensorPtr& q /*(N,H,d)*/, const TensorPtr& k /*(N,Hkv,d)*/,
                                     const TensorPtr& v /*(N,Hkv,d)*/, const TensorPtr& segments /*(S+1) i32*/,
                                     const TensorPtr& pk /*(K,Hkv,d) or null*/, const TensorPtr& pv,
                                     const TensorPtr& gate /*(H) or (1) or null*/);

struct GatedAttentionGrads {
  TensorPtr dq, dk, dv;      // shapes of q, k, v
  TensorPtr dpk, dpv, dgate;  // shapes of pk, pv, gate; null without a prompt
};
GatedAttentionGrads gated_attention_backward(const TensorPtr& dout, const TensorPtr& q, const TensorPtr& k,
                                             const TensorPtr& v, const TensorPtr& segments, const TensorPtr& pk,
                                             const TensorPtr& pv, const TensorPtr& gate, const TensorPtr& out,
                                             const TensorPtr& stats);

TensorPtr gather_rows(const TensorPtr& x /*(N,...)*/, const TensorPtr& idx /*(M) i32*/);          // -> (M,...)
void scatter_add_rows(const TensorPtr& dst /*(N,...)*/, const TensorPtr& idx /*(M) i32*/,
                      const TensorPtr& src /*(M,...)*/);  // dst[idx] += src, in place
// -> loss (1) = sum of row losses, dlogits (M,V) = scale * (softmax - onehot)
std::pair<TensorPtr, TensorPtr> cross_entropy(const TensorPtr& logits /*(M,V)*/, const TensorPtr& targets /*(M) i32*/,
                                              float scale);
void adamw(const TensorPtr& param, const TensorPtr& grad, const TensorPtr& m, const TensorPtr& v, int64_t step,
           double lr, double beta1, double beta2, double eps, double weight_decay);
TensorPtr sum_squares(const TensorPtr& x);  // -> (1)
void scale_inplace(const TensorPtr& x, float s);

}  // namespace la::ops
