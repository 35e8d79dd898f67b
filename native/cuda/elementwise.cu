// Embedding lookup, in-place add/scale, bf16 casts and the row gather/scatter: memory-bound ops
// (SwiGLU lives with the activations, activation.cu). Flat ops are grid-stride loops over float4 (or 8 bf16) units when every pointer is 16-byte
// aligned (views may not be), with a scalar tail; row ops give each row its own blocks.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "compat.h"
#include "kernels.h"

namespace la::cuda {
namespace {

constexpr int kThreads = 256;

// 16 bytes as four words: one 128-bit load or store (8 bf16).
struct alignas(16) U32x4 {
  uint32_t x, y, z, w;
};

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
inline bool aligned4(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 3) == 0; }

// Blocks for a grid-stride loop over `units`: one full wave of kThreads-thread blocks at most.
inline unsigned grid_for(int64_t units) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(blocks_for(units, kThreads), int64_t(multiprocessors()) * 8)));
}

// Row ops: threads per block (a multiple of 32, up to kThreads) and blocks per row (blockIdx.y),
// about 4 units per thread.
inline unsigned row_threads(int64_t units) {
  return unsigned(std::min<int64_t>(kThreads, std::max<int64_t>(32, (units + 31) / 32 * 32)));
}
inline unsigned row_chunks(int64_t units, unsigned threads) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(65535, (units + 4 * threads - 1) / (4 * threads))));
}

__device__ inline float bf16_bits_to_f32(uint32_t h) { return __uint_as_float(h << 16); }

// Round to nearest even, quiet NaN: bit for bit core/bf16.h's f32_to_bf16.
__device__ inline uint32_t f32_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return ((u >> 16) | 0x40u) & 0xffffu;
  u += 0x7fffu + ((u >> 16) & 1u);
  return u >> 16;
}

// A word of two bf16 (element 0 in the low half, little-endian) as two floats.
__device__ inline float2 bf16_pair(uint32_t w) {
  return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
}

// ---- embedding ----------------------------------------------------------------------------------
// out (T, C) row t = table row tokens[t]; grid (T, chunks). VEC: units of 4 floats (f32) or 8 bf16.
template <bool VEC>
__global__ void embedding_f32_kernel(float* __restrict__ out, const float* __restrict__ table,
                                     const int32_t* __restrict__ tokens, int64_t C) {
  const int64_t t = blockIdx.x;
  const float* src = table + int64_t(tokens[t]) * C;
  float* dst = out + t * C;
  const int64_t units = VEC ? C / 4 : C;
  for (int64_t u = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; u < units; u += int64_t(gridDim.y) * blockDim.x) {
    if (VEC)
      reinterpret_cast<float4*>(dst)[u] = reinterpret_cast<const float4*>(src)[u];
    else
      dst[u] = src[u];
  }
}

template <bool VEC>
__global__ void embedding_bf16_kernel(float* __restrict__ out, const uint16_t* __restrict__ table,
                                      const int32_t* __restrict__ tokens, int64_t C) {
  const int64_t t = blockIdx.x;
  const uint16_t* src = table + int64_t(tokens[t]) * C;
  float* dst = out + t * C;
  const int64_t units = VEC ? C / 8 : C;
  for (int64_t u = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; u < units; u += int64_t(gridDim.y) * blockDim.x) {
    if (VEC) {
      U32x4 w = reinterpret_cast<const U32x4*>(src)[u];
      float2 a = bf16_pair(w.x), b = bf16_pair(w.y), c = bf16_pair(w.z), d = bf16_pair(w.w);
      float4* o = reinterpret_cast<float4*>(dst) + 2 * u;
      o[0] = make_float4(a.x, a.y, b.x, b.y);
      o[1] = make_float4(c.x, c.y, d.x, d.y);
    } else {
      dst[u] = bf16_bits_to_f32(src[u]);
    }
  }
}

// ---- add, scale ---------------------------------------------------------------------------------
// Not __restrict__: x += x is allowed.
template <bool VEC>
__global__ void add_kernel(float* x, const float* y, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x, i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (VEC) {
    const int64_t n4 = n / 4;
    for (int64_t i = i0; i < n4; i += stride) {
      float4 u = reinterpret_cast<float4*>(x)[i], v = reinterpret_cast<const float4*>(y)[i];
      reinterpret_cast<float4*>(x)[i] = make_float4(u.x + v.x, u.y + v.y, u.z + v.z, u.w + v.w);
    }
    done = n4 * 4;
  }
  for (int64_t i = done + i0; i < n; i += stride) x[i] += y[i];
}

