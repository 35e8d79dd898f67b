#include "train_ops.h"

#include <cmath>
#include <cstring>
#include <string>

#include "../core/error.h"
#include "../cpu/kernels.h"
#include "../cuda/kernels.h"
#include "../core/quant.h"
#include "checks.h"
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

// Segment offsets (S+1): checked in the body, where their values are known.
void check_segments(const int32_t* seg, int64_t S, int64_t N) {
  LA_CHECK(seg[0] == 0, "segments[0] must be 0, got ", seg[0]);
  for (int64_t s = 0; s < S; s++)
    LA_CHECK(seg[s + 1] >= seg[s], "segments must be non-decreasing, but segments[", s + 1, "] = ", seg[s + 1],
             " < segments[", s, "] = ", seg[s]);
  LA_CHECK(seg[S] == N, "segments[", S, "] (the last offset) must equal the token count ", N, ", got ", seg[S]);
}

void check_indices(const char* what, const int32_t* idx, int64_t M, int64_t bound) {
  for (int64_t m = 0; m < M; m++)
    LA_CHECK(idx[m] >= 0 && idx[m] < bound, what, "[", m, "] = ", idx[m], " is outside [0, ", bound, ")");
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
  int64_t K = check_prompt(op, pk, pv, gate, H, Hkv, d);
  Device dev = expect_same_device(op, {&q, &k, &v, &pk, &pv, &gate});
  expect_index_device(op, "segments", segments, dev);
  return K;
}

}  // namespace

int64_t check_prompt(const char* op, const TensorPtr& pk, const TensorPtr& pv, const TensorPtr& gate, int64_t H,
                     int64_t Hkv, int64_t d) {
  if (!pk && !pv && !gate) return 0;
  LA_CHECK(pk && pv && gate, op,
           ": the prompt keys pk, values pv and gate come together (all tensors, or all null); got ",
           pk ? "pk" : "no pk", ", ", pv ? "pv" : "no pv", ", ", gate ? "gate" : "no gate");
  expect_ndim(op, "pk", pk, 3);
  expect_ndim(op, "pv", pv, 3);
  expect_dtype(op, "pk", pk, DType::F32);
  expect_dtype(op, "pv", pv, DType::F32);
  expect_dtype(op, "gate", gate, DType::F32);
  LA_CHECK(pk->shape == pv->shape, op, ": pk ", pk->describe(), " and pv ", pv->describe(), " differ");
  LA_CHECK(pk->dim(1) == Hkv && pk->dim(2) == d, op, ": pk ", pk->describe(), " must be (K, ", Hkv, ", ", d,
           ") to match the kv heads and head size");
  LA_CHECK(gate->ndim() == 1 && (gate->dim(0) == H || gate->dim(0) == 1), op, ": gate must be (", H,
           ") (per head) or (1) (scalar), got ", gate->describe());
  return pk->dim(0);
}

void rope_at(const TensorPtr& x, const TensorPtr& positions, float theta, bool interleaved, bool inverse) {
  const char* op = "ropeAt";
  expect_ndim(op, "x", x, 3);
  expect_dtype(op, "x", x, DType::F32);
  expect_ndim(op, "positions", positions, 1);
  expect_dtype(op, "positions", positions, DType::I32);
  LA_CHECK(x->dim(2) % 2 == 0, op, ": head size must be even, got ", x->describe());
  LA_CHECK(positions->dim(0) == x->dim(0), op, ": positions ", positions->describe(),
           " must have one entry per row of x ", x->describe());
  LA_CHECK(theta > 0 && std::isfinite(theta), op, ": theta must be > 0, got ", theta);
  Device dev = x->device;
  expect_index_device(op, "positions", positions, dev);
  expect_writable(op, "x", x);
  queue_op(op, {x, positions}, {x}, [=] {
    Indices index(positions, dev);
    const int32_t* pos = index.host();
    for (int64_t t = 0; t < x->dim(0); t++) LA_CHECK(pos[t] >= 0, "positions[", t, "] = ", pos[t], " is negative");
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::rope_at(x->data<float>(), index.on_device(), x->dim(0), x->dim(1), x->dim(2), theta,
                                      interleaved, inverse));
    cpu::rope_at(x->data<float>(), pos, x->dim(0), x->dim(1), x->dim(2), theta, interleaved, inverse);
  });
}

