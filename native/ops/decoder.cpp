// One decoder layer of cached inference (SPEC §1) as a single op: the same kernels, in the same
// order and on the same buffers' values, as the op-by-op forward (rmsnorm, matmul, rope, kvWrite,
// attention, matmul, addInPlace, rmsnorm, matmul ×2, swiglu, matmul, addInPlace), queued once
// instead of ~15 times. At decode, a small model's per-op cost (the JS call, the handle, the
// executor's hand-off) is larger than the op's work, so this is what makes it fast; the results
// equal the op-by-op forward bit for bit (tested).
#include <cstring>

#include "../core/error.h"
#include "checks.h"
#include "dispatch.h"
#include "indices.h"
#include "ops.h"
#include "train_ops.h"

namespace la::ops {
namespace {

float* f32(const TensorPtr& t) { return t ? t->data<float>() : nullptr; }

}  // namespace

void decoder_layer(const TensorPtr& x, const DecoderWeights& w, const TensorPtr& k_cache, const TensorPtr& v_cache,
                   int64_t pos0, const DecoderShape& s, const TensorPtr& pk, const TensorPtr& pv,
                   const TensorPtr& gate) {
  const char* op = "decoderLayer";
  expect_ndim(op, "x", x, 2);
  expect_dtype(op, "x", x, DType::F32);
  const int64_t T = x->dim(0), C = x->dim(1), H = s.heads, Hkv = s.kv_heads;
  LA_CHECK(H >= 1 && Hkv >= 1 && H % Hkv == 0 && C % H == 0, op, ": ", H, " heads and ", Hkv,
           " kv heads do not fit x ", x->describe(), " (C must be a multiple of the heads, heads of the kv heads)");
  const int64_t d = C / H, F = w.w1 ? w.w1->dim(0) : 0;
  LA_CHECK(d % 2 == 0, op, ": the head size ", d, " must be even");
  LA_CHECK(s.eps >= 0 && s.theta > 0, op, ": eps must be >= 0 and theta > 0, got ", s.eps, " and ", s.theta);
  struct Expect {
    const char* name;
    const TensorPtr& t;
    std::vector<int64_t> shape;
  };
  for (const Expect& e : {Expect{"attnNorm", w.attn_norm, {C}}, Expect{"wq", w.wq, {H * d, C}},
                          Expect{"wk", w.wk, {Hkv * d, C}}, Expect{"wv", w.wv, {Hkv * d, C}},
                          Expect{"wo", w.wo, {C, H * d}}, Expect{"ffnNorm", w.ffn_norm, {C}},
                          Expect{"w1", w.w1, {F, C}}, Expect{"w2", w.w2, {C, F}}, Expect{"w3", w.w3, {F, C}}}) {
    LA_CHECK(e.t, op, ": the layer weight ", e.name, " is missing");
    expect_shape(op, e.name, e.t, e.shape, "the layer's shape");
    if (e.shape.size() == 1)
      expect_dtype(op, e.name, e.t, DType::F32);
    else
      expect_weight(op, e.name, e.t);
  }
  for (const TensorPtr* c : {&k_cache, &v_cache}) {
    expect_ndim(op, "the caches", *c, 3);
    expect_dtype(op, "the caches", *c, DType::F32);
    LA_CHECK((*c)->dim(1) == Hkv && (*c)->dim(2) == d, op, ": cache ", (*c)->describe(), " must be (S, ", Hkv, ", ",
             d, ")");
    expect_writable(op, "the caches", *c);
  }
  LA_CHECK(k_cache->shape == v_cache->shape, op, ": the caches ", k_cache->describe(), " and ", v_cache->describe(),
           " differ");
  const int64_t S = k_cache->dim(0);
  LA_CHECK(pos0 >= 0 && pos0 + T <= S, op, ": positions ", pos0, "..", pos0 + T, " exceed the cache length ", S);
  const int64_t K = check_prompt(op, pk, pv, gate, H, Hkv, d);
  expect_writable(op, "x", x);
  const Device dev = expect_same_device(op, {&x, &w.attn_norm, &w.wq, &w.wk, &w.wv, &w.wo, &w.ffn_norm, &w.w1,
                                             &w.w2, &w.w3, &k_cache, &v_cache, &pk, &pv, &gate});

  std::vector<TensorPtr> inputs{x, w.attn_norm, w.wq, w.wk, w.wv, w.wo, w.ffn_norm, w.w1, w.w2, w.w3, k_cache, v_cache};
  if (K) inputs.insert(inputs.end(), {pk, pv, gate});
  // One scratch block, allocated now (stream-ordered on CUDA) and held by the body until it ran:
  // a, proj (T, C); q, o (T, H*d); k, v (T, Hkv*d); gate, up, h (T, F).
  TensorPtr scratch = empty({T * (2 * C + 2 * H * d + 2 * Hkv * d + 3 * F)}, DType::F32, dev);
  const float eps = s.eps, theta = s.theta;
  const bool interleaved = s.interleaved;
  queue_op(op, inputs, {x, k_cache, v_cache}, [=] {
    Kernels k{dev};
    float *xs = f32(x), *as = f32(scratch), *ps = as + T * C, *qs = ps + T * C, *os = qs + T * H * d,
          *ks = os + T * H * d, *vs = ks + T * Hkv * d, *g = vs + T * Hkv * d, *u = g + T * F, *h = u + T * F;
    const int64_t row = Hkv * d;
    // attention block: x += Wo · Attn(RoPE(Wq a), RoPE(Wk a), Wv a), a = rmsnorm(x)
    k.rmsnorm(as, xs, w.attn_norm, T, C, eps);
    k.matmul(qs, as, w.wq, T);
    k.matmul(ks, as, w.wk, T);
    k.matmul(vs, as, w.wv, T);
    k.rope(qs, T, H, d, pos0, theta, interleaved);
    k.rope(ks, T, Hkv, d, pos0, theta, interleaved);
    k.copy(f32(k_cache) + pos0 * row, ks, T * row);
    k.copy(f32(v_cache) + pos0 * row, vs, T * row);
    if (dev == Device::CUDA) {
      LA_ON_CUDA(cuda::attention_forward(os, qs, f32(k_cache), f32(v_cache), T, H, Hkv, d, S, pos0, f32(pk), f32(pv),
                                         f32(gate), K ? gate->dim(0) : 0, K));
    } else {
      cpu::attention_forward(os, qs, f32(k_cache), f32(v_cache), T, H, Hkv, d, pos0);
      if (K) cpu::attention_prompt_add(os, qs, f32(pk), f32(pv), f32(gate), gate->dim(0), T, H, Hkv, d, K);
    }
    k.matmul(ps, os, w.wo, T);
    k.add(xs, ps, T * C);
    // feed-forward block: x += W2 (silu(W1 f) * W3 f), f = rmsnorm(x)
    k.rmsnorm(as, xs, w.ffn_norm, T, C, eps);
    k.matmul(g, as, w.w1, T);
    k.matmul(u, as, w.w3, T);
    k.swiglu(h, g, u, T * F);
    k.matmul(ps, h, w.w2, T);
    k.add(xs, ps, T * C);
  });
}

}  // namespace la::ops