// s = 0 writes zeros without reading (0 * NaN would stay NaN).
template <bool VEC>
__global__ void scale_kernel(float* __restrict__ x, int64_t n, float s) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x, i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool clear = s == 0.f;
  int64_t done = 0;
  if (VEC) {
    const int64_t n4 = n / 4;
    for (int64_t i = i0; i < n4; i += stride) {
      float4 u = clear ? make_float4(0.f, 0.f, 0.f, 0.f) : reinterpret_cast<float4*>(x)[i];
      reinterpret_cast<float4*>(x)[i] = make_float4(u.x * s, u.y * s, u.z * s, u.w * s);
    }
    done = n4 * 4;
  }
  for (int64_t i = done + i0; i < n; i += stride) x[i] = clear ? 0.f : x[i] * s;
}

// ---- bf16 casts (VEC: 8 elements per unit) --------------------------------------------------------
template <bool VEC>
__global__ void f32_to_bf16_kernel(uint16_t* __restrict__ out, const float* __restrict__ x, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x, i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (VEC) {
    const int64_t n8 = n / 8;
    for (int64_t i = i0; i < n8; i += stride) {
      float4 a = reinterpret_cast<const float4*>(x)[2 * i], b = reinterpret_cast<const float4*>(x)[2 * i + 1];
      U32x4 w;
      w.x = f32_to_bf16_bits(a.x) | (f32_to_bf16_bits(a.y) << 16);
      w.y = f32_to_bf16_bits(a.z) | (f32_to_bf16_bits(a.w) << 16);
      w.z = f32_to_bf16_bits(b.x) | (f32_to_bf16_bits(b.y) << 16);
      w.w = f32_to_bf16_bits(b.z) | (f32_to_bf16_bits(b.w) << 16);
      reinterpret_cast<U32x4*>(out)[i] = w;
    }
    done = n8 * 8;
  }
  for (int64_t i = done + i0; i < n; i += stride) out[i] = uint16_t(f32_to_bf16_bits(x[i]));
}

template <bool VEC>
__global__ void bf16_to_f32_kernel(float* __restrict__ out, const uint16_t* __restrict__ x, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x, i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (VEC) {
    const int64_t n8 = n / 8;
    for (int64_t i = i0; i < n8; i += stride) {
      U32x4 w = reinterpret_cast<const U32x4*>(x)[i];
      float2 a = bf16_pair(w.x), b = bf16_pair(w.y), c = bf16_pair(w.z), d = bf16_pair(w.w);
      reinterpret_cast<float4*>(out)[2 * i] = make_float4(a.x, a.y, b.x, b.y);
      reinterpret_cast<float4*>(out)[2 * i + 1] = make_float4(c.x, c.y, d.x, d.y);
    }
    done = n8 * 8;
  }
  for (int64_t i = done + i0; i < n; i += stride) out[i] = bf16_bits_to_f32(x[i]);
}

// ---- gather / scatter ---------------------------------------------------------------------------
// out row m = x row idx[m], rows of `units` Unit-sized pieces; grid (M, chunks).
template <class Unit>
__global__ void gather_rows_kernel(Unit* __restrict__ out, const Unit* __restrict__ x, const int32_t* __restrict__ idx,
                                   int64_t units) {
  const int64_t m = blockIdx.x;
  const Unit* src = x + int64_t(idx[m]) * units;
  Unit* dst = out + m * units;
  for (int64_t u = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; u < units; u += int64_t(gridDim.y) * blockDim.x)
    dst[u] = src[u];
}

// Repeated indices must accumulate in index order (as the CPU body), without float atomics. So the
// rows that share a destination form a chain: next[m] = the next m' > m with idx[m'] = idx[m]
// (-1: none), and has_prev[m'] = 1 for each such m'. A chain's first row then walks it alone.
// When idx is sorted (the usual case: loss rows in order) chains are runs of neighbours, O(M).
// Otherwise each thread scans the later indices through shared memory: O(M^2) compares, a few tens
// of microseconds at M = 32k, against the sequential alternative's M dependent memory latencies.
__global__ void scatter_sorted_kernel(int32_t* __restrict__ unsorted, const int32_t* __restrict__ idx, int64_t M) {
  bool bad = false;
  for (int64_t m = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; m + 1 < M; m += int64_t(gridDim.x) * blockDim.x)
    bad |= idx[m + 1] < idx[m];
  if (bad) atomicAdd(unsorted, 1);
}