GatedAttentionResult gated_attention(const TensorPtr& q, const TensorPtr& k, const TensorPtr& v,
                                     const TensorPtr& segments, const TensorPtr& pk, const TensorPtr& pv,
                                     const TensorPtr& gate) {
  const char* op = "gatedAttention";
  int64_t K = check_gated(op, q, k, v, segments, pk, pv, gate);
  int64_t N = q->dim(0), H = q->dim(1), d = q->dim(2), Hkv = k->dim(1), S = segments->dim(0) - 1;
  Device dev = q->device;
  GatedAttentionResult r{empty(q->shape, DType::F32, dev), empty({N, H, 2}, DType::F32, dev)};
  TensorPtr out = r.out, stats = r.stats;
  queue_op(op, present({q, k, v, segments, pk, pv, gate}), {out, stats}, [=] {
    Indices index(segments, dev);
    const int32_t* seg = index.host();
    check_segments(seg, S, N);
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::gated_attention_forward(
          out->data<float>(), stats->data<float>(), q->data<float>(), k->data<float>(), v->data<float>(),
          index.on_device(), seg, S, pk ? pk->data<float>() : nullptr, pv ? pv->data<float>() : nullptr,
          gate ? gate->data<float>() : nullptr, gate ? gate->dim(0) : 0, N, H, Hkv, d, K));
    cpu::gated_attention_forward(out->data<float>(), stats->data<float>(), q->data<float>(), k->data<float>(),
                                 v->data<float>(), seg, S, pk ? pk->data<float>() : nullptr,
                                 pv ? pv->data<float>() : nullptr, gate ? gate->data<float>() : nullptr,
                                 gate ? gate->dim(0) : 0, N, H, Hkv, d, K);
  });
  return r;
}

GatedAttentionGrads gated_attention_backward(const TensorPtr& dout, const TensorPtr& q, const TensorPtr& k,
                                             const TensorPtr& v, const TensorPtr& segments, const TensorPtr& pk,
                                             const TensorPtr& pv, const TensorPtr& gate, const TensorPtr& out,
                                             const TensorPtr& stats) {
  const char* op = "gatedAttentionBackward";
  int64_t K = check_gated(op, q, k, v, segments, pk, pv, gate);
  int64_t N = q->dim(0), H = q->dim(1), d = q->dim(2), Hkv = k->dim(1), S = segments->dim(0) - 1;
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
             auto f = [](const TensorPtr& t) { return t ? t->data<float>() : nullptr; };
             if (dev == Device::CUDA)
               return LA_ON_CUDA(cuda::gated_attention_backward(
                   f(o.dq), f(o.dk), f(o.dv), f(o.dpk), f(o.dpv), f(o.dgate), f(dout), f(q), f(k), f(v),
                   index.on_device(), seg, S, f(pk), f(pv), f(gate), gate ? gate->dim(0) : 0, f(out), f(stats), N, H,
                   Hkv, d, K));
             cpu::gated_attention_backward(f(o.dq), f(o.dk), f(o.dv), f(o.dpk), f(o.dpv), f(o.dgate), f(dout), f(q),
                                           f(k), f(v), seg, S, f(pk), f(pv), f(gate), gate ? gate->dim(0) : 0,
                                           f(out), f(stats), N, H, Hkv, d, K);
           });
  return g;
}

TensorPtr rmsnorm_backward(const TensorPtr& dy, const TensorPtr& x, const TensorPtr& w, float eps) {
  const char* op = "rmsnormBackward";
  expect_ndim(op, "x", x, 2);
  expect_ndim(op, "w", w, 1);
  expect_dtype(op, "dy", dy, DType::F32);
  expect_dtype(op, "x", x, DType::F32);
  expect_dtype(op, "w", w, DType::F32);
  LA_CHECK(dy->shape == x->shape, op, ": dy ", dy->describe(), " and x ", x->describe(), " differ");
  LA_CHECK(w->dim(0) == x->dim(1), op, ": w ", w->describe(), " does not match x ", x->describe());
  LA_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps must be >= 0, got ", eps);
  Device dev = expect_same_device(op, {&dy, &x, &w});
  TensorPtr dx = empty(x->shape, DType::F32, dev);
  queue_op(op, {dy, x, w}, {dx}, [=] {
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::rmsnorm_backward(dx->data<float>(), dy->data<float>(), x->data<float>(), w->data<float>(),
                                               x->dim(0), x->dim(1), eps));
    cpu::rmsnorm_backward(dx->data<float>(), dy->data<float>(), x->data<float>(), w->data<float>(), x->dim(0),
                          x->dim(1), eps);
  });
  return dx;
}

std::pair<TensorPtr, TensorPtr> swiglu_backward(const TensorPtr& dout, const TensorPtr& a, const TensorPtr& b) {
  const char* op = "swigluBackward";
  expect_dtype(op, "dout", dout, DType::F32);
  expect_dtype(op, "a", a, DType::F32);
  expect_dtype(op, "b", b, DType::F32);
  LA_CHECK(a->shape == b->shape && dout->shape == a->shape, op, ": dout ", dout->describe(), ", a ", a->describe(),
           " and b ", b->describe(), " must have the same shape");
  Device dev = expect_same_device(op, {&dout, &a, &b});
  TensorPtr da = empty(a->shape, DType::F32, dev), db = empty(a->shape, DType::F32, dev);
  queue_op(op, {dout, a, b}, {da, db}, [=] {
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::swiglu_backward(da->data<float>(), db->data<float>(), dout->data<float>(),
                                              a->data<float>(), b->data<float>(), a->numel()));
    cpu::swiglu_backward(da->data<float>(), db->data<float>(), dout->data<float>(), a->data<float>(),
                         b->data<float>(), a->numel());
  });
  return {da, db};
}

