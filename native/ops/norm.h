// The norm family: RMSNorm (LLaMA) and LayerNorm with bias (ViT, CLIP). Op definitions in
// ops/norm.cpp, CPU bodies in cpu/norm.cpp, CUDA bodies in cuda/norm.cu. Shape letters as in
// cpu/kernels.h.
#pragma once
#include "../core/tensor.h"

namespace la::ops {

TensorPtr rmsnorm(const TensorPtr& x /*(T,C)*/, const TensorPtr& w /*(C)*/, float eps);  // -> (T,C)
TensorPtr rmsnorm_backward(const TensorPtr& dy /*(T,C)*/, const TensorPtr& x /*(T,C)*/, const TensorPtr& w /*(C)*/,
                           float eps);  // -> dx (T,C) (w is frozen: no dw)

// -> (T,C) = (x - mean) / sqrt(var + eps) * w + b, per row, biased variance
TensorPtr layer_norm(const TensorPtr& x /*(T,C)*/, const TensorPtr& w /*(C)*/, const TensorPtr& b /*(C)*/, float eps);
struct LayerNormGrads {
  TensorPtr dx /*(T,C)*/, dw /*(C)*/, db /*(C)*/;
};
// dw, db are column sums over the rows in a fixed order: the same for any thread count
LayerNormGrads layer_norm_backward(const TensorPtr& dy /*(T,C)*/, const TensorPtr& x /*(T,C)*/,
                                   const TensorPtr& w /*(C)*/, float eps);

}  // namespace la::ops
