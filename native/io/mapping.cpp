#include "mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "../core/bf16.h"
#include "../core/quant.h"
#include "../core/error.h"
#include "../core/executor.h"
#include "../ops/ops.h"
#include "../core/parallel.h"

namespace la::io {

Mapping::~Mapping() {
  if (data) munmap(const_cast<uint8_t*>(data), size);
}

MappingPtr map_file(const std::string& path, bool copy) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  LA_CHECK(fd >= 0, "cannot open ", path, ": ", std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("cannot map ", path, ": not a regular file");
  }
  auto m = std::make_shared<Mapping>();
  m->path = path;
  m->size = size_t(st.st_size);
  if (m->size > 0 && copy) {
    // anonymous memory, so the destructor's munmap frees it like a mapping
    void* p = mmap(nullptr, m->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      fail("cannot allocate ", m->size, " bytes to read ", path, " into memory: ", std::strerror(err));
    }
    m->data = static_cast<const uint8_t*>(p);  // owned by m from here on
    size_t got = 0;
    while (got < m->size) {
      ssize_t r = ::pread(fd, static_cast<uint8_t*>(p) + got, m->size - got, off_t(got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        int err = r < 0 ? errno : 0;
        ::close(fd);
        fail("cannot read ", path, ": ", err ? std::strerror(err) : "the file became shorter while it was read");
      }
      got += size_t(r);
    }
    ::close(fd);
    mprotect(p, m->size, PROT_READ);
  } else if (m->size > 0) {
    void* p = mmap(nullptr, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    ::close(fd);
    LA_CHECK(p != MAP_FAILED, "cannot map ", path, ": ", std::strerror(err));
    m->data = static_cast<const uint8_t*>(p);
  } else {
    ::close(fd);
  }
  return m;
}

namespace {

size_t file_dtype_size(FileDType t) { return t == FileDType::F32 ? 4 : 2; }
const char* file_dtype_name(FileDType t) { return t == FileDType::F32 ? "f32" : t == FileDType::F16 ? "f16" : "bf16"; }

float read_elem(const uint8_t* p, FileDType t) {
  if (t == FileDType::F32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return t == FileDType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

}  // namespace

namespace {

DType quantized_dtype(FileDType t) {
  switch (t) {
    case FileDType::Q8_0: return DType::Q8_0;
    case FileDType::Q4_0: return DType::Q4_0;
    case FileDType::Q4_K: return DType::Q4_K;
    case FileDType::Q5_K: return DType::Q5_K;
    case FileDType::Q6_K: return DType::Q6_K;
    default: return DType::F32;
  }
}

// A block-quantized tensor: a view of the mapping as it is (the blocks need no alignment beyond a
// byte), or a copy when the mapping holds a copy of the file anyway; only the scales are checked
// for NaN/Inf (every value is an integer times a scale, so they decide finiteness).
TensorPtr quantized_from_mapping(const MappingPtr& map, uint64_t offset, const std::vector<int64_t>& shape,
                                 DType dtype, const std::string& name) {
  std::string label = name.empty() ? std::string("a") : "tensor " + name + ", a";
  LA_CHECK(!shape.empty() && shape.size() <= 8, "a tensor needs 1 to 8 dimensions, got ", shape.size());
  int64_t n = 1;
  for (int64_t s : shape) {
    LA_CHECK(s > 0 && s <= (int64_t(1) << 40) / n, map->path, ": ", label, " ", dtype_name(dtype), " tensor has a bad shape ", shape_str(shape));
    n *= s;
  }
  const int64_t be = block_elems(dtype), K = shape.back();
  LA_CHECK(K % be == 0, map->path, ": ", label, " ", dtype_name(dtype), shape_str(shape), " tensor: rows of ", K,
           " values are not a whole number of ", be, "-value blocks");
  uint64_t bytes = dtype_bytes(dtype, n);
  LA_CHECK(offset <= map->size && bytes <= map->size - offset, map->path, " is truncated: ", label, " ",
           dtype_name(dtype), shape_str(shape), " tensor at byte ", offset, " needs ", bytes,
           " bytes but the file has ", map->size);
  const uint8_t* src = map->data + offset;
  TensorPtr t = view(shape, dtype, const_cast<uint8_t*>(src), std::shared_ptr<void>(map));
  t->storage->read_only = true;
  std::string what = map->path + ": " + (name.empty() ? "" : name + " ") + dtype_name(dtype) + shape_str(shape) +
                     " at byte " + std::to_string(offset);
  ops::queue_op(("load " + what).c_str(), {}, {t}, [=, keep = map] {
    const int64_t rows = n / K, nb = K / be, rb = row_bytes(dtype, K);
    std::atomic<int64_t> bad{-1};
    parallel_for(rows, std::max<int64_t>(1, 4096 / nb), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++)
        if (!scales_finite(dtype, src + r * rb, nb)) {
          int64_t none = -1;
          bad.compare_exchange_strong(none, r);
        }
    });
    LA_CHECK(bad.load() < 0, "non-finite scale (NaN or Inf) in row ", bad.load());
  });
  return t;
}

}  // namespace

TensorPtr tensor_from_mapping(const MappingPtr& map, uint64_t offset, const std::vector<int64_t>& shape,
                              FileDType file_dtype, DType dtype, const std::string& name) {
  DType q = quantized_dtype(file_dtype);
  if (is_quantized(q) || is_quantized(dtype)) {
    LA_CHECK(q == dtype, "a ", dtype_name(q), " tensor loads only as ", dtype_name(q), " (", name, ")");
    return quantized_from_mapping(map, offset, shape, dtype, name);
  }
  LA_CHECK(dtype != DType::I32, "weights load as f32 or bf16");
  int64_t n = 1;
  for (int64_t s : shape) {
    LA_CHECK(s > 0, "tensor dimensions must be positive, got ", shape_str(shape));
    n *= s;
  }
  uint64_t bytes = uint64_t(n) * file_dtype_size(file_dtype);
  std::string label = name.empty() ? std::string("a") : "tensor " + name + ", a";
  LA_CHECK(offset <= map->size && bytes <= map->size - offset, map->path, " is truncated: ", label, " ",
           file_dtype_name(file_dtype), shape_str(shape), " tensor at byte ", offset, " needs ", bytes,
           " bytes but the file has ", map->size);
  const uint8_t* src = map->data + offset;

  bool same = (file_dtype == FileDType::F32 && dtype == DType::F32) ||
              (file_dtype == FileDType::BF16 && dtype == DType::BF16);
  bool as_view = same && reinterpret_cast<uintptr_t>(src) % dtype_size(dtype) == 0;
  TensorPtr t = as_view ? view(shape, dtype, const_cast<uint8_t*>(src), std::shared_ptr<void>(map)) : empty(shape, dtype);
  t->storage->read_only = as_view;

  // Conversion and the finite check run on the executor (a 7B model is gigabytes); a NaN or Inf
  // in a weight would poison every output silently, so it fails the load, naming the tensor.
  std::string what = map->path + ": " + (name.empty() ? "" : name + " ") + file_dtype_name(file_dtype) +
                     shape_str(shape) + " at byte " + std::to_string(offset);
  ops::queue_op(("load " + what).c_str(), {}, {t}, [=, keep = map] {
    std::atomic<int64_t> bad{-1};
    size_t es = file_dtype_size(file_dtype);
    parallel_for(n, 1 << 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; i++) {
        float v = read_elem(src + i * es, file_dtype);
        if (!std::isfinite(v)) {
          int64_t none = -1;
          bad.compare_exchange_strong(none, i);
        }
        if (as_view) continue;
        if (dtype == DType::F32)
          t->data<float>()[i] = v;
        else
          t->data<uint16_t>()[i] = f32_to_bf16(v);
      }
    });
    LA_CHECK(bad.load() < 0, "non-finite value (NaN or Inf) at element ", bad.load());
  });
  return t;
}

}  // namespace la::io
