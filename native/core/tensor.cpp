#include "tensor.h"

#include <sys/mman.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <vector>

#include "../cuda/runtime.h"
#include "error.h"
#include "quant.h"

namespace la {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    default: return 0;
  }
}

size_t dtype_bytes(DType t, int64_t n) {
  if (dtype_size(t)) return size_t(n) * dtype_size(t);
  return size_t(n / block_elems(t) * block_bytes(t));
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::I32: return "i32";
    case DType::Q8_0: return "q8_0";
    case DType::Q4_0: return "q4_0";
    case DType::Q4_K: return "q4_k";
    case DType::Q5_K: return "q5_k";
    case DType::Q6_K: return "q6_k";
  }
  return "?";
}

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); i++) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

std::string Tensor::describe() const { return std::string(dtype_name(dtype)) + shape_str(shape); }

static int64_t checked_numel(const std::vector<int64_t>& shape) {
  LA_CHECK(!shape.empty() && shape.size() <= 8, "a tensor needs 1 to 8 dimensions, got ", shape.size());
  int64_t n = 1;
  for (int64_t s : shape) {
    LA_CHECK(s > 0, "tensor dimensions must be positive, got shape ", shape_str(shape));
    LA_CHECK(n <= (int64_t(1) << 40) / s, "tensor shape ", shape_str(shape), " is too large");
    n *= s;
  }
  return n;
}

namespace {

// A bounded cache of large CPU blocks. A training step allocates and frees the same big
// activations (MBs to tens of MB: the saved activations, FFN and logits buffers) over and over;
// fresh blocks of that size come from mmap, and the first touch of each 4 KiB page is a page fault
// (the kernel zeroes it): about 120k faults, several % of a 110M-shape step. Blocks of
// >= kMinCached bytes are kept on free instead, up to a cap (oldest evicted first), and reused for
// any request of at least half their size (best fit). New blocks are rounded up to 8 size classes
// per octave. (Ops allocate their outputs when they are queued, so the JS thread allocates a whole
// step's intermediates before the executor frees any: the cache serves the next step, whose batch
// may hold more or fewer tokens.) The cap: LLAMA_ADAPTER_CPU_CACHE_MB (0: no cache), else 1/8 of
// the physical memory, between 256 MiB and 4 GiB; when an allocation fails, the cached blocks are
// released and it is tried once more. Thread-safe (tensors are created on the JS thread and often
// released on the executor's).
constexpr size_t kMinCached = size_t(1) << 18;  // 256 KiB: smaller blocks are malloc's business

size_t size_class(size_t bytes) {
  size_t octave = size_t(1) << (63 - __builtin_clzll(bytes));  // the highest power of two <= bytes
  size_t step = std::max<size_t>(octave / 8, 4096);
  return (bytes + step - 1) / step * step;
}

class BlockCache {
 public:
  BlockCache() {
    if (const char* env = std::getenv("LLAMA_ADAPTER_CPU_CACHE_MB")) {
      cap_ = size_t(std::strtoull(env, nullptr, 10)) << 20;
    } else {
      long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
      size_t phys = pages > 0 && page > 0 ? size_t(pages) * size_t(page) : (size_t(2) << 30);
      cap_ = std::min(std::max(phys / 8, size_t(256) << 20), size_t(4) << 30);
    }
  }

  // A 64-byte aligned block of at least `bytes`; its capacity in *cap.
  void* take(size_t bytes, size_t* cap) {
    if (bytes >= kMinCached && cap_ > 0) {
      std::lock_guard<std::mutex> lock(mu_);
      size_t best = free_.size();
      for (size_t i = 0; i < free_.size(); i++)  // best fit; the list is short (blocks >= 256 KiB)
        if (free_[i].bytes >= bytes && free_[i].bytes - bytes <= free_[i].bytes / 2 &&
            (best == free_.size() || free_[i].bytes < free_[best].bytes))
          best = i;
      if (best != free_.size()) {
        Block b = free_[best];
        free_.erase(free_.begin() + std::ptrdiff_t(best));
        cached_ -= b.bytes;
        *cap = b.bytes;
        return b.p;
      }
    }
    size_t padded = bytes >= kMinCached ? size_class(bytes) : (bytes + 63) / 64 * 64;
    *cap = padded;
    void* p = allocate(padded);
    if (!p && release_all()) p = allocate(padded);
    return p;
  }

