// The fused gated split-softmax attention of training (SPEC §2), as cpu::gated_attention_forward /
// _backward: fp32 flash attention over packed segments (attention_tiles.cuh: 64 x 64 tiles in shared
// memory, 256 threads, the T x T scores never stored).
//
// Tiles are 64 consecutive packed tokens, whatever the segments: a tile's rows see the keys from
// their own segment's start (found in seg by binary search) to themselves (causal) or to their
// segment's end (bidirectional), so short segments share a tile. The K prompt keys are one more
// pass of their own softmax over the same query tile; with per-segment prompts (pk, pv (S, K, Hkv,
// d)) one pass per segment of the tile, over that segment's rows.
//
//   forward  grid (H, query tiles): flash_forward<DP, 4> (no split-K); out, stats = [lse_w, lse_p].
//   backward 1, grid (H, query tiles): recomputes A_p from lse_p, Y_p = A_p V_p, D = <dout, out - gamma Y_p>
//            and <dout, Y_p> per row, dq = dS_p K_p + dS K over the key tiles, and the tile's partial
//            dpk = dS_pᵀ Q, dpv = gamma A_pᵀ dout (one slot per (tile, head), or per (tile, segment
//            of the tile, head) with per-segment prompts; no atomics);
//   backward 2, grid (Hkv, key tiles): dk, dv of 64 keys, looping over the heads of the kv group and
//            the query tiles from the key tile (bidirectional: from its first key's segment start)
//            to the end of its last key's segment;
//   then prompt_reduce sums each prompt's partial slots in (slot, head) order and gate_reduce sums
//   <dout, Y_p> in double per head (and over heads for a scalar gate): deterministic.
#include <algorithm>
#include <vector>

#include "attention_tiles.cuh"
#include "kernels.h"

