// runtime.h and device.h for the emulator build: "device" memory is host memory, copies are
// memcpy, the stream is a token and everything is synchronous (a launch returns once the grid ran).
// Stricter than the GPU where that finds bugs cheaply: new buffers are filled with 0xff bytes (NaN
// as float, so a read of memory nothing wrote shows up), copies must lie inside one live buffer,
// and guard bytes around every buffer are checked after each launch, naming the kernel that wrote
// outside its buffers.
//
// Memory goes through allocator.h as on a GPU, with calls that emulate CUDA's. Two environment
// variables make a different device for tests: LLAMA_ADAPTER_EMU_MEMORY_POOLS=0 reports
// cudaDevAttrMemoryPoolsSupported = 0 (then cudaMallocAsync fails, as on such a device, and the
// allocator must use cudaMalloc), and LLAMA_ADAPTER_EMU_MEMORY_BYTES=N makes a device of N bytes
// (an allocation past it fails with cudaErrorMemoryAllocation).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <string>

#include "../../core/error.h"
#include "../allocator.h"
#include "../device.h"
#include "../runtime.h"

namespace la::emu::detail {
void check_device_buffers(const char* kernel);
}

namespace la::cuda {
namespace {

constexpr size_t kAlign = 256;  // as cudaMalloc
constexpr size_t kFront = 256;  // guard bytes before each buffer (keeps the data 256-aligned)
constexpr size_t kBack = 64;    // at least this many guard bytes after it
constexpr unsigned char kPoison = 0xff;
constexpr unsigned char kGuard = 0xa5;

struct Buffer {
  unsigned char* base;  // what aligned_alloc returned
  size_t bytes;         // what the caller asked for
  size_t total;         // with the guards
};

std::mutex g_mu;
std::map<uintptr_t, Buffer> g_buffers;  // by data address
MemoryStats g_stats;
char g_stream_token;

unsigned char* data_of(const Buffer& b) { return b.base + kFront; }

// The live buffer holding [p, p + bytes), or a la::Error saying what `p` is.
const Buffer& find(const void* p, size_t bytes, const char* what) {
  auto a = reinterpret_cast<uintptr_t>(p);
  auto it = g_buffers.upper_bound(a);
  if (it != g_buffers.begin()) {
    --it;
    const Buffer& b = it->second;
    if (a >= it->first && a - it->first <= b.bytes && bytes <= b.bytes - (a - it->first)) return b;
    if (a >= it->first && a - it->first < b.bytes + kBack)
      fail("CUDA emulator: ", what, ": ", bytes, " bytes at offset ", a - it->first, " of a ", b.bytes,
           "-byte device buffer run past its end");
  }
  fail("CUDA emulator: ", what, ": ", p, " is not in a live device buffer (freed, or host memory?)");
}

// The first guard byte that was overwritten, as an offset from the data (negative: before it).
bool guard_broken(const Buffer& b, long long& offset) {
  const unsigned char* d = data_of(b);
  for (size_t i = 0; i < kFront; i++)
    if (b.base[i] != kGuard) {
      offset = -(long long)(kFront - i);
      return true;
    }
  for (size_t i = b.bytes; i < b.total - kFront; i++)
    if (d[i] != kGuard) {
      offset = (long long)i;
      return true;
    }
  return false;
}

void arm_guards(const Buffer& b) {
  std::memset(b.base, kGuard, kFront);
  std::memset(data_of(b) + b.bytes, kGuard, b.total - kFront - b.bytes);
}

// allocator.h's calls on host memory. Statuses are CUDA's numbers.
struct EmuCalls {
  using Status = int;
  static constexpr Status kSuccess = 0;
  static constexpr Status kOutOfMemory = 2;   // cudaErrorMemoryAllocation
  static constexpr Status kNotSupported = 801;  // cudaErrorNotSupported

  static bool pools() {
    const char* e = std::getenv("LLAMA_ADAPTER_EMU_MEMORY_POOLS");
    return !(e && std::strcmp(e, "0") == 0);
  }
  static size_t device_bytes() {
    const char* e = std::getenv("LLAMA_ADAPTER_EMU_MEMORY_BYTES");
    return e && *e ? size_t(std::strtoull(e, nullptr, 10)) : size_t(1) << 48;
  }

  Status pools_supported(int* yes) {
    *yes = pools() ? 1 : 0;
    return kSuccess;
  }
  Status malloc_async(void** p, size_t n) { return pools() ? make(p, n) : kNotSupported; }
  Status free_async(void* p) { return destroy(p); }
  Status trim_pool() { return kSuccess; }
  Status malloc(void** p, size_t n) { return make(p, n); }
  Status free(void* p) { return destroy(p); }
  Status synchronize() { return kSuccess; }
  void clear_error() {}
  bool out_of_memory(Status s) { return s == kOutOfMemory; }
  std::string describe(Status s) {
    if (s == kOutOfMemory) return "out of memory (cudaErrorMemoryAllocation)";
    if (s == kNotSupported) return "operation not supported (cudaErrorNotSupported)";
    return "error " + std::to_string(s);
  }
  std::string free_memory() {
    std::lock_guard<std::mutex> lock(g_mu);
    const size_t total = device_bytes();
    return std::to_string((total - std::min(total, g_stats.in_use)) >> 20) + " MiB free of " + std::to_string(total >> 20) + " MiB; ";
  }

