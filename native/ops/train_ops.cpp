#include "train_ops.h"

#include <cmath>
#include <cstring>
#include <string>

#include "../core/error.h"
#include "../cpu/kernels.h"
#include "../cuda/kernels.h"
#include "../core/quant.h"
#include "checks.h"
#include "indices.h"
#include "ops.h"

namespace la::ops {
namespace {

void check_indices(const char* what, const int32_t* idx, int64_t M, int64_t bound) {
  for (int64_t m = 0; m < M; m++)
    LA_CHECK(idx[m] >= 0 && idx[m] < bound, what, "[", m, "] = ", idx[m], " is outside [0, ", bound, ")");
}

}  // namespace

void rope_at(const TensorPtr& x, const TensorPtr& positions, float theta, bool interleaved, bool inverse) {
  const char* op = "ropeAt";
  expect_ndim(op, "x", x, 3);
  expect_dtype(op, "x", x, DType::F32);
  expect_ndim(op, "positions", positions, 1);
  expect_dtype(op, "positions", positions, DType::I32);
  LA_CHECK(x->dim(2) % 2 == 0, op, ": head size must be even, got ", x->describe());
  LA_CHECK(positions->dim(0) == x->dim(0), op, ": positions ", positions->describe(),
           " must have one entry per row of x ", x->describe());
  LA_CHECK(theta > 0 && std::isfinite(theta), op, ": theta must be > 0, got ", theta);
  Device dev = x->device;
  expect_index_device(op, "positions", positions, dev);
  expect_writable(op, "x", x);
  queue_op(op, {x, positions}, {x}, [=] {
    Indices index(positions, dev);
    const int32_t* pos = index.host();
    for (int64_t t = 0; t < x->dim(0); t++) LA_CHECK(pos[t] >= 0, "positions[", t, "] = ", pos[t], " is negative");
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::rope_at(x->data<float>(), index.on_device(), x->dim(0), x->dim(1), x->dim(2), theta,
                                      interleaved, inverse));
    cpu::rope_at(x->data<float>(), pos, x->dim(0), x->dim(1), x->dim(2), theta, interleaved, inverse);
  });
}

TensorPtr gather_rows(const TensorPtr& x, const TensorPtr& idx) {
  const char* op = "gatherRows";
  expect_ndim(op, "idx", idx, 1);
  expect_dtype(op, "idx", idx, DType::I32);
  Device dev = x->device;
  expect_index_device(op, "idx", idx, dev);
  std::vector<int64_t> shape = x->shape;
  shape[0] = idx->dim(0);
  TensorPtr out = empty(shape, x->dtype, dev);
  queue_op(op, {x, idx}, {out}, [=] {
    Indices index(idx, dev);
    const int32_t* ix = index.host();
    check_indices("idx", ix, idx->dim(0), x->dim(0));
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::gather_rows(out->raw(), x->raw(), index.on_device(), idx->dim(0),
                                          int64_t(x->nbytes() / size_t(x->dim(0)))));
    cpu::gather_rows(out->raw(), x->raw(), ix, idx->dim(0), int64_t(x->nbytes() / size_t(x->dim(0))));
  });
  return out;
}

void scatter_add_rows(const TensorPtr& dst, const TensorPtr& idx, const TensorPtr& src) {
  const char* op = "scatterAddRows";
  expect_dtype(op, "dst", dst, DType::F32);
  expect_dtype(op, "src", src, DType::F32);
  expect_ndim(op, "idx", idx, 1);
  expect_dtype(op, "idx", idx, DType::I32);
  std::vector<int64_t> want = dst->shape;
  want[0] = idx->dim(0);
  LA_CHECK(src->shape == want, op, ": src must be ", shape_str(want), " (one row of dst ", dst->describe(),
           " per index of idx ", idx->describe(), "), got ", src->describe());
  Device dev = expect_same_device(op, {&dst, &src});
  expect_index_device(op, "idx", idx, dev);
  expect_writable(op, "dst", dst);
  expect_distinct(op, "dst", dst, "src", src);
  queue_op(op, {dst, idx, src}, {dst}, [=] {
    Indices index(idx, dev);
    const int32_t* ix = index.host();
    check_indices("idx", ix, idx->dim(0), dst->dim(0));
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::scatter_add_rows(dst->data<float>(), index.on_device(), src->data<float>(), idx->dim(0),
                                               dst->numel() / dst->dim(0)));
    cpu::scatter_add_rows(dst->data<float>(), ix, src->data<float>(), idx->dim(0), dst->numel() / dst->dim(0));
  });
}

