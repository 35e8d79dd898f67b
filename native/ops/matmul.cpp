// The matmul family's op definitions (ops/matmul.h): argument checks, outputs, and the body queued
// for the tensors' device.
#include "matmul.h"

#include "../core/error.h"
#include "../core/quant.h"
#include "../cpu/kernels.h"
#include "../cuda/kernels.h"
#include "checks.h"
#include "dispatch.h"
#include "indices.h"
#include "ops.h"

namespace la::ops {

TensorPtr matmul(const TensorPtr& x, const TensorPtr& w) {
  const char* op = "matmul";
  expect_ndim(op, "x", x, 2);
  expect_ndim(op, "w", w, 2);
  expect_dtype(op, "x", x, DType::F32);
  expect_weight(op, "w", w);
  LA_CHECK(x->dim(1) == w->dim(1), op, ": x ", x->describe(), " · wᵀ needs w (N, ", x->dim(1), "), got ",
           w->describe());
  Device dev = expect_same_device(op, {&x, &w});
  int64_t M = x->dim(0), N = w->dim(0);
  TensorPtr y = empty({M, N}, DType::F32, dev);
  queue_op(op, {x, w}, {y}, [=] { Kernels{dev}.matmul(y->data<float>(), x->data<float>(), w, M); });
  return y;
}

TensorPtr matmul_backward(const TensorPtr& dy, const TensorPtr& w) {
  const char* op = "matmulBackward";
  expect_ndim(op, "dy", dy, 2);
  expect_ndim(op, "w", w, 2);
  expect_dtype(op, "dy", dy, DType::F32);
  expect_weight(op, "w", w);
  LA_CHECK(dy->dim(1) == w->dim(0), op, ": dy ", dy->describe(), " · w needs w (", dy->dim(1), ", K), got ",
           w->describe());
  Device dev = expect_same_device(op, {&dy, &w});
  int64_t M = dy->dim(0), N = w->dim(0), K = w->dim(1);
  TensorPtr dx = empty({M, K}, DType::F32, dev);
  queue_op(op, {dy, w}, {dx}, [=] {
    if (is_quantized(w->dtype)) {
      if (dev == Device::CUDA)
        LA_ON_CUDA(cuda::matmul_backward_q(dx->data<float>(), dy->data<float>(), w->raw(), w->dtype, M, N, K));
      else
        cpu::matmul_backward_q(dx->data<float>(), dy->data<float>(), w->raw(), w->dtype, M, N, K);
    } else if (dev == Device::CUDA)
      LA_ON_CUDA(cuda::matmul_backward(dx->data<float>(), dy->data<float>(), w->raw(), w->dtype == DType::BF16, M, N, K));
    else if (w->dtype == DType::F32)
      cpu::matmul_backward(dx->data<float>(), dy->data<float>(), w->data<float>(), M, N, K);
    else
      cpu::matmul_backward_bf16(dx->data<float>(), dy->data<float>(), w->data<uint16_t>(), M, N, K);
  });
  return dx;
}

TensorPtr matmul_weight_grad(const TensorPtr& dy, const TensorPtr& x) {
  const char* op = "matmulWeightGrad";
  expect_ndim(op, "dy", dy, 2);
  expect_ndim(op, "x", x, 2);
  expect_dtype(op, "dy", dy, DType::F32);
  expect_dtype(op, "x", x, DType::F32);
  LA_CHECK(dy->dim(0) == x->dim(0), op, ": dy ", dy->describe(), " and x ", x->describe(),
           " must have the same rows M (dW = dyᵀ · x)");
  Device dev = expect_same_device(op, {&dy, &x});
  int64_t M = dy->dim(0), N = dy->dim(1), K = x->dim(1);
  TensorPtr dw = empty({N, K}, DType::F32, dev);
  queue_op(op, {dy, x}, {dw}, [=] {
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::matmul_weight_grad(dw->data<float>(), dy->data<float>(), x->data<float>(), M, N, K));
    cpu::matmul_weight_grad(dw->data<float>(), dy->data<float>(), x->data<float>(), M, N, K);
  });
  return dw;
}

void add_bias(const TensorPtr& x, const TensorPtr& b) {
  const char* op = "addBias";
  expect_ndim(op, "x", x, 2);
  expect_ndim(op, "b", b, 1);
  expect_dtype(op, "x", x, DType::F32);
  expect_dtype(op, "b", b, DType::F32);
  LA_CHECK(b->dim(0) == x->dim(1), op, ": b ", b->describe(), " must have one entry per column of x ", x->describe());
  Device dev = expect_same_device(op, {&x, &b});
  expect_writable(op, "x", x);
  expect_distinct(op, "x", x, "b", b);
  queue_op(op, {x, b}, {x}, [=] {
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::add_bias(x->data<float>(), b->data<float>(), x->dim(0), x->dim(1)));
    cpu::add_bias(x->data<float>(), b->data<float>(), x->dim(0), x->dim(1));
  });
}

TensorPtr bias_grad(const TensorPtr& dy) {
  const char* op = "biasGrad";
  expect_ndim(op, "dy", dy, 2);
  expect_dtype(op, "dy", dy, DType::F32);
  Device dev = dy->device;
  TensorPtr db = empty({dy->dim(1)}, DType::F32, dev);
  queue_op(op, {dy}, {db}, [=] {
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::bias_grad(db->data<float>(), dy->data<float>(), dy->dim(0), dy->dim(1)));
    cpu::bias_grad(db->data<float>(), dy->data<float>(), dy->dim(0), dy->dim(1));
  });
  return db;
}

}  // namespace la::ops
