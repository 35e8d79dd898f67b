// Argument checks shared by the op definitions: each throws a la::Error naming the op, the
// argument and its shape, before anything is queued.
#pragma once
#include <initializer_list>
#include <vector>

#include "../core/error.h"
#include "../core/tensor.h"

namespace la::ops {

inline void expect_dtype(const char* op, const char* arg, const TensorPtr& t, DType want) {
  LA_CHECK(t->dtype == want, op, ": ", arg, " must be ", dtype_name(want), ", got ", t->describe());
}
inline void expect_ndim(const char* op, const char* arg, const TensorPtr& t, int n) {
  LA_CHECK(t->ndim() == n, op, ": ", arg, " must have ", n, " dimensions, got ", t->describe());
}
inline void expect_shape(const char* op, const char* arg, const TensorPtr& t, const std::vector<int64_t>& shape,
                         const char* why) {
  LA_CHECK(t->shape == shape, op, ": ", arg, " must be ", shape_str(shape), " (", why, "), got ", t->describe());
}
// A frozen weight: f32, bf16 or block-quantized (q8_0, q4_0, q4_k, q5_k, q6_k; rows of whole blocks).
inline void expect_weight(const char* op, const char* arg, const TensorPtr& w) {
  LA_CHECK(w->dtype != DType::I32, op, ": ", arg, " must be f32, bf16 or a quantized weight, got ", w->describe());
}
inline void expect_writable(const char* op, const char* arg, const TensorPtr& t) {
  LA_CHECK(!t->storage->read_only, op, ": ", arg, " ", t->describe(),
           " views a read-only weight file; in-place ops need a tensor of their own (convert() makes a copy)");
}
// The device every (non-null) tensor is on; they must agree.
inline Device expect_same_device(const char* op, std::initializer_list<const TensorPtr*> ts) {
  const TensorPtr* first = nullptr;
  for (const TensorPtr* t : ts) {
    if (!*t) continue;
    if (!first) first = t;
    LA_CHECK((*t)->device == (*first)->device, op, ": all tensors must be on one device, but ", (*first)->describe(),
             " is on ", device_name((*first)->device), " and ", (*t)->describe(), " on ", device_name((*t)->device),
             " (move one with toDevice)");
  }
  return first ? (*first)->device : Device::CPU;
}
// An i32 index tensor (tokens, positions, segments, targets, rows) for an op on `dev`: on the CPU
// (a CUDA op checks the values on the host and uploads them) or on `dev` itself.
inline void expect_index_device(const char* op, const char* arg, const TensorPtr& t, Device dev) {
  LA_CHECK(t->device == Device::CPU || t->device == dev, op, ": ", arg, " ", t->describe(), " is on ",
           device_name(t->device), " but the op runs on ", device_name(dev), "; index tensors may stay on the CPU");
}
inline void expect_distinct(const char* op, const char* a, const TensorPtr& x, const char* b, const TensorPtr& y) {
  LA_CHECK(x->storage != y->storage, op, ": ", a, " and ", b, " must not share storage (", a, " is written in place)");
}

}  // namespace la::ops