std::pair<TensorPtr, TensorPtr> cross_entropy(const TensorPtr& logits, const TensorPtr& targets, float scale) {
  const char* op = "crossEntropy";
  expect_ndim(op, "logits", logits, 2);
  expect_dtype(op, "logits", logits, DType::F32);
  expect_ndim(op, "targets", targets, 1);
  expect_dtype(op, "targets", targets, DType::I32);
  LA_CHECK(targets->dim(0) == logits->dim(0), op, ": targets ", targets->describe(),
           " must have one entry per row of logits ", logits->describe());
  LA_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  Device dev = logits->device;
  expect_index_device(op, "targets", targets, dev);
  int64_t M = logits->dim(0), V = logits->dim(1);
  TensorPtr loss = empty({1}, DType::F32, dev), dlogits = empty(logits->shape, DType::F32, dev);
  queue_op(op, {logits, targets}, {loss, dlogits}, [=] {
    Indices index(targets, dev);
    const int32_t* tg = index.host();
    for (int64_t m = 0; m < M; m++)
      LA_CHECK(tg[m] >= 0 && tg[m] < V, "targets[", m, "] = ", tg[m], " is outside the vocabulary [0, ", V, ")");
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::cross_entropy(loss->data<float>(), dlogits->data<float>(), logits->data<float>(),
                                            index.on_device(), M, V, scale));
    loss->data<float>()[0] = float(cpu::cross_entropy(dlogits->data<float>(), logits->data<float>(), tg, M, V, scale));
  });
  return {loss, dlogits};
}

void adamw(const TensorPtr& param, const TensorPtr& grad, const TensorPtr& m, const TensorPtr& v, int64_t step,
           double lr, double beta1, double beta2, double eps, double weight_decay) {
  const char* op = "adamw";
  expect_dtype(op, "param", param, DType::F32);
  expect_dtype(op, "grad", grad, DType::F32);
  expect_dtype(op, "m", m, DType::F32);
  expect_dtype(op, "v", v, DType::F32);
  LA_CHECK(grad->shape == param->shape && m->shape == param->shape && v->shape == param->shape, op, ": param ",
           param->describe(), ", grad ", grad->describe(), ", m ", m->describe(), " and v ", v->describe(),
           " must have the same shape");
  LA_CHECK(step >= 1, op, ": step counts from 1, got ", step);
  LA_CHECK(std::isfinite(lr) && lr >= 0, op, ": lr must be >= 0, got ", lr);
  LA_CHECK(beta1 >= 0 && beta1 < 1, op, ": beta1 must be in [0, 1), got ", beta1);
  LA_CHECK(beta2 >= 0 && beta2 < 1, op, ": beta2 must be in [0, 1), got ", beta2);
  LA_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be >= 0, got ", eps);
  LA_CHECK(std::isfinite(weight_decay) && weight_decay >= 0, op, ": weightDecay must be >= 0, got ", weight_decay);
  Device dev = expect_same_device(op, {&param, &grad, &m, &v});
  expect_writable(op, "param", param);
  expect_writable(op, "m", m);
  expect_writable(op, "v", v);
  expect_distinct(op, "param", param, "grad", grad);
  expect_distinct(op, "param", param, "m", m);
  expect_distinct(op, "param", param, "v", v);
  expect_distinct(op, "m", m, "v", v);
  expect_distinct(op, "m", m, "grad", grad);
  expect_distinct(op, "v", v, "grad", grad);
  queue_op(op, {param, grad, m, v}, {param, m, v}, [=] {
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::adamw(param->data<float>(), grad->data<float>(), m->data<float>(), v->data<float>(),
                                    param->numel(), step, lr, beta1, beta2, eps, weight_decay));
    cpu::adamw(param->data<float>(), grad->data<float>(), m->data<float>(), v->data<float>(), param->numel(), step, lr,
               beta1, beta2, eps, weight_decay);
  });
}

TensorPtr sum_squares(const TensorPtr& x) {
  const char* op = "sumSquares";
  expect_dtype(op, "x", x, DType::F32);
  TensorPtr out = empty({1}, DType::F32, x->device);
  queue_op(op, {x}, {out}, [=] {
    if (x->device == Device::CUDA) return LA_ON_CUDA(cuda::sum_squares(out->data<float>(), x->data<float>(), x->numel()));
    out->data<float>()[0] = float(cpu::sum_squares(x->data<float>(), x->numel()));
  });
  return out;
}

void scale_inplace(const TensorPtr& x, float s) {
  const char* op = "scaleInPlace";
  expect_dtype(op, "x", x, DType::F32);
  LA_CHECK(std::isfinite(s), op, ": s must be finite, got ", s);
  expect_writable(op, "x", x);
  queue_op(op, {x}, {x}, [=] {
    if (x->device == Device::CUDA) return LA_ON_CUDA(cuda::scale_inplace(x->data<float>(), x->numel(), s));
    cpu::scale_inplace(x->data<float>(), x->numel(), s);
  });
}

}  // namespace la::ops