// has_prev and *unsorted zeroed before.
__global__ void scatter_links_kernel(int32_t* __restrict__ next, int32_t* __restrict__ has_prev,
                                     const int32_t* __restrict__ unsorted, const int32_t* __restrict__ idx,
                                     int64_t M) {
  __shared__ int32_t tile[kThreads];
  const int64_t base = int64_t(blockIdx.x) * kThreads, m = base + threadIdx.x;
  const int32_t mine = m < M ? idx[m] : -1;
  if (*unsorted == 0) {  // the same for the whole block: no barrier is skipped by part of it
    if (m < M) {
      next[m] = m + 1 < M && idx[m + 1] == mine ? int32_t(m + 1) : -1;
      has_prev[m] = m > 0 && idx[m - 1] == mine;
    }
    return;
  }
  int64_t found = -1;
  for (int64_t t0 = base; t0 < M; t0 += kThreads) {
    const int64_t j = t0 + threadIdx.x;
    tile[threadIdx.x] = j < M ? idx[j] : -1;
    __syncthreads();
    if (m < M && found < 0) {
      // candidates k0 <= k < n of this tile (after m); the lowest match wins. No early break, so
      // the loop unrolls into predicated compares.
      const int n = M - t0 < kThreads ? int(M - t0) : kThreads, k0 = m + 1 > t0 ? int(m + 1 - t0) : 0;
      int first = -1;
      for (int k = n - 1; k >= k0; k--)
        if (tile[k] == mine) first = k;
      if (first >= 0) found = t0 + first;
    }
    __syncthreads();
  }
  if (m < M) {
    next[m] = int32_t(found);
    if (found >= 0) has_prev[found] = 1;  // each m' is the next of at most one m: no race
  }
}

// Block (m, chunk): if row m starts its chain, dst row idx[m] += src rows m, next[m], ... in order,
// loaded once and stored once. VEC: float4 columns.
template <bool VEC>
__global__ void scatter_add_kernel(float* __restrict__ dst, const int32_t* __restrict__ idx,
                                   const float* __restrict__ src, const int32_t* __restrict__ next,
                                   const int32_t* __restrict__ has_prev, int64_t C) {
  const int64_t m0 = blockIdx.x;
  if (has_prev[m0]) return;  // the chain's first row adds it
  float* d = dst + int64_t(idx[m0]) * C;
  const int64_t units = VEC ? C / 4 : C;
  for (int64_t u = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; u < units; u += int64_t(gridDim.y) * blockDim.x) {
    if (VEC) {
      float4 acc = reinterpret_cast<float4*>(d)[u];
      for (int64_t m = m0; m >= 0; m = next[m]) {
        float4 s = reinterpret_cast<const float4*>(src + m * C)[u];
        acc.x += s.x;
        acc.y += s.y;
        acc.z += s.z;
        acc.w += s.w;
      }
      reinterpret_cast<float4*>(d)[u] = acc;
    } else {
      float acc = d[u];
      for (int64_t m = m0; m >= 0; m = next[m]) acc += src[m * C + u];
      d[u] = acc;
    }
  }
}

}  // namespace

void embedding_forward(float* out, const void* table, bool table_bf16, const int32_t* tokens, int64_t T, int64_t C) {
  if (T <= 0 || C <= 0) return;
  if (table_bf16) {
    const uint16_t* tb = static_cast<const uint16_t*>(table);
    const bool vec = C % 8 == 0 && aligned16(tb) && aligned16(out);
    const int64_t units = vec ? C / 8 : C;
    const unsigned threads = row_threads(units);
    const dim3 grid(unsigned(T), row_chunks(units, threads));
    if (vec)
      LA_LAUNCH(grid, threads, 0, embedding_bf16_kernel<true>)(out, tb, tokens, C);
    else
      LA_LAUNCH(grid, threads, 0, embedding_bf16_kernel<false>)(out, tb, tokens, C);
  } else {
    const float* tf = static_cast<const float*>(table);
    const bool vec = C % 4 == 0 && aligned16(tf) && aligned16(out);
    const int64_t units = vec ? C / 4 : C;
    const unsigned threads = row_threads(units);
    const dim3 grid(unsigned(T), row_chunks(units, threads));
    if (vec)
      LA_LAUNCH(grid, threads, 0, embedding_f32_kernel<true>)(out, tf, tokens, C);
    else
      LA_LAUNCH(grid, threads, 0, embedding_f32_kernel<false>)(out, tf, tokens, C);
  }
  check_launch("embedding_forward");
}

void add_inplace(float* x, const float* y, int64_t n) {
  if (n <= 0) return;
  const bool vec = aligned16(x) && aligned16(y);
  const unsigned grid = grid_for(vec ? n / 4 : n);
  if (vec)
    LA_LAUNCH(grid, kThreads, 0, add_kernel<true>)(x, y, n);
  else
    LA_LAUNCH(grid, kThreads, 0, add_kernel<false>)(x, y, n);
  check_launch("add_inplace");
}

