// An i32 index tensor (tokens, positions, segments, targets, row indices) as an op body on device
// `dev` needs it: its values on the host, to check them before any kernel trusts them, and a copy
// on the device the op runs on. CPU tensors are used in place on the CPU backend and uploaded for
// a CUDA op; CUDA tensors are copied back to be checked (a synchronisation, so prefer CPU index
// tensors). Constructed inside the body, on the executor, in op order.
#pragma once
#include <vector>

#include "../core/tensor.h"
#include "../cuda/runtime.h"

namespace la::ops {

class Indices {
 public:
  Indices(const TensorPtr& t, Device dev) : n_(t->numel()) {
    size_t bytes = size_t(n_) * sizeof(int32_t);
    if (t->device == Device::CPU) {
      host_ = t->data<int32_t>();
    } else {
      copy_.resize(size_t(n_));
      cuda::copy_to_host(copy_.data(), t->raw(), bytes);
      host_ = copy_.data();
    }
    if (dev == Device::CPU) {
      here_ = host_;
    } else if (t->device == dev) {
      here_ = t->data<int32_t>();
    } else {
      upload_ = cuda::alloc(bytes);
      cuda::copy_to_device(upload_, host_, bytes);
      here_ = static_cast<int32_t*>(upload_);
    }
  }
  ~Indices() { cuda::release(upload_); }  // stream-ordered: after the kernels that read it
  Indices(const Indices&) = delete;
  Indices& operator=(const Indices&) = delete;

  const int32_t* host() const { return host_; }  // the values, for checks and scheduling
  const int32_t* on_device() const { return here_; }  // what the op's kernels read
  int64_t size() const { return n_; }

 private:
  int64_t n_;
  const int32_t* host_ = nullptr;
  const int32_t* here_ = nullptr;
  std::vector<int32_t> copy_;
  void* upload_ = nullptr;
};

// The CUDA branch of an op body: compiled only into builds with the CUDA backend (elsewhere no
// CUDA tensor can exist, so it is never reached). An expression of type void.
#ifdef LA_HAVE_CUDA
#define LA_ON_CUDA(...) (__VA_ARGS__)
#else
#define LA_ON_CUDA(...) ::la::fail("this build has no CUDA backend")
#endif

}  // namespace la::ops
