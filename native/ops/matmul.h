// The matmul family: y = x · wᵀ with a frozen f32 or bf16 weight, its input gradient, and for
// trainable f32 weights (a linear head) the weight gradient, the bias add and the bias gradient.
// Op definitions in ops/matmul.cpp, CPU bodies in cpu/matmul.cpp, CUDA bodies in cuda/matmul.cu.
#pragma once
#include "../core/tensor.h"

namespace la::ops {

TensorPtr matmul(const TensorPtr& x /*(M,K)*/, const TensorPtr& w /*(N,K) f32|bf16*/);           // -> (M,N)
TensorPtr matmul_backward(const TensorPtr& dy /*(M,N)*/, const TensorPtr& w /*(N,K) f32|bf16|quantized*/);  // -> dx (M,K)
// -> dW (N,K) = dyᵀ · x: the weight gradient of matmul(x, W) for an f32 W (N, K)
TensorPtr matmul_weight_grad(const TensorPtr& dy /*(M,N)*/, const TensorPtr& x /*(M,K)*/);
void add_bias(const TensorPtr& x /*(M,N)*/, const TensorPtr& b /*(N)*/);  // x += b on every row, in place
// -> db (N) = column sums of dy (M,N) in a fixed order (the same for any thread count)
TensorPtr bias_grad(const TensorPtr& dy /*(M,N)*/);

}  // namespace la::ops
