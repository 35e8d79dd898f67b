// How runtime.h's alloc/release get device memory, shared by runtime.cu (CUDA's calls) and the
// emulator (emu/runtime_emu.cpp, its own calls), so that the emulator tests this logic too.
//
// Stream-ordered memory (cudaMallocAsync / cudaFreeAsync from the device's default pool) needs the
// device to report cudaDevAttrMemoryPoolsSupported = 1. Some GPUs in virtual machines report 0,
// and then every cudaMallocAsync fails (reported by CUDA as an allocation failure). So the
// attribute is read once, and without pools memory comes from cudaMalloc and goes back with
// cudaFree after a synchronisation of the stream (a block must outlive the kernels queued on it;
// the async free guaranteed that by stream order).
//
// An error names the allocator, the size and CUDA's own text; it says "out of memory" only when
// CUDA said so.
#pragma once
#include <cstddef>
#include <string>

#include "../core/error.h"

namespace la::cuda {

// Calls is a type with these members (each returning a status, Calls::kSuccess when it worked):
//   Status pools_supported(int* yes)          cudaDeviceGetAttribute(MemoryPoolsSupported)
//   Status malloc_async(void** p, size_t n)   cudaMallocAsync on the backend's stream
//   Status free_async(void* p)                cudaFreeAsync on the stream
//   Status trim_pool()                        give the pool's unused blocks back to the driver
//   Status malloc(void** p, size_t n)         cudaMalloc
//   Status free(void* p)                      cudaFree
//   Status synchronize()                      cudaStreamSynchronize(stream)
//   void clear_error()                        cudaGetLastError (a failed call leaves it set)
//   bool out_of_memory(Status)                cudaErrorMemoryAllocation
//   std::string describe(Status)              "out of memory (cudaErrorMemoryAllocation)"
//   std::string free_memory()                 ", 1234 MiB free of 81559 MiB" or ""
template <class Calls> class DeviceAllocator {
 public:
  // Reads the attribute: the device must be current.
  explicit DeviceAllocator(Calls calls) : calls_(calls) {
    int yes = 0;
    auto s = calls_.pools_supported(&yes);
    if (s != Calls::kSuccess) {
      calls_.clear_error();
      fail("cudaDeviceGetAttribute(cudaDevAttrMemoryPoolsSupported): ", calls_.describe(s));
    }
    pooled_ = yes != 0;
  }

  bool pooled() const { return pooled_; }

  // What capabilities and cudaMemory() report.
  std::string name() const {
    return pooled_ ? "stream-ordered pool (cudaMallocAsync)"
                   : "cudaMalloc/cudaFree, synchronised (the device reports no memory pools)";
  }

  // `bytes` > 0 (alloc(0) never gets here); `held` (bytes of live tensors) for the message.
  void* obtain(size_t bytes, size_t held) {
    void* p = nullptr;
    auto s = pooled_ ? calls_.malloc_async(&p, bytes) : calls_.malloc(&p, bytes);
    if (s != Calls::kSuccess && calls_.out_of_memory(s)) {
      // The pool may hold freed blocks of the wrong sizes (and without a pool, frees may still be
      // pending on the driver): give them back and try once more.
      calls_.clear_error();
      calls_.synchronize();
      if (pooled_) calls_.trim_pool();
      calls_.clear_error();
      s = pooled_ ? calls_.malloc_async(&p, bytes) : calls_.malloc(&p, bytes);
    }
    if (s != Calls::kSuccess) {
      calls_.clear_error();
      const char* how = pooled_ ? "cudaMallocAsync" : "cudaMalloc";
      if (calls_.out_of_memory(s))
        fail("CUDA out of memory allocating ", bytes, " bytes with ", how, " (", calls_.free_memory(), held >> 20,
             " MiB held by live tensors): ", calls_.describe(s));
      fail(how, " of ", bytes, " bytes failed: ", calls_.describe(s));
    }
    return p;
  }

  // Stream-ordered with a pool; otherwise after everything queued so far has run.
  void give_back(void* p) {
    if (pooled_) {
      calls_.free_async(p);
      return;
    }
    calls_.synchronize();
    calls_.free(p);
  }

 private:
  Calls calls_;
  bool pooled_ = true;
};

}  // namespace la::cuda