namespace la::cuda {
namespace {

using attn::col_of;
using attn::FwdItem;
using attn::kLdp;
using attn::kThreads;
using attn::kTile;
using attn::load_rows;
using attn::mm_nn;
using attn::mm_nt;
using attn::row_sum16;

// A key tile of backward 2: keys k0 .. k0 + nk - 1, seen by the queries q0 .. qe - 1 (q0 = k0 when
// causal).
struct KeyItem {
  int k0, nk, q0, qe;
};

struct BwdArgs {
  float *dq, *dk, *dv;
  float* part;  // (slots, H, 2, K, d): per (slot, head) dpk, dpv partials; a query tile's first slot
                // is slot0[tile], one per segment of the tile with per-segment prompts (else one)
  const int* slot0;
  int64_t pstride;  // 0: shared prompt; K Hkv d: pk, pv (S, K, Hkv, d)
  bool bidir;       // a row sees its whole segment
  float* gp;    // (H, N): <dout, Y_p>
  float* dd;    // (H, N): D = <dout, out - gamma Y_p>
  const float *dout, *q, *k, *v, *pk, *pv, *gate, *out, *stats;
  const int32_t* seg;
  const FwdItem* qitems;
  const KeyItem* kitems;
  int nseg, N, H, Hkv, d, K, G;
  float scale;
};

template <int DP> constexpr size_t dq_smem() { return size_t(4 * kTile * (DP + 4) + kTile * kLdp) * 4; }
template <int DP> constexpr size_t dkdv_smem() { return size_t(4 * kTile * (DP + 4) + kTile * kLdp) * 4; }

// Backward 1: one block per (head, query tile). Qs, Os (dout) stay; Ks, Vs take the prompt tiles,
// then the word key tiles; Ps holds A_p, dS_p (either orientation) or dS.
template <int DP> __global__ void __launch_bounds__(kThreads, 1) gated_bwd_dq(BwdArgs p) {
  constexpr int LD = DP + 4, CD = DP / 16;
  LA_DYNAMIC_SHARED(float, sm);
  float* Qs = sm;
  float* Os = Qs + kTile * LD;
  float* Ks = Os + kTile * LD;
  float* Vs = Ks + kTile * LD;
  float* Ps = Vs + kTile * LD;
  const FwdItem it = p.qitems[blockIdx.y];
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int h = blockIdx.x, kvh = h / (p.H / p.Hkv);
  const int64_t ldq = int64_t(p.H) * p.d, ldk = int64_t(p.Hkv) * p.d;

  int lo[4], hi[4], sid[4];
  float lse[4], lsep[4];
  bool valid[4];
  LA_ATTN_UNROLL
  for (int a = 0; a < 4; a++) {
    const int r = ty + 16 * a, t = it.t0 + r;
    valid[a] = r < it.nt;
    sid[a] = valid[a] ? attn::seg_index(p.seg, p.nseg, t) : -1;
    hi[a] = !valid[a] ? -1 : p.bidir ? p.seg[sid[a] + 1] - 1 : t;
    lo[a] = valid[a] ? p.seg[sid[a]] : 0;
    lse[a] = valid[a] ? p.stats[(int64_t(t) * p.H + h) * 2] : 0.f;
    lsep[a] = valid[a] && p.pk ? p.stats[(int64_t(t) * p.H + h) * 2 + 1] : 0.f;
  }
  load_rows<DP>(Qs, p.q + it.t0 * ldq + int64_t(h) * p.d, it.nt, p.d, 1, ldq);
  load_rows<DP>(Os, p.dout + it.t0 * ldq + int64_t(h) * p.d, it.nt, p.d, 1, ldq);
  __syncthreads();  // D below reads rows other threads loaded

  float dq[4][CD], D[4];
  LA_ATTN_UNROLL
  for (int a = 0; a < 4; a++) {
    LA_ATTN_UNROLL
    for (int u = 0; u < CD; u++) dq[a][u] = 0.f;
  }

  if (p.pk) {
    const float gm = tanhf(p.gate[p.G == 1 ? 0 : h]);
    // the prompts of the tile: segments sa .. sb (per segment), or the one shared prompt
    const int sa = p.pstride ? attn::seg_index(p.seg, p.nseg, it.t0) : 0;
    const int sb = p.pstride ? attn::seg_index(p.seg, p.nseg, it.t0 + it.nt - 1) : 0;
    // pass 1 over the prompt tiles: Y_p = A_p V_p and Dp = rowsum(A_p dA_p), dA_p = gamma dout V_pᵀ
    float y[4][CD], dpp[4];
    LA_ATTN_UNROLL
    for (int a = 0; a < 4; a++) {
      dpp[a] = 0.f;
      LA_ATTN_UNROLL
      for (int u = 0; u < CD; u++) y[a][u] = 0.f;
    }
    for (int sg = sa; sg <= sb; sg++) {
      if (p.pstride && p.seg[sg] == p.seg[sg + 1]) continue;  // an empty segment between two others
      const float* pks = p.pk + sg * p.pstride;
      const float* pvs = p.pv + sg * p.pstride;
      bool mine[4];  // the rows this prompt serves
      LA_ATTN_UNROLL
      for (int a = 0; a < 4; a++) mine[a] = valid[a] && (!p.pstride || sid[a] == sg);
      for (int j0 = 0; j0 < p.K; j0 += kTile) {
        __syncthreads();
        const int n = min(kTile, p.K - j0);
        load_rows<DP>(Ks, pks + j0 * ldk + int64_t(kvh) * p.d, n, p.d, 1, ldk);
        load_rows<DP>(Vs, pvs + j0 * ldk + int64_t(kvh) * p.d, n, p.d, 1, ldk);
        __syncthreads();
        float s[4][4] = {}, da[4][4] = {};
        mm_nt<DP>(s, Qs, LD, Ks, LD, ty, tx);
        mm_nt<DP>(da, Os, LD, Vs, LD, ty, tx);
        LA_ATTN_UNROLL
        for (int a = 0; a < 4; a++) {
          LA_ATTN_UNROLL
          for (int b = 0; b < 4; b++) {
            const bool ok = mine[a] && j0 + tx + 16 * b < p.K;
            const float A = ok ? expf(s[a][b] * p.scale - lsep[a]) : 0.f;
            dpp[a] += A * (gm * da[a][b]);
            Ps[(ty + 16 * a) * kLdp + tx + 16 * b] = A;
          }
        }
        __syncthreads();
        mm_nn<DP>(y, Ps, kLdp, Vs, LD, ty, tx);
      }
    }
    float Dp[4];
    LA_ATTN_UNROLL
    for (int a = 0; a < 4; a++) {
      Dp[a] = row_sum16(dpp[a]);
      // D = <dout, out - gamma Y_p> (the word branch's own output), and <dout, Y_p> for dgate
      float pd = 0.f, pg = 0.f;
      const int t = it.t0 + ty + 16 * a;
      if (valid[a]) {
        LA_ATTN_UNROLL
        for (int u = 0; u < CD; u++) {
          const int c = col_of<DP>(tx, u);
          if (c >= p.d) continue;
          const float g = Os[(ty + 16 * a) * LD + c], o = p.out[(int64_t(t) * p.H + h) * p.d + c];
          pg += g * y[a][u];
          pd += g * (o - gm * y[a][u]);
        }
      }
      D[a] = row_sum16(pd);
      pg = row_sum16(pg);
      if (valid[a] && tx == 0) {
        p.dd[int64_t(h) * p.N + t] = D[a];
        p.gp[int64_t(h) * p.N + t] = pg;
      }
    }
    // pass 2: dS_p = A_p (dA_p - Dp) * scale; dq += dS_p K_p; partial dpk = dS_pᵀ Q, dpv = gamma A_pᵀ dout
    const bool reload = p.K > kTile || sb > sa;  // else the one tile is still in Ks, Vs from pass 1
    for (int sg = sa; sg <= sb; sg++) {
      if (p.pstride && p.seg[sg] == p.seg[sg + 1]) continue;
      const float* pks = p.pk + sg * p.pstride;
      const float* pvs = p.pv + sg * p.pstride;
      bool mine[4];
      LA_ATTN_UNROLL
      for (int a = 0; a < 4; a++) mine[a] = valid[a] && (!p.pstride || sid[a] == sg);
      // this block's dpk, then dpv partial for this prompt
      const int64_t slot = (int64_t(p.slot0[it.chunk] + sg - sa) * p.H + h) * 2 * p.K * p.d;
      for (int j0 = 0; j0 < p.K; j0 += kTile) {
        __syncthreads();
        if (reload) {
          const int n = min(kTile, p.K - j0);
          load_rows<DP>(Ks, pks + j0 * ldk + int64_t(kvh) * p.d, n, p.d, 1, ldk);
          load_rows<DP>(Vs, pvs + j0 * ldk + int64_t(kvh) * p.d, n, p.d, 1, ldk);
          __syncthreads();
        }
        float s[4][4] = {}, da[4][4] = {};
        mm_nt<DP>(s, Qs, LD, Ks, LD, ty, tx);
        mm_nt<DP>(da, Os, LD, Vs, LD, ty, tx);
        LA_ATTN_UNROLL
        for (int a = 0; a < 4; a++) {
          LA_ATTN_UNROLL
          for (int b = 0; b < 4; b++) {
            const bool ok = mine[a] && j0 + tx + 16 * b < p.K;
            const float A = ok ? expf(s[a][b] * p.scale - lsep[a]) : 0.f;
            s[a][b] = gm * A;                                      // gamma A_p
            da[a][b] = A * (gm * da[a][b] - Dp[a]) * p.scale;      // dS_p
            Ps[(ty + 16 * a) * kLdp + tx + 16 * b] = da[a][b];
          }
        }
        __syncthreads();
        mm_nn<DP>(dq, Ps, kLdp, Ks, LD, ty, tx);
        float acc[4][CD];
        // rows of the partials: prompt keys j0 + ty + 16a; the transposed tile [key][query] in Ps
        for (int which = 0; which < 2; which++) {
          __syncthreads();
          LA_ATTN_UNROLL
          for (int a = 0; a < 4; a++) {
            LA_ATTN_UNROLL
            for (int b = 0; b < 4; b++) Ps[(tx + 16 * b) * kLdp + ty + 16 * a] = which == 0 ? da[a][b] : s[a][b];
            LA_ATTN_UNROLL
            for (int u = 0; u < CD; u++) acc[a][u] = 0.f;
          }
          __syncthreads();
          mm_nn<DP>(acc, Ps, kLdp, which == 0 ? Qs : Os, LD, ty, tx);
          float* dst = p.part + slot + int64_t(which) * p.K * p.d;
          LA_ATTN_UNROLL
          for (int a = 0; a < 4; a++) {
            const int key = j0 + ty + 16 * a;
            if (key >= p.K) continue;
            LA_ATTN_UNROLL
            for (int u = 0; u < CD; u++) {
              const int c = col_of<DP>(tx, u);
              if (c < p.d) dst[int64_t(key) * p.d + c] = acc[a][u];
            }
          }
        }
      }
    }
  } else {
    LA_ATTN_UNROLL
    for (int a = 0; a < 4; a++) {
      float pd = 0.f;
      const int t = it.t0 + ty + 16 * a;
      if (valid[a]) {
        LA_ATTN_UNROLL
        for (int u = 0; u < CD; u++) {
          const int c = col_of<DP>(tx, u);
          if (c < p.d) pd += Os[(ty + 16 * a) * LD + c] * p.out[(int64_t(t) * p.H + h) * p.d + c];
        }
      }
      D[a] = row_sum16(pd);
      if (valid[a] && tx == 0) p.dd[int64_t(h) * p.N + t] = D[a];
    }
  }

  // word keys: P = exp(S - lse_w), dS = P (dout Vᵀ - D) * scale, dq += dS K
  for (int kt0 = it.kb; kt0 < it.ke; kt0 += kTile) {
    __syncthreads();
    const int n = min(kTile, it.ke - kt0);
    load_rows<DP>(Ks, p.k + kt0 * ldk + int64_t(kvh) * p.d, n, p.d, 1, ldk);
    load_rows<DP>(Vs, p.v + kt0 * ldk + int64_t(kvh) * p.d, n, p.d, 1, ldk);
    __syncthreads();
    float s[4][4] = {}, dp[4][4] = {};
    mm_nt<DP>(s, Qs, LD, Ks, LD, ty, tx);
    mm_nt<DP>(dp, Os, LD, Vs, LD, ty, tx);
    LA_ATTN_UNROLL
    for (int a = 0; a < 4; a++) {
      LA_ATTN_UNROLL
      for (int b = 0; b < 4; b++) {
        const int key = kt0 + tx + 16 * b;
        const float P = key >= lo[a] && key <= hi[a] ? expf(s[a][b] * p.scale - lse[a]) : 0.f;
        Ps[(ty + 16 * a) * kLdp + tx + 16 * b] = P * (dp[a][b] - D[a]) * p.scale;
      }
    }
    __syncthreads();
    mm_nn<DP>(dq, Ps, kLdp, Ks, LD, ty, tx);
  }

  LA_ATTN_UNROLL
  for (int a = 0; a < 4; a++) {
    if (!valid[a]) continue;
    const int64_t row = int64_t(it.t0 + ty + 16 * a) * p.H + h;
    LA_ATTN_UNROLL
    for (int u = 0; u < CD; u++) {
      const int c = col_of<DP>(tx, u);
      if (c < p.d) p.dq[row * p.d + c] = dq[a][u];
    }
  }
}

// Backward 2: one block per (kv head, key tile). Ks, Vs stay; for each head of the group and each
// query tile: Sᵀ = K Qᵀ, dPᵀ = V doutᵀ (thread rows are keys, columns queries), P and dS into Ps
// [key][query] in turn, dv += Pᵀ dout, dk += dSᵀ Q.
template <int DP> __global__ void __launch_bounds__(kThreads, 1) gated_bwd_dkdv(BwdArgs p) {
  constexpr int LD = DP + 4, CD = DP / 16;
  LA_DYNAMIC_SHARED(float, sm);
  float* Ks = sm;
  float* Vs = Ks + kTile * LD;
  float* Qs = Vs + kTile * LD;
  float* Os = Qs + kTile * LD;
  float* Ps = Os + kTile * LD;
  __shared__ float lse_s[kTile], D_s[kTile];
  __shared__ int lo_s[kTile], hi_s[kTile];  // the keys query i sees: lo_s[i] .. hi_s[i]
  const KeyItem it = p.kitems[blockIdx.y];
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int kvh = blockIdx.x, group = p.H / p.Hkv;
  const int64_t ldq = int64_t(p.H) * p.d, ldk = int64_t(p.Hkv) * p.d;
  load_rows<DP>(Ks, p.k + it.k0 * ldk + int64_t(kvh) * p.d, it.nk, p.d, 1, ldk);
  load_rows<DP>(Vs, p.v + it.k0 * ldk + int64_t(kvh) * p.d, it.nk, p.d, 1, ldk);

  float dk[4][CD], dv[4][CD];
  LA_ATTN_UNROLL
  for (int a = 0; a < 4; a++) {
    LA_ATTN_UNROLL
    for (int u = 0; u < CD; u++) dk[a][u] = dv[a][u] = 0.f;
  }
  for (int h = kvh * group; h < (kvh + 1) * group; h++) {
    for (int qt0 = it.q0; qt0 < it.qe; qt0 += kTile) {
      const int nq = min(kTile, it.qe - qt0);
      __syncthreads();
      load_rows<DP>(Qs, p.q + qt0 * ldq + int64_t(h) * p.d, nq, p.d, 1, ldq);
      load_rows<DP>(Os, p.dout + qt0 * ldq + int64_t(h) * p.d, nq, p.d, 1, ldq);
      if (threadIdx.x < kTile) {
        const int i = threadIdx.x, t = qt0 + i;
        const bool ok = i < nq;
        lse_s[i] = ok ? p.stats[(int64_t(t) * p.H + h) * 2] : 0.f;
        D_s[i] = ok ? p.dd[int64_t(h) * p.N + t] : 0.f;
        const int si = ok ? attn::seg_index(p.seg, p.nseg, t) : 0;
        lo_s[i] = ok ? p.seg[si] : INT_MAX;  // padding column: no key
        hi_s[i] = !ok ? -1 : p.bidir ? p.seg[si + 1] - 1 : t;
      }
      __syncthreads();
      float s[4][4] = {}, dp[4][4] = {};
      mm_nt<DP>(s, Ks, LD, Qs, LD, ty, tx);
      mm_nt<DP>(dp, Vs, LD, Os, LD, ty, tx);
      LA_ATTN_UNROLL
      for (int a = 0; a < 4; a++) {
        const int key = it.k0 + ty + 16 * a;
        LA_ATTN_UNROLL
        for (int b = 0; b < 4; b++) {
          const int i = tx + 16 * b;
          const bool ok = ty + 16 * a < it.nk && key >= lo_s[i] && key <= hi_s[i];
          const float P = ok ? expf(s[a][b] * p.scale - lse_s[i]) : 0.f;
          dp[a][b] = P * (dp[a][b] - D_s[i]) * p.scale;  // dSᵀ
          Ps[(ty + 16 * a) * kLdp + i] = P;
        }
      }
      __syncthreads();
      mm_nn<DP>(dv, Ps, kLdp, Os, LD, ty, tx);
      __syncthreads();
      LA_ATTN_UNROLL
      for (int a = 0; a < 4; a++) {
        LA_ATTN_UNROLL
        for (int b = 0; b < 4; b++) Ps[(ty + 16 * a) * kLdp + tx + 16 * b] = dp[a][b];
      }
      __syncthreads();
      mm_nn<DP>(dk, Ps, kLdp, Qs, LD, ty, tx);
    }
  }
  LA_ATTN_UNROLL
  for (int a = 0; a < 4; a++) {
    const int r = ty + 16 * a;
    if (r >= it.nk) continue;
    const int64_t row = int64_t(it.k0 + r) * p.Hkv + kvh;
    LA_ATTN_UNROLL
    for (int u = 0; u < CD; u++) {
      const int c = col_of<DP>(tx, u);
      if (c < p.d) {
        p.dk[row * p.d + c] = dk[a][u];
        p.dv[row * p.d + c] = dv[a][u];
      }
    }
  }
}

// dpk, dpv (P, K, Hkv, d) (P = 1: shared; S: per segment) = the partials (slots, H, 2, K, d) of
// prompt p's slots ranges[2p] .. ranges[2p + 1] - 1, summed over the slots, then the group's heads,
// in that fixed order (no slot: 0). One thread per output element.
__global__ void prompt_reduce(float* dpk, float* dpv, const float* part, const int* ranges, int P, int H, int Hkv,
                              int K, int d) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, per = int64_t(K) * Hkv * d, all = P * per;
  if (i >= 2 * all) return;
  const int which = int(i / all);
  const int64_t r = i % all, e = r % per;
  const int pset = int(r / per), key = int(e / (int64_t(Hkv) * d)), kvh = int(e / d % Hkv), c = int(e % d),
            group = H / Hkv;
  float s = 0.f;
  for (int w = ranges[2 * pset]; w < ranges[2 * pset + 1]; w++)
    for (int h = kvh * group; h < (kvh + 1) * group; h++)
      s += part[((int64_t(w) * H + h) * 2 + which) * K * d + int64_t(key) * d + c];
  (which ? dpv : dpk)[r] = s;
}

// dgate (G) = (1 - gamma²) sum_t <dout, Y_p> per head, or summed over heads for a scalar gate: in
// double, each head's tokens in a fixed tree. One block of 256 threads.
__global__ void gate_reduce(float* dgate, const float* gp, const float* gate, int N, int H, int G) {
  __shared__ double red[256];
  double total = 0;
  for (int h = 0; h < H; h++) {
    double s = 0;
    for (int t = threadIdx.x; t < N; t += 256) s += double(gp[int64_t(h) * N + t]);
    red[threadIdx.x] = s;
    __syncthreads();
    for (int w = 128; w > 0; w >>= 1) {
      if (int(threadIdx.x) < w) red[threadIdx.x] += red[threadIdx.x + w];
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      if (G == 1) {
        total += red[0];
      } else {
        const double g = tanhf(gate[h]);
        dgate[h] = float((1.0 - g * g) * red[0]);
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0 && G == 1) {
    const double g = tanhf(gate[0]);
    dgate[0] = float((1.0 - g * g) * total);
  }
}

// The segment holding token t (seg[s] <= t < seg[s + 1]), searching on from segment s.
int64_t segment_of(const int32_t* seg, int64_t s, int64_t t) {
  while (seg[s + 1] <= t) s++;
  return s;
}

// The query tiles (64 packed tokens each, the last one shorter) with their key ranges: from the
// segment start of the tile's first token to its last token (bidirectional: to the end of the last
// token's segment). item.chunk = the tile's index.
std::vector<FwdItem> query_tiles(const int32_t* seg, int64_t N, bool bidir) {
  std::vector<FwdItem> items;
  int64_t s = 0;
  for (int64_t t0 = 0; t0 < N; t0 += kTile) {
    s = segment_of(seg, s, t0);
    const int64_t nt = std::min<int64_t>(kTile, N - t0);
    const int64_t ke = bidir ? seg[segment_of(seg, s, t0 + nt - 1) + 1] : t0 + nt;
    items.push_back({int(t0), int(nt), int(seg[s]), int(ke), int(t0), int(t0 / kTile)});
  }
  // costliest first (the number of keys): a balanced schedule; results do not depend on it
  std::stable_sort(items.begin(), items.end(),
                   [](const FwdItem& a, const FwdItem& b) { return a.ke - a.kb > b.ke - b.kb; });
  return items;
}

template <class Kernel>
void launch_bwd(Kernel kernel, size_t bytes, bool& allowed, const BwdArgs& a, unsigned gx, unsigned gy, const char* what) {
  if (gx == 0 || gy == 0) return;
  if (!allowed) {
    LA_CHECK(bytes <= max_shared_memory_per_block(), "gatedAttentionBackward: head size ", a.d, " needs ", bytes,
             " bytes of shared memory per block; the device has ", max_shared_memory_per_block());
    LA_ALLOW_DYNAMIC_SHARED(bytes, kernel);
    allowed = true;
  }
  LA_LAUNCH(dim3(gx, gy), dim3(kThreads), bytes, kernel)(a);
  check_launch(what);
}

template <int DP> void launch_backward_dp(const BwdArgs& a, unsigned qtiles, unsigned ktiles) {
  static bool allowed_dq = false, allowed_dkdv = false;
  launch_bwd(gated_bwd_dq<DP>, dq_smem<DP>(), allowed_dq, a, unsigned(a.H), qtiles, "gated attention backward dq");
  launch_bwd(gated_bwd_dkdv<DP>, dkdv_smem<DP>(), allowed_dkdv, a, unsigned(a.Hkv), ktiles,
             "gated attention backward dk dv");
}

void check_head(int64_t d, const char* op) {
  LA_CHECK(d >= 1 && d <= attn::kMaxHead, op, ": head size ", d, " is not supported on CUDA (at most ",
           attn::kMaxHead, ")");
}

}  // namespace

void gated_attention_forward(float* out, float* stats, const float* q, const float* k, const float* v,
                             const int32_t* seg, const int32_t* seg_host, int64_t S, const float* pk, const float* pv,
                             const float* gate, int64_t G, int64_t N, int64_t H, int64_t Hkv, int64_t d, int64_t K,
                             bool causal, bool per_segment) {
  if (N <= 0 || H <= 0) return;
  check_head(d, "gatedAttention");
  std::vector<FwdItem> items = query_tiles(seg_host, N, !causal);
  for (FwdItem& it : items) it.chunk = 0;  // no split-K here (the backward uses chunk as the tile index)
  Scratch items_dev(items.size() * sizeof(FwdItem));
  attn::upload(items_dev, items);
  attn::FwdArgs a = attn::forward_args(out, q, k, v, pk, pv, gate, H, Hkv, d, K, G);
  a.stats = stats;
  a.seg = seg;
  a.bidir = !causal;
  a.pstride = pk && per_segment ? K * Hkv * d : 0;
  a.items = items_dev.as<FwdItem>();
  a.nseg = int(S);
  a.nh = 1;
  a.rows = N * H;
  attn::launch_forward<4>(a, unsigned(H), unsigned(items.size()));
}

void gated_attention_backward(float* dq, float* dk, float* dv, float* dpk, float* dpv, float* dgate,
                              const float* dout, const float* q, const float* k, const float* v, const int32_t* seg,
                              const int32_t* seg_host, int64_t S, const float* pk, const float* pv, const float* gate,
                              int64_t G, const float* out, const float* stats, int64_t N, int64_t H, int64_t Hkv,
                              int64_t d, int64_t K, bool causal, bool per_segment) {
  check_head(d, "gatedAttentionBackward");
  const bool prompt = pk != nullptr;
  if (!prompt) K = 0;
  per_segment = prompt && per_segment;
  const std::vector<FwdItem> qitems = N > 0 ? query_tiles(seg_host, N, !causal) : std::vector<FwdItem>();
  // key tiles: 64 packed keys, seen by the queries up to the end of the last key's segment, from
  // the key tile itself (causal) or from the start of its first key's segment
  std::vector<KeyItem> kitems;
  {
    int64_t s = 0;
    for (int64_t k0 = 0; k0 < N; k0 += kTile) {
      const int64_t nk = std::min<int64_t>(kTile, N - k0);
      s = segment_of(seg_host, s, k0);
      const int64_t q0 = causal ? k0 : seg_host[s];
      kitems.push_back({int(k0), int(nk), int(q0), int(seg_host[segment_of(seg_host, s, k0 + nk - 1) + 1])});
    }
    std::stable_sort(kitems.begin(), kitems.end(),
                     [](const KeyItem& a, const KeyItem& b) { return a.qe - a.q0 > b.qe - b.q0; });
  }
  const int64_t tiles = N > 0 ? (N + kTile - 1) / kTile : 0;
  // partial dpk, dpv slots: one per query tile (shared prompt), or one per (tile, segment of the
  // tile) (per segment, tile-major: each segment's slots are consecutive); ranges (P, 2): the slots
  // of each prompt
  std::vector<int> slot0(static_cast<size_t>(tiles)), ranges;
  int64_t slots = 0;
  if (per_segment) {
    ranges.assign(size_t(2 * S), 0);
    int64_t s = 0;
    for (int64_t w = 0; w < tiles; w++) {
      const int64_t t0 = w * kTile, t1 = std::min<int64_t>(N, t0 + kTile) - 1;
      s = segment_of(seg_host, s, t0);
      const int64_t last = segment_of(seg_host, s, t1);
      slot0[size_t(w)] = int(slots);
      for (int64_t x = s; x <= last; x++, slots++) {
        if (seg_host[x] == seg_host[x + 1]) continue;  // empty: its slot is never written nor read
        if (ranges[size_t(2 * x + 1)] == 0) ranges[size_t(2 * x)] = int(slots);
        ranges[size_t(2 * x + 1)] = int(slots + 1);
      }
    }
  } else {
    for (int64_t w = 0; w < tiles; w++) slot0[size_t(w)] = int(w);
    slots = tiles;
    ranges = {0, int(tiles)};
  }
  Scratch qitems_dev(qitems.size() * sizeof(FwdItem)), kitems_dev(kitems.size() * sizeof(KeyItem)),
      slot0_dev(slot0.size() * sizeof(int)), ranges_dev(ranges.size() * sizeof(int));
  attn::upload(qitems_dev, qitems);
  attn::upload(kitems_dev, kitems);
  attn::upload(slot0_dev, slot0);
  attn::upload(ranges_dev, ranges);
  Scratch dd(size_t(H * N) * 4), gp(prompt ? size_t(H * N) * 4 : 0),
      part(prompt ? size_t(slots * H * 2 * K * d) * 4 : 0);

  BwdArgs a{};
  a.dq = dq;
  a.dk = dk;
  a.dv = dv;
  a.part = part.as<float>();
  a.slot0 = slot0_dev.as<int>();
  a.pstride = per_segment ? K * Hkv * d : 0;
  a.bidir = !causal;
  a.gp = gp.as<float>();
  a.dd = dd.as<float>();
  a.dout = dout;
  a.q = q;
  a.k = k;
  a.v = v;
  a.pk = pk;
  a.pv = pv;
  a.gate = gate;
  a.out = out;
  a.stats = stats;
  a.seg = seg;
  a.qitems = qitems_dev.as<FwdItem>();
  a.kitems = kitems_dev.as<KeyItem>();
  a.nseg = int(S);
  a.N = int(N);
  a.H = int(H);
  a.Hkv = int(Hkv);
  a.d = int(d);
  a.K = int(K);
  a.G = int(G);
  a.scale = 1.f / std::sqrt(float(d));
  LA_CHECK(qitems.size() <= 65535, "gatedAttentionBackward: too many tokens (", N, ")");
  if (N > 0) {
    const unsigned qt = unsigned(qitems.size()), kt = unsigned(kitems.size());
    if (d <= 16) launch_backward_dp<16>(a, qt, kt);
    else if (d <= 32) launch_backward_dp<32>(a, qt, kt);
    else if (d <= 64) launch_backward_dp<64>(a, qt, kt);
    else launch_backward_dp<128>(a, qt, kt);
  }
  if (!prompt) return;
  const int64_t P = per_segment ? S : 1, n = 2 * P * K * Hkv * d;
  if (n > 0) {
    LA_LAUNCH(blocks_for(n, 256), 256, 0, prompt_reduce)(dpk, dpv, part.as<float>(), ranges_dev.as<int>(), int(P),
                                                          int(H), int(Hkv), int(K), int(d));
    check_launch("gated attention prompt reduce");
  }
  LA_LAUNCH(1, 256, 0, gate_reduce)(dgate, gp.as<float>(), gate, int(N), int(H), int(G));
  check_launch("gated attention gate reduce");
}

}  // namespace la::cuda
