// Bindings of the training ops (backward passes, loss, optimiser); shapes and dtypes are checked in
// ops/train_ops.cpp. Arguments are read in order, so the first wrong one is the one reported.
#include "../ops/train_ops.h"
#include "common.h"

namespace la::napi {
namespace {

bool layout_arg(const Args& a, size_t i) {
  std::string layout = a.string(i, "layout");
  if (layout != "interleaved" && layout != "half") a.type_error(i, "layout", "'interleaved' or 'half'");
  return layout == "interleaved";
}

LA_OP(ropeAt, {
  TensorPtr x = a.tensor(0, "x"), positions = a.tensor(1, "positions");
  double theta = a.number(2, "theta");
  bool interleaved = layout_arg(a, 3);
  bool inverse = a.boolean(4, "inverse");
  ops::rope_at(x, positions, float(theta), interleaved, inverse);
  return info.Env().Undefined();
})

LA_OP(rmsnormBackward, {
  TensorPtr dy = a.tensor(0, "dy"), x = a.tensor(1, "x"), w = a.tensor(2, "w");
  double eps = a.number(3, "eps");
  return wrap(info.Env(), ops::rmsnorm_backward(dy, x, w, float(eps)));
})

LA_OP(swigluBackward, {
  TensorPtr dout = a.tensor(0, "dout"), x = a.tensor(1, "a"), y = a.tensor(2, "b");
  auto [da, db] = ops::swiglu_backward(dout, x, y);
  return wrap_all(info.Env(), {da, db});
})

LA_OP(matmulBackward, {
  TensorPtr dy = a.tensor(0, "dy"), w = a.tensor(1, "w");
  return wrap(info.Env(), ops::matmul_backward(dy, w));
})

LA_OP(gatherRows, {
  TensorPtr x = a.tensor(0, "x"), idx = a.tensor(1, "idx");
  return wrap(info.Env(), ops::gather_rows(x, idx));
})

LA_OP(scatterAddRows, {
  TensorPtr dst = a.tensor(0, "dst"), idx = a.tensor(1, "idx"), src = a.tensor(2, "src");
  ops::scatter_add_rows(dst, idx, src);
  return info.Env().Undefined();
})

LA_OP(crossEntropy, {
  TensorPtr logits = a.tensor(0, "logits"), targets = a.tensor(1, "targets");
  double scale = a.number(2, "scale");
  auto [loss, dlogits] = ops::cross_entropy(logits, targets, float(scale));
  return wrap_all(info.Env(), {loss, dlogits});
})

LA_OP(adamw, {
  TensorPtr param = a.tensor(0, "param"), grad = a.tensor(1, "grad"), m = a.tensor(2, "m"), v = a.tensor(3, "v");
  int64_t step = a.integer(4, "step", 1);
  double lr = a.number(5, "lr"), beta1 = a.number(6, "beta1"), beta2 = a.number(7, "beta2"), eps = a.number(8, "eps"),
         wd = a.number(9, "weightDecay");
  ops::adamw(param, grad, m, v, step, lr, beta1, beta2, eps, wd);
  return info.Env().Undefined();
})

LA_OP(sumSquares, return wrap(info.Env(), ops::sum_squares(a.tensor(0, "x")));)

LA_OP(scaleInPlace, {
  TensorPtr x = a.tensor(0, "x");
  double s = a.number(1, "s");
  ops::scale_inplace(x, float(s));
  return info.Env().Undefined();
})

}  // namespace

void register_train_ops(Napi::Env env, Napi::Object exports) {
  export_fn(env, exports, "ropeAt", ropeAt);
  export_fn(env, exports, "rmsnormBackward", rmsnormBackward);
  export_fn(env, exports, "swigluBackward", swigluBackward);
  export_fn(env, exports, "matmulBackward", matmulBackward);
  export_fn(env, exports, "gatherRows", gatherRows);
  export_fn(env, exports, "scatterAddRows", scatterAddRows);
  export_fn(env, exports, "crossEntropy", crossEntropy);
  export_fn(env, exports, "adamw", adamw);
  export_fn(env, exports, "sumSquares", sumSquares);
  export_fn(env, exports, "scaleInPlace", scaleInPlace);
}

}  // namespace la::napi
