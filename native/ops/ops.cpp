#include "ops.h"

#include <cmath>
#include <cstring>
#include <functional>

#include "../core/bf16.h"
#include "../core/error.h"
#include "../core/executor.h"
#include "../core/parallel.h"
#include "../cpu/kernels.h"
#include "../cuda/kernels.h"
#include "../cuda/runtime.h"
#include "checks.h"
#include "dispatch.h"
#include "indices.h"
#include "train_ops.h"

namespace la::ops {
namespace {

std::string describe_call(const char* op, const std::vector<TensorPtr>& ts) {
  if (ts.empty()) return op;
  std::string what = std::string(op) + "(";
  for (size_t i = 0; i < ts.size(); i++) what += (i ? ", " : "") + ts[i]->describe();
  return what + ")";
}

}  // namespace

void queue_op(const char* op, std::vector<TensorPtr> inputs, std::vector<TensorPtr> outputs, std::function<void()> body,
              bool tiny) {
  // The description with shapes is built only when the op fails: formatting it for every op
  // would cost more than a small op's work.
  cpu_executor().enqueue(std::string(), [name = std::string(op), inputs = std::move(inputs), outputs = std::move(outputs),
                                         body = std::move(body)] {
    for (const TensorPtr& t : inputs)
      if (t->storage->error) {  // a failed producer: pass its error on instead of computing on garbage
        for (const TensorPtr& o : outputs) o->storage->error = t->storage->error;
        return;
      }
    try {
      body();
    } catch (const std::exception& e) {
      auto err = std::make_shared<const std::string>(describe_call(name.c_str(), inputs) + ": " + e.what());
      for (const TensorPtr& o : outputs) o->storage->error = err;
      throw Error(*err);  // the executor keeps it for synchronize()
    }
  }, tiny);
}

TensorPtr embedding(const TensorPtr& table, const TensorPtr& tokens) {
  const char* op = "embedding";
  expect_ndim(op, "table", table, 2);
  expect_ndim(op, "tokens", tokens, 1);
  expect_dtype(op, "tokens", tokens, DType::I32);
  expect_weight(op, "table", table);
  Device dev = table->device;
  expect_index_device(op, "tokens", tokens, dev);
  int64_t T = tokens->dim(0), V = table->dim(0), C = table->dim(1);
  TensorPtr out = empty({T, C}, DType::F32, dev);
  queue_op(op, {table, tokens}, {out}, [=] {
    Indices index(tokens, dev);
    const int32_t* ids = index.host();
    for (int64_t t = 0; t < T; t++)
      LA_CHECK(ids[t] >= 0 && ids[t] < V, "token id ", ids[t], " at position ", t, " is outside the vocabulary [0, ",
               V, ")");
    Kernels{dev}.embedding(out->data<float>(), table, ids, index.on_device(), T);
  });
  return out;
}

void rope(const TensorPtr& x, int64_t pos0, float theta, bool interleaved) {
  const char* op = "rope";
  expect_ndim(op, "x", x, 3);
  expect_dtype(op, "x", x, DType::F32);
  LA_CHECK(x->dim(2) % 2 == 0, op, ": head size must be even, got ", x->describe());
  LA_CHECK(pos0 >= 0, op, ": pos0 must be >= 0, got ", pos0);
  LA_CHECK(theta > 0, op, ": theta must be > 0, got ", theta);
  expect_writable(op, "x", x);
  queue_op(op, {x}, {x}, [=] {
    Kernels{x->device}.rope(x->data<float>(), x->dim(0), x->dim(1), x->dim(2), pos0, theta, interleaved);
  });
}

void kv_write(const TensorPtr& cache, const TensorPtr& src, int64_t pos0) {
  const char* op = "kvWrite";
  expect_ndim(op, "cache", cache, 3);
  expect_ndim(op, "src", src, 3);
  expect_dtype(op, "cache", cache, DType::F32);
  expect_dtype(op, "src", src, DType::F32);
  LA_CHECK(cache->dim(1) == src->dim(1) && cache->dim(2) == src->dim(2), op, ": src ", src->describe(),
           " does not match cache ", cache->describe());
  LA_CHECK(pos0 >= 0 && pos0 + src->dim(0) <= cache->dim(0), op, ": positions ", pos0, "..", pos0 + src->dim(0),
           " exceed the cache length ", cache->dim(0));
  Device dev = expect_same_device(op, {&cache, &src});
  expect_writable(op, "cache", cache);
  queue_op(op, {cache, src}, {cache}, [=] {
    const int64_t row = src->dim(1) * src->dim(2);
    Kernels{dev}.copy(cache->data<float>() + pos0 * row, src->data<float>(), src->numel());
  });
}

void add_inplace(const TensorPtr& x, const TensorPtr& y) {
  const char* op = "addInPlace";
  expect_dtype(op, "x", x, DType::F32);
  expect_dtype(op, "y", y, DType::F32);
  LA_CHECK(x->shape == y->shape, op, ": x ", x->describe(), " and y ", y->describe(), " differ");
  Device dev = expect_same_device(op, {&x, &y});
  expect_writable(op, "x", x);
  queue_op(op, {x, y}, {x}, [=] { Kernels{dev}.add(x->data<float>(), y->data<float>(), x->numel()); });
}

TensorPtr slice_rows(const TensorPtr& x, int64_t start, int64_t count) {
  const char* op = "sliceRows";
  LA_CHECK(start >= 0 && count > 0 && start + count <= x->dim(0), op, ": rows ", start, "..", start + count,
           " are outside ", x->describe());
  std::vector<int64_t> shape = x->shape;
  shape[0] = count;
  TensorPtr out = empty(shape, x->dtype, x->device);
  queue_op(op, {x}, {out}, [=] {
    size_t row = x->nbytes() / size_t(x->dim(0));
    if (x->device == Device::CUDA)
      return LA_ON_CUDA(cuda::copy_on_device(out->raw(), static_cast<char*>(x->raw()) + start * row, out->nbytes()));
    std::memcpy(out->raw(), static_cast<char*>(x->raw()) + start * row, out->nbytes());
  });
  return out;
}

TensorPtr convert(const TensorPtr& x, DType to) {
  const char* op = "convert";
  LA_CHECK((x->dtype == DType::F32 || x->dtype == DType::BF16) && to != DType::I32, op, ": only f32 <-> bf16, got ", x->describe(), " to ",
           dtype_name(to));
  TensorPtr out = empty(x->shape, to, x->device);
  queue_op(op, {x}, {out}, [=] {
    int64_t n = x->numel();
    if (x->device == Device::CUDA) {
      if (x->dtype == to) return LA_ON_CUDA(cuda::copy_on_device(out->raw(), x->raw(), x->nbytes()));
      if (to == DType::BF16) return LA_ON_CUDA(cuda::f32_to_bf16(out->data<uint16_t>(), x->data<float>(), n));
      return LA_ON_CUDA(cuda::bf16_to_f32(out->data<float>(), x->data<uint16_t>(), n));
    }
    if (x->dtype == to) return std::memcpy(out->raw(), x->raw(), x->nbytes()), void();
    if (to == DType::BF16) {
      const float* s = x->data<float>();
      uint16_t* d = out->data<uint16_t>();
      parallel_for(n, 1 << 15, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; i++) d[i] = f32_to_bf16(s[i]);
      });
    } else {
      const uint16_t* s = x->data<uint16_t>();
      float* d = out->data<float>();
      parallel_for(n, 1 << 15, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; i++) d[i] = bf16_to_f32(s[i]);
      });
    }
  });
  return out;
}

