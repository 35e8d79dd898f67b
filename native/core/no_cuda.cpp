// The CUDA backend's stand-in for builds without nvcc: it reports why there is no GPU, and every
// runtime entry point throws (no CUDA tensor can exist in such a build, so no op reaches one).
#include "../core/error.h"
#include "../cuda/device.h"
#include "../cuda/runtime.h"

namespace la::cuda {

namespace {
const char* kWhy = "this build has no CUDA backend (nvcc was not found, or LLAMA_ADAPTER_CUDA=OFF)";
[[noreturn]] void absent() { fail(kWhy); }
}  // namespace

DeviceInfo device_info() {
  DeviceInfo info;
  info.reason = kWhy;
  return info;
}

void set_device(int) { absent(); }
int current_device() { absent(); }
void* alloc(size_t) { absent(); }
void release(void*) {}
void copy_to_device(void*, const void*, size_t) { absent(); }
void copy_to_host(void*, const void*, size_t) { absent(); }
void copy_on_device(void*, const void*, size_t) { absent(); }
void fill_zero(void*, size_t) { absent(); }
void synchronize() {}
void check_launch(const char*) {}
void* stream() { absent(); }
int multiprocessors() { absent(); }
size_t max_shared_memory_per_block() { absent(); }
MemoryStats memory_stats() { return {}; }
void reset_peak() {}
std::string gemm_engine() { return "none (no CUDA backend)"; }

}  // namespace la::cuda
