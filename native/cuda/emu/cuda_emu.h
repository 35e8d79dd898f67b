// The CUDA emulator's shim: what a .cu file sees in place of CUDA's headers when it is compiled as
// C++ (LA_CUDA_EMULATOR, through compat.h). A launch runs every block in turn on the calling
// thread, and each block's threads as cooperative fibers (scheduler.cpp), switching only at
// __syncthreads, __syncwarp, the warp shuffles and votes and the wmma operations. So CI without a
// GPU runs the real kernels' logic, and the emulator is strict where the GPU is undefined:
// divergent barriers, shuffles with exited or missing lanes, misaligned wmma pointers, reads of
// shared memory nothing wrote (poisoned with NaN), writes past a buffer's end are errors.
//
// Only the subset compat.h lists (plus a few cheap extras) exists here, so a kernel that compiles
// in the emulator build also has to keep to it for nvcc.
#pragma once
#include <math.h>  // the C names (::isnan, ::expf, ...) that device code calls unqualified

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../../core/bf16.h"
#include "../../core/error.h"

// ---- qualifiers -------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
// inline, as in CUDA, so a helper defined in a header shared by several .cu files links once
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
// Blocks run one after another on one OS thread, so a function-static array is exactly one
// block's shared memory. They live in one section, which the scheduler fills with 0xff bytes (NaN
// as float) before every block, so a read of shared memory the block did not write shows up rather
// than the previous block's values. (GCC up to at least 12 ignores the section of a static in a
// function template: those stay in .bss, unpoisoned.)
#define __shared__ static __attribute__((section("la_emu_shared")))
#define __constant__
#define __align__(n) __attribute__((aligned(n)))

// `__shared__ alignas(16) T x[n]` is fine for nvcc, but with __shared__ as `static`, g++ rejects a
// standard attribute after a decl-specifier. So alignas becomes the GNU attribute, which may stand
// anywhere; align_of<> takes a type or a constant, as alignas does. (An alignas argument with a
// top-level `>` needs parentheses.) Define LA_EMU_NO_ALIGNAS_MACRO to turn this off.
namespace la::emu::detail {
template <class T> constexpr size_t align_of() { return alignof(T); }
template <size_t N> constexpr size_t align_of() { return N; }
}  // namespace la::emu::detail
#if !defined(LA_EMU_NO_ALIGNAS_MACRO)
#define alignas(...) __attribute__((aligned(::la::emu::detail::align_of<__VA_ARGS__>())))
#endif

// ---- vector types -----------------------------------------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct __attribute__((aligned(8))) float2 {
  float x, y;
};
struct float3 {
  float x, y, z;
};
struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};
struct __attribute__((aligned(8))) int2 {
  int x, y;
};
struct __attribute__((aligned(16))) int4 {
  int x, y, z, w;
};
struct __attribute__((aligned(8))) uint2 {
  unsigned x, y;
};
struct __attribute__((aligned(16))) uint4 {
  unsigned x, y, z, w;
};
struct __attribute__((aligned(16))) double2 {
  double x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float3 make_float3(float x, float y, float z) { return {x, y, z}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }

// ---- the emulator's state, read by the built-in variables --------------------------------------
namespace la::emu {

// The current launch's dynamic shared memory (shared_bytes of it, 128-byte aligned; null when the
// launch asked for none), refilled with 0xff bytes (NaN as float) before each block; a write past
// its end fails the launch.
void* dynamic_shared();

namespace detail {

struct Thread {
  uint3 idx;
};
// Set by the scheduler before it switches to a fiber; plain globals, as launches are serialised.
extern Thread* g_thread;
extern uint3 g_block_idx;
extern dim3 g_block_dim;
extern dim3 g_grid_dim;

void syncthreads(const char* file, int line);

// Warp-collective operations: every lane of the warp must reach one of the same kind.
enum class WarpOp { shfl_idx, shfl_up, shfl_down, shfl_xor, syncwarp, ballot, wmma_load, wmma_store, wmma_mma };
// Waits until every lane of this warp made the same call, then returns what this lane receives:
// for shuffles the value of the source lane (arg: srcLane, delta or laneMask), for ballot the mask
// of lanes whose value was non-zero, else 0.
uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width);
unsigned lane_id();
unsigned warp_lanes();  // the mask of the lanes this warp has (all 32 unless the block's last warp is partial)
[[noreturn]] void device_fail(const std::string& what);

using Body = void (*)(void* ctx);
void run_launch(dim3 grid, dim3 block, size_t shared_bytes, const char* name, Body body, void* ctx);

template <class T> uint64_t to_raw(T v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "the emulator shuffles values of at most 8 bytes");
  uint64_t r = 0;
  std::memcpy(&r, &v, sizeof(T));
  return r;
}
template <class T> T from_raw(uint64_t r) {
  T v;
  std::memcpy(&v, &r, sizeof(T));
  return v;
}

}  // namespace detail