void scale_inplace(float* x, int64_t n, float s) {
  if (n <= 0) return;
  const bool vec = aligned16(x);
  const unsigned grid = grid_for(vec ? n / 4 : n);
  if (vec)
    LA_LAUNCH(grid, kThreads, 0, scale_kernel<true>)(x, n, s);
  else
    LA_LAUNCH(grid, kThreads, 0, scale_kernel<false>)(x, n, s);
  check_launch("scale_inplace");
}

void f32_to_bf16(uint16_t* out, const float* x, int64_t n) {
  if (n <= 0) return;
  const bool vec = aligned16(out) && aligned16(x);
  const unsigned grid = grid_for(vec ? n / 8 : n);
  if (vec)
    LA_LAUNCH(grid, kThreads, 0, f32_to_bf16_kernel<true>)(out, x, n);
  else
    LA_LAUNCH(grid, kThreads, 0, f32_to_bf16_kernel<false>)(out, x, n);
  check_launch("f32_to_bf16");
}

void bf16_to_f32(float* out, const uint16_t* x, int64_t n) {
  if (n <= 0) return;
  const bool vec = aligned16(out) && aligned16(x);
  const unsigned grid = grid_for(vec ? n / 8 : n);
  if (vec)
    LA_LAUNCH(grid, kThreads, 0, bf16_to_f32_kernel<true>)(out, x, n);
  else
    LA_LAUNCH(grid, kThreads, 0, bf16_to_f32_kernel<false>)(out, x, n);
  check_launch("bf16_to_f32");
}

void gather_rows(void* out, const void* x, const int32_t* idx, int64_t M, int64_t row_bytes) {
  if (M <= 0 || row_bytes <= 0) return;
  // The widest unit that the row size and both bases allow.
  if (row_bytes % 16 == 0 && aligned16(out) && aligned16(x)) {
    const int64_t units = row_bytes / 16;
    const unsigned threads = row_threads(units);
    LA_LAUNCH(dim3(unsigned(M), row_chunks(units, threads)), threads, 0, gather_rows_kernel<U32x4>)
    (static_cast<U32x4*>(out), static_cast<const U32x4*>(x), idx, units);
  } else if (row_bytes % 4 == 0 && aligned4(out) && aligned4(x)) {
    const int64_t units = row_bytes / 4;
    const unsigned threads = row_threads(units);
    LA_LAUNCH(dim3(unsigned(M), row_chunks(units, threads)), threads, 0, gather_rows_kernel<uint32_t>)
    (static_cast<uint32_t*>(out), static_cast<const uint32_t*>(x), idx, units);
  } else {
    const unsigned threads = row_threads(row_bytes);
    LA_LAUNCH(dim3(unsigned(M), row_chunks(row_bytes, threads)), threads, 0, gather_rows_kernel<unsigned char>)
    (static_cast<unsigned char*>(out), static_cast<const unsigned char*>(x), idx, row_bytes);
  }
  check_launch("gather_rows");
}

void scatter_add_rows(float* dst, const int32_t* idx, const float* src, int64_t M, int64_t C) {
  if (M <= 0 || C <= 0) return;
  Scratch links(size_t(2 * M + 1) * sizeof(int32_t));  // next (M), has_prev (M), unsorted (1)
  int32_t* next = links.as<int32_t>();
  int32_t* has_prev = next + M;
  int32_t* unsorted = has_prev + M;
  fill_zero(has_prev, size_t(M + 1) * sizeof(int32_t));
  LA_LAUNCH(grid_for(M), kThreads, 0, scatter_sorted_kernel)(unsorted, idx, M);
  check_launch("scatter_add_rows (sorted)");
  LA_LAUNCH(unsigned(blocks_for(M, kThreads)), kThreads, 0, scatter_links_kernel)(next, has_prev, unsorted, idx, M);
  check_launch("scatter_add_rows (links)");
  const bool vec = C % 4 == 0 && aligned16(dst) && aligned16(src);
  const int64_t units = vec ? C / 4 : C;
  const unsigned threads = row_threads(units);
  const dim3 grid(unsigned(M), row_chunks(units, threads));
  if (vec)
    LA_LAUNCH(grid, threads, 0, scatter_add_kernel<true>)(dst, idx, src, next, has_prev, C);
  else
    LA_LAUNCH(grid, threads, 0, scatter_add_kernel<false>)(dst, idx, src, next, has_prev, C);
  check_launch("scatter_add_rows");
}

}  // namespace la::cuda