TensorPtr matmul_backward(const TensorPtr& dy, const TensorPtr& w) {
  const char* op = "matmulBackward";
  expect_ndim(op, "dy", dy, 2);
  expect_ndim(op, "w", w, 2);
  expect_dtype(op, "dy", dy, DType::F32);
  expect_weight(op, "w", w);
  LA_CHECK(dy->dim(1) == w->dim(0), op, ": dy ", dy->describe(), " · w needs w (", dy->dim(1), ", K), got ",
           w->describe());
  Device dev = expect_same_device(op, {&dy, &w});
  int64_t M = dy->dim(0), N = w->dim(0), K = w->dim(1);
  TensorPtr dx = empty({M, K}, DType::F32, dev);
  queue_op(op, {dy, w}, {dx}, [=] {
    if (is_quantized(w->dtype)) {
      if (dev == Device::CUDA)
        LA_ON_CUDA(cuda::matmul_backward_q(dx->data<float>(), dy->data<float>(), w->raw(), w->dtype, M, N, K));
      else
        cpu::matmul_backward_q(dx->data<float>(), dy->data<float>(), w->raw(), w->dtype, M, N, K);
    } else if (dev == Device::CUDA)
      LA_ON_CUDA(cuda::matmul_backward(dx->data<float>(), dy->data<float>(), w->raw(), w->dtype == DType::BF16, M, N, K));
    else if (w->dtype == DType::F32)
      cpu::matmul_backward(dx->data<float>(), dy->data<float>(), w->data<float>(), M, N, K);
    else
      cpu::matmul_backward_bf16(dx->data<float>(), dy->data<float>(), w->data<uint16_t>(), M, N, K);
  });
  return dx;
}

TensorPtr gather_rows(const TensorPtr& x, const TensorPtr& idx) {
  const char* op = "gatherRows";
  expect_ndim(op, "idx", idx, 1);
  expect_dtype(op, "idx", idx, DType::I32);
  Device dev = x->device;
  expect_index_device(op, "idx", idx, dev);
  std::vector<int64_t> shape = x->shape;
  shape[0] = idx->dim(0);
  TensorPtr out = empty(shape, x->dtype, dev);
  queue_op(op, {x, idx}, {out}, [=] {
    Indices index(idx, dev);
    const int32_t* ix = index.host();
    check_indices("idx", ix, idx->dim(0), x->dim(0));
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::gather_rows(out->raw(), x->raw(), index.on_device(), idx->dim(0),
                                          int64_t(x->nbytes() / size_t(x->dim(0)))));
    cpu::gather_rows(out->raw(), x->raw(), ix, idx->dim(0), int64_t(x->nbytes() / size_t(x->dim(0))));
  });
  return out;
}

void scatter_add_rows(const TensorPtr& dst, const TensorPtr& idx, const TensorPtr& src) {
  const char* op = "scatterAddRows";
  expect_dtype(op, "dst", dst, DType::F32);
  expect_dtype(op, "src", src, DType::F32);
  expect_ndim(op, "idx", idx, 1);
  expect_dtype(op, "idx", idx, DType::I32);
  std::vector<int64_t> want = dst->shape;
  want[0] = idx->dim(0);
  LA_CHECK(src->shape == want, op, ": src must be ", shape_str(want), " (one row of dst ", dst->describe(),
           " per index of idx ", idx->describe(), "), got ", src->describe());
  Device dev = expect_same_device(op, {&dst, &src});
  expect_index_device(op, "idx", idx, dev);
  expect_writable(op, "dst", dst);
  expect_distinct(op, "dst", dst, "src", src);
  queue_op(op, {dst, idx, src}, {dst}, [=] {
    Indices index(idx, dev);
    const int32_t* ix = index.host();
    check_indices("idx", ix, idx->dim(0), dst->dim(0));
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::scatter_add_rows(dst->data<float>(), index.on_device(), src->data<float>(), idx->dim(0),
                                               dst->numel() / dst->dim(0)));
    cpu::scatter_add_rows(dst->data<float>(), ix, src->data<float>(), idx->dim(0), dst->numel() / dst->dim(0));
  });
}