// LA_LAUNCH(grid, block, shared_bytes, kernel)(args...): converts the arguments to the kernel's
// parameter types once (as a launch does), then runs the whole grid before returning.
template <class... P>
auto launch(dim3 grid, dim3 block, size_t shared_bytes, const char* name, void (*kernel)(P...)) {
  return [=](auto&&... args) {
    static_assert(sizeof...(args) == sizeof...(P), "kernel launched with the wrong number of arguments");
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> params;
    } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<decltype(args)>(args)...)};
    // every thread gets its own copy of the parameters, as by-value kernel parameters
    detail::run_launch(grid, block, shared_bytes, name,
                       [](void* c) {
                         auto* x = static_cast<Ctx*>(c);
                         std::apply(x->kernel, x->params);
                       },
                       &ctx);
  };
}

}  // namespace la::emu

#define threadIdx (static_cast<const uint3&>(::la::emu::detail::g_thread->idx))
#define blockIdx (static_cast<const uint3&>(::la::emu::detail::g_block_idx))
#define blockDim (static_cast<const dim3&>(::la::emu::detail::g_block_dim))
#define gridDim (static_cast<const dim3&>(::la::emu::detail::g_grid_dim))
constexpr int warpSize = 32;

// ---- synchronisation --------------------------------------------------------------------------
// A macro so that two different __syncthreads() call sites waited at together are reported.
#define __syncthreads() ::la::emu::detail::syncthreads(__FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::la::emu::detail::warp_op(::la::emu::detail::WarpOp::syncwarp, mask, 0, 0, 32);
}
// Memory fences order nothing here: one fiber runs at a time.
inline void __threadfence() {}
inline void __threadfence_block() {}

