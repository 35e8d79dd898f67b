// The matmul family on the GPU (kernels.h), fp32 accumulation; cpu/matmul.cpp is the reference.
// w (N, K) is f32, or bf16 bits (uint16_t).
//   forward          y (M, N) = x (M, K) · wᵀ
//   backward         dx (M, K) = dy (M, N) · w
//   weight gradient  dw (N, K) = dyᵀ (N, M) · x (M, K)   (trainable f32 weights only)
// and the bias add and bias gradient of a trainable linear layer (at the end).
//
// Engines, in order:
//   - forward with M <= 8 (decoding): a matrix-vector kernel streaming w once with 16-byte loads.
//     It is bound by memory bandwidth, and keeps x in f32 like the CPU's decode path.
//   - cuBLASLt, loaded at run time with dlopen (so neither building nor loading the addon needs it):
//     bf16 weights as bf16 A/B (x rounded to bf16 first) with f32 C/D; f32 weights all f32. Both use
//     CUBLAS_COMPUTE_32F, which never rounds f32 inputs to TF32.
//   - otherwise our own kernels: a WMMA bf16 tensor-core GEMM for bf16 weights (x rounded to bf16
//     while it is staged), and a SIMT fp32 GEMM for f32 weights (f32 products, as the CPU).
// LLAMA_ADAPTER_GEMM=own forces our kernels; =cublaslt makes a missing or failing cuBLASLt an error
// (never a quiet switch). Without it, a cuBLASLt failure switches the process to our kernels and
// gemm_engine() says so, with the reason: the GPU check reports the engine at the end of each phase.
// The emulator build compiles the same loader but opens only the file LLAMA_ADAPTER_CUBLASLT names
// (tests give it a library that fails on purpose); without one it runs our kernels.
//
// The GEMMs share one view: C (R, Nc) = A (R, Kd) · B (Kd, Nc), A f32 row-major (x or dy), B the
// weight read in place:
//   forward   R = M, Nc = N, Kd = K, B[k][n] = w[n * K + k]
//   backward  R = M, Nc = K, Kd = N, B[k][n] = w[k * K + n]
//   weight gradient  R = N, Nc = K, Kd = M, A[r][k] = dy[k * N + r] (read transposed), B[k][n] = x[k * K + n]
#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>

#include "../core/bf16.h"
#include "compat.h"
#include "kernels.h"

#include <dlfcn.h>
#ifndef LA_CUDA_EMULATOR
#define LA_UNROLL _Pragma("unroll")
#else
#define LA_UNROLL  // g++ -Wall warns on an unknown #pragma unroll
#endif

namespace la::cuda {
namespace {

constexpr int64_t kSmallM = 8;  // forward with up to this many rows: the matrix-vector kernel

__device__ inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---- decode: matrix-vector ----------------------------------------------------------------------
// y (MR, N) = x (MR, K) · wᵀ. One warp owns RN rows of w and walks them together: each lane loads
// 16 bytes of each row per step (U steps in flight), so every x value read (from L1) serves RN rows.
// Rows are independent, so no block-level synchronisation; the warp sums its lanes with shuffles.
constexpr int kMvThreads = 256;

__device__ inline float bf16_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ inline float bf16_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }

// dot of 16 bytes of a weight row (8 bf16 or 4 f32) with the matching x values
template <class W> __device__ inline float dot16(float4 wv, const float* xk);
template <> __device__ inline float dot16<uint16_t>(float4 wv, const float* xk) {
  float4 a = *reinterpret_cast<const float4*>(xk), b = *reinterpret_cast<const float4*>(xk + 4);
  uint32_t u0 = __float_as_uint(wv.x), u1 = __float_as_uint(wv.y), u2 = __float_as_uint(wv.z),
           u3 = __float_as_uint(wv.w);
  float s = a.x * bf16_lo(u0);
  s = fmaf(a.y, bf16_hi(u0), s);
  s = fmaf(a.z, bf16_lo(u1), s);
  s = fmaf(a.w, bf16_hi(u1), s);
  s = fmaf(b.x, bf16_lo(u2), s);
  s = fmaf(b.y, bf16_hi(u2), s);
  s = fmaf(b.z, bf16_lo(u3), s);
  return fmaf(b.w, bf16_hi(u3), s);
}
template <> __device__ inline float dot16<float>(float4 wv, const float* xk) {
  float4 a = *reinterpret_cast<const float4*>(xk);
  float s = a.x * wv.x;
  s = fmaf(a.y, wv.y, s);
  s = fmaf(a.z, wv.z, s);
  return fmaf(a.w, wv.w, s);
}
__device__ inline float weight_at(const uint16_t* w, int64_t i) { return ::la::bf16_to_f32(w[i]); }
__device__ inline float weight_at(const float* w, int64_t i) { return w[i]; }

// vec: K is a multiple of 16 bytes' worth of W and x, w are 16-byte aligned, so every row is too.
template <class W, int MR, int RN>
__global__ void __launch_bounds__(kMvThreads)
    matvec_kernel(float* __restrict__ y, const float* __restrict__ x, const W* __restrict__ w, int64_t N, int64_t K,
                  bool vec) {
  constexpr int E = 16 / int(sizeof(W));  // weights per 16-byte load
  constexpr int U = 4 / RN;               // steps in flight per row: RN * U = 4 loads per lane
  const int lane = int(threadIdx.x) % 32;
  const int64_t n0 = (int64_t(blockIdx.x) * (kMvThreads / 32) + threadIdx.x / 32) * RN;
  if (n0 >= N) return;  // the whole warp leaves together
  const W* rows[RN];
  for (int r = 0; r < RN; r++) rows[r] = w + min64(n0 + r, N - 1) * K;  // past the end: repeat the last row
  float acc[MR][RN];
  for (int m = 0; m < MR; m++)
    for (int r = 0; r < RN; r++) acc[m][r] = 0.f;

  int64_t k_done = 0;
  if (vec) {
    const int chunks = int(K / E), xk = int(K);  // x holds MR * K < 2^31 values
    int c = lane;
    for (; c + 32 * (U - 1) < chunks; c += 32 * U) {
      float4 wv[U][RN];
LA_UNROLL
      for (int u = 0; u < U; u++)
LA_UNROLL
        for (int r = 0; r < RN; r++) wv[u][r] = reinterpret_cast<const float4*>(rows[r])[c + 32 * u];
LA_UNROLL
      for (int u = 0; u < U; u++)
LA_UNROLL
        for (int m = 0; m < MR; m++)
LA_UNROLL
          for (int r = 0; r < RN; r++) acc[m][r] += dot16<W>(wv[u][r], x + (m * xk + (c + 32 * u) * E));
    }
    if constexpr (U > 1) {
      for (; c < chunks; c += 32) {
LA_UNROLL
        for (int r = 0; r < RN; r++) {
          float4 wv = reinterpret_cast<const float4*>(rows[r])[c];
LA_UNROLL
          for (int m = 0; m < MR; m++) acc[m][r] += dot16<W>(wv, x + (m * xk + c * E));
        }
      }
    }
    k_done = int64_t(chunks) * E;
  }
  for (int64_t k = k_done + lane; k < K; k += 32) {  // unaligned rows, or none: one value per lane
LA_UNROLL
    for (int r = 0; r < RN; r++) {
      float wk = weight_at(rows[r], k);
LA_UNROLL
      for (int m = 0; m < MR; m++) acc[m][r] = fmaf(x[m * K + k], wk, acc[m][r]);
    }
  }

LA_UNROLL
  for (int m = 0; m < MR; m++)
LA_UNROLL
    for (int r = 0; r < RN; r++) {
      float v = acc[m][r];
      for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == m * RN + r && n0 + r < N) y[m * N + n0 + r] = v;  // lanes share the stores
    }
}

