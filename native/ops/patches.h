// Patch extraction (im2col) for a ViT's patch embedding, a Conv2d with kernel = stride = P. Op
// definition in ops/patches.cpp, CPU body in cpu/patches.cpp, CUDA body in cuda/patches.cu.
#pragma once
#include "../core/tensor.h"

namespace la::ops {

// images (B, Cin, Hi, Wi) -> (B * Hi/P * Wi/P, Cin * P * P): one row per patch, row-major over
// each image's grid; columns in the Conv2d weight's order (c, ky, kx), so that the embedding is
// matmul(patches, W reshaped (D, Cin * P * P)). Hi and Wi must be multiples of P.
TensorPtr patches(const TensorPtr& images, int64_t patch);

}  // namespace la::ops
