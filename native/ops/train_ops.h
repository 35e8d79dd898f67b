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

// x (N, H, d) rotated in place by per-token positions (N) i32 (>= 0); inverse: by -angle
void rope_at(const TensorPtr& x, const TensorPtr& positions, float theta, bool interleaved, bool inverse);

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
