// The norm family's op definitions (ops/norm.h): argument checks, outputs, and the body queued for
// the tensors' device.
#include "norm.h"

#include <cmath>

#include "../core/error.h"
#include "../cpu/kernels.h"
#include "../cuda/kernels.h"
#include "checks.h"
#include "dispatch.h"
#include "indices.h"
#include "ops.h"

namespace la::ops {
namespace {

// x (T, C) f32 and a per-channel f32 vector `arg` (C), on one device; eps finite and >= 0
Device check_norm(const char* op, const TensorPtr& x, const char* arg, const TensorPtr& w, float eps) {
  expect_ndim(op, "x", x, 2);
  expect_ndim(op, arg, w, 1);
  expect_dtype(op, "x", x, DType::F32);
  expect_dtype(op, arg, w, DType::F32);
  LA_CHECK(w->dim(0) == x->dim(1), op, ": ", arg, " ", w->describe(), " does not match x ", x->describe());
  LA_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps must be >= 0, got ", eps);
  return expect_same_device(op, {&x, &w});
}

}  // namespace

TensorPtr rmsnorm(const TensorPtr& x, const TensorPtr& w, float eps) {
  const char* op = "rmsnorm";
  Device dev = check_norm(op, x, "w", w, eps);
  TensorPtr out = empty(x->shape, DType::F32, dev);
  queue_op(op, {x, w}, {out}, [=] {
    Kernels{dev}.rmsnorm(out->data<float>(), x->data<float>(), w, x->dim(0), x->dim(1), eps);
  });
  return out;
}

TensorPtr rmsnorm_backward(const TensorPtr& dy, const TensorPtr& x, const TensorPtr& w, float eps) {
  const char* op = "rmsnormBackward";
  expect_dtype(op, "dy", dy, DType::F32);
  Device dev = check_norm(op, x, "w", w, eps);
  LA_CHECK(dy->shape == x->shape, op, ": dy ", dy->describe(), " and x ", x->describe(), " differ");
  expect_same_device(op, {&dy, &x});
  TensorPtr dx = empty(x->shape, DType::F32, dev);
  queue_op(op, {dy, x, w}, {dx}, [=] {
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::rmsnorm_backward(dx->data<float>(), dy->data<float>(), x->data<float>(), w->data<float>(),
                                               x->dim(0), x->dim(1), eps));
    cpu::rmsnorm_backward(dx->data<float>(), dy->data<float>(), x->data<float>(), w->data<float>(), x->dim(0),
                          x->dim(1), eps);
  });
  return dx;
}

TensorPtr layer_norm(const TensorPtr& x, const TensorPtr& w, const TensorPtr& b, float eps) {
  const char* op = "layerNorm";
  Device dev = check_norm(op, x, "w", w, eps);
  check_norm(op, x, "b", b, eps);
  expect_same_device(op, {&x, &w, &b});
  TensorPtr out = empty(x->shape, DType::F32, dev);
  queue_op(op, {x, w, b}, {out}, [=] {
    const int64_t T = x->dim(0), C = x->dim(1);
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::layernorm_forward(out->data<float>(), x->data<float>(), w->data<float>(),
                                                b->data<float>(), T, C, eps));
    cpu::layernorm_forward(out->data<float>(), x->data<float>(), w->data<float>(), b->data<float>(), T, C, eps);
  });
  return out;
}

LayerNormGrads layer_norm_backward(const TensorPtr& dy, const TensorPtr& x, const TensorPtr& w, float eps) {
  const char* op = "layerNormBackward";
  expect_dtype(op, "dy", dy, DType::F32);
  Device dev = check_norm(op, x, "w", w, eps);
  LA_CHECK(dy->shape == x->shape, op, ": dy ", dy->describe(), " and x ", x->describe(), " differ");
  expect_same_device(op, {&dy, &x});
  const int64_t T = x->dim(0), C = x->dim(1);
  LayerNormGrads g{empty(x->shape, DType::F32, dev), empty({C}, DType::F32, dev), empty({C}, DType::F32, dev)};
  queue_op(op, {dy, x, w}, {g.dx, g.dw, g.db}, [=] {
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::layernorm_backward(g.dx->data<float>(), g.dw->data<float>(), g.db->data<float>(),
                                                 dy->data<float>(), x->data<float>(), w->data<float>(), T, C, eps));
    cpu::layernorm_backward(g.dx->data<float>(), g.dw->data<float>(), g.db->data<float>(), dy->data<float>(),
                            x->data<float>(), w->data<float>(), T, C, eps);
  });
  return g;
}

}  // namespace la::ops