  // Blocks of 2 MiB or more start on a 2 MiB boundary and ask for transparent huge pages: a
  // decode step streams every weight once, and with 4 KiB pages the TLB misses cost a fifth of a
  // large matrix-vector product (measured on the 110M shape's bf16 classifier). Only the
  // alignment slack before the block is wasted, and only as address space.
  static void* allocate(size_t bytes) {
    constexpr size_t kHuge = size_t(2) << 20;
    if (bytes < kHuge) return std::aligned_alloc(64, bytes);
    void* p = nullptr;
    if (posix_memalign(&p, kHuge, bytes) != 0) return nullptr;
#ifdef MADV_HUGEPAGE
    madvise(p, bytes / kHuge * kHuge, MADV_HUGEPAGE);  // advice only: its failure changes nothing
#endif
    return p;
  }

  // Frees every cached block; returns whether there was any.
  bool release_all() {
    std::vector<Block> blocks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(free_);
      cached_ = 0;
    }
    for (const Block& b : blocks) std::free(b.p);
    return !blocks.empty();
  }

  void give(void* p, size_t cap) {
    if (cap >= kMinCached && cap <= cap_) {
      std::vector<void*> evicted;
      {
        std::lock_guard<std::mutex> lock(mu_);
        free_.push_back({p, cap});
        cached_ += cap;
        size_t drop = 0;  // the oldest blocks go first
        while (cached_ > cap_) cached_ -= free_[drop++].bytes;
        for (size_t i = 0; i < drop; i++) evicted.push_back(free_[i].p);
        free_.erase(free_.begin(), free_.begin() + std::ptrdiff_t(drop));
      }
      for (void* q : evicted) std::free(q);
      return;
    }
    std::free(p);
  }

 private:
  struct Block {
    void* p;
    size_t bytes;
  };
  std::mutex mu_;
  std::vector<Block> free_;  // oldest first
  size_t cached_ = 0, cap_ = 0;
};

BlockCache& block_cache() {
  static BlockCache* c = new BlockCache();  // leaked: tensors may be released during static destruction
  return *c;
}

}  // namespace

static std::atomic<bool>& cuda_used() {
  static std::atomic<bool> used{false};
  return used;
}

bool any_cuda_tensor() { return cuda_used().load(); }

TensorPtr empty(const std::vector<int64_t>& shape, DType dtype, Device device) {
  int64_t n = checked_numel(shape);
  LA_CHECK(n % block_elems(dtype) == 0, dtype_name(dtype), " tensor ", shape_str(shape), " is not a whole number of blocks");
  size_t bytes = dtype_bytes(dtype, n);
  auto t = std::make_shared<Tensor>();
  t->shape = shape;
  t->dtype = dtype;
  t->device = device;
  t->storage = std::make_shared<Storage>();
  t->storage->bytes = bytes;
  t->storage->device = device;
  if (device == Device::CUDA) {
    // Stream-ordered: usable by every op queued from now on, freed after the last one that used it.
    void* p = cuda::alloc(bytes);
    cuda_used().store(true);
    t->storage->data = p;
    t->storage->owner = std::shared_ptr<void>(p, [](void* q) { cuda::release(q); });
    return t;
  }
  size_t cap = 0;
  void* p = block_cache().take(bytes, &cap);
  LA_CHECK(p, "out of memory allocating ", dtype_name(dtype), shape_str(shape), " (", bytes, " bytes)");
  t->storage->data = p;
  t->storage->owner = std::shared_ptr<void>(p, [cap](void* q) { block_cache().give(q, cap); });
  return t;
}

TensorPtr zeros(const std::vector<int64_t>& shape, DType dtype, Device device) {
  TensorPtr t = empty(shape, dtype, device);
  if (device == Device::CUDA)
    cuda::fill_zero(t->raw(), t->nbytes());  // in stream order, before any op that uses t
  else
    std::memset(t->raw(), 0, t->nbytes());
  return t;
}

TensorPtr view(const std::vector<int64_t>& shape, DType dtype, void* data, std::shared_ptr<void> owner) {
  int64_t n = checked_numel(shape);
  auto t = std::make_shared<Tensor>();
  t->shape = shape;
  t->dtype = dtype;
  t->storage = std::make_shared<Storage>();
  t->storage->data = data;
  LA_CHECK(n % block_elems(dtype) == 0, dtype_name(dtype), " tensor ", shape_str(shape), " is not a whole number of blocks");
  t->storage->bytes = dtype_bytes(dtype, n);
  t->storage->owner = std::move(owner);
  return t;
}

}  // namespace la
