// The CUDA backend's runtime, seen from plain C++ (no CUDA headers): device memory, copies and
// the one stream every CUDA op runs on. Built from runtime.cu when nvcc was found; without it,
// no_cuda.cpp makes every entry point throw (no CUDA tensor can then exist, so no op reaches one).
//
// Ordering: op bodies run on the CPU executor's thread (ops.h) and launch their kernels on this
// stream, so device work keeps the order the ops were queued in. Memory is stream-ordered
// (cudaMallocAsync / cudaFreeAsync on the same stream, from a pool that keeps freed blocks), so a
// tensor released while kernels that use it are still queued is freed only after them. A device
// without memory pools gets cudaMalloc and a cudaFree after a stream synchronisation (allocator.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace la::cuda {

// The device this process uses (default 0; LLAMA_ADAPTER_CUDA_DEVICE or set_device before the
// first CUDA call). Throws if CUDA is unusable.
void set_device(int device);
int current_device();

// Throws la::Error naming the size and CUDA's error on failure (after trimming the pool once);
// alloc(0) is nullptr, without a CUDA call.
void* alloc(size_t bytes);
void release(void* p);      // stream-ordered free
// Copies in stream order. copy_to_device returns once `src` may be reused; copy_to_host waits for
// the copy (and for everything queued before it).
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_on_device(void* dst, const void* src, size_t bytes);
void fill_zero(void* p, size_t bytes);
// Waits for the stream; throws la::Error with the CUDA error if a kernel failed.
void synchronize();
// After a launch: throws la::Error("<what>: <cuda error>") if the launch failed.
void check_launch(const char* what);

// The stream (a cudaStream_t) for launches and for NCCL.
void* stream();
// Multiprocessor count and the opt-in shared memory per block of the current device.
int multiprocessors();
size_t max_shared_memory_per_block();

struct MemoryStats {
  size_t in_use = 0;  // bytes of live allocations
  size_t peak = 0;    // the most in use since the last reset_peak()
  size_t reserved = 0;  // bytes the pool holds from the driver
  std::string allocator;  // allocator.h's name(): the stream-ordered pool or plain cudaMalloc
};
MemoryStats memory_stats();
void reset_peak();

// Which GEMM engine the frozen-weight matmuls use: "cublasLt <library>" when libcublasLt loads
// (LLAMA_ADAPTER_CUBLASLT names the file; LLAMA_ADAPTER_GEMM=own forces our kernel), else "own
// tensor-core kernel". matmul.cu.
std::string gemm_engine();

}  // namespace la::cuda