  Status make(void** p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(g_mu);
      if (bytes > device_bytes() - std::min(device_bytes(), g_stats.in_use)) return kOutOfMemory;
    }
    Buffer b;
    b.bytes = bytes;
    b.total = kFront + (bytes + kBack + kAlign - 1) / kAlign * kAlign;
    b.base = static_cast<unsigned char*>(std::aligned_alloc(kAlign, b.total));
    if (!b.base) return kOutOfMemory;
    std::memset(data_of(b), kPoison, bytes);
    arm_guards(b);
    std::lock_guard<std::mutex> lock(g_mu);
    g_buffers.emplace(reinterpret_cast<uintptr_t>(data_of(b)), b);
    g_stats.in_use += bytes;
    g_stats.reserved += b.total;
    if (g_stats.in_use > g_stats.peak) g_stats.peak = g_stats.in_use;
    *p = data_of(b);
    return kSuccess;
  }

  Status destroy(void* p) {
    Buffer b;
    {
      std::lock_guard<std::mutex> lock(g_mu);
      auto it = g_buffers.find(reinterpret_cast<uintptr_t>(p));
      LA_CHECK(it != g_buffers.end(), "CUDA emulator: release(", p, "): not the start of a live device buffer (a double free?)");
      b = it->second;
      g_buffers.erase(it);
      g_stats.in_use -= b.bytes;
      g_stats.reserved -= b.total;
    }
    std::free(b.base);
    return kSuccess;
  }
};

DeviceAllocator<EmuCalls>& allocator() {
  static DeviceAllocator<EmuCalls>* a = new DeviceAllocator<EmuCalls>(EmuCalls{});  // leaked, as on the GPU
  return *a;
}

}  // namespace

void set_device(int device) {
  LA_CHECK(device == 0, "CUDA emulator: there is one device (0), not ", device);
}

int current_device() {
  static const int device = [] {
    const char* e = std::getenv("LLAMA_ADAPTER_CUDA_DEVICE");
    LA_CHECK(!e || !*e || std::strcmp(e, "0") == 0, "CUDA emulator: there is one device (0); LLAMA_ADAPTER_CUDA_DEVICE=", e);
    return 0;
  }();
  return device;
}

void* alloc(size_t bytes) {
  if (bytes == 0) return nullptr;  // as runtime.cu: no call
  size_t held;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    held = g_stats.in_use;
  }
  return allocator().obtain(bytes, held);
}

void release(void* p) {
  if (!p) return;
  allocator().give_back(p);
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    find(dst, bytes, "copy_to_device");
  }
  std::memcpy(dst, src, bytes);
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    find(src, bytes, "copy_to_host");
  }
  std::memcpy(dst, src, bytes);
}

void copy_on_device(void* dst, const void* src, size_t bytes) {
  if (!bytes || dst == src) return;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    find(dst, bytes, "copy_on_device (destination)");
    find(src, bytes, "copy_on_device (source)");
  }
  auto d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
  LA_CHECK(d + bytes <= s || s + bytes <= d, "CUDA emulator: copy_on_device: the ", bytes,
           "-byte source and destination overlap");
  std::memcpy(dst, src, bytes);
}

void fill_zero(void* p, size_t bytes) {
  if (!bytes) return;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    find(p, bytes, "fill_zero");
  }
  std::memset(p, 0, bytes);
}

// Launches ran to completion before returning and throw their own errors.
void synchronize() {}
void check_launch(const char*) {}

void* stream() { return &g_stream_token; }
int multiprocessors() { return 4; }
size_t max_shared_memory_per_block() { return 227 * 1024; }

MemoryStats memory_stats() {
  MemoryStats m;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    m = g_stats;
  }
  m.allocator = allocator().name();
  return m;
}

void reset_peak() {
  std::lock_guard<std::mutex> lock(g_mu);
  g_stats.peak = g_stats.in_use;
}

// Weak: matmul.cu may define the real one (it picks the engine); this is the fallback.
__attribute__((weak)) std::string gemm_engine() { return "emulated own kernel (CPU emulator)"; }

DeviceInfo device_info() {
  DeviceInfo info;
  info.compiled = true;
  info.available = true;
  info.devices = 1;
  info.reason = "CUDA emulator on the CPU (a test build; kernels run as CPU fibers)";
  DeviceAttributes a;
  a.name = "CUDA emulator";  // no datasheet, no clocks: the GPU check reports its peaks as unknown
  a.multiprocessors = multiprocessors();
  a.memory_bytes = EmuCalls::device_bytes();
  a.memory_pools = EmuCalls::pools();
  info.list.push_back(a);
  return info;
}

}  // namespace la::cuda

namespace la::emu::detail {

void check_device_buffers(const char* kernel) {
  std::lock_guard<std::mutex> lock(la::cuda::g_mu);
  std::ostringstream s;
  int broken = 0;
  for (auto& [addr, b] : la::cuda::g_buffers) {
    long long offset;
    if (!la::cuda::guard_broken(b, offset)) continue;
    if (broken++ == 0)
      s << "CUDA emulator: kernel " << kernel << " wrote outside a device buffer: offset " << offset << " of a "
        << b.bytes << "-byte buffer";
    la::cuda::arm_guards(b);  // report each overrun once
  }
  if (broken > 1) s << " (and " << broken - 1 << " more buffer(s))";
  if (broken) throw Error(s.str());
}

}  // namespace la::emu::detail
