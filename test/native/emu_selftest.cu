// Self-test of the CUDA emulator (native/cuda/emu): small kernels for each feature the kernels
// may use, checked against host references, and the errors the emulator must raise for kernels
// that are undefined on a GPU. Built as la_cuda_emu_selftest (cmake -DLLAMA_ADAPTER_CUDA_EMULATOR=ON,
// i.e. `npm run build:emu`); exit code 0 when everything passed. The same file compiles with nvcc
// (`nvcc -std=c++17 -arch=sm_90 -I native -c test/native/emu_selftest.cu`), which shows that the
// emulator's subset is real CUDA; the error cases only run in the emulator (they are undefined
// behaviour on a GPU).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "core/bf16.h"
#include "cuda/compat.h"

namespace {

// ---- kernels ----------------------------------------------------------------------------------

// out[block] = sum of x over the block's 256 elements: static shared memory and __syncthreads.
__global__ void block_sum(float* out, const float* x, int n) {
  __shared__ float partial[256];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  partial[threadIdx.x] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Per lane of a 64-thread block: [xor sum, down-reduced sum at lane 0s, inclusive up-scan,
// broadcast of lane 3 within groups of 8, xor within groups of 8 (width 8; a mask that leaves the
// group reads an earlier group, or gives the lane's own value for a later one), ballot of odd values].
__global__ void shuffles(float* out, const float* x) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
  const float v = x[t];
  float* o = out + t * 6;
  o[0] = warp_sum(v);
  float d = v;
  for (int offset = 16; offset > 0; offset /= 2) d += __shfl_down_sync(0xffffffffu, d, offset);
  o[1] = lane == 0 ? d : -1.0f;
  float s = v;
  for (int offset = 1; offset < 32; offset *= 2) {
    float up = __shfl_up_sync(0xffffffffu, s, offset);
    if (lane >= offset) s += up;
  }
  o[2] = s;
  o[3] = __shfl_sync(0xffffffffu, v, 3, 8);
  o[4] = __shfl_xor_sync(0xffffffffu, v, 1, 8) + __shfl_xor_sync(0xffffffffu, v, 16, 8);
  o[5] = float(__ballot_sync(0xffffffffu, int(v) % 2 != 0) & 0xffffu) + (__all_sync(0xffffffffu, v >= 0) ? 0.5f : 0.0f);
}

// double and int shuffles, __syncwarp between a shared write and a neighbour's read
__global__ void warp_misc(double* dout, int* iout) {
  __shared__ int cell[32];
  const int lane = threadIdx.x;
  double dv = 0.25 * lane;
  dout[lane] = __shfl_down_sync(0xffffffffu, dv, 1);
  cell[lane] = lane * lane;
  __syncwarp();
  iout[lane] = cell[(lane + 1) % 32] + __shfl_xor_sync(0xffffffffu, lane, 31);
}

// Each thread writes its 3-D global position: checks the index mapping (x fastest).
__global__ void indexing(int* out) {
  const int bx = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int tx = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int block_threads = blockDim.x * blockDim.y * blockDim.z;
  out[bx * block_threads + tx] = int(threadIdx.x) | int(threadIdx.y) << 8 | int(threadIdx.z) << 16 | int(blockIdx.x) << 24;
}

// Reverses each block's slice through dynamic shared memory; slot `n` of the buffer, and a static
// __shared__ slot, are never written, and must read as the emulator's poison (NaN) in every block.
__global__ void reverse_dynamic(float* out, float* poison, const float* x, int n) {
  LA_DYNAMIC_SHARED(float, buf);
  __shared__ float stale[2];  // [0] written by every block, [1] never: must read as poison too
  buf[threadIdx.x] = x[blockIdx.x * n + threadIdx.x];
  if (threadIdx.x == 0) stale[0] = 1.0f;
  __syncthreads();
  out[blockIdx.x * n + threadIdx.x] = buf[n - 1 - threadIdx.x];
  if (threadIdx.x == 0) poison[blockIdx.x * 2] = buf[n], poison[blockIdx.x * 2 + 1] = stale[1] + stale[0];
}

__global__ void atomics(float* fsum, int* isum, unsigned* usum, double* dsum, int* imax, const float* x, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  atomicAdd(fsum, x[i]);
  atomicAdd(isum, 1);
  atomicAdd(usum, 2u);
  atomicAdd(dsum, double(x[i]));
  atomicMax(imax, int(x[i] * 10.0f));
}

template <class T, int Scale> __global__ void scaled_copy(T* out, const T* x, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = x[i] * T(Scale);
}

__global__ void bf16_roundtrip(float* out, unsigned short* bits, const float* x, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  __nv_bfloat16 h = __float2bfloat16_rn(x[i]);
  bits[i] = __bfloat16_as_ushort(h);
  out[i] = __bfloat162float(h);
}

// C (16x16) = alpha * A (16x32) · B (32x16), one warp: A row-major (or col-major) read straight
// from global memory, B staged through shared memory; the result goes through shared memory and is
// written by each lane after a __syncwarp.
template <class LayoutA>
__global__ void wmma_gemm(float* c, const __nv_bfloat16* a, const __nv_bfloat16* b, float alpha) {
  using namespace nvcuda;
  __shared__ __align__(32) __nv_bfloat16 b_tile[32 * 16];
  __shared__ alignas(32) float c_tile[16 * 16];  // alignas after __shared__ works in the emulator too
  for (int i = threadIdx.x; i < 32 * 16; i += 32) b_tile[i] = b[i];
  __syncwarp();
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  for (int k0 = 0; k0 < 32; k0 += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
    // row-major A is (16, 32): ldm 32, tile at column k0; col-major A is stored (32, 16): ldm 16
    const bool row = std::is_same<LayoutA, wmma::row_major>::value;
    wmma::load_matrix_sync(fa, a + (row ? k0 : k0 * 16), row ? 32 : 16);
    wmma::load_matrix_sync(fb, b_tile + k0 * 16, 16);
    wmma::mma_sync(acc, fa, fb, acc);
  }
  for (int e = 0; e < acc.num_elements; e++) acc.x[e] *= alpha;
  wmma::store_matrix_sync(c_tile, acc, 16, wmma::mem_row_major);
  __syncwarp();
  for (int i = threadIdx.x; i < 256; i += 32) c[i] = c_tile[i];
  // and back through an accumulator load and a column-major store, into c + 256 (transposed)
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> again;
  wmma::load_matrix_sync(again, c_tile, 16, wmma::mem_row_major);
  wmma::store_matrix_sync(c + 256, again, 16, wmma::mem_col_major);
}

// A bigger launch: 256-thread blocks, a warp-shuffle reduction then a shared one.
__global__ void big_reduce(float* out, const float* x) {
  __shared__ float warps[8];
  float v = x[blockIdx.x * blockDim.x + threadIdx.x];
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) warps[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    float w = threadIdx.x < blockDim.x / 32 ? warps[threadIdx.x] : 0.0f;
    w = warp_sum(w);
    if (threadIdx.x == 0) out[blockIdx.x] = w;
  }
}

// ---- kernels that are wrong: the emulator must say so (undefined on a GPU, so emulator only) -----
#if defined(LA_CUDA_EMULATOR)

__global__ void sync_in_branch(float* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1.0f;
}

__global__ void sync_two_sites(float* out) {
  if (threadIdx.x % 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

__global__ void return_before_sync(float* out, int n) {
  __shared__ float s[64];
  if (int(threadIdx.x) >= n) return;
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % n];
}

__global__ void shfl_after_exit(float* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

__global__ void shfl_partial_warp(float* out) {
  float v = 1.0f;
  v += __shfl_down_sync(0xffffffffu, v, 16);
  out[threadIdx.x] = v;
}

__global__ void shfl_vs_sync(float* out) {
  float v = float(threadIdx.x);
  if (threadIdx.x == 0) v = __shfl_sync(0xffffffffu, v, 1);
  __syncthreads();
  out[threadIdx.x] = v;
}

__global__ void write_past_end(float* out, int n) { out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f; }

__global__ void shared_overrun(float* out) {
  LA_DYNAMIC_SHARED(float, buf);
  buf[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = buf[threadIdx.x];
}

__global__ void wmma_misaligned(float* c, const __nv_bfloat16* a) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, a + 1, 16);
  c[threadIdx.x] = float(fa.x[0]);
}

__global__ void nothing(float*) {}
#endif

// ---- host side ----------------------------------------------------------------------------------

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "  ok  " : "  FAIL", what.c_str());
  if (!ok) failures++;
}

