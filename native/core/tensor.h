// Tensors: a shape, an element type, a device and a reference-counted storage.
// Storage is either owned (aligned allocation) or a view into something kept alive (a mapping).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace la {

// Q8_0 .. Q6_K: ggml's block-quantized weights (core/quant.h), frozen weights only: a tensor's
// last dimension is a whole number of blocks.
enum class DType { F32, BF16, I32, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K };
enum class Device { CPU, CUDA };

size_t dtype_size(DType t);  // bytes per element; 0 for the block-quantized dtypes
// bytes of n elements of t (n a whole number of blocks)
size_t dtype_bytes(DType t, int64_t n);
const char* dtype_name(DType t);
const char* device_name(Device d);

struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device = Device::CPU;
  std::shared_ptr<void> owner;  // releases the memory (or the mapping it views) when the last user goes
  // Set (on the executor) when the op that writes this storage failed, or read a failed input:
  // reading it reports this error instead of garbage. Dataflow poison, no global error state.
  std::shared_ptr<const std::string> error;
  bool read_only = false;  // a view of a read-only file mapping: in-place ops must refuse it
};

struct Tensor {
  std::vector<int64_t> shape;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  std::shared_ptr<Storage> storage;

  int64_t numel() const;
  size_t nbytes() const { return dtype_bytes(dtype, numel()); }
  int64_t dim(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }
  int ndim() const { return int(shape.size()); }
  void* raw() const { return storage->data; }
  template <class T> T* data() const { return static_cast<T*>(storage->data); }
  std::string describe() const;  // e.g. "f32[4, 64]"
};

using TensorPtr = std::shared_ptr<Tensor>;

// A new tensor with uninitialised (CPU: 64-byte aligned) storage. Throws on bad shape / OOM.
TensorPtr empty(const std::vector<int64_t>& shape, DType dtype, Device device = Device::CPU);
TensorPtr zeros(const std::vector<int64_t>& shape, DType dtype, Device device = Device::CPU);
// A tensor viewing memory owned by `owner` (no copy).
TensorPtr view(const std::vector<int64_t>& shape, DType dtype, void* data, std::shared_ptr<void> owner);

// Whether any CUDA tensor was ever made in this process (then synchronisation waits for the GPU too).
bool any_cuda_tensor();

std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace la