template <class W, int MR>
void launch_matvec_rows(float* y, const float* x, const W* w, int64_t N, int64_t K, bool vec) {
  // More rows per warp as M grows keeps the x reads (M per weight load) off the critical path.
  constexpr int RN = MR <= 2 ? 1 : MR <= 4 ? 2 : 4;
  const int64_t warps = (N + RN - 1) / RN;
  LA_LAUNCH(blocks_for(warps, kMvThreads / 32), kMvThreads, 0, matvec_kernel<W, MR, RN>)(y, x, w, N, K, vec);
}

template <class W>
void launch_matvec(float* y, const float* x, const W* w, int64_t M, int64_t N, int64_t K) {
  constexpr int E = 16 / int(sizeof(W));
  const bool vec = K % E == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  switch (M) {
    case 1: return launch_matvec_rows<W, 1>(y, x, w, N, K, vec);
    case 2: return launch_matvec_rows<W, 2>(y, x, w, N, K, vec);
    case 3: return launch_matvec_rows<W, 3>(y, x, w, N, K, vec);
    case 4: return launch_matvec_rows<W, 4>(y, x, w, N, K, vec);
    case 5: return launch_matvec_rows<W, 5>(y, x, w, N, K, vec);
    case 6: return launch_matvec_rows<W, 6>(y, x, w, N, K, vec);
    case 7: return launch_matvec_rows<W, 7>(y, x, w, N, K, vec);
    default: return launch_matvec_rows<W, 8>(y, x, w, N, K, vec);
  }
}

// ---- tile order ------------------------------------------------------------------------------------
// Blocks run in groups of kGroup row tiles: consecutive blocks share a weight tile while it is in
// L2, and a group's rows of A stay in L2 while the group sweeps the weight (the LM head's w is far
// larger than L2). Dimensions are below 2^31 (checked by the launcher); offsets into the matrices
// are 64-bit.
constexpr int kGroup = 8;

__device__ inline void tile_of(int block, int tiles_m, int tiles_n, int& tm, int& tn) {
  const int per_group = kGroup * tiles_n;
  const int first = block / per_group * kGroup, in_group = block % per_group;
  const int rows = tiles_m - first < kGroup ? tiles_m - first : kGroup;
  tm = first + in_group % rows;
  tn = in_group / rows;
}

// 4 consecutive floats at p, zeros from element `valid` on (valid <= 0: all zero); vec: one
// 16-byte load (then valid is 0 or >= 4)
__device__ inline float4 load4(const float* p, int valid, bool vec) {
  float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
  if (valid <= 0) return v;
  if (vec) return *reinterpret_cast<const float4*>(p);
  v.x = p[0];
  if (valid > 1) v.y = p[1];
  if (valid > 2) v.z = p[2];
  if (valid > 3) v.w = p[3];
  return v;
}

// 8 consecutive bf16 at p as bits in a float4, zeros from element `valid` on; vec as load4
__device__ inline float4 load8_bf16(const uint16_t* p, int valid, bool vec) {
  if (valid <= 0) return make_float4(0.f, 0.f, 0.f, 0.f);
  if (vec) return *reinterpret_cast<const float4*>(p);
  uint32_t u[4] = {0, 0, 0, 0};
LA_UNROLL
  for (int j = 0; j < 8; j++)  // unrolled: u stays in registers
    if (j < valid) u[j / 2] |= uint32_t(p[j]) << (16 * (j % 2));
  return make_float4(__uint_as_float(u[0]), __uint_as_float(u[1]), __uint_as_float(u[2]), __uint_as_float(u[3]));
}

// ---- own GEMM, bf16 weights: WMMA tensor cores ---------------------------------------------------
// 128 x 128 block tile, 32-deep K slices, 8 warps as 2 (rows) x 4 (cols), each 64 x 32 = 4 x 2
// fragments of 16x16x16 (bf16 in, f32 accumulators). Shared memory holds two slices (double
// buffer): while the tensor cores work on one, the next slice's loads are in flight in registers.
// Both directions stage B as [n][k] (a column-major B): forward copies w's rows, backward
// transposes pairs of w rows while staging (a row-major B fragment costs registers that spill).
// Out-of-range rows, columns and k are zeros in shared memory; the epilogue writes only C's range.
namespace wmma = nvcuda::wmma;
constexpr int kTcThreads = 256;
constexpr int kTcBM = 128, kTcBN = 128, kTcBK = 32;
constexpr int kTcLd = kTcBK + 8;           // bf16 row pitch of both tiles (pad: fewer bank conflicts)
constexpr int kTcStageA = kTcBM * kTcLd;   // bf16 elements per stage: A [m][k]
constexpr int kTcStageB = kTcBN * kTcLd;   // B [n][k]

// two packed bf16 (round to nearest even, as core/bf16.h) with a at the lower address
__device__ inline uint32_t pack_bf16(float a, float b) {
  return uint32_t(::la::f32_to_bf16(a)) | uint32_t(::la::f32_to_bf16(b)) << 16;
}
// bf16 number j (0..7) of each of two 8-bf16 rows (as bits in float4s), packed: row a's low
__device__ inline uint32_t pair_bf16(float4 a, float4 b, int j) {
  const float fa = j < 2 ? a.x : j < 4 ? a.y : j < 6 ? a.z : a.w;
  const float fb = j < 2 ? b.x : j < 4 ? b.y : j < 6 ? b.z : b.w;
  const uint32_t ua = __float_as_uint(fa), ub = __float_as_uint(fb);
  return j % 2 ? (ua >> 16) | (ub & 0xffff0000u) : (ua & 0xffffu) | (ub << 16);
}