template <class T> struct DeviceBuf {
  explicit DeviceBuf(size_t count) : n(count), p(static_cast<T*>(la::cuda::alloc(count * sizeof(T)))) {}
  DeviceBuf(const std::vector<T>& v) : DeviceBuf(v.size()) { la::cuda::copy_to_device(p, v.data(), v.size() * sizeof(T)); }
  ~DeviceBuf() { la::cuda::release(p); }
  std::vector<T> read() const {
    std::vector<T> v(n);
    la::cuda::copy_to_host(v.data(), p, n * sizeof(T));
    return v;
  }
  size_t n;
  T* p;
};

bool close(double got, double want, double tol) { return std::fabs(got - want) <= tol * (1.0 + std::fabs(want)); }

std::vector<float> ramp(size_t n, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; i++) v[i] = scale * float(int(i * 7919 % 1000) - 500) / 500.0f;
  return v;
}

void test_block_sum() {
  const int n = 1000, blocks = 4;
  auto x = ramp(n, 1.0f);
  DeviceBuf<float> dx(x), dout(blocks);
  LA_LAUNCH(blocks, 256, 0, block_sum)(dout.p, dx.p, n);
  la::cuda::check_launch("block_sum");
  auto out = dout.read();
  bool ok = true;
  for (int b = 0; b < blocks; b++) {
    double want = 0;
    for (int i = b * 256; i < std::min(n, b * 256 + 256); i++) want += x[i];
    ok = ok && close(out[b], want, 1e-5);
  }
  check(ok, "block reduction with __shared__ and __syncthreads");
}

