// Read-only memory mappings of weight files, and tensors made from a region of one: a view when
// the bytes can be used as they are, otherwise a converted copy (f16 -> f32/bf16, f32 <-> bf16).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../core/tensor.h"

namespace la::io {

// Q8_0 .. Q6_K: ggml's block-quantized weights, loaded only as themselves (dtype the same).
enum class FileDType { F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K };

struct Mapping {
  std::string path;
  const uint8_t* data = nullptr;
  size_t size = 0;
  ~Mapping();
};
using MappingPtr = std::shared_ptr<Mapping>;

// `copy`: read the file into anonymous memory instead of mapping it, so that a file truncated or
// rewritten later cannot end the process with SIGBUS (the weights then cost their size in RAM).
MappingPtr map_file(const std::string& path, bool copy = false);

// Elements of `shape` starting at `offset` in the mapping, stored as `dtype`.
// Throws if the region lies outside the file; a value that is not finite fails the load when it
// runs on the executor (reported by the next read/synchronize). `name` labels the tensor in errors.
TensorPtr tensor_from_mapping(const MappingPtr& map, uint64_t offset, const std::vector<int64_t>& shape,
                              FileDType file_dtype, DType dtype, const std::string& name = "");

}  // namespace la::io