template <bool kBack>
__global__ void __launch_bounds__(kTcThreads, 2)
    gemm_bf16_kernel(float* __restrict__ C, const float* __restrict__ A, const uint16_t* __restrict__ W, int R, int Nc,
                     int Kd, int tiles_m, int tiles_n, bool vec_a, bool vec_w) {
  // 2 stages of A and B (40 KiB), reused as the epilogue's f32 staging
  __shared__ alignas(128) __nv_bfloat16 As[2 * kTcStageA];
  __shared__ alignas(128) __nv_bfloat16 Bs[2 * kTcStageB];

  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int wm = warp / 4, wn = warp % 4;  // warp tile: rows wm * 64, cols wn * 32
  int tm, tn;
  tile_of(int(blockIdx.x), tiles_m, tiles_n, tm, tn);
  const int m0 = tm * kTcBM, n0 = tn * kTcBN;
  const int64_t ldw = kBack ? Nc : Kd;

  // This thread's share of a slice at depth k0, 16 bytes at a time:
  //   A: 4 x 4 floats, rows m0 + tid/8 + 32i, columns k0 + (tid%8)*4
  //   B forward: 2 x 8 weights, w rows n0 + tid/4 + 64i, columns k0 + (tid%4)*8
  //   B backward: 2 x 8 weights, w rows k0 + 2*(tid%16) + i, columns n0 + (tid/16)*8
  const int a_row = m0 + tid / 8, a_col = (tid % 8) * 4;
  const float* a_src = A + int64_t(a_row) * Kd + a_col;
  const int b_row = kBack ? 2 * (tid % 16) : n0 + tid / 4, b_col = kBack ? n0 + (tid / 16) * 8 : (tid % 4) * 8;
  const uint16_t* b_src = W + b_row * ldw + b_col;  // backward: advanced by a slice's rows per load
  float4 ra[4];
  float4 rb[2];  // 8 bf16 each, as bits
  auto load = [&](int k0) {
    for (int i = 0; i < 4; i++)
      ra[i] = load4(a_src + i * 32 * int64_t(Kd) + k0, a_row + 32 * i < R ? Kd - (k0 + a_col) : 0, vec_a);
    for (int i = 0; i < 2; i++) {
      if (kBack)
        rb[i] = load8_bf16(b_src + i * ldw, k0 + b_row + i < Kd ? Nc - b_col : 0, vec_w);
      else
        rb[i] = load8_bf16(b_src + 64 * i * ldw + k0, b_row + 64 * i < Nc ? Kd - (k0 + b_col) : 0, vec_w);
    }
    if (kBack) b_src += kTcBK * ldw;
  };
  auto store = [&](int stage) {
    __nv_bfloat16* as = As + stage * kTcStageA;
    for (int i = 0; i < 4; i++) {
      uint32_t* d = reinterpret_cast<uint32_t*>(as + (tid / 8 + 32 * i) * kTcLd + a_col);
      d[0] = pack_bf16(ra[i].x, ra[i].y);
      d[1] = pack_bf16(ra[i].z, ra[i].w);
    }
    __nv_bfloat16* bs = Bs + stage * kTcStageB;
    if (kBack) {  // Bs[n][k, k+1] for the 8 columns n: (k, k+1) pairs of the two rows
      for (int j = 0; j < 8; j++)
        *reinterpret_cast<uint32_t*>(bs + ((tid / 16) * 8 + j) * kTcLd + b_row) = pair_bf16(rb[0], rb[1], j);
    } else {
      for (int i = 0; i < 2; i++) *reinterpret_cast<float4*>(bs + (tid / 4 + 64 * i) * kTcLd + b_col) = rb[i];
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.f);

  load(0);
  store(0);
  __syncthreads();
  for (int k0 = 0; k0 < Kd; k0 += kTcBK) {
    const int cur = (k0 / kTcBK) & 1;
    const bool more = k0 + kTcBK < Kd;
    if (more) load(k0 + kTcBK);  // in flight during the MMAs below
    const __nv_bfloat16* as = As + cur * kTcStageA + wm * 64 * kTcLd;
    const __nv_bfloat16* bs = Bs + cur * kTcStageB + wn * 32 * kTcLd;
LA_UNROLL
    for (int kk = 0; kk < kTcBK; kk += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb[2];
LA_UNROLL
      for (int j = 0; j < 2; j++) wmma::load_matrix_sync(fb[j], bs + j * 16 * kTcLd + kk, kTcLd);
LA_UNROLL
      for (int i = 0; i < 4; i++) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, as + i * 16 * kTcLd + kk, kTcLd);
LA_UNROLL
        for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
      }
    }
    // The other stage was last read before the previous barrier, so it can be refilled now.
    if (more) store(cur ^ 1);
    __syncthreads();
  }

  // Epilogue: each fragment goes through this warp's 16x16 f32 patch of shared memory (the A
  // stages are free after the last barrier), then 2 lanes per row write its in-range part.
  float* patch = reinterpret_cast<float*>(As) + warp * 256;
  const int pr = lane / 2, pc = (lane % 2) * 8;
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 2; j++) {
      wmma::store_matrix_sync(patch, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      const int row = m0 + wm * 64 + i * 16 + pr, col = n0 + wn * 32 + j * 16 + pc;
      if (row < R) {
        float* c = C + int64_t(row) * Nc + col;
        for (int e = 0; e < 8; e++)
          if (col + e < Nc) c[e] = patch[pr * 16 + pc + e];
      }
      __syncwarp();
    }
}

// ---- own GEMM, f32 weights: SIMT fp32 ---------------------------------------------------------------
// 128 x 128 block tile, 8-deep K slices, 256 threads each computing 8 x 8 outputs: rows
// {ty*4, 64 + ty*4} + 0..3 and columns {tx*4, 64 + tx*4} + 0..3 (split halves keep the shared
// memory reads conflict-free). Slices are transposed to [k][m] / [k][n] in shared memory, double
// buffered like the tensor-core kernel. kTransA (the weight gradient): A is stored transposed, as
// (Kd, R) row-major (dy), and loaded like the backward's B, 4 consecutive rows of A at one k.
constexpr int kFpThreads = 256;
constexpr int kFpBM = 128, kFpBN = 128, kFpBK = 8;
constexpr int kFpLd = kFpBM + 4;