void test_shuffles() {
  const int threads = 64;
  std::vector<float> x(threads);
  for (int i = 0; i < threads; i++) x[i] = float((i * 5) % 13);
  DeviceBuf<float> dx(x), dout(threads * 6);
  LA_LAUNCH(1, threads, 0, shuffles)(dout.p, dx.p);
  auto o = dout.read();
  bool ok = true;
  for (int t = 0; t < threads; t++) {
    const int w = t / 32 * 32, lane = t % 32;
    float sum = 0, scan = 0;
    for (int i = 0; i < 32; i++) sum += x[w + i];
    for (int i = 0; i <= lane; i++) scan += x[w + i];
    const int g8 = t / 8 * 8;
    unsigned ballot = 0;
    for (int i = 0; i < 16; i++) ballot |= (int(x[w + i]) % 2 != 0) << i;
    const float* r = &o[t * 6];
    ok = ok && r[0] == sum && r[1] == (lane == 0 ? sum : -1.0f) && r[2] == scan && r[3] == x[g8 + 3] &&
         r[4] == x[t ^ 1] + (lane < 16 ? x[t] : x[t - 16]) && r[5] == float(ballot) + 0.5f;
  }
  check(ok, "__shfl_xor/down/up/idx_sync (widths 32 and 8), __ballot_sync, __all_sync");

  DeviceBuf<double> dd(32);
  DeviceBuf<int> di(32);
  LA_LAUNCH(1, 32, 0, warp_misc)(dd.p, di.p);
  auto d = dd.read();
  auto iv = di.read();
  ok = true;
  for (int l = 0; l < 32; l++)
    ok = ok && d[l] == 0.25 * (l < 31 ? l + 1 : l) && iv[l] == ((l + 1) % 32) * ((l + 1) % 32) + (l ^ 31);
  check(ok, "double and int shuffles; __syncwarp orders shared memory");
}