template <class T> T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32) {
  using namespace ::la::emu::detail;
  return from_raw<T>(warp_op(WarpOp::shfl_idx, mask, to_raw(var), srcLane, width));
}
template <class T> T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  using namespace ::la::emu::detail;
  return from_raw<T>(warp_op(WarpOp::shfl_up, mask, to_raw(var), int(delta), width));
}
template <class T> T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  using namespace ::la::emu::detail;
  return from_raw<T>(warp_op(WarpOp::shfl_down, mask, to_raw(var), int(delta), width));
}
template <class T> T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32) {
  using namespace ::la::emu::detail;
  return from_raw<T>(warp_op(WarpOp::shfl_xor, mask, to_raw(var), laneMask, width));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  using namespace ::la::emu::detail;
  return unsigned(warp_op(WarpOp::ballot, mask, pred != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == ::la::emu::detail::warp_lanes(); }
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }

// ---- atomics: plain read-modify-writes, since only one fiber runs at a time ---------------------
#define LA_EMU_ATOMIC(name, T, expr) \
  inline T name(T* address, T val) { \
    T old = *address;                \
    *address = (expr);               \
    return old;                      \
  }
LA_EMU_ATOMIC(atomicAdd, float, old + val)
LA_EMU_ATOMIC(atomicAdd, double, old + val)
LA_EMU_ATOMIC(atomicAdd, int, int(unsigned(old) + unsigned(val)))  // wraps, as on the GPU
LA_EMU_ATOMIC(atomicAdd, unsigned, old + val)
LA_EMU_ATOMIC(atomicAdd, unsigned long long, old + val)
LA_EMU_ATOMIC(atomicSub, int, int(unsigned(old) - unsigned(val)))
LA_EMU_ATOMIC(atomicSub, unsigned, old - val)
LA_EMU_ATOMIC(atomicMax, int, old > val ? old : val)
LA_EMU_ATOMIC(atomicMax, unsigned, old > val ? old : val)
LA_EMU_ATOMIC(atomicMin, int, old < val ? old : val)
LA_EMU_ATOMIC(atomicMin, unsigned, old < val ? old : val)
LA_EMU_ATOMIC(atomicExch, int, val)
LA_EMU_ATOMIC(atomicExch, unsigned, val)
LA_EMU_ATOMIC(atomicExch, float, val)
#undef LA_EMU_ATOMIC
#define LA_EMU_ATOMIC_CAS(T)                         \
  inline T atomicCAS(T* address, T compare, T val) { \
    T old = *address;                                \
    if (old == compare) *address = val;              \
    return old;                                      \
  }
LA_EMU_ATOMIC_CAS(int)
LA_EMU_ATOMIC_CAS(unsigned)
LA_EMU_ATOMIC_CAS(unsigned long long)
#undef LA_EMU_ATOMIC_CAS

// ---- math ---------------------------------------------------------------------------------------
// The fast intrinsics are exact here (the GPU's are approximations): compare with a tolerance.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fsub_rn(float x, float y) { return x - y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __fmaf_rn(float x, float y, float z) { return std::fma(x, y, z); }
inline float __saturatef(float x) { return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline unsigned __float_as_uint(float x) { return ::la::emu::detail::from_raw<unsigned>(::la::emu::detail::to_raw(x)); }
inline float __uint_as_float(unsigned x) { return ::la::emu::detail::from_raw<float>(::la::emu::detail::to_raw(x)); }
inline int __float_as_int(float x) { return ::la::emu::detail::from_raw<int>(::la::emu::detail::to_raw(x)); }
inline float __int_as_float(int x) { return ::la::emu::detail::from_raw<float>(::la::emu::detail::to_raw(x)); }
inline long long __double_as_longlong(double x) { return ::la::emu::detail::from_raw<long long>(::la::emu::detail::to_raw(x)); }
inline double __longlong_as_double(long long x) { return ::la::emu::detail::from_raw<double>(::la::emu::detail::to_raw(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }

// CUDA's global min/max: plain overloads (not templates), the same set as CUDA's, so a call is
// ambiguous or not exactly where nvcc says so. Mixed signedness compares as unsigned, as in CUDA.
#define LA_EMU_MINMAX(R, A, B)                                                                \
  inline R min(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
  inline R max(A a, B b) { return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); }
LA_EMU_MINMAX(int, int, int)
LA_EMU_MINMAX(unsigned, unsigned, unsigned)
LA_EMU_MINMAX(unsigned, int, unsigned)
LA_EMU_MINMAX(unsigned, unsigned, int)
LA_EMU_MINMAX(long, long, long)
LA_EMU_MINMAX(unsigned long, unsigned long, unsigned long)
LA_EMU_MINMAX(unsigned long, long, unsigned long)
LA_EMU_MINMAX(unsigned long, unsigned long, long)
LA_EMU_MINMAX(long long, long long, long long)
LA_EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
LA_EMU_MINMAX(unsigned long long, long long, unsigned long long)
LA_EMU_MINMAX(unsigned long long, unsigned long long, long long)
#undef LA_EMU_MINMAX
// floating point: fmin/fmax semantics (a NaN operand gives the other one)
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(float a, double b) { return std::fmin(double(a), b); }
inline double max(float a, double b) { return std::fmax(double(a), b); }
inline double min(double a, float b) { return std::fmin(a, double(b)); }
inline double max(double a, float b) { return std::fmax(a, double(b)); }

template <class T> inline T __ldg(const T* p) { return *p; }

[[noreturn]] inline void __trap() { ::la::emu::detail::device_fail("__trap() was called"); }

// ---- bfloat16 -----------------------------------------------------------------------------------
// 16-bit storage; conversions round to nearest even exactly as core/bf16.h (the CPU backend).
struct __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(::la::f32_to_bf16(f)) {}
  operator float() const { return ::la::bf16_to_f32(__x); }
};
static_assert(sizeof(__nv_bfloat16) == 2 && alignof(__nv_bfloat16) == 2, "bf16 must be 16-bit storage");
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return ::la::bf16_to_f32(h.__x); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
  __nv_bfloat16 h;
  h.__x = u;
  return h;
}

// ---- tensor cores: nvcuda::wmma, 16x16x16, bf16 inputs, float accumulators -----------------------
// Fragments are opaque on the GPU (which lane holds which element is unspecified), so here every
// lane holds the whole tile: x[] has 256 elements in row-major (m, n) / (m, k) / (k, n) order.
// Element-wise loops over x[0 .. num_elements) are portable; anything that assumes a lane-to-
// element mapping is not. Loads, stores and mma_sync are warp-collective: every lane of a whole
// warp must call them (checked). A store writes only this lane's share of the tile, so reading the
// tile back needs a __syncwarp()/__syncthreads() first, as on the GPU.
namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulator has only the 16x16x16 wmma shape");
  static_assert(std::is_same_v<Use, accumulator> ? std::is_same_v<T, float> : std::is_same_v<T, __nv_bfloat16>,
                "the emulator's wmma has bf16 matrix_a/matrix_b and float accumulators");
  static_assert(std::is_same_v<Use, accumulator> == std::is_same_v<Layout, void>,
                "matrix_a/matrix_b fragments need row_major or col_major; accumulators none");
  using element_type = T;
  static constexpr int num_elements = 256;
  T x[num_elements];
};

namespace detail {
inline void check_pointer(const void* p, unsigned ldm, size_t elem, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    ::la::emu::detail::device_fail(std::string("wmma::") + what + ": the pointer must be 32-byte aligned (256 bits)");
  if ((size_t(ldm) * elem) % 16 != 0)
    ::la::emu::detail::device_fail(std::string("wmma::") + what + ": ldm must be a multiple of 16 bytes (8 bf16, 4 floats)");
}
}  // namespace detail

template <class L>
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, __nv_bfloat16, L>& a, const __nv_bfloat16* p, unsigned ldm) {
  detail::check_pointer(p, ldm, 2, "load_matrix_sync");
  for (int m = 0; m < 16; m++)
    for (int k = 0; k < 16; k++) a.x[m * 16 + k] = std::is_same_v<L, row_major> ? p[m * ldm + k] : p[k * ldm + m];
  ::la::emu::detail::warp_op(::la::emu::detail::WarpOp::wmma_load, 0xffffffffu, 0, 0, 32);
}
template <class L>
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, __nv_bfloat16, L>& b, const __nv_bfloat16* p, unsigned ldm) {
  detail::check_pointer(p, ldm, 2, "load_matrix_sync");
  for (int k = 0; k < 16; k++)
    for (int n = 0; n < 16; n++) b.x[k * 16 + n] = std::is_same_v<L, row_major> ? p[k * ldm + n] : p[n * ldm + k];
  ::la::emu::detail::warp_op(::la::emu::detail::WarpOp::wmma_load, 0xffffffffu, 0, 0, 32);
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& c, const float* p, unsigned ldm, layout_t layout) {
  detail::check_pointer(p, ldm, 4, "load_matrix_sync");
  for (int m = 0; m < 16; m++)
    for (int n = 0; n < 16; n++) c.x[m * 16 + n] = layout == mem_row_major ? p[m * ldm + n] : p[n * ldm + m];
  ::la::emu::detail::warp_op(::la::emu::detail::WarpOp::wmma_load, 0xffffffffu, 0, 0, 32);
}
// The warp meets first, then each lane writes its 8 of the 256 elements.
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& c, unsigned ldm, layout_t layout) {
  detail::check_pointer(p, ldm, 4, "store_matrix_sync");
  ::la::emu::detail::warp_op(::la::emu::detail::WarpOp::wmma_store, 0xffffffffu, 0, 0, 32);
  for (unsigned e = ::la::emu::detail::lane_id(); e < 256; e += 32) {
    unsigned m = e / 16, n = e % 16;
    (layout == mem_row_major ? p[m * ldm + n] : p[n * ldm + m]) = c.x[e];
  }
}
template <class LA, class LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  ::la::emu::detail::warp_op(::la::emu::detail::WarpOp::wmma_mma, 0xffffffffu, 0, 0, 32);
  float a32[256], b32[256], out[256];  // products of bf16 values are exact in float
  for (int e = 0; e < 256; e++) a32[e] = float(a.x[e]), b32[e] = float(b.x[e]);
  for (int m = 0; m < 16; m++)
    for (int n = 0; n < 16; n++) {
      float s = c.x[m * 16 + n];
      for (int k = 0; k < 16; k++) s += a32[m * 16 + k] * b32[k * 16 + n];
      out[m * 16 + n] = s;
    }
  std::memcpy(d.x, out, sizeof out);  // d may be c
}
template <class Use, class T, class L, class V>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, const V& v) {
  for (auto& e : f.x) e = T(v);
}

}  // namespace nvcuda::wmma
