// Cached-inference attention (decode T = 1 and prefill T > 1) over KV caches, with the optional
// adapter branch: the flash forward kernel of attention_tiles.cuh with every row seeing keys
// 0 .. pos0 + t. A tile's 64 rows are nh heads of one kv group x 64 / nh tokens, so the heads that
// share a kv head read each K/V tile once (decode: one block per kv group, not per head).
//
// Split-K (flash decoding): when the (token tile, head tile) blocks alone cannot fill the GPU and the
// context is long, the keys are cut into chunks, one block per (head tile, token tile, chunk) writes
// its unnormalised output with its running max and sum, and combine_chunks merges them in chunk
// order (deterministic). The adapter branch runs in the chunk-0 blocks.
#include <algorithm>
#include <vector>

#include "attention_tiles.cuh"
#include "kernels.h"

namespace la::cuda {
namespace {

// out (rows, d) = sum_c o_c e^(m_c - M) / sum_c l_c e^(m_c - M), plus out's previous value (the
// adapter branch) when add_prev; part_o (chunks, rows, d), part_ml (chunks, rows, 2).
__global__ void combine_chunks(float* out, const float* part_o, const float* part_ml, int64_t rows, int d, int chunks,
                               bool add_prev) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * d) return;
  const int64_t row = i / d;
  float M = -INFINITY;
  for (int c = 0; c < chunks; c++) M = fmaxf(M, part_ml[(c * rows + row) * 2]);
  float L = 0.f, acc = 0.f;
  for (int c = 0; c < chunks; c++) {
    const float mc = part_ml[(c * rows + row) * 2];
    const float w = mc == -INFINITY ? 0.f : expf(mc - M);  // a chunk past the row's last key
    L += part_ml[(c * rows + row) * 2 + 1] * w;
    acc += part_o[(c * rows + row) * d + i % d] * w;
  }
  float r = acc / L;
  if (add_prev) r += out[i];
  out[i] = r;
}

}  // namespace

void attention_forward(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t H,
                       int64_t Hkv, int64_t d, int64_t S, int64_t pos0, const float* pk, const float* pv,
                       const float* gate, int64_t G, int64_t K) {
  if (T <= 0 || H <= 0) return;
  LA_CHECK(d >= 1 && d <= attn::kMaxHead, "attention: head size ", d, " is not supported on CUDA (at most ",
           attn::kMaxHead, ")");
  LA_CHECK(pos0 + T <= S, "attention: positions up to ", pos0 + T, " exceed the cache length ", S);
  using attn::kTile;
  const int64_t group = H / Hkv;
  int64_t nh = std::min<int64_t>(group, kTile);  // heads per tile: a divisor of the group
  while (group % nh) nh--;
  // 16-row tiles when the rows are few (decoding): a 64-row tile would be mostly padding, and its
  // FMAs, not the K/V reads, would bound the kernel
  const int64_t rows = T * nh <= 16 ? 16 : kTile;
  const int64_t ntok = rows / nh, ttiles = (T + ntok - 1) / ntok, htiles = H / nh, kmax = pos0 + T;

  // Chunks: enough blocks for ~4 per multiprocessor (the forward kernel holds one or two per SM),
  // chunks of whole key tiles.
  int64_t chunks = 1;
  const int64_t blocks = ttiles * htiles, target = 4 * int64_t(multiprocessors());
  if (blocks < target && kmax > 2 * kTile)
    chunks = std::min((kmax + kTile - 1) / kTile, (target + blocks - 1) / blocks);
  const int64_t span = (kmax + chunks - 1) / chunks, chunk_len = (span + kTile - 1) / kTile * kTile;
  chunks = (kmax + chunk_len - 1) / chunk_len;

  const int64_t nblocks = ttiles * chunks;
  LA_CHECK(nblocks <= 65535, "attention: too many work items (", nblocks, ")");
  const bool split = chunks > 1;
  Scratch part_o(split ? size_t(chunks * T * H * d) * 4 : 0), part_ml(split ? size_t(chunks * T * H * 2) * 4 : 0);

  attn::FwdArgs a = attn::forward_args(out, q, k, v, pk, pv, gate, H, Hkv, d, K, G);
  a.part_o = split ? part_o.as<float>() : nullptr;
  a.part_ml = split ? part_ml.as<float>() : nullptr;
  // no work items: the grid itself, blockIdx.y = token tile * chunks + chunk
  a.nh = int(nh);
  a.rows = T * H;
  a.T = int(T);
  a.pos0 = int(pos0);
  a.ntok = int(ntok);
  a.chunks = int(chunks);
  a.chunk_len = int(chunk_len);
  if (rows == 16) attn::launch_forward<1>(a, unsigned(htiles), unsigned(nblocks));
  else attn::launch_forward<4>(a, unsigned(htiles), unsigned(nblocks));
  if (split) {
    const int64_t n = T * H * d;
    LA_LAUNCH(blocks_for(n, 256), 256, 0, combine_chunks)(out, part_o.as<float>(), part_ml.as<float>(), T * H, int(d),
                                                         int(chunks), pk != nullptr);
    check_launch("attention combine");
  }
}

}  // namespace la::cuda