void test_indexing() {
  const dim3 grid(3, 2, 2), block(8, 4, 2);
  const int total = 3 * 2 * 2 * 64;
  DeviceBuf<int> dout(total);
  LA_LAUNCH(grid, block, 0, indexing)(dout.p);
  auto o = dout.read();
  bool ok = true;
  for (int i = 0; i < total; i++) {
    const int b = i / 64, t = i % 64;
    const int want = (t % 8) | (t / 8 % 4) << 8 | (t / 32) << 16 | (b % 3) << 24;
    ok = ok && o[i] == want;
  }
  check(ok, "3-D grid and block indices (x fastest)");
}

void test_dynamic_shared() {
  const int n = 96, blocks = 3;
  auto x = ramp(n * blocks, 2.0f);
  DeviceBuf<float> dx(x), dout(n * blocks), dpoison(2 * blocks);
  LA_ALLOW_DYNAMIC_SHARED((n + 1) * sizeof(float), reverse_dynamic);
  LA_LAUNCH(blocks, n, (n + 1) * sizeof(float), reverse_dynamic)(dout.p, dpoison.p, dx.p, n);
  auto o = dout.read();
  auto p = dpoison.read();
  bool ok = true;
  for (int b = 0; b < blocks; b++)
    for (int i = 0; i < n; i++) ok = ok && o[b * n + i] == x[b * n + n - 1 - i];
  check(ok, "dynamic shared memory (LA_DYNAMIC_SHARED)");
#if defined(LA_CUDA_EMULATOR)
  bool nan = true;
  for (int b = 0; b < 2 * blocks; b++) nan = nan && std::isnan(p[b]);
  check(nan, "unwritten dynamic and static shared memory reads as NaN in every block");
#endif
}

void test_atomics() {
  const int n = 700;
  auto x = ramp(n, 1.0f);
  DeviceBuf<float> dx(x), fsum(std::vector<float>{0.0f});
  DeviceBuf<int> isum(std::vector<int>{0}), imax(std::vector<int>{-1000});
  DeviceBuf<unsigned> usum(std::vector<unsigned>{0});
  DeviceBuf<double> dsum(std::vector<double>{0.0});
  LA_LAUNCH(la::cuda::blocks_for(n, 128), 128, 0, atomics)(fsum.p, isum.p, usum.p, dsum.p, imax.p, dx.p, n);
  double want = 0;
  int want_max = -1000;
  for (float v : x) want += v, want_max = std::max(want_max, int(v * 10.0f));
  check(close(fsum.read()[0], want, 1e-4) && isum.read()[0] == n && usum.read()[0] == 2u * n &&
            close(dsum.read()[0], want, 1e-12) && imax.read()[0] == want_max,
        "atomicAdd (float, int, unsigned, double), atomicMax (int)");
}

void test_templates_and_bf16() {
  const int n = 300;
  auto x = ramp(n, 3.0f);
  DeviceBuf<float> dx(x), dout(n);
  LA_LAUNCH(la::cuda::blocks_for(n, 128), 128, 0, scaled_copy<float, 3>)(dout.p, dx.p, n);
  auto o = dout.read();
  bool ok = true;
  for (int i = 0; i < n; i++) ok = ok && o[i] == x[i] * 3.0f;
  check(ok, "template kernel through LA_LAUNCH (comma in the name)");

  std::vector<float> y = {1.0f, 1.00390625f, 1.005859375f, -3.14159f, 65504.0f, 1e-30f, 3.0e38f, -0.0f, NAN, INFINITY};
  DeviceBuf<float> dy(y), dr(y.size());
  DeviceBuf<unsigned short> dbits(y.size());
  LA_LAUNCH(1, 32, 0, bf16_roundtrip)(dr.p, dbits.p, dy.p, int(y.size()));
  auto r = dr.read();
  auto bits = dbits.read();
  ok = true;
  for (size_t i = 0; i < y.size(); i++) {
    const uint16_t want = la::f32_to_bf16(y[i]);
    ok = ok && (std::isnan(y[i]) ? std::isnan(r[i]) : bits[i] == want && r[i] == la::bf16_to_f32(want));
  }
  check(ok, "__nv_bfloat16 rounds to nearest even, as core/bf16.h");
}

