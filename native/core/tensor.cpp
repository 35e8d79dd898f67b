#include "tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "error.h"

namespace la {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::I32: return 4;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::I32: return "i32";
  }
  return "?";
}

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); i++) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

std::string Tensor::describe() const { return std::string(dtype_name(dtype)) + shape_str(shape); }

static int64_t checked_numel(const std::vector<int64_t>& shape) {
  LA_CHECK(!shape.empty() && shape.size() <= 8, "a tensor needs 1 to 8 dimensions, got ", shape.size());
  int64_t n = 1;
  for (int64_t s : shape) {
    LA_CHECK(s > 0, "tensor dimensions must be positive, got shape ", shape_str(shape));
    LA_CHECK(n <= (int64_t(1) << 40) / s, "tensor shape ", shape_str(shape), " is too large");
    n *= s;
  }
  return n;
}

TensorPtr empty(const std::vector<int64_t>& shape, DType dtype, Device device) {
  int64_t n = checked_numel(shape);
  LA_CHECK(device == Device::CPU, "empty(): CUDA tensors are allocated by the CUDA backend");
  size_t bytes = size_t(n) * dtype_size(dtype);
  size_t padded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, padded);
  LA_CHECK(p, "out of memory allocating ", dtype_name(dtype), shape_str(shape), " (", bytes, " bytes)");
  auto t = std::make_shared<Tensor>();
  t->shape = shape;
  t->dtype = dtype;
  t->device = device;
  t->storage = std::make_shared<Storage>();
  t->storage->data = p;
  t->storage->bytes = bytes;
  t->storage->owner = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  return t;
}

TensorPtr zeros(const std::vector<int64_t>& shape, DType dtype, Device device) {
  TensorPtr t = empty(shape, dtype, device);
  std::memset(t->raw(), 0, t->nbytes());
  return t;
}

TensorPtr view(const std::vector<int64_t>& shape, DType dtype, void* data, std::shared_ptr<void> owner) {
  int64_t n = checked_numel(shape);
  auto t = std::make_shared<Tensor>();
  t->shape = shape;
  t->dtype = dtype;
  t->storage = std::make_shared<Storage>();
  t->storage->data = data;
  t->storage->bytes = size_t(n) * dtype_size(dtype);
  t->storage->owner = std::move(owner);
  return t;
}

}  // namespace la
