// The CUDA backend's runtime (runtime.h): one device per process, one stream for every op, and
// stream-ordered memory from the device's default pool (kept, not returned to the driver, so a
// training step's activations are reused from the pool step after step) where the device has
// memory pools, else plain cudaMalloc/cudaFree (allocator.h).
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>

#include "../core/error.h"
#include "allocator.h"
#include "runtime.h"

namespace la::cuda {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so the next call does not report it again
    fail(what, ": ", cudaGetErrorString(err), " (", cudaGetErrorName(err), ")");
  }
}

// allocator.h's calls: CUDA's, on the backend's device and stream.
struct CudaCalls {
  using Status = cudaError_t;
  static constexpr Status kSuccess = cudaSuccess;
  int device;
  cudaStream_t stream;
  Status pools_supported(int* yes) { return cudaDeviceGetAttribute(yes, cudaDevAttrMemoryPoolsSupported, device); }
  Status malloc_async(void** p, size_t n) { return cudaMallocAsync(p, n, stream); }
  Status free_async(void* p) { return cudaFreeAsync(p, stream); }
  Status trim_pool() {
    cudaMemPool_t pool;
    Status s = cudaDeviceGetDefaultMemPool(&pool, device);
    return s == cudaSuccess ? cudaMemPoolTrimTo(pool, 0) : s;
  }
  Status malloc(void** p, size_t n) { return cudaMalloc(p, n); }
  Status free(void* p) { return cudaFree(p); }
  Status synchronize() { return cudaStreamSynchronize(stream); }
  void clear_error() { cudaGetLastError(); }
  bool out_of_memory(Status s) { return s == cudaErrorMemoryAllocation; }
  std::string describe(Status s) { return std::string(cudaGetErrorString(s)) + " (" + cudaGetErrorName(s) + ")"; }
  std::string free_memory() {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
      cudaGetLastError();
      return "";
    }
    return std::to_string(free_b >> 20) + " MiB free of " + std::to_string(total_b >> 20) + " MiB; ";
  }
};

struct State {
  std::once_flag init;
  int device = -1;  // chosen before the first use; -1: LLAMA_ADAPTER_CUDA_DEVICE or 0
  cudaStream_t stream = nullptr;
  int sms = 0;
  size_t max_shared = 0;
  // Live allocations and their sizes, for memory_stats (cudaMallocAsync does not tell).
  std::mutex mu;
  std::unordered_map<void*, size_t> sizes;
  size_t in_use = 0, peak = 0;
  DeviceAllocator<CudaCalls>* allocator = nullptr;  // made at init, never freed (as State)
};

State& state() {
  static State* s = new State();  // leaked: tensors may be freed during static destruction
  return *s;
}

// Every thread that calls CUDA must have the device current (the JS thread allocates, the
// executor's thread launches).
thread_local int thread_device = -1;

State& ready() {
  State& s = state();
  std::call_once(s.init, [&s] {
    if (s.device < 0) {
      const char* env = std::getenv("LLAMA_ADAPTER_CUDA_DEVICE");
      s.device = env ? std::atoi(env) : 0;
    }
    int count = 0;
    check(cudaGetDeviceCount(&count), "CUDA is not usable");
    LA_CHECK(s.device >= 0 && s.device < count, "CUDA device ", s.device, " does not exist (", count,
             " device(s) visible)");
    check(cudaSetDevice(s.device), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    cudaDeviceProp p;
    check(cudaGetDeviceProperties(&p, s.device), "cudaGetDeviceProperties");
    s.sms = p.multiProcessorCount;
    s.max_shared = p.sharedMemPerBlockOptin;
    s.allocator = new DeviceAllocator<CudaCalls>(CudaCalls{s.device, s.stream});
    if (s.allocator->pooled()) {
      // Keep freed memory in the pool instead of returning it at every synchronisation.
      cudaMemPool_t pool;
      check(cudaDeviceGetDefaultMemPool(&pool, s.device), "cudaDeviceGetDefaultMemPool");
      uint64_t keep = UINT64_MAX;
      check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute");
    }
  });
  if (thread_device != s.device) {
    check(cudaSetDevice(s.device), "cudaSetDevice");
    thread_device = s.device;
  }
  return s;
}

cudaStream_t st() { return ready().stream; }

}  // namespace

void set_device(int device) {
  State& s = state();
  LA_CHECK(!s.stream || s.device == device, "the CUDA device is already ", s.device,
           " in this process; set it before the first CUDA tensor");
  s.device = device;
}

int current_device() { return ready().device; }

void* stream() { return st(); }

void* alloc(size_t bytes) {
  if (bytes == 0) return nullptr;  // nothing to hold; release(nullptr) does nothing
  State& s = ready();
  void* p = s.allocator->obtain(bytes, s.in_use);
  std::lock_guard<std::mutex> lock(s.mu);
  s.sizes[p] = bytes;
  s.in_use += bytes;
  if (s.in_use > s.peak) s.peak = s.in_use;
  return p;
}

void release(void* p) {
  if (!p) return;
  State& s = ready();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.sizes.find(p);
    if (it != s.sizes.end()) {
      s.in_use -= it->second;
      s.sizes.erase(it);
    }
  }
  s.allocator->give_back(p);  // stream-ordered (after every kernel queued so far), or synchronised
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  // From pageable host memory the copy is staged before the call returns, so src may be reused.
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, st()), "copy to the GPU");
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  cudaStream_t s = st();
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s), "copy from the GPU");
  check(cudaStreamSynchronize(s), "a CUDA kernel failed (reported at the copy back to the host)");
}

void copy_on_device(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st()), "copy on the GPU");
}

void fill_zero(void* p, size_t bytes) { check(cudaMemsetAsync(p, 0, bytes, st()), "cudaMemsetAsync"); }

void synchronize() { check(cudaStreamSynchronize(st()), "a CUDA kernel failed"); }

void check_launch(const char* what) { check(cudaGetLastError(), what); }

int multiprocessors() { return ready().sms; }
size_t max_shared_memory_per_block() { return ready().max_shared; }

MemoryStats memory_stats() {
  State& s = ready();
  MemoryStats m;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    m.in_use = s.in_use;
    m.peak = s.peak;
  }
  m.allocator = s.allocator->name();
  if (!s.allocator->pooled()) {
    m.reserved = m.in_use;  // cudaMalloc holds nothing beyond the live blocks
    return m;
  }
  cudaMemPool_t pool;
  uint64_t reserved = 0;
  if (cudaDeviceGetDefaultMemPool(&pool, s.device) == cudaSuccess)
    cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved);
  m.reserved = size_t(reserved);
  return m;
}

void reset_peak() {
  State& s = ready();
  std::lock_guard<std::mutex> lock(s.mu);
  s.peak = s.in_use;
}

}  // namespace la::cuda