std::pair<TensorPtr, TensorPtr> cross_entropy(const TensorPtr& logits, const TensorPtr& targets, float scale) {
  const char* op = "crossEntropy";
  expect_ndim(op, "logits", logits, 2);
  expect_dtype(op, "logits", logits, DType::F32);
  expect_ndim(op, "targets", targets, 1);
  expect_dtype(op, "targets", targets, DType::I32);
  LA_CHECK(targets->dim(0) == logits->dim(0), op, ": targets ", targets->describe(),
           " must have one entry per row of logits ", logits->describe());
  LA_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  Device dev = logits->device;
  expect_index_device(op, "targets", targets, dev);
  int64_t M = logits->dim(0), V = logits->dim(1);
  TensorPtr loss = empty({1}, DType::F32, dev), dlogits = empty(logits->shape, DType::F32, dev);
  queue_op(op, {logits, targets}, {loss, dlogits}, [=] {
    Indices index(targets, dev);
    const int32_t* tg = index.host();
    for (int64_t m = 0; m < M; m++)
      LA_CHECK(tg[m] >= 0 && tg[m] < V, "targets[", m, "] = ", tg[m], " is outside the vocabulary [0, ", V, ")");
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::cross_entropy(loss->data<float>(), dlogits->data<float>(), logits->data<float>(),
                                            index.on_device(), M, V, scale));
    loss->data<float>()[0] = float(cpu::cross_entropy(dlogits->data<float>(), logits->data<float>(), tg, M, V, scale));
  });
  return {loss, dlogits};
}

void adamw(const TensorPtr& param, const TensorPtr& grad, const TensorPtr& m, const TensorPtr& v, int64_t step,
           double lr, double beta1, double beta2, double eps, double weight_decay) {
  const char* op = "adamw";
  expect_dtype(op, "param", param, DType::F32);
  expect_dtype(op, "grad", grad, DType::F32);
  expect_dtype(op, "m", m, DType::F32);
  expect_dtype(op, "v", v, DType::F32);
  LA_CHECK(grad->shape == param->shape && m->shape == param->shape && v->shape == param->shape, op, ": param ",
           param->describe(), ", grad ", grad->describe(), ", m ", m->describe(), " and v ", v->describe(),
           " must have the same shape");
  LA_CHECK(step >= 1, op, ": step counts from 1, got ", step);
  LA_CHECK(std::isfinite(lr) && lr >= 0, op, ": lr must be >= 0, got ", lr);
  LA_CHECK(beta1 >= 0 && beta1 < 1, op, ": beta1 must be in [0, 1), got ", beta1);
  LA_CHECK(beta2 >= 0 && beta2 < 1, op, ": beta2 must be in [0, 1), got ", beta2);
  LA_CHECK(std::isfinite(eps) && eps >= 0, op, ": eps must be >= 0, got ", eps);
  LA_CHECK(std::isfinite(weight_decay) && weight_decay >= 0, op, ": weightDecay must be >= 0, got ", weight_decay);
  Device dev = expect_same_device(op, {&param, &grad, &m, &v});
  expect_writable(op, "param", param);
  expect_writable(op, "m", m);
  expect_writable(op, "v", v);
  expect_distinct(op, "param", param, "grad", grad);
  expect_distinct(op, "param", param, "m", m);
  expect_distinct(op, "param", param, "v", v);
  expect_distinct(op, "m", m, "v", v);
  expect_distinct(op, "m", m, "grad", grad);
  expect_distinct(op, "v", v, "grad", grad);
  queue_op(op, {param, grad, m, v}, {param, m, v}, [=] {
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::adamw(param->data<float>(), grad->data<float>(), m->data<float>(), v->data<float>(),
                                    param->numel(), step, lr, beta1, beta2, eps, weight_decay));
    cpu::adamw(param->data<float>(), grad->data<float>(), m->data<float>(), v->data<float>(), param->numel(), step, lr,
               beta1, beta2, eps, weight_decay);
  });
}

TensorPtr sum_squares(const TensorPtr& x) {
  const char* op = "sumSquares";
  expect_dtype(op, "x", x, DType::F32);
  TensorPtr out = empty({1}, DType::F32, x->device);
  queue_op(op, {x}, {out}, [=] {
    if (x->device == Device::CUDA) return LA_ON_CUDA(cuda::sum_squares(out->data<float>(), x->data<float>(), x->numel()));
    out->data<float>()[0] = float(cpu::sum_squares(x->data<float>(), x->numel()));
  });
  return out;
}

void scale_inplace(const TensorPtr& x, float s) {
  const char* op = "scaleInPlace";
  expect_dtype(op, "x", x, DType::F32);
  LA_CHECK(std::isfinite(s), op, ": s must be finite, got ", s);
  expect_writable(op, "x", x);
  queue_op(op, {x}, {x}, [=] {
    if (x->device == Device::CUDA) return LA_ON_CUDA(cuda::scale_inplace(x->data<float>(), x->numel(), s));
    cpu::scale_inplace(x->data<float>(), x->numel(), s);
  });
}

}  // namespace la::ops
