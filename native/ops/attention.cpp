// The attention family's op definitions (see attention.h): shapes and dtypes checked at once (a
// la::Error naming the op, the argument and the shapes), outputs allocated, the body queued on the
// tensors' device; dispatch.h picks the CPU or CUDA kernel.
#include "attention.h"

#include <initializer_list>
#include <vector>

#include "../core/error.h"
#include "checks.h"
#include "dispatch.h"
#include "indices.h"
#include "ops.h"

namespace la::ops {
namespace {

std::vector<TensorPtr> present(std::initializer_list<TensorPtr> ts) {
  std::vector<TensorPtr> r;
  for (const TensorPtr& t : ts)
    if (t) r.push_back(t);
  return r;
}

float* f32(const TensorPtr& t) { return t ? t->data<float>() : nullptr; }

// Segment offsets (S+1): checked in the body, where their values are known.
void check_segments(const int32_t* seg, int64_t S, int64_t N) {
  LA_CHECK(seg[0] == 0, "segments[0] must be 0, got ", seg[0]);
  for (int64_t s = 0; s < S; s++)
    LA_CHECK(seg[s + 1] >= seg[s], "segments must be non-decreasing, but segments[", s + 1, "] = ", seg[s + 1],
             " < segments[", s, "] = ", seg[s]);
  LA_CHECK(seg[S] == N, "segments[", S, "] (the last offset) must equal the token count ", N, ", got ", seg[S]);
}

// Common shape checks of the fused attention and its backward; returns K (0 without a prompt).
int64_t check_gated(const char* op, const TensorPtr& q, const TensorPtr& k, const TensorPtr& v,
                    const TensorPtr& segments, const TensorPtr& pk, const TensorPtr& pv, const TensorPtr& gate) {
  expect_ndim(op, "q", q, 3);
  expect_ndim(op, "k", k, 3);
  expect_ndim(op, "v", v, 3);
  expect_dtype(op, "q", q, DType::F32);
  expect_dtype(op, "k", k, DType::F32);
  expect_dtype(op, "v", v, DType::F32);
  LA_CHECK(k->shape == v->shape, op, ": k ", k->describe(), " and v ", v->describe(), " differ");
  int64_t N = q->dim(0), H = q->dim(1), d = q->dim(2), Hkv = k->dim(1);
  LA_CHECK(k->dim(0) == N, op, ": k ", k->describe(), " must have the ", N, " tokens of q ", q->describe());
  LA_CHECK(k->dim(2) == d, op, ": head size of q ", q->describe(), " and k ", k->describe(), " differ");
  LA_CHECK(H % Hkv == 0, op, ": heads ", H, " must be a multiple of kv heads ", Hkv);
  expect_ndim(op, "segments", segments, 1);
  expect_dtype(op, "segments", segments, DType::I32);
  LA_CHECK(segments->dim(0) >= 2, op, ": segments must hold S+1 >= 2 offsets, got ", segments->describe());
  int64_t K = check_prompt(op, pk, pv, gate, H, Hkv, d, segments->dim(0) - 1);
  Device dev = expect_same_device(op, {&q, &k, &v, &pk, &pv, &gate});
  expect_index_device(op, "segments", segments, dev);
  return K;
}

}  // namespace

int64_t check_prompt(const char* op, const TensorPtr& pk, const TensorPtr& pv, const TensorPtr& gate, int64_t H,
                     int64_t Hkv, int64_t d, int64_t segments) {
  if (!pk && !pv && !gate) return 0;
  LA_CHECK(pk && pv && gate, op,
           ": the prompt keys pk, values pv and gate come together (all tensors, or all null); got ",
           pk ? "pk" : "no pk", ", ", pv ? "pv" : "no pv", ", ", gate ? "gate" : "no gate");
  if (segments >= 0 && pk->ndim() == 4) {  // one prompt per segment
    LA_CHECK(pk->dim(0) == segments, op, ": per-segment pk ", pk->describe(), " must be (S, K, Hkv, d) with S = ",
             segments, " (the number of segments)");
  } else {
    LA_CHECK(pk->ndim() == 3, op, ": pk must have 3 dimensions (K, Hkv, d)",
             segments >= 0 ? " or 4 (S, K, Hkv, d: one prompt per segment)" : "", ", got ", pk->describe());
  }
  expect_dtype(op, "pk", pk, DType::F32);
  expect_dtype(op, "pv", pv, DType::F32);
  expect_dtype(op, "gate", gate, DType::F32);
  LA_CHECK(pk->shape == pv->shape, op, ": pk ", pk->describe(), " and pv ", pv->describe(), " differ");
  const int r = pk->ndim();
  LA_CHECK(pk->dim(r - 2) == Hkv && pk->dim(r - 1) == d, op, ": pk ", pk->describe(), " must be (",
           r == 4 ? "S, " : "", "K, ", Hkv, ", ", d, ") to match the kv heads and head size");
  LA_CHECK(gate->ndim() == 1 && (gate->dim(0) == H || gate->dim(0) == 1), op, ": gate must be (", H,
           ") (per head) or (1) (scalar), got ", gate->describe());
  return pk->dim(r - 3);
}

TensorPtr attention(const TensorPtr& q, const TensorPtr& k, const TensorPtr& v, int64_t pos0, const TensorPtr& pk,
                    const TensorPtr& pv, const TensorPtr& gate) {
  const char* op = "attention";
  expect_ndim(op, "q", q, 3);
  expect_ndim(op, "k", k, 3);
  expect_ndim(op, "v", v, 3);
  for (auto* t : {&q, &k, &v}) expect_dtype(op, "q, k and v", *t, DType::F32);
  LA_CHECK(k->shape == v->shape, op, ": k ", k->describe(), " and v ", v->describe(), " differ");
  int64_t T = q->dim(0), H = q->dim(1), d = q->dim(2), S = k->dim(0), Hkv = k->dim(1);
  LA_CHECK(k->dim(2) == d, op, ": head size of q ", q->describe(), " and k ", k->describe(), " differ");
  LA_CHECK(H % Hkv == 0, op, ": heads ", H, " must be a multiple of kv heads ", Hkv);
  LA_CHECK(pos0 >= 0 && pos0 + T <= S, op, ": positions ", pos0, "..", pos0 + T, " exceed the cache length ", S);
  int64_t K = check_prompt(op, pk, pv, gate, H, Hkv, d);  // 0: no adapter branch
  Device dev = expect_same_device(op, {&q, &k, &v, &pk, &pv, &gate});
  TensorPtr out = empty(q->shape, DType::F32, dev);
  std::vector<TensorPtr> inputs{q, k, v};
  if (K) inputs.insert(inputs.end(), {pk, pv, gate});
  queue_op(op, inputs, {out}, [=] {
    Kernels{dev}.attention(f32(out), f32(q), f32(k), f32(v), T, H, Hkv, d, S, pos0, K ? f32(pk) : nullptr,
                           K ? f32(pv) : nullptr, K ? f32(gate) : nullptr, K ? gate->dim(0) : 0, K);
  });
  return out;
}

GatedAttentionResult gated_attention(const TensorPtr& q, const TensorPtr& k, const TensorPtr& v,
                                     const TensorPtr& segments, const TensorPtr& pk, const TensorPtr& pv,
                                     const TensorPtr& gate, const AttentionOptions& options) {
  const char* op = "gatedAttention";
  int64_t K = check_gated(op, q, k, v, segments, pk, pv, gate);
  int64_t N = q->dim(0), H = q->dim(1), d = q->dim(2), Hkv = k->dim(1), S = segments->dim(0) - 1;
  const bool causal = options.causal, per_segment = pk && pk->ndim() == 4;
  Device dev = q->device;
  GatedAttentionResult r{empty(q->shape, DType::F32, dev), empty({N, H, 2}, DType::F32, dev)};
  TensorPtr out = r.out, stats = r.stats;
  queue_op(op, present({q, k, v, segments, pk, pv, gate}), {out, stats}, [=] {
    Indices index(segments, dev);
    const int32_t* seg = index.host();
    check_segments(seg, S, N);
    Kernels{dev}.gated_attention(f32(out), f32(stats), f32(q), f32(k), f32(v), seg, index.on_device(), S, f32(pk),
                                 f32(pv), f32(gate), gate ? gate->dim(0) : 0, N, H, Hkv, d, K, causal, per_segment);
  });
  return r;
}

GatedAttentionGrads gated_attention_backward(const TensorPtr& dout, const TensorPtr& q, const TensorPtr& k,
                                             const TensorPtr& v, const TensorPtr& segments, const TensorPtr& pk,
                                             const TensorPtr& pv, const TensorPtr& gate, const TensorPtr& out,
                                             const TensorPtr& stats, const AttentionOptions& options) {
  const char* op = "gatedAttentionBackward";
  int64_t K = check_gated(op, q, k, v, segments, pk, pv, gate);
  int64_t N = q->dim(0), H = q->dim(1), d = q->dim(2), Hkv = k->dim(1), S = segments->dim(0) - 1;
  const bool causal = options.causal, per_segment = pk && pk->ndim() == 4;
  expect_dtype(op, "dout", dout, DType::F32);
  expect_dtype(op, "out", out, DType::F32);
  expect_dtype(op, "stats", stats, DType::F32);
  expect_shape(op, "dout", dout, q->shape, "the shape of q");
  expect_shape(op, "out", out, q->shape, "the shape of q");
  expect_shape(op, "stats", stats, {N, H, 2}, "tokens, heads, 2");
  Device dev = expect_same_device(op, {&q, &dout, &out, &stats});
  GatedAttentionGrads g;
  g.dq = empty(q->shape, DType::F32, dev);
  g.dk = empty(k->shape, DType::F32, dev);
  g.dv = empty(v->shape, DType::F32, dev);
  if (K) {
    g.dpk = empty(pk->shape, DType::F32, dev);
    g.dpv = empty(pv->shape, DType::F32, dev);
    g.dgate = empty(gate->shape, DType::F32, dev);
  }
  GatedAttentionGrads o = g;
  queue_op(op, present({dout, q, k, v, segments, pk, pv, gate, out, stats}),
           present({o.dq, o.dk, o.dv, o.dpk, o.dpv, o.dgate}), [=] {
             Indices index(segments, dev);
             const int32_t* seg = index.host();
             check_segments(seg, S, N);
             Kernels{dev}.gated_attention_backward(f32(o.dq), f32(o.dk), f32(o.dv), f32(o.dpk), f32(o.dpv),
                                                   f32(o.dgate), f32(dout), f32(q), f32(k), f32(v), seg,
                                                   index.on_device(), S, f32(pk), f32(pv), f32(gate),
                                                   gate ? gate->dim(0) : 0, f32(out), f32(stats), N, H, Hkv, d, K,
                                                   causal, per_segment);
           });
  return g;
}

}  // namespace la::ops
