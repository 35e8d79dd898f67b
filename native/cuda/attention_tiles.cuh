// The fp32 flash-attention tiles shared by attention.cu (cached inference) and attention_gated.cu
// (training), and the forward kernel both use. Keeps to compat.h's CUDA subset.
//
// A block has 256 threads, (ty, tx) = (tid / 16, tid % 16), and works on tiles of 16 RM query rows
// (RM = 4 in training: 64 x 64 score tiles) and 64 keys. In a score tile thread (ty, tx) owns rows
// ty + 16a (a < RM) and columns tx + 16b (b < 4), so the 16 threads of a row are one half-warp (row
// max / sum by 4 xor shuffles); in a (rows, DP) product tile it owns rows ty + 16a and the DP / 16
// columns col_of(tx, u). Register-tiled: per 4-wide k step a thread loads RM + 4 float4 for 16 RM FMAs.
// Every tile in shared memory is row-major:
//   (rows, DP) tiles of q, k, v, dout: stride DP + 4; (rows, 64) score tiles: stride kLdp = 80.
// The strides keep float4 loads aligned and put rows r and r + 1 in different 16-byte bank groups,
// so the two half-warps' row loads and the 16 lanes' loads of 16 rows are conflict-free.
// DP is the head size d rounded up to 16, 32, 64 or 128; columns d .. DP are loaded as zeros.
#pragma once
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#include "compat.h"

#if defined(LA_CUDA_EMULATOR)
#define LA_ATTN_UNROLL
#define LA_ATTN_UNROLL2
#else
#define LA_ATTN_UNROLL _Pragma("unroll")
#define LA_ATTN_UNROLL2 _Pragma("unroll 2")  // the k / j loops: full unrolling only buys register pressure
#endif

