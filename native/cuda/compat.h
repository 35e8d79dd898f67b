// What every .cu file includes instead of CUDA's headers. The kernels are compiled twice: by nvcc
// for the GPU, and by the C++ compiler against the CUDA emulator (emu/, a test build that runs
// kernels on the CPU, thread by thread as fibers, so that CI without a GPU checks their logic).
// So the kernels keep to the subset both understand:
//   - launches only through LA_LAUNCH(grid, block, shared_bytes, kernel...)(args...), on the
//     backend's stream; then la::cuda::check_launch("name");
//   - threadIdx/blockIdx/blockDim/gridDim, static __shared__ arrays, dynamic shared memory only
//     through LA_DYNAMIC_SHARED(type, name), __syncthreads(), __syncwarp(), __shfl_sync,
//     __shfl_xor_sync, __shfl_down_sync (full mask, width 32), atomicAdd on float/double/int;
//   - math from <cmath> (expf, logf, sqrtf, tanhf, fmaxf, ...) and rsqrtf, __expf, __fdividef,
//     __float_as_uint, __uint_as_float; float2/float4 and make_float2/4; __ldg;
//   - bf16: __nv_bfloat16, __float2bfloat16_rn, __bfloat162float;
//   - tensor cores only through nvcuda::wmma (16x16x16 fragments, bf16 inputs, float accumulators);
//   - no inline PTX, no cp.async, no cooperative groups, no __CUDA_ARCH__ tests;
//   - memory, copies and scratch through runtime.h (la::cuda::alloc, release, copy_*, fill_zero),
//     or the Scratch helper below; never cudaMalloc/cudaMemcpy directly.
// What the emulator adds to the rules: every thread of a block reaches every __syncthreads (no
// early return before a barrier); warp operations take the full mask and whole warps; helpers in
// a shared .cuh are inline, static or templates (__device__ expands to nothing there); an alignas
// argument with a top-level '>' needs parentheses. It runs one block at a time, so it cannot see
// races between blocks, and it does not check LA_ALLOW_DYNAMIC_SHARED.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../core/error.h"
#include "runtime.h"

#if defined(LA_CUDA_EMULATOR)
#include "emu/cuda_emu.h"
#define LA_LAUNCH(grid, block, shared_bytes, ...) ::la::emu::launch((grid), (block), (shared_bytes), #__VA_ARGS__, __VA_ARGS__)
#define LA_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::la::emu::dynamic_shared())
#define LA_ALLOW_DYNAMIC_SHARED(bytes, ...) ((void)(bytes))
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>
#define LA_LAUNCH(grid, block, shared_bytes, ...) \
  __VA_ARGS__<<<(grid), (block), (shared_bytes), static_cast<cudaStream_t>(::la::cuda::stream())>>>
#define LA_DYNAMIC_SHARED(type, name)                        \
  extern __shared__ __align__(16) unsigned char la_dynamic_shared_[]; \
  type* name = reinterpret_cast<type*>(la_dynamic_shared_)
// A kernel that needs more than 48 KiB of dynamic shared memory must say so first.
#define LA_ALLOW_DYNAMIC_SHARED(bytes, ...)                                                              \
  do {                                                                                                \
    if (cudaFuncSetAttribute(__VA_ARGS__, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)) != \
        cudaSuccess)                                                                                  \
      ::la::cuda::check_launch("cudaFuncSetAttribute(" #__VA_ARGS__ ")");                             \
  } while (0)
#endif

namespace la::cuda {

// A device buffer for the duration of one op body: freed in stream order when it goes out of
// scope, so kernels launched before that still see it.
class Scratch {
 public:
  explicit Scratch(size_t bytes) : p_(bytes ? alloc(bytes) : nullptr) {}
  ~Scratch() {
    if (p_) release(p_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T> T* as() const { return static_cast<T*>(p_); }

 private:
  void* p_;
};

inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

}  // namespace la::cuda