template <bool kBack, bool kTransA = false>
__global__ void __launch_bounds__(kFpThreads, 2)
    gemm_f32_kernel(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ W, int R, int Nc,
                    int Kd, int tiles_m, int tiles_n, bool vec_a, bool vec_w, bool vec_c) {
  __shared__ alignas(16) float As[2][kFpBK][kFpLd];
  __shared__ alignas(16) float Bs[2][kFpBK][kFpLd];

  const int tid = int(threadIdx.x), tx = tid % 16, ty = tid / 16;
  int tm, tn;
  tile_of(int(blockIdx.x), tiles_m, tiles_n, tm, tn);
  const int m0 = tm * kFpBM, n0 = tn * kFpBN;
  const int64_t ldw = kBack ? Nc : Kd;

  // This thread's share of a slice at depth k0, 4 floats: A row m0 + tid/2 at k0 + (tid%2)*4
  // (kTransA: A rows m0 + (tid%32)*4 at k0 + tid/32); B forward: w row n0 + tid/2 at
  // k0 + (tid%2)*4; backward: w row k0 + tid/32 at n0 + (tid%32)*4.
  const int a_row = m0 + tid / 2, a_col = (tid % 2) * 4;
  const int at_k = tid / 32, at_row = m0 + (tid % 32) * 4;
  const float* a_src = kTransA ? A + int64_t(at_k) * R + at_row : A + int64_t(a_row) * Kd + a_col;
  const int b_row = kBack ? tid / 32 : n0 + tid / 2, b_col = kBack ? n0 + (tid % 32) * 4 : a_col;
  const float* b_src = W + b_row * ldw + b_col;
  float4 ra, rb;
  auto load = [&](int k0) {
    if (kTransA)
      ra = load4(a_src + int64_t(k0) * R, k0 + at_k < Kd ? R - at_row : 0, vec_a);
    else
      ra = load4(a_src + k0, a_row < R ? Kd - (k0 + a_col) : 0, vec_a);
    if (kBack)
      rb = load4(b_src + k0 * ldw, k0 + b_row < Kd ? Nc - b_col : 0, vec_w);
    else
      rb = load4(b_src + k0, b_row < Nc ? Kd - (k0 + b_col) : 0, vec_w);
  };
  auto store = [&](int st) {
    const int r = tid / 2;
    if (kTransA) {
      *reinterpret_cast<float4*>(&As[st][at_k][(tid % 32) * 4]) = ra;
    } else {
      As[st][a_col][r] = ra.x;
      As[st][a_col + 1][r] = ra.y;
      As[st][a_col + 2][r] = ra.z;
      As[st][a_col + 3][r] = ra.w;
    }
    if (kBack) {
      *reinterpret_cast<float4*>(&Bs[st][tid / 32][(tid % 32) * 4]) = rb;
    } else {
      Bs[st][a_col][r] = rb.x;
      Bs[st][a_col + 1][r] = rb.y;
      Bs[st][a_col + 2][r] = rb.z;
      Bs[st][a_col + 3][r] = rb.w;
    }
  };

  float acc[8][8];
  for (int i = 0; i < 8; i++)
    for (int j = 0; j < 8; j++) acc[i][j] = 0.f;

  load(0);
  store(0);
  __syncthreads();
  for (int k0 = 0; k0 < Kd; k0 += kFpBK) {
    const int cur = (k0 / kFpBK) & 1;
    const bool more = k0 + kFpBK < Kd;
    if (more) load(k0 + kFpBK);
LA_UNROLL
    for (int k = 0; k < kFpBK; k++) {
      float a[8], b[8];
      float4 a0 = *reinterpret_cast<const float4*>(&As[cur][k][ty * 4]);
      float4 a1 = *reinterpret_cast<const float4*>(&As[cur][k][64 + ty * 4]);
      float4 b0 = *reinterpret_cast<const float4*>(&Bs[cur][k][tx * 4]);
      float4 b1 = *reinterpret_cast<const float4*>(&Bs[cur][k][64 + tx * 4]);
      a[0] = a0.x, a[1] = a0.y, a[2] = a0.z, a[3] = a0.w, a[4] = a1.x, a[5] = a1.y, a[6] = a1.z, a[7] = a1.w;
      b[0] = b0.x, b[1] = b0.y, b[2] = b0.z, b[3] = b0.w, b[4] = b1.x, b[5] = b1.y, b[6] = b1.z, b[7] = b1.w;
LA_UNROLL
      for (int i = 0; i < 8; i++)
LA_UNROLL
        for (int j = 0; j < 8; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    if (more) store(cur ^ 1);
    __syncthreads();
  }

  for (int i = 0; i < 8; i++) {
    const int row = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
    if (row >= R) continue;
    for (int h = 0; h < 2; h++) {
      const int col = n0 + h * 64 + tx * 4;
      float* c = C + int64_t(row) * Nc + col;
      const float* v = acc[i] + 4 * h;
      if (vec_c && col + 3 < Nc) {
        *reinterpret_cast<float4*>(c) = make_float4(v[0], v[1], v[2], v[3]);
      } else {
        for (int e = 0; e < 4; e++)
          if (col + e < Nc) c[e] = v[e];
      }
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// C (R, Nc) = A (R, Kd) · B with B read from w as described at the top.
void own_gemm(bool back, float* C, const float* A, const void* w, bool w_bf16, int64_t R, int64_t Nc, int64_t Kd) {
  constexpr int64_t kMaxDim = int64_t(1) << 31;
  LA_CHECK(R < kMaxDim && Nc < kMaxDim && Kd < kMaxDim, "matmul dimensions must be below 2^31 (", R, ", ", Nc, ", ",
           Kd, ")");
  const int64_t ldw = back ? Nc : Kd;
  const int64_t tiles_m = (R + 127) / 128, tiles_n = (Nc + 127) / 128;  // both kernels: 128 x 128 tiles
  LA_CHECK(tiles_m * tiles_n < kMaxDim, "matmul too large (", R, " x ", Nc, ")");
  const unsigned blocks = unsigned(tiles_m * tiles_n);
  const int r = int(R), nc = int(Nc), kd = int(Kd), tm = int(tiles_m), tn = int(tiles_n);
  const bool vec_a = Kd % 4 == 0 && aligned16(A);
  if (w_bf16) {
    const bool vec_w = ldw % 8 == 0 && aligned16(w);
    const uint16_t* wb = static_cast<const uint16_t*>(w);
    if (back)
      LA_LAUNCH(blocks, kTcThreads, 0, gemm_bf16_kernel<true>)(C, A, wb, r, nc, kd, tm, tn, vec_a, vec_w);
    else
      LA_LAUNCH(blocks, kTcThreads, 0, gemm_bf16_kernel<false>)(C, A, wb, r, nc, kd, tm, tn, vec_a, vec_w);
  } else {
    const bool vec_w = ldw % 4 == 0 && aligned16(w), vec_c = Nc % 4 == 0 && aligned16(C);
    const float* wf = static_cast<const float*>(w);
    if (back)
      LA_LAUNCH(blocks, kFpThreads, 0, gemm_f32_kernel<true>)(C, A, wf, r, nc, kd, tm, tn, vec_a, vec_w, vec_c);
    else
      LA_LAUNCH(blocks, kFpThreads, 0, gemm_f32_kernel<false>)(C, A, wf, r, nc, kd, tm, tn, vec_a, vec_w, vec_c);
  }
}

// The weight gradient's C (N, K) = dyᵀ (N, M) · x (M, K) with our SIMT kernel: A = dy read
// transposed, B = x read as the backward reads w (B[k][n] = x[k * K + n]).
void own_weight_grad(float* dw, const float* dy, const float* x, int64_t M, int64_t N, int64_t K) {
  constexpr int64_t kMaxDim = int64_t(1) << 31;
  LA_CHECK(M < kMaxDim && N < kMaxDim && K < kMaxDim, "matmul dimensions must be below 2^31 (", M, ", ", N, ", ", K,
           ")");
  const int64_t tiles_m = (N + 127) / 128, tiles_n = (K + 127) / 128;
  LA_CHECK(tiles_m * tiles_n < kMaxDim, "matmul too large (", N, " x ", K, ")");
  const bool vec_a = N % 4 == 0 && aligned16(dy), vec_w = K % 4 == 0 && aligned16(x), vec_c = K % 4 == 0 && aligned16(dw);
  LA_LAUNCH(unsigned(tiles_m * tiles_n), kFpThreads, 0, gemm_f32_kernel<true, true>)(
      dw, dy, x, int(N), int(K), int(M), int(tiles_m), int(tiles_n), vec_a, vec_w, vec_c);
}

// ---- engine choice ----------------------------------------------------------------------------------
enum class GemmMode { kAuto, kOwn, kCublasLt };
enum class Gemm { kForward, kBackward, kWeightGrad };  // the three products of the file's top comment

GemmMode gemm_mode() {
  const char* e = std::getenv("LLAMA_ADAPTER_GEMM");
  std::string v = e ? e : "";
  if (v.empty() || v == "auto") return GemmMode::kAuto;
  if (v == "own") return GemmMode::kOwn;
  if (v == "cublaslt") return GemmMode::kCublasLt;
  fail("LLAMA_ADAPTER_GEMM must be \"own\" or \"cublaslt\" (or unset), not \"", v, "\"");
}

constexpr const char* kOwnEngine = "own tensor-core kernel";

// ---- cuBLASLt, loaded at run time --------------------------------------------------------------------
// Our own declarations of the few types and values used, so nothing of cuBLAS is needed to build.
// Values from the CUDA 12.6.3 headers cublasLt.h and cublas_api.h and from CUDA 13.0's
// library_types.h; cuBLASLt keeps them across releases (new members are appended), and public
// bindings written for cuBLASLt 13 use the same numbers and struct layouts.
namespace lt {
using Status = int;  // cublasStatus_t (cublas_api.h): CUBLAS_STATUS_SUCCESS = 0
constexpr Status kSuccess = 0;
struct Context;
using Handle = Context*;  // cublasLtHandle_t
using Desc = void*;       // cublasLtMatmulDesc_t, cublasLtMatrixLayout_t, cublasLtMatmulPreference_t:
using Layout = void*;     // pointers to opaque descriptors
using Preference = void*;
struct Algo {  // cublasLtMatmulAlgo_t (cublasLt.h): uint64_t data[8]
  uint64_t data[8];
};
struct HeuristicResult {  // cublasLtMatmulHeuristicResult_t (cublasLt.h), in this order
  Algo algo;
  size_t workspaceSize;
  Status state;
  float wavesCount;
  int reserved[4];
};
static_assert(sizeof(Algo) == 64 && sizeof(HeuristicResult) == 96, "cuBLASLt struct sizes");
constexpr int kR32F = 0, kR16BF = 14;  // cudaDataType_t (library_types.h): CUDA_R_32F, CUDA_R_16BF
constexpr int kCompute32F = 68;        // cublasComputeType_t (cublas_api.h): CUBLAS_COMPUTE_32F
constexpr int32_t kOpN = 0, kOpT = 1;  // cublasOperation_t (cublas_api.h): CUBLAS_OP_N, CUBLAS_OP_T
// cublasLtMatmulDescAttributes_t (cublasLt.h): CUBLASLT_MATMUL_DESC_TRANSA / _TRANSB, int32_t values
constexpr int kDescTransA = 3, kDescTransB = 4;
// cublasLtMatmulPreferenceAttributes_t (cublasLt.h): CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
// (uint64_t), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_{A,B,C,D}_BYTES (uint32_t, default 256)
constexpr int kPrefMaxWorkspace = 1, kPrefAlignA = 5, kPrefAlignB = 6, kPrefAlignC = 7, kPrefAlignD = 8;

struct Api {
  Status (*Create)(Handle*);
  size_t (*GetVersion)();
  Status (*DescCreate)(Desc*, int compute_type, int scale_type);
  Status (*DescSetAttribute)(Desc, int, const void*, size_t);
  Status (*DescDestroy)(Desc);
  Status (*LayoutCreate)(Layout*, int type, uint64_t rows, uint64_t cols, int64_t ld);
  Status (*LayoutDestroy)(Layout);
  Status (*PreferenceCreate)(Preference*);
  Status (*PreferenceSetAttribute)(Preference, int, const void*, size_t);
  Status (*PreferenceDestroy)(Preference);
  Status (*AlgoGetHeuristic)(Handle, Desc, Layout, Layout, Layout, Layout, Preference, int, HeuristicResult*, int*);
  Status (*Matmul)(Handle, Desc, const void* alpha, const void* A, Layout, const void* B, Layout, const void* beta,
                   const void* C, Layout, void* D, Layout, const Algo*, void* workspace, size_t workspace_bytes,
                   void* stream);
};
}  // namespace lt

constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // NVIDIA's recommendation for Hopper
constexpr size_t kMaxPlans = 256;  // plans kept (descriptors + chosen algo), one per shape

// (M, N, K, w_bf16, which GEMM, alignment of w, of the activation, of the output)
using PlanKey = std::tuple<int64_t, int64_t, int64_t, bool, Gemm, uint32_t, uint32_t, uint32_t>;
struct Plan {
  lt::Desc desc = nullptr;
  lt::Layout a = nullptr, b = nullptr, d = nullptr;
  lt::Algo algo{};
  bool found = false;  // false: no algo for this shape, our kernel runs it
};

uint32_t alignment(const void* p) {
  uint32_t a = 256;
  while (a > 1 && reinterpret_cast<uintptr_t>(p) % a) a /= 2;
  return a;
}

class CublasLt {
 public:
  static CublasLt& get() {
    static CublasLt instance;
    return instance;
  }

  // The engine's name for gemm_engine().
  std::string describe() {
    std::lock_guard<std::mutex> lock(mu_);
    if (usable_) return "cublasLt " + version_ + " (" + path_ + ")";
    if (mode_ == GemmMode::kCublasLt) return "error: LLAMA_ADAPTER_GEMM=cublaslt, but " + why_not_;
    return std::string(kOwnEngine) + " (" + why_not_ + ")";
  }

  // D = the GEMM of the file's top comment through cuBLASLt; false when it is not used (then our
  // kernel runs it). act is x (forward) or dy (backward, weight gradient), f32; for the weight
  // gradient w is x (f32).
  bool run(Gemm kind, float* out, const float* act, const void* w, bool w_bf16, int64_t M, int64_t N, int64_t K) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!usable_) {
      // forced: every later matmul fails as the first did (never our kernel behind the user's back)
      LA_CHECK(mode_ != GemmMode::kCublasLt, "LLAMA_ADAPTER_GEMM=cublaslt, but ", why_not_);
      return false;
    }
    if (!ready()) return false;
    const int64_t act_cols = kind == Gemm::kForward ? K : N;
    // bf16 weights take bf16 activations: a fresh copy rounded as core/bf16.h, made before the
    // plan so that the plan is made for the alignment the copy really has
    Scratch act_bf16(w_bf16 ? size_t(M * act_cols) * 2 : 0);
    const void* b = w_bf16 ? act_bf16.as<void>() : act;
    PlanKey key{M, N, K, w_bf16, kind, alignment(w), alignment(b), alignment(out)};
    const Plan* plan = find_plan(key);
    if (!plan) return false;  // cuBLASLt failed (now off) or has no algo for this shape
    if (w_bf16) f32_to_bf16(act_bf16.as<uint16_t>(), act, M * act_cols);
    const float one = 1.f, zero = 0.f;
    lt::Status s = api_.Matmul(handle_, plan->desc, &one, w, plan->a, b, plan->b, &zero, out, plan->d, out, plan->d,
                               &plan->algo, workspace_, workspace_bytes_, stream());
    if (s != lt::kSuccess) {
      give_up("cublasLtMatmul returned status " + std::to_string(s) + shape(M, N, K, w_bf16, kind));
      return false;
    }
    check_launch("cublasLtMatmul");
    return true;
  }

 private:
  CublasLt() {
    mode_ = gemm_mode();
    if (mode_ == GemmMode::kOwn) {
      why_not_ = "LLAMA_ADAPTER_GEMM=own";
      return;
    }
    std::string tried;
    const char* env = std::getenv("LLAMA_ADAPTER_CUBLASLT");
#ifndef LA_CUDA_EMULATOR
    const char* names[] = {env ? env : "", "libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"};
#else
    // the emulator's "device memory" is host memory: only a library a test names may see it
    if (!env || !*env) {
      why_not_ = "the CUDA emulator build loads cuBLASLt only from the file LLAMA_ADAPTER_CUBLASLT names, and it is unset";
      LA_CHECK(mode_ != GemmMode::kCublasLt, "LLAMA_ADAPTER_GEMM=cublaslt, but ", why_not_);
      return;
    }
    const char* names[] = {env};
#endif
    for (const char* name : names) {
      if (!*name) continue;
      lib_ = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib_) break;
      const char* e = dlerror();
      tried += std::string(tried.empty() ? "" : "; ") + (e ? e : name);
    }
    if (!lib_) {
      why_not_ = "libcublasLt not found: " + tried +
                 "; install it (pip install nvidia-cublas) and put its lib folder on LD_LIBRARY_PATH, or name the "
                 "file with LLAMA_ADAPTER_CUBLASLT";
      LA_CHECK(mode_ != GemmMode::kCublasLt, "LLAMA_ADAPTER_GEMM=cublaslt, but ", why_not_);
      return;
    }
    std::string missing;
    auto sym = [&](auto& f, const char* name) {
      void* p = dlsym(lib_, name);
      if (!p) missing += std::string(missing.empty() ? "" : ", ") + name;
      f = reinterpret_cast<std::remove_reference_t<decltype(f)>>(p);
    };
    sym(api_.Create, "cublasLtCreate");
    sym(api_.GetVersion, "cublasLtGetVersion");
    sym(api_.DescCreate, "cublasLtMatmulDescCreate");
    sym(api_.DescSetAttribute, "cublasLtMatmulDescSetAttribute");
    sym(api_.DescDestroy, "cublasLtMatmulDescDestroy");
    sym(api_.LayoutCreate, "cublasLtMatrixLayoutCreate");
    sym(api_.LayoutDestroy, "cublasLtMatrixLayoutDestroy");
    sym(api_.PreferenceCreate, "cublasLtMatmulPreferenceCreate");
    sym(api_.PreferenceSetAttribute, "cublasLtMatmulPreferenceSetAttribute");
    sym(api_.PreferenceDestroy, "cublasLtMatmulPreferenceDestroy");
    sym(api_.AlgoGetHeuristic, "cublasLtMatmulAlgoGetHeuristic");
    sym(api_.Matmul, "cublasLtMatmul");
    // the file itself, for the report (dlopen may have searched for a bare name)
    Dl_info info;
    path_ = api_.Create && dladdr(reinterpret_cast<void*>(api_.Create), &info) && info.dli_fname ? info.dli_fname : "?";
    if (!missing.empty()) {
      why_not_ = path_ + " lacks " + missing + " (too old a cuBLASLt?)";
      LA_CHECK(mode_ != GemmMode::kCublasLt, "LLAMA_ADAPTER_GEMM=cublaslt, but ", why_not_);
      return;
    }
    const size_t v = api_.GetVersion();  // CUBLAS_VERSION: major * 10000 + minor * 100 + patch
    version_ = std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
    usable_ = true;
  }

  // The handle and workspace, made at the first matmul (on the thread that runs the ops, with the
  // device chosen) rather than when only the engine's name is asked for.
  bool ready() {
    if (handle_) return true;
    lt::Status s = api_.Create(&handle_);
    if (s != lt::kSuccess) {
      handle_ = nullptr;
      give_up("cublasLtCreate returned status " + std::to_string(s));
      return false;
    }
    // the workspace exists before the first plan, which is made for its size; cuBLASLt wants it
    // 256-byte aligned (cudaMalloc's alignment), else it runs without one
    try {
      workspace_ = alloc(kWorkspaceBytes);
      workspace_bytes_ = kWorkspaceBytes;
      if (alignment(workspace_) < 256) {
        release(workspace_);
        workspace_ = nullptr;
        workspace_bytes_ = 0;
      }
    } catch (const Error&) {
      workspace_ = nullptr;  // cuBLASLt still works without one, with fewer algos
      workspace_bytes_ = 0;
    }
    return true;
  }

  static std::string shape(int64_t M, int64_t N, int64_t K, bool w_bf16, Gemm kind) {
    const char* what = kind == Gemm::kForward ? "forward" : kind == Gemm::kBackward ? "backward" : "weight gradient";
    return std::string(" (") + what + " M=" + std::to_string(M) + " N=" +
           std::to_string(N) + " K=" + std::to_string(K) + (w_bf16 ? " bf16" : " f32") + ")";
  }

  // cuBLASLt misbehaved: our kernel from now on (or an error when it was required).
  void give_up(const std::string& why) {
    usable_ = false;
    why_not_ = "cublasLt " + version_ + " (" + path_ + ") failed: " + why;
    LA_CHECK(mode_ != GemmMode::kCublasLt, "LLAMA_ADAPTER_GEMM=cublaslt, but ", why_not_);
  }

  void destroy(Plan& p) {
    if (p.a) api_.LayoutDestroy(p.a);
    if (p.b) api_.LayoutDestroy(p.b);
    if (p.d) api_.LayoutDestroy(p.d);
    if (p.desc) api_.DescDestroy(p.desc);
    p = Plan{};
  }

  // The plan for a shape, made once. Null when cuBLASLt fails (it is then off) or offers no algo.
  //
  // cuBLASLt is column-major; a row-major (r, c) matrix is the column-major (c, r) one, its
  // transpose, with leading dimension c. So, in column-major terms (the layout describes the
  // stored matrix, before its op):
  //   forward   yᵀ (N, M) = (wᵀ)ᵀ · xᵀ:  A = w as (K, N) ld K with op T, B = x as (K, M) ld K,
  //             D = y as (N, M) ld N;  m = N, n = M, k = K
  //   backward  dxᵀ (K, M) = wᵀ · dyᵀ:   A = w as (K, N) ld K with op N, B = dy as (N, M) ld N,
  //             D = dx as (K, M) ld K;  m = K, n = M, k = N
  //   weight gradient  dWᵀ (K, N) = xᵀ · dy:  A = x as (K, M) ld K with op N, B = dy as (N, M) ld N
  //             with op T, D = dW as (K, N) ld K;  m = K, n = N, k = M
  const Plan* find_plan(const PlanKey& key) {
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second.found ? &it->second : nullptr;
    if (plans_.size() >= kMaxPlans) {  // many shapes (varying token counts): start over
      for (auto& kv : plans_) destroy(kv.second);
      plans_.clear();
    }
    const auto [M, N, K, w_bf16, kind, align_w, align_act, align_out] = key;
    Plan p;
    const int in_type = w_bf16 ? lt::kR16BF : lt::kR32F;
    const int32_t op_a = kind == Gemm::kForward ? lt::kOpT : lt::kOpN;
    const int32_t op_b = kind == Gemm::kWeightGrad ? lt::kOpT : lt::kOpN;
    // the stored matrices (rows, cols, ld) in column-major terms, as above
    const bool fwd = kind == Gemm::kForward, wgrad = kind == Gemm::kWeightGrad;
    const uint64_t a_rows = uint64_t(K), a_cols = uint64_t(wgrad ? M : N);
    const uint64_t b_rows = uint64_t(fwd ? K : N), b_cols = uint64_t(M);
    const uint64_t d_rows = uint64_t(fwd ? N : K), d_cols = uint64_t(wgrad ? N : M);
    const uint64_t ws = workspace_bytes_;
    lt::Preference pref = nullptr;
    std::string failed;
    auto ok = [&](lt::Status s, const char* what) {
      if (s != lt::kSuccess && failed.empty()) failed = std::string(what) + " returned status " + std::to_string(s);
      return failed.empty();
    };
    if (ok(api_.DescCreate(&p.desc, lt::kCompute32F, lt::kR32F), "cublasLtMatmulDescCreate") &&
        ok(api_.DescSetAttribute(p.desc, lt::kDescTransA, &op_a, sizeof op_a), "cublasLtMatmulDescSetAttribute") &&
        ok(api_.DescSetAttribute(p.desc, lt::kDescTransB, &op_b, sizeof op_b), "cublasLtMatmulDescSetAttribute") &&
        ok(api_.LayoutCreate(&p.a, in_type, a_rows, a_cols, int64_t(a_rows)), "cublasLtMatrixLayoutCreate") &&
        ok(api_.LayoutCreate(&p.b, in_type, b_rows, b_cols, int64_t(b_rows)), "cublasLtMatrixLayoutCreate") &&
        ok(api_.LayoutCreate(&p.d, lt::kR32F, d_rows, d_cols, int64_t(d_rows)), "cublasLtMatrixLayoutCreate") &&
        ok(api_.PreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate") &&
        ok(api_.PreferenceSetAttribute(pref, lt::kPrefMaxWorkspace, &ws, sizeof ws),
           "cublasLtMatmulPreferenceSetAttribute") &&
        ok(api_.PreferenceSetAttribute(pref, lt::kPrefAlignA, &align_w, sizeof align_w),
           "cublasLtMatmulPreferenceSetAttribute") &&
        ok(api_.PreferenceSetAttribute(pref, lt::kPrefAlignB, &align_act, sizeof align_act),
           "cublasLtMatmulPreferenceSetAttribute") &&
        ok(api_.PreferenceSetAttribute(pref, lt::kPrefAlignC, &align_out, sizeof align_out),
           "cublasLtMatmulPreferenceSetAttribute") &&
        ok(api_.PreferenceSetAttribute(pref, lt::kPrefAlignD, &align_out, sizeof align_out),
           "cublasLtMatmulPreferenceSetAttribute")) {
      lt::HeuristicResult result{};
      int count = 0;
      lt::Status s = api_.AlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.d, p.d, pref, 1, &result, &count);
      // NOT_SUPPORTED (or no result) means no algo for this configuration: ours runs this shape
      if (s == lt::kSuccess && count > 0 && result.state == lt::kSuccess) {
        p.algo = result.algo;
        p.found = true;
      } else if (mode_ == GemmMode::kCublasLt) {
        failed = "cublasLtMatmulAlgoGetHeuristic found no algo (status " + std::to_string(s) + ")";
      }
    }
    if (pref) api_.PreferenceDestroy(pref);
    if (!failed.empty()) {
      destroy(p);
      give_up(failed + shape(M, N, K, w_bf16, kind));
      return nullptr;
    }
    if (!p.found) destroy(p);  // keep only the verdict
    Plan& kept = plans_[key] = p;
    return kept.found ? &kept : nullptr;
  }

  std::mutex mu_;
  GemmMode mode_ = GemmMode::kAuto;
  void* lib_ = nullptr;  // never closed: plans and the handle live as long as the process
  lt::Api api_{};
  std::string path_, version_, why_not_;
  bool usable_ = false;
  lt::Handle handle_ = nullptr;
  void* workspace_ = nullptr;  // kept for the life of the process
  size_t workspace_bytes_ = 0;
  std::map<PlanKey, Plan> plans_;
};

bool cublaslt_gemm(Gemm kind, float* out, const float* act, const void* w, bool w_bf16, int64_t M, int64_t N,
                   int64_t K) {
  return CublasLt::get().run(kind, out, act, w, w_bf16, M, N, K);
}

}  // namespace

void matmul_forward(float* y, const float* x, const void* w, bool w_bf16, int64_t M, int64_t N, int64_t K) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) return fill_zero(y, size_t(M * N) * sizeof(float));
  if (M <= kSmallM) {
    if (w_bf16)
      launch_matvec(y, x, static_cast<const uint16_t*>(w), M, N, K);
    else
      launch_matvec(y, x, static_cast<const float*>(w), M, N, K);
    check_launch("matmul_forward (matrix-vector)");
    return;
  }
  if (cublaslt_gemm(Gemm::kForward, y, x, w, w_bf16, M, N, K)) return;
  own_gemm(false, y, x, w, w_bf16, M, N, K);
  check_launch("matmul_forward");
}