void test_wmma() {
  // bf16 inputs; the reference multiplies the same rounded values in double
  std::vector<uint16_t> a(16 * 32), acol(16 * 32), b(32 * 16);
  std::vector<float> af(16 * 32), bf(32 * 16);
  for (int i = 0; i < 16 * 32; i++) {
    a[i] = la::f32_to_bf16(float((i * 37) % 23 - 11) / 8.0f);
    af[i] = la::bf16_to_f32(a[i]);
    b[i] = la::f32_to_bf16(float((i * 11) % 17 - 8) / 4.0f + 0.001f * i);
    bf[i] = la::bf16_to_f32(b[i]);
  }
  for (int m = 0; m < 16; m++)
    for (int k = 0; k < 32; k++) acol[k * 16 + m] = a[m * 32 + k];  // A stored as (32, 16)
  const float alpha = 0.5f;
  std::vector<double> want(256);
  for (int m = 0; m < 16; m++)
    for (int n = 0; n < 16; n++) {
      double s = 0;
      for (int k = 0; k < 32; k++) s += double(af[m * 32 + k]) * bf[k * 16 + n];
      want[m * 16 + n] = alpha * s;
    }
  DeviceBuf<uint16_t> da(a), dacol(acol), db(b);
  DeviceBuf<float> dc(512);
  for (int col = 0; col < 2; col++) {
    auto* ap = reinterpret_cast<const __nv_bfloat16*>(col ? dacol.p : da.p);
    auto* bp = reinterpret_cast<const __nv_bfloat16*>(db.p);
    if (col) LA_LAUNCH(1, 32, 0, wmma_gemm<nvcuda::wmma::col_major>)(dc.p, ap, bp, alpha);
    else LA_LAUNCH(1, 32, 0, wmma_gemm<nvcuda::wmma::row_major>)(dc.p, ap, bp, alpha);
    auto c = dc.read();
    bool ok = true;
    for (int m = 0; m < 16; m++)
      for (int n = 0; n < 16; n++)
        ok = ok && close(c[m * 16 + n], want[m * 16 + n], 1e-5) && c[256 + n * 16 + m] == c[m * 16 + n];
    check(ok, std::string("wmma 16x16x16 bf16 -> float, A ") + (col ? "col" : "row") +
                  "-major, load/mma/store, row- and col-major accumulator stores");
  }
}

void test_big_launch() {
  const int blocks = 1000, threads = 256;
  auto x = ramp(size_t(blocks) * threads, 1.0f);
  DeviceBuf<float> dx(x), dout(blocks);
  auto t0 = std::chrono::steady_clock::now();
  LA_LAUNCH(blocks, threads, 0, big_reduce)(dout.p, dx.p);
  la::cuda::synchronize();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto o = dout.read();
  bool ok = true;
  for (int b = 0; b < blocks; b++) {
    double want = 0;
    for (int i = 0; i < threads; i++) want += x[size_t(b) * threads + i];
    ok = ok && close(o[b], want, 1e-4);
  }
  char what[128];
  std::snprintf(what, sizeof what, "1000 blocks x 256 threads, shuffles and a barrier (%.3f s)", s);
  check(ok, what);
}

