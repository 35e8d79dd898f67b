// The activation family's op definitions (ops/activation.h): argument checks, outputs, and the
// body queued for the tensors' device.
#include "activation.h"

#include "../core/error.h"
#include "../cpu/kernels.h"
#include "../cuda/kernels.h"
#include "checks.h"
#include "dispatch.h"
#include "indices.h"
#include "ops.h"

namespace la::ops {

TensorPtr swiglu(const TensorPtr& a, const TensorPtr& b) {
  const char* op = "swiglu";
  expect_dtype(op, "a", a, DType::F32);
  expect_dtype(op, "b", b, DType::F32);
  LA_CHECK(a->shape == b->shape, op, ": a ", a->describe(), " and b ", b->describe(), " differ");
  Device dev = expect_same_device(op, {&a, &b});
  TensorPtr out = empty(a->shape, DType::F32, dev);
  queue_op(op, {a, b}, {out}, [=] {
    Kernels{dev}.swiglu(out->data<float>(), a->data<float>(), b->data<float>(), a->numel());
  });
  return out;
}

std::pair<TensorPtr, TensorPtr> swiglu_backward(const TensorPtr& dout, const TensorPtr& a, const TensorPtr& b) {
  const char* op = "swigluBackward";
  expect_dtype(op, "dout", dout, DType::F32);
  expect_dtype(op, "a", a, DType::F32);
  expect_dtype(op, "b", b, DType::F32);
  LA_CHECK(a->shape == b->shape && dout->shape == a->shape, op, ": dout ", dout->describe(), ", a ", a->describe(),
           " and b ", b->describe(), " must have the same shape");
  Device dev = expect_same_device(op, {&dout, &a, &b});
  TensorPtr da = empty(a->shape, DType::F32, dev), db = empty(a->shape, DType::F32, dev);
  queue_op(op, {dout, a, b}, {da, db}, [=] {
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::swiglu_backward(da->data<float>(), db->data<float>(), dout->data<float>(),
                                              a->data<float>(), b->data<float>(), a->numel()));
    cpu::swiglu_backward(da->data<float>(), db->data<float>(), dout->data<float>(), a->data<float>(),
                         b->data<float>(), a->numel());
  });
  return {da, db};
}

GeluKind gelu_kind(const char* op, const std::string& name) {
  if (name == "gelu") return GeluKind::Erf;
  if (name == "quick_gelu") return GeluKind::Quick;
  fail(op, ": kind must be 'gelu' or 'quick_gelu', got '", name, "'");
}

TensorPtr gelu(const TensorPtr& x, GeluKind kind) {
  const char* op = "gelu";
  expect_dtype(op, "x", x, DType::F32);
  Device dev = x->device;
  const bool quick = kind == GeluKind::Quick;
  TensorPtr out = empty(x->shape, DType::F32, dev);
  queue_op(op, {x}, {out}, [=] {
    if (dev == Device::CUDA) return LA_ON_CUDA(cuda::gelu_forward(out->data<float>(), x->data<float>(), x->numel(), quick));
    cpu::gelu_forward(out->data<float>(), x->data<float>(), x->numel(), quick);
  });
  return out;
}

TensorPtr gelu_backward(const TensorPtr& dy, const TensorPtr& x, GeluKind kind) {
  const char* op = "geluBackward";
  expect_dtype(op, "dy", dy, DType::F32);
  expect_dtype(op, "x", x, DType::F32);
  LA_CHECK(dy->shape == x->shape, op, ": dy ", dy->describe(), " and x ", x->describe(), " differ");
  Device dev = expect_same_device(op, {&dy, &x});
  const bool quick = kind == GeluKind::Quick;
  TensorPtr dx = empty(x->shape, DType::F32, dev);
  queue_op(op, {dy, x}, {dx}, [=] {
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::gelu_backward(dx->data<float>(), dy->data<float>(), x->data<float>(), x->numel(), quick));
    cpu::gelu_backward(dx->data<float>(), dy->data<float>(), x->data<float>(), x->numel(), quick);
  });
  return dx;
}

}  // namespace la::ops
