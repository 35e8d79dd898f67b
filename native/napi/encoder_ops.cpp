// Bindings of the image-encoder op families: LayerNorm, GELU, bias, the matmul weight gradient and
// patch extraction. Shapes and dtypes are checked in ops/norm.cpp, ops/activation.cpp,
// ops/matmul.cpp and ops/patches.cpp; arguments are read in order, so the first wrong one is the one
// reported.
#include "../ops/ops.h"
#include "common.h"

namespace la::napi {
namespace {

ops::GeluKind kind_arg(const Args& a, size_t i) {
  std::string kind = a.string(i, "kind");
  if (kind != "gelu" && kind != "quick_gelu") a.type_error(i, "kind", "'gelu' or 'quick_gelu'");
  return ops::gelu_kind(a.fn, kind);
}

LA_OP(layerNorm, {
  TensorPtr x = a.tensor(0, "x"), w = a.tensor(1, "w"), b = a.tensor(2, "b");
  double eps = a.number(3, "eps");
  return wrap(info.Env(), ops::layer_norm(x, w, b, float(eps)));
})

LA_OP(layerNormBackward, {
  TensorPtr dy = a.tensor(0, "dy"), x = a.tensor(1, "x"), w = a.tensor(2, "w");
  double eps = a.number(3, "eps");
  ops::LayerNormGrads g = ops::layer_norm_backward(dy, x, w, float(eps));
  return wrap_all(info.Env(), {g.dx, g.dw, g.db});
})

LA_OP(gelu, {
  TensorPtr x = a.tensor(0, "x");
  return wrap(info.Env(), ops::gelu(x, kind_arg(a, 1)));
})

LA_OP(geluBackward, {
  TensorPtr dy = a.tensor(0, "dy"), x = a.tensor(1, "x");
  return wrap(info.Env(), ops::gelu_backward(dy, x, kind_arg(a, 2)));
})

LA_OP(addBias, {
  TensorPtr x = a.tensor(0, "x"), b = a.tensor(1, "b");
  ops::add_bias(x, b);
  return info.Env().Undefined();
})

LA_OP(biasGrad, return wrap(info.Env(), ops::bias_grad(a.tensor(0, "dy")));)

LA_OP(matmulWeightGrad, {
  TensorPtr dy = a.tensor(0, "dy"), x = a.tensor(1, "x");
  return wrap(info.Env(), ops::matmul_weight_grad(dy, x));
})

LA_OP(patches, {
  TensorPtr images = a.tensor(0, "images");
  int64_t patch = a.integer(1, "patch", 1);
  return wrap(info.Env(), ops::patches(images, patch));
})

}  // namespace

void register_encoder_ops(Napi::Env env, Napi::Object exports) {
  export_fn(env, exports, "layerNorm", layerNorm);
  export_fn(env, exports, "layerNormBackward", layerNormBackward);
  export_fn(env, exports, "gelu", gelu);
  export_fn(env, exports, "geluBackward", geluBackward);
  export_fn(env, exports, "addBias", addBias);
  export_fn(env, exports, "biasGrad", biasGrad);
  export_fn(env, exports, "matmulWeightGrad", matmulWeightGrad);
  export_fn(env, exports, "patches", patches);
}

}  // namespace la::napi