void matmul_backward(float* dx, const float* dy, const void* w, bool w_bf16, int64_t M, int64_t N, int64_t K) {
  if (M <= 0 || K <= 0) return;
  if (N <= 0) return fill_zero(dx, size_t(M * K) * sizeof(float));
  if (cublaslt_gemm(Gemm::kBackward, dx, dy, w, w_bf16, M, N, K)) return;
  own_gemm(true, dx, dy, w, w_bf16, M, K, N);
  check_launch("matmul_backward");
}

namespace {

// ---- bias ---------------------------------------------------------------------------------------------
constexpr int kBiasThreads = 256;
constexpr int64_t kBiasRowBlock = 64;  // rows per partial column sum, as the CPU body

__global__ void add_bias_kernel(float* __restrict__ x, const float* __restrict__ b, int64_t M, int64_t N) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < M * N; i += stride) x[i] += b[i % N];
}

// grid (column blocks, row blocks): thread n sums column n over its row block in order, in double
__global__ void bias_columns_kernel(double* __restrict__ partial, const float* __restrict__ dy, int64_t M, int64_t N) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, k = blockIdx.y;
  if (n >= N) return;
  const int64_t m1 = (k + 1) * kBiasRowBlock < M ? (k + 1) * kBiasRowBlock : M;
  double s = 0;
  for (int64_t m = k * kBiasRowBlock; m < m1; m++) s += dy[m * N + n];
  partial[k * N + n] = s;
}

