// The activation family: SwiGLU (LLaMA's feed-forward), exact GELU and quick_gelu (ViT, CLIP). Op
// definitions in ops/activation.cpp, CPU bodies in cpu/activation.cpp, CUDA bodies in
// cuda/activation.cu.
#pragma once
#include <string>
#include <utility>

#include "../core/tensor.h"

namespace la::ops {

TensorPtr swiglu(const TensorPtr& a /*(T,F)*/, const TensorPtr& b /*(T,F)*/);  // -> (T,F) = silu(a) * b
// -> da, db of out = silu(a) * b
std::pair<TensorPtr, TensorPtr> swiglu_backward(const TensorPtr& dout, const TensorPtr& a, const TensorPtr& b);

// 'gelu' = x·Φ(x) with the exact erf (HF "gelu", torch.nn.GELU()); 'quick_gelu' = x·sigmoid(1.702x)
// (CLIP's). Element-wise, any shape.
enum class GeluKind { Erf, Quick };
GeluKind gelu_kind(const char* op, const std::string& name);  // "gelu" | "quick_gelu", else an error
TensorPtr gelu(const TensorPtr& x, GeluKind kind);
TensorPtr gelu_backward(const TensorPtr& dy, const TensorPtr& x, GeluKind kind);  // -> dx (shape of x)

}  // namespace la::ops