TensorPtr to_device(const TensorPtr& x, Device device) {
  const char* op = "toDevice";
  if (x->device == device) return reshape(x, x->shape);  // a new handle on the same storage
  TensorPtr out = empty(x->shape, x->dtype, device);
  queue_op(op, {x}, {out}, [=] {
    if (device == Device::CUDA)
      LA_ON_CUDA(cuda::copy_to_device(out->raw(), x->raw(), x->nbytes()));
    else
      LA_ON_CUDA(cuda::copy_to_host(out->raw(), x->raw(), x->nbytes()));
  });
  return out;
}

TensorPtr random_uniform(const std::vector<int64_t>& shape, DType dtype, Device device, uint64_t seed, float scale) {
  const char* op = "randomUniform";
  LA_CHECK(dtype != DType::I32, op, ": dtype must be f32 or bf16");
  LA_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  TensorPtr out = empty(shape, dtype, device);
  queue_op(op, {}, {out}, [=] {
    bool bf16 = dtype == DType::BF16;
    if (device == Device::CUDA)
      LA_ON_CUDA(cuda::fill_uniform(out->raw(), bf16, out->numel(), seed, scale));
    else
      cpu::fill_uniform(out->raw(), bf16, out->numel(), seed, scale);
  });
  return out;
}

TensorPtr reshape(const TensorPtr& x, const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  LA_CHECK(n == x->numel(), "reshape: ", x->describe(), " has ", x->numel(), " elements, shape ", shape_str(shape),
           " needs ", n);
  auto t = std::make_shared<Tensor>(*x);
  t->shape = shape;
  return t;
}

}  // namespace la::ops