__global__ void bias_reduce_kernel(float* __restrict__ db, const double* __restrict__ partial, int64_t blocks,
                                   int64_t N) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  double s = 0;
  for (int64_t k = 0; k < blocks; k++) s += partial[k * N + n];
  db[n] = float(s);
}

}  // namespace

void add_bias(float* x, const float* b, int64_t M, int64_t N) {
  if (M <= 0 || N <= 0) return;
  const unsigned grid = unsigned(std::max<int64_t>(
      1, std::min<int64_t>(blocks_for(M * N, kBiasThreads), int64_t(multiprocessors()) * 8)));
  LA_LAUNCH(grid, kBiasThreads, 0, add_bias_kernel)(x, b, M, N);
  check_launch("add_bias");
}

void bias_grad(float* db, const float* dy, int64_t M, int64_t N) {
  if (N <= 0) return;
  if (M <= 0) return fill_zero(db, size_t(N) * sizeof(float));
  const int64_t blocks = (M + kBiasRowBlock - 1) / kBiasRowBlock;
  Scratch partial(size_t(blocks * N) * sizeof(double));
  LA_LAUNCH(dim3(blocks_for(N, kBiasThreads), unsigned(blocks)), kBiasThreads, 0, bias_columns_kernel)(
      partial.as<double>(), dy, M, N);
  check_launch("bias_grad (column sums)");
  LA_LAUNCH(blocks_for(N, kBiasThreads), kBiasThreads, 0, bias_reduce_kernel)(db, partial.as<double>(), blocks, N);
  check_launch("bias_grad");
}

void matmul_weight_grad(float* dw, const float* dy, const float* x, int64_t M, int64_t N, int64_t K) {
  if (N <= 0 || K <= 0) return;
  if (M <= 0) return fill_zero(dw, size_t(N * K) * sizeof(float));
  if (cublaslt_gemm(Gemm::kWeightGrad, dw, dy, x, false, M, N, K)) return;
  own_weight_grad(dw, dy, x, M, N, K);
  check_launch("matmul_weight_grad");
}

// Never throws (capabilities() asks): a forced engine that cannot run reads "error: <why>", and
// the first matmul throws the same.
std::string gemm_engine() {
  try {
    return CublasLt::get().describe();
  } catch (const Error& e) {
    return std::string("error: ") + e.what();
  }
}

}  // namespace la::cuda