namespace la::cuda::attn {

constexpr int kTile = 64;      // query rows and keys per tile
constexpr int kThreads = 256;  // 16 x 16
constexpr int kLdp = 80;       // stride of (64, 64) score tiles
constexpr int kMaxHead = 128;

// ---- micro-kernels --------------------------------------------------------------------------------

template <int DP> __device__ __forceinline__ int col_of(int tx, int u) {
  if constexpr (DP >= 64) return (u >> 2) * 64 + tx * 4 + (u & 3);  // float4 runs, lanes adjacent
  else if constexpr (DP == 32) return tx * 2 + u;
  else return tx;
}

// b[u] = row[col_of(tx, u)]
template <int DP> __device__ __forceinline__ void load_cols(float (&b)[DP / 16], const float* row, int tx) {
  if constexpr (DP >= 64) {
    LA_ATTN_UNROLL
    for (int w = 0; w < DP / 64; w++) {
      float4 x = *reinterpret_cast<const float4*>(row + w * 64 + tx * 4);
      b[w * 4] = x.x;
      b[w * 4 + 1] = x.y;
      b[w * 4 + 2] = x.z;
      b[w * 4 + 3] = x.w;
    }
  } else if constexpr (DP == 32) {
    float2 x = *reinterpret_cast<const float2*>(row + tx * 2);
    b[0] = x.x;
    b[1] = x.y;
  } else {
    b[0] = row[tx];
  }
}

__device__ __forceinline__ float lane4(const float4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// acc[a][b] += sum_{k < DP} A[(ty + 16a) lda + k] * B[(tx + 16b) ldb + k], a < RM   (S = Q Kᵀ)
template <int DP, int RM = 4>
__device__ __forceinline__ void mm_nt(float (&acc)[RM][4], const float* A, int lda, const float* B, int ldb, int ty, int tx) {
  LA_ATTN_UNROLL2
  for (int k = 0; k < DP; k += 4) {
    float4 a[RM], b[4];
    LA_ATTN_UNROLL
    for (int i = 0; i < RM; i++) a[i] = *reinterpret_cast<const float4*>(A + (ty + 16 * i) * lda + k);
    LA_ATTN_UNROLL
    for (int j = 0; j < 4; j++) b[j] = *reinterpret_cast<const float4*>(B + (tx + 16 * j) * ldb + k);
    LA_ATTN_UNROLL
    for (int i = 0; i < RM; i++) {
      LA_ATTN_UNROLL
      for (int j = 0; j < 4; j++) {
        float s = acc[i][j];
        s = fmaf(a[i].x, b[j].x, s);
        s = fmaf(a[i].y, b[j].y, s);
        s = fmaf(a[i].z, b[j].z, s);
        acc[i][j] = fmaf(a[i].w, b[j].w, s);
      }
    }
  }
}

// acc[a][u] += sum_{j < 64} A[(ty + 16a) lda + j] * B[j ldb + col_of(tx, u)], a < RM   (O = P V)
template <int DP, int RM = 4>
__device__ __forceinline__ void mm_nn(float (&acc)[RM][DP / 16], const float* A, int lda, const float* B, int ldb, int ty,
                                      int tx) {
  constexpr int CD = DP / 16;
  LA_ATTN_UNROLL2
  for (int j = 0; j < kTile; j += 4) {
    float4 a[RM];
    LA_ATTN_UNROLL
    for (int i = 0; i < RM; i++) a[i] = *reinterpret_cast<const float4*>(A + (ty + 16 * i) * lda + j);
    LA_ATTN_UNROLL
    for (int jj = 0; jj < 4; jj++) {
      float b[CD];
      load_cols<DP>(b, B + (j + jj) * ldb, tx);
      LA_ATTN_UNROLL
      for (int i = 0; i < RM; i++) {
        const float x = lane4(a[i], jj);
        LA_ATTN_UNROLL
        for (int u = 0; u < CD; u++) acc[i][u] = fmaf(x, b[u], acc[i][u]);
      }
    }
  }
}

// Over the 16 lanes of a row (a half-warp); every thread of the block must call them.
__device__ __forceinline__ float row_max16(float x) {
  for (int o = 8; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float row_sum16(float x) {
  for (int o = 8; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// dst (ROWS, DP) = rows r < n of src, row r at src + (r / nh) ld_tok + (r % nh) d (a tile of nh
// heads per token), d columns; zeros elsewhere. Coalesced along the row.
template <int DP, int ROWS = kTile>
__device__ __forceinline__ void load_rows(float* dst, const float* src, int n, int d, int nh, int64_t ld_tok) {
  for (int e = threadIdx.x; e < ROWS * DP; e += kThreads) {
    const int r = e / DP, c = e % DP;
    float x = 0.f;
    if (r < n && c < d) x = src[int64_t(r / nh) * ld_tok + int64_t(r % nh) * d + c];
    dst[r * (DP + 4) + c] = x;
  }
}

// The segment s holding token t: seg[s] <= t < seg[s + 1] (empty segments skipped).
__device__ __forceinline__ int seg_index(const int32_t* seg, int S, int t) {
  int lo = 0, hi = S;  // seg[lo] <= t; hi == S or seg[hi] > t
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (seg[mid] <= t) lo = mid;
    else hi = mid;
  }
  return lo;
}

// One key tile of an online softmax: scores of Qs against Ks (keys key0 + column), masked to the
// keys lo[a] <= key <= hi[a], key < kend of row a (hi = -1: padding row); running max m, sum l and
// unnormalised output o of each row updated, then o += P V. Ps: the (64, 64) score tile.
template <int DP, int RM>
__device__ __forceinline__ void online_step(float (&o)[RM][DP / 16], float (&m)[RM], float (&l)[RM], const float* Qs,
                                            const float* Ks, const float* Vs, float* Ps, float scale, int key0, int kend,
                                            const int (&lo)[RM], const int (&hi)[RM], int ty, int tx) {
  constexpr int LD = DP + 4, CD = DP / 16;
  float s[RM][4] = {};
  mm_nt<DP, RM>(s, Qs, LD, Ks, LD, ty, tx);
  LA_ATTN_UNROLL
  for (int a = 0; a < RM; a++) {
    float mx = -INFINITY;
    LA_ATTN_UNROLL
    for (int b = 0; b < 4; b++) {
      const int key = key0 + tx + 16 * b;
      s[a][b] = (key < kend && key >= lo[a] && key <= hi[a]) ? s[a][b] * scale : -INFINITY;
      mx = fmaxf(mx, s[a][b]);
    }
    mx = row_max16(mx);
    const float mn = fmaxf(m[a], mx), mu = mn == -INFINITY ? 0.f : mn;  // a row with no key yet stays at 0
    float sum = 0.f;
    LA_ATTN_UNROLL
    for (int b = 0; b < 4; b++) {
      const float e = expf(s[a][b] - mu);
      Ps[(ty + 16 * a) * kLdp + tx + 16 * b] = e;
      sum += e;
    }
    sum = row_sum16(sum);
    const float corr = expf(m[a] - mu);
    l[a] = l[a] * corr + sum;
    m[a] = mn;
    LA_ATTN_UNROLL
    for (int u = 0; u < CD; u++) o[a][u] *= corr;
  }
  __syncthreads();
  mm_nn<DP, RM>(o, Ps, kLdp, Vs, LD, ty, tx);
}

// ---- the forward kernel ---------------------------------------------------------------------------

// A block's work: tokens t0 .. t0 + nt - 1 (x the block's nh heads: rows tt * nh + hh), keys kb .. ke - 1
// (rows of k, v), the first token's own key position qpos0, and the key chunk (split-K; 0 otherwise).
struct FwdItem {
  int t0, nt, kb, ke, qpos0, chunk;
};

struct FwdArgs {
  float* out;      // (T, H, d)
  float* stats;    // (T, H, 2) or null
  float* part_o;   // split-K: (chunks, T * H, d) unnormalised outputs, or null (then out is final)
  float* part_ml;  // (chunks, T * H, 2) running max and sum
  const float *q, *k, *v;     // q (T, H, d); k, v (keys, Hkv, d)
  const float *pk, *pv, *gate;  // (K, Hkv, d), (K, Hkv, d), (G); or null
  int64_t pstride;            // 0: one shared prompt; K Hkv d: pk, pv (S, K, Hkv, d), segment s reads pk[s]
  bool bidir;                 // training: a row sees its whole segment (not only the keys up to itself)
  const int32_t* seg;         // S + 1 segment offsets (training), or null: every row sees keys from 0
  const FwdItem* items;       // per blockIdx.y; null: the cached-inference grid below
  int nseg, H, Hkv, d, K, G, nh;
  int T, pos0, ntok, chunks, chunk_len;  // without items: blockIdx.y = token tile * chunks + chunk
  int64_t rows;  // T * H: a chunk's stride in part_o / part_ml
  float scale;
};

// The arguments both forward callers share (the rest zero/null: no stats, no split-K, no segments,
// no work items); the callers set what is theirs.
inline FwdArgs forward_args(float* out, const float* q, const float* k, const float* v, const float* pk,
                            const float* pv, const float* gate, int64_t H, int64_t Hkv, int64_t d, int64_t K,
                            int64_t G) {
  FwdArgs a{};
  a.out = out;
  a.q = q;
  a.k = k;
  a.v = v;
  a.pk = pk;
  a.pv = pv;
  a.gate = gate;
  a.H = int(H);
  a.Hkv = int(Hkv);
  a.d = int(d);
  a.K = pk ? int(K) : 0;
  a.G = int(G);
  a.scale = 1.f / std::sqrt(float(d));
  return a;
}

// Shared memory of flash_forward<DP, RM>: Qs (16 RM, DP + 4), Ks, Vs (64, DP + 4), Ps (16 RM, kLdp).
template <int DP, int RM> constexpr size_t forward_smem() {
  return size_t((16 * RM + 2 * kTile) * (DP + 4) + 16 * RM * kLdp) * 4;
}

// grid (H / nh, items); 16 RM query rows per block (RM = 4: 64-row tiles; RM = 1: 16 rows, for
// decoding, where a tile holds a few (token, head) rows and the K/V tiles are the cost). With a
// prompt, chunk 0 first runs the K prompt keys (their own softmax, no mask) and writes
// tanh(gate) * Y_p into out; the word pass then adds to it (or combine_chunks does). Per-segment
// prompts: one prompt pass per segment of the tile, each over the rows of that segment only (the
// other rows' running max, sum and output stay exactly as they are).
template <int DP, int RM> __global__ void __launch_bounds__(kThreads, 1) flash_forward(FwdArgs p) {
  constexpr int LD = DP + 4, CD = DP / 16;
  LA_DYNAMIC_SHARED(float, sm);
  float* Qs = sm;
  float* Ks = Qs + 16 * RM * LD;
  float* Vs = Ks + kTile * LD;
  float* Ps = Vs + kTile * LD;
  FwdItem it;
  if (p.items) {
    it = p.items[blockIdx.y];
  } else {  // tokens of tile y / chunks at positions pos0 + t; keys of chunk y % chunks up to the last one
    it.chunk = int(blockIdx.y) % p.chunks;
    it.t0 = int(blockIdx.y) / p.chunks * p.ntok;
    it.nt = min(p.ntok, p.T - it.t0);
    it.qpos0 = p.pos0 + it.t0;
    it.kb = it.chunk * p.chunk_len;
    it.ke = max(it.kb, min(it.kb + p.chunk_len, it.qpos0 + it.nt));
  }
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int h0 = blockIdx.x * p.nh, kvh = h0 / (p.H / p.Hkv);
  const int64_t ldq = int64_t(p.H) * p.d, ldk = int64_t(p.Hkv) * p.d;

  // row a of this thread: token t0 + tt (of segment sid), head h0 + hh; keys lo .. hi (hi = -1:
  // padding row): causal up to its own position, else to its segment's end
  int lo[RM], hi[RM], plo[RM], phi[RM], sid[RM];
  bool valid[RM];
  LA_ATTN_UNROLL
  for (int a = 0; a < RM; a++) {
    const int tt = (ty + 16 * a) / p.nh;
    valid[a] = tt < it.nt;
    sid[a] = valid[a] && p.seg ? seg_index(p.seg, p.nseg, it.t0 + tt) : 0;
    hi[a] = !valid[a] ? -1 : p.bidir ? p.seg[sid[a] + 1] - 1 : it.qpos0 + tt;
    lo[a] = valid[a] && p.seg ? p.seg[sid[a]] : 0;
    plo[a] = 0;
    phi[a] = valid[a] ? INT_MAX : -1;
  }
  load_rows<DP, 16 * RM>(Qs, p.q + it.t0 * ldq + int64_t(h0) * p.d, it.nt * p.nh, p.d, p.nh, ldq);

  float o[RM][CD], m[RM], l[RM];
  auto reset = [&] {
    LA_ATTN_UNROLL
    for (int a = 0; a < RM; a++) {
      m[a] = -INFINITY;
      l[a] = 0.f;
      LA_ATTN_UNROLL
      for (int u = 0; u < CD; u++) o[a][u] = 0.f;
    }
  };
  // out / stats / partial row of thread row a: t * H + h
  auto row_of = [&](int a) {
    const int r = ty + 16 * a;
    return int64_t(it.t0 + r / p.nh) * p.H + h0 + r % p.nh;
  };

  if (p.pk && it.chunk == 0) {
    reset();
    // the segments of the tile's tokens (per-segment prompts), or the one shared prompt
    const int sa = p.pstride ? seg_index(p.seg, p.nseg, it.t0) : 0;
    const int sb = p.pstride ? seg_index(p.seg, p.nseg, it.t0 + it.nt - 1) : 0;
    for (int s = sa; s <= sb; s++) {
      if (p.pstride) {
        if (p.seg[s] == p.seg[s + 1]) continue;  // an empty segment between two others
        LA_ATTN_UNROLL
        for (int a = 0; a < RM; a++) phi[a] = valid[a] && sid[a] == s ? INT_MAX : -1;
      }
      const float* pks = p.pk + s * p.pstride;
      const float* pvs = p.pv + s * p.pstride;
      for (int j0 = 0; j0 < p.K; j0 += kTile) {
        __syncthreads();
        const int n = min(kTile, p.K - j0);
        load_rows<DP>(Ks, pks + j0 * ldk + int64_t(kvh) * p.d, n, p.d, 1, ldk);
        load_rows<DP>(Vs, pvs + j0 * ldk + int64_t(kvh) * p.d, n, p.d, 1, ldk);
        __syncthreads();
        online_step<DP, RM>(o, m, l, Qs, Ks, Vs, Ps, p.scale, j0, p.K, plo, phi, ty, tx);
      }
    }
    LA_ATTN_UNROLL
    for (int a = 0; a < RM; a++) {
      if (!valid[a]) continue;
      const int64_t row = row_of(a);
      const float gm = tanhf(p.gate[p.G == 1 ? 0 : row % p.H]);
      const float inv = l[a] > 0.f ? 1.f / l[a] : 0.f;  // K = 0: Y_p = 0
      LA_ATTN_UNROLL
      for (int u = 0; u < CD; u++) {
        const int c = col_of<DP>(tx, u);
        if (c < p.d) p.out[row * p.d + c] = gm * (o[a][u] * inv);
      }
      if (p.stats && tx == 0) p.stats[row * 2 + 1] = l[a] > 0.f ? m[a] + logf(l[a]) : -INFINITY;
    }
  }

  reset();
  for (int kt0 = it.kb; kt0 < it.ke; kt0 += kTile) {
    __syncthreads();
    const int n = min(kTile, it.ke - kt0);
    load_rows<DP>(Ks, p.k + kt0 * ldk + int64_t(kvh) * p.d, n, p.d, 1, ldk);
    load_rows<DP>(Vs, p.v + kt0 * ldk + int64_t(kvh) * p.d, n, p.d, 1, ldk);
    __syncthreads();
    online_step<DP, RM>(o, m, l, Qs, Ks, Vs, Ps, p.scale, kt0, it.ke, lo, hi, ty, tx);
  }

  LA_ATTN_UNROLL
  for (int a = 0; a < RM; a++) {
    if (!valid[a]) continue;
    const int64_t row = row_of(a);
    if (p.part_o) {  // split-K: this chunk's unnormalised output, max and sum (combine_chunks merges them)
      const int64_t prow = int64_t(it.chunk) * p.rows + row;
      LA_ATTN_UNROLL
      for (int u = 0; u < CD; u++) {
        const int c = col_of<DP>(tx, u);
        if (c < p.d) p.part_o[prow * p.d + c] = o[a][u];
      }
      if (tx == 0) {
        p.part_ml[prow * 2] = m[a];
        p.part_ml[prow * 2 + 1] = l[a];
      }
    } else {
      const float inv = 1.f / l[a];  // every real row sees at least its own key
      LA_ATTN_UNROLL
      for (int u = 0; u < CD; u++) {
        const int c = col_of<DP>(tx, u);
        if (c >= p.d) continue;
        float r = o[a][u] * inv;
        if (p.pk) r += p.out[row * p.d + c];  // this thread's own tanh(gate) * Y_p from above
        p.out[row * p.d + c] = r;
      }
      if (p.stats && tx == 0) {
        p.stats[row * 2] = m[a] + logf(l[a]);
        if (!p.pk) p.stats[row * 2 + 1] = -INFINITY;
      }
    }
  }
}

// Launches flash_forward<DP, RM> for the head size d: grid (gx, gy), 16 RM rows per block.
template <int DP, int RM> inline void launch_forward_dp(const FwdArgs& a, unsigned gx, unsigned gy) {
  constexpr size_t bytes = forward_smem<DP, RM>();
  static bool allowed = false;  // the opt-in above 48 KiB, once per kernel
  if (!allowed) {
    LA_CHECK(bytes <= max_shared_memory_per_block(), "attention: head size ", a.d, " needs ", bytes,
             " bytes of shared memory per block; the device has ", max_shared_memory_per_block());
    LA_ALLOW_DYNAMIC_SHARED(bytes, flash_forward<DP, RM>);
    allowed = true;
  }
  LA_LAUNCH(dim3(gx, gy), dim3(kThreads), bytes, flash_forward<DP, RM>)(a);
  check_launch("attention forward");
}

template <int RM> inline void launch_forward(const FwdArgs& a, unsigned gx, unsigned gy) {
  if (gx == 0 || gy == 0) return;
  if (a.d <= 16) launch_forward_dp<16, RM>(a, gx, gy);
  else if (a.d <= 32) launch_forward_dp<32, RM>(a, gx, gy);
  else if (a.d <= 64) launch_forward_dp<64, RM>(a, gx, gy);
  else launch_forward_dp<128, RM>(a, gx, gy);
}

// Device copy of a host array, alive as long as the returned Scratch.
template <class T> inline void upload(Scratch& dst, const std::vector<T>& src) {
  if (!src.empty()) copy_to_device(dst.as<void>(), src.data(), src.size() * sizeof(T));
}

}  // namespace la::cuda::attn