#if defined(LA_CUDA_EMULATOR)
template <class F> void expect_error(const std::string& what, F launch, std::vector<std::string> needles) {
  std::string message;
  try {
    launch();
  } catch (const la::Error& e) {
    message = e.what();
  }
  bool ok = !message.empty();
  for (auto& s : needles) ok = ok && message.find(s) != std::string::npos;
  check(ok, what + (message.empty() ? " (no error)" : " -> " + message));
}

void test_errors() {
  DeviceBuf<float> out(256);
  DeviceBuf<uint16_t> a(64 * 16);
  auto* ap = reinterpret_cast<const __nv_bfloat16*>(a.p);
  expect_error("__syncthreads in a branch", [&] { LA_LAUNCH(2, 64, 0, sync_in_branch)(out.p); },
               {"sync_in_branch", "divergent __syncthreads"});
  expect_error("__syncthreads at two call sites", [&] { LA_LAUNCH(1, 64, 0, sync_two_sites)(out.p); },
               {"sync_two_sites", "divergent __syncthreads", "emu_selftest.cu:"});
  expect_error("return before __syncthreads", [&] { LA_LAUNCH(1, 64, 0, return_before_sync)(out.p, 40); },
               {"return_before_sync", "divergent __syncthreads"});
  expect_error("shuffle after a lane returned", [&] { LA_LAUNCH(1, 32, 0, shfl_after_exit)(out.p); },
               {"shfl_after_exit", "__shfl_xor_sync", "returned"});
  expect_error("shuffle reading a lane a partial warp lacks", [&] { LA_LAUNCH(1, 48, 0, shfl_partial_warp)(out.p); },
               {"shfl_partial_warp", "does not have"});
  expect_error("shuffle while the warp waits at __syncthreads", [&] { LA_LAUNCH(1, 32, 0, shfl_vs_sync)(out.p); },
               {"shfl_vs_sync", "divergent"});
  expect_error("write past a device buffer", [&] { LA_LAUNCH(2, 160, 0, write_past_end)(out.p, 256); },
               {"write_past_end", "outside a device buffer"});
  expect_error("write past dynamic shared memory", [&] { LA_LAUNCH(1, 64, 32 * sizeof(float), shared_overrun)(out.p); },
               {"shared_overrun", "dynamic shared memory"});
  expect_error("misaligned wmma load", [&] { LA_LAUNCH(1, 32, 0, wmma_misaligned)(out.p, ap); },
               {"wmma_misaligned", "32-byte aligned"});
  expect_error("wmma in a partial warp", [&] { LA_LAUNCH(1, 16, 0, wmma_misaligned)(out.p, ap - 1); },
               {"whole warp"});
  expect_error("1025 threads per block", [&] { LA_LAUNCH(1, 1025, 0, nothing)(out.p); }, {"nothing", "block"});
  expect_error("an empty grid", [&] { LA_LAUNCH(0, 32, 0, nothing)(out.p); }, {"nothing", "grid"});
  expect_error("228 KiB of shared memory", [&] { LA_LAUNCH(1, 32, 228 * 1024, nothing)(out.p); }, {"shared memory"});
  expect_error("copy past a buffer's end", [&] {
    float host[300] = {};
    la::cuda::copy_to_device(out.p, host, sizeof host);
  }, {"copy_to_device", "past its end"});
  // and the emulator still works after all that
  test_block_sum();
}
#endif

}  // namespace

int main() {
  std::printf("CUDA emulator self-test\n");
  try {
    test_block_sum();
    test_shuffles();
    test_indexing();
    test_dynamic_shared();
    test_atomics();
    test_templates_and_bf16();
    test_wmma();
    test_big_launch();
#if defined(LA_CUDA_EMULATOR)
    test_errors();
#endif
  } catch (const std::exception& e) {
    std::printf("  FAIL unexpected error: %s\n", e.what());
    failures++;
  }
  std::printf(failures ? "%d check(s) FAILED\n" : "all checks passed\n", failures);
  return failures ? 1 : 0;
}
