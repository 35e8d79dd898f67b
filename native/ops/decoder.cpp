// Cached inference in few ops. `decoder_layer` is one decoder layer as a single op: the same
// kernels, in the same order and on the same buffers' values, as the op-by-op forward (rmsnorm,
// matmul, rope, kvWrite, attention, matmul, addInPlace, rmsnorm, matmul ×2, swiglu, matmul,
// addInPlace), queued once instead of ~15 times. `Model::forward` is the whole forward pass
// (embedding, every layer, final norm, classifier) as a single op, with the weights checked once
// when the Model is made. At decode, a small model's per-op cost (the JS call, the handle, the
// executor's hand-off) is larger than the op's work, so this is what makes it fast; both equal the
// op-by-op forward bit for bit (tested).
#include <cstring>

#include "../core/error.h"
#include "attention.h"
#include "checks.h"
#include "dispatch.h"
#include "indices.h"
#include "ops.h"
#include "train_ops.h"

namespace la::ops {
namespace {

float* f32(const TensorPtr& t) { return t ? t->data<float>() : nullptr; }

// The head size d, after checking that H heads and Hkv kv heads fit C channels.
int64_t check_heads(const char* op, int64_t C, const DecoderShape& s) {
  const int64_t H = s.heads, Hkv = s.kv_heads;
  LA_CHECK(H >= 1 && Hkv >= 1 && H % Hkv == 0 && C % H == 0, op, ": ", H, " heads and ", Hkv, " kv heads do not fit ",
           C, " channels (C must be a multiple of the heads, heads of the kv heads)");
  LA_CHECK((C / H) % 2 == 0, op, ": the head size ", C / H, " must be even");
  LA_CHECK(s.eps >= 0 && s.theta > 0, op, ": eps must be >= 0 and theta > 0, got ", s.eps, " and ", s.theta);
  return C / H;
}

// Checks one layer's weights for C channels; returns its hidden size F. `layer` prefixes the
// names in errors ("" for a single layer).
int64_t check_layer_weights(const char* op, const std::string& layer, const DecoderWeights& w, int64_t C,
                            const DecoderShape& s) {
  const int64_t d = check_heads(op, C, s), H = s.heads, Hkv = s.kv_heads, F = w.w1 ? w.w1->dim(0) : 0;
  struct Expect {
    const char* name;
    const TensorPtr& t;
    std::vector<int64_t> shape;
  };
  for (const Expect& e : {Expect{"attnNorm", w.attn_norm, {C}}, Expect{"wq", w.wq, {H * d, C}},
                          Expect{"wk", w.wk, {Hkv * d, C}}, Expect{"wv", w.wv, {Hkv * d, C}},
                          Expect{"wo", w.wo, {C, H * d}}, Expect{"ffnNorm", w.ffn_norm, {C}},
                          Expect{"w1", w.w1, {F, C}}, Expect{"w2", w.w2, {C, F}}, Expect{"w3", w.w3, {F, C}}}) {
    const std::string name = layer + e.name;
    LA_CHECK(e.t, op, ": the layer weight ", name, " is missing");
    expect_shape(op, name.c_str(), e.t, e.shape, "the layer's shape");
    if (e.shape.size() == 1)
      expect_dtype(op, name.c_str(), e.t, DType::F32);
    else
      expect_weight(op, name.c_str(), e.t);
  }
  return F;
}

// Checks a layer's key and value caches (S, Hkv, d) for positions pos0 .. pos0+T-1; returns S.
int64_t check_caches(const char* op, const TensorPtr& k_cache, const TensorPtr& v_cache, int64_t Hkv, int64_t d,
                     int64_t pos0, int64_t T) {
  for (const TensorPtr* c : {&k_cache, &v_cache}) {
    LA_CHECK(*c, op, ": a cache tensor is missing");
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
  return S;
}

// Floats of one layer's scratch for T tokens: a, proj (T, C); q, o (T, H*d); k, v (T, Hkv*d);
// gate, up, h (T, F).
int64_t layer_scratch(int64_t T, int64_t C, int64_t H, int64_t Hkv, int64_t d, int64_t F) {
  return T * (2 * C + 2 * H * d + 2 * Hkv * d + 3 * F);
}

// A body's scratch floats. A device block, or a large host one, is allocated when the op is
// queued (stream-ordered on CUDA) and held by the body; a small host one is the running thread's
// buffer, reused by the next body, so that a decode step allocates nothing (a few mallocs and
// frees per token cost more than a tiny model's attention). Bodies never nest: one per thread.
class Scratch {
 public:
  Scratch(int64_t floats, Device dev) : n_(floats) {
    if (dev == Device::CUDA || floats > kKeep) block_ = empty({floats}, DType::F32, dev);
  }
  float* get() const {  // in the body
    if (block_) return block_->data<float>();
    thread_local std::vector<float> kept;
    if (int64_t(kept.size()) < n_) kept.resize(size_t(n_));
    return kept.data();
  }

 private:
  static constexpr int64_t kKeep = 1 << 18;  // floats (1 MiB)
  int64_t n_;
  TensorPtr block_;
};

// One layer's body (on the executor): x (T, C) updated in place, keys/values written at pos0..
void run_layer(const Kernels& k, float* xs, float* scratch, const DecoderWeights& w, const TensorPtr& k_cache,
               const TensorPtr& v_cache, const LayerPrompt& p, int64_t pos0, int64_t T, int64_t C,
               const DecoderShape& s) {
  const int64_t H = s.heads, Hkv = s.kv_heads, d = C / H, F = w.w1->dim(0), S = k_cache->dim(0);
  const int64_t K = p.pk ? p.pk->dim(0) : 0;
  float *as = scratch, *ps = as + T * C, *qs = ps + T * C, *os = qs + T * H * d, *ks = os + T * H * d,
        *vs = ks + T * Hkv * d, *g = vs + T * Hkv * d, *u = g + T * F, *h = u + T * F;
  const int64_t row = Hkv * d;
  // attention block: x += Wo · Attn(RoPE(Wq a), RoPE(Wk a), Wv a), a = rmsnorm(x)
  k.rmsnorm(as, xs, w.attn_norm, T, C, s.eps);
  k.matmuls(as, T, {{qs, &w.wq}, {ks, &w.wk}, {vs, &w.wv}});
  k.rope(qs, T, H, d, pos0, s.theta, s.interleaved);
  k.rope(ks, T, Hkv, d, pos0, s.theta, s.interleaved);
  k.copy(f32(k_cache) + pos0 * row, ks, T * row);
  k.copy(f32(v_cache) + pos0 * row, vs, T * row);
  k.attention(os, qs, f32(k_cache), f32(v_cache), T, H, Hkv, d, S, pos0, f32(p.pk), f32(p.pv), f32(p.gate),
              K ? p.gate->dim(0) : 0, K);
  k.matmul(ps, os, w.wo, T);
  k.add(xs, ps, T * C);
  // feed-forward block: x += W2 (silu(W1 f) * W3 f), f = rmsnorm(x)
  k.rmsnorm(as, xs, w.ffn_norm, T, C, s.eps);
  k.matmuls(as, T, {{g, &w.w1}, {u, &w.w3}});
  k.swiglu(h, g, u, T * F);
  k.matmul(ps, h, w.w2, T);
  k.add(xs, ps, T * C);
}

}  // namespace

void decoder_layer(const TensorPtr& x, const DecoderWeights& w, const TensorPtr& k_cache, const TensorPtr& v_cache,
                   int64_t pos0, const DecoderShape& s, const TensorPtr& pk, const TensorPtr& pv,
                   const TensorPtr& gate) {
  const char* op = "decoderLayer";
  expect_ndim(op, "x", x, 2);
  expect_dtype(op, "x", x, DType::F32);
  const int64_t T = x->dim(0), C = x->dim(1), H = s.heads, Hkv = s.kv_heads;
  const int64_t F = check_layer_weights(op, "", w, C, s), d = C / H;
  check_caches(op, k_cache, v_cache, Hkv, d, pos0, T);
  const int64_t K = check_prompt(op, pk, pv, gate, H, Hkv, d);
  expect_writable(op, "x", x);
  const Device dev = expect_same_device(op, {&x, &w.attn_norm, &w.wq, &w.wk, &w.wv, &w.wo, &w.ffn_norm, &w.w1,
                                             &w.w2, &w.w3, &k_cache, &v_cache, &pk, &pv, &gate});

  std::vector<TensorPtr> inputs{x, w.attn_norm, w.wq, w.wk, w.wv, w.wo, w.ffn_norm, w.w1, w.w2, w.w3, k_cache, v_cache};
  if (K) inputs.insert(inputs.end(), {pk, pv, gate});
  const Scratch scratch(layer_scratch(T, C, H, Hkv, d, F), dev);
  const LayerPrompt prompt{K ? pk : nullptr, K ? pv : nullptr, K ? gate : nullptr};
  queue_op(op, inputs, {x, k_cache, v_cache}, [=] {
    run_layer(Kernels{dev}, f32(x), scratch.get(), w, k_cache, v_cache, prompt, pos0, T, C, s);
  });
}

// ---- the whole model --------------------------------------------------------------------------

Model::Model(ModelWeights weights, const DecoderShape& shape) : w_(std::move(weights)), s_(shape) {
  const char* op = "model";
  LA_CHECK(w_.embedding && w_.final_norm && w_.classifier, op, ": the embedding, final norm and classifier are required");
  expect_ndim(op, "embedding", w_.embedding, 2);
  expect_weight(op, "embedding", w_.embedding);
  const int64_t V = w_.embedding->dim(0), C = w_.embedding->dim(1);
  expect_shape(op, "finalNorm", w_.final_norm, {C}, "the model's dim");
  expect_dtype(op, "finalNorm", w_.final_norm, DType::F32);
  expect_shape(op, "classifier", w_.classifier, {V, C}, "the vocabulary by the model's dim");
  expect_weight(op, "classifier", w_.classifier);
  LA_CHECK(!w_.layers.empty(), op, ": a model needs at least one layer");
  LA_CHECK(w_.prompts.empty() || w_.prompts.size() == w_.layers.size(), op, ": ", w_.prompts.size(),
           " adapter prompts for ", w_.layers.size(), " layers (give one per layer, null where none, or none)");
  w_.prompts.resize(w_.layers.size());
  d_ = check_heads(op, C, s_);
  for (size_t l = 0; l < w_.layers.size(); l++) {
    const std::string name = "layers[" + std::to_string(l) + "].";
    const int64_t F = check_layer_weights(op, name, w_.layers[l], C, s_);
    F_ = std::max(F_, F);
    LayerPrompt& p = w_.prompts[l];
    const std::string where = "model, layer " + std::to_string(l);
    if (!check_prompt(where.c_str(), p.pk, p.pv, p.gate, s_.heads, s_.kv_heads, d_)) p = LayerPrompt{};
  }
  matrix_params_ = w_.classifier->numel();
  for (const DecoderWeights& lw : w_.layers)
    for (const TensorPtr* m : {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.w1, &lw.w2, &lw.w3}) matrix_params_ += (*m)->numel();
  // every tensor, for the device check and the op's inputs (a poisoned one stops the forward)
  inputs_ = {w_.embedding, w_.final_norm, w_.classifier};
  for (size_t l = 0; l < w_.layers.size(); l++) {
    const DecoderWeights& lw = w_.layers[l];
    inputs_.insert(inputs_.end(), {lw.attn_norm, lw.wq, lw.wk, lw.wv, lw.wo, lw.ffn_norm, lw.w1, lw.w2, lw.w3});
    if (w_.prompts[l].pk) inputs_.insert(inputs_.end(), {w_.prompts[l].pk, w_.prompts[l].pv, w_.prompts[l].gate});
  }
  for (const TensorPtr& t : inputs_)
    LA_CHECK(t->device == inputs_[0]->device, op, ": all tensors must be on one device, but the embedding is on ",
             device_name(inputs_[0]->device), " and ", t->describe(), " on ", device_name(t->device));
  dev_ = inputs_[0]->device;
}

TensorPtr Model::forward(const std::vector<int32_t>& tokens, const std::vector<TensorPtr>& k_caches,
                         const std::vector<TensorPtr>& v_caches, int64_t pos0, bool all_logits) const {
  const char* op = "modelForward";
  const int64_t T = int64_t(tokens.size()), L = int64_t(w_.layers.size()), V = w_.embedding->dim(0),
                C = w_.embedding->dim(1), H = s_.heads, Hkv = s_.kv_heads;
  LA_CHECK(T >= 1, op, ": expected at least one token");
  for (int64_t t = 0; t < T; t++)
    LA_CHECK(tokens[t] >= 0 && tokens[t] < V, op, ": token ", tokens[t], " at index ", t,
             " is outside the vocabulary [0, ", V, ")");
  LA_CHECK(int64_t(k_caches.size()) == L && int64_t(v_caches.size()) == L, op, ": ", k_caches.size(), " key and ",
           v_caches.size(), " value caches for ", L, " layers");
  std::vector<TensorPtr> inputs = inputs_;
  for (int64_t l = 0; l < L; l++) {
    check_caches(op, k_caches[l], v_caches[l], Hkv, d_, pos0, T);
    LA_CHECK(k_caches[l]->device == dev_ && v_caches[l]->device == dev_, op, ": the caches of layer ", l, " are on ",
             device_name(k_caches[l]->device), " but the model on ", device_name(dev_));
    inputs.insert(inputs.end(), {k_caches[l], v_caches[l]});
  }
  const int64_t R = all_logits ? T : 1;  // rows of logits
  TensorPtr logits = empty({R, V}, DType::F32, dev_);
  // x (T, C), the layers' scratch, xn (R, C)
  const int64_t layer = layer_scratch(T, C, H, Hkv, d_, F_);
  const Scratch scratch(T * C + layer + R * C, dev_);
  // the token ids: read in place on the CPU; a CUDA body uploads them (index tensors stay on the host)
  TensorPtr ids;
  if (dev_ == Device::CUDA) {
    ids = empty({T}, DType::I32, Device::CPU);
    std::memcpy(ids->data<int32_t>(), tokens.data(), size_t(T) * sizeof(int32_t));
  }
  std::vector<TensorPtr> outputs{logits};
  outputs.insert(outputs.end(), k_caches.begin(), k_caches.end());
  outputs.insert(outputs.end(), v_caches.begin(), v_caches.end());
  // A tiny model's decode step (a few tens of µs) runs on the calling thread when the executor is
  // idle; the flop count bounds it (matmuls, then attention scores and sums over the cache).
  const double flops = 2.0 * T * matrix_params_ + 4.0 * T * H * d_ * L * (pos0 + T);
  const bool tiny = dev_ == Device::CPU && flops <= kTinyFlops;
  std::shared_ptr<const Model> self = shared_from_this();
  const Device dev = dev_;
  queue_op(op, std::move(inputs), std::move(outputs), [=] {
    const Kernels k{dev};
    const ModelWeights& w = self->w_;
    float *x = scratch.get(), *work = x + T * C, *xn = work + layer;
    if (ids) {
      Indices index(ids, dev);
      k.embedding(x, w.embedding, index.host(), index.on_device(), T);
    } else {
      k.embedding(x, w.embedding, tokens.data(), tokens.data(), T);
    }
    for (int64_t l = 0; l < L; l++)
      run_layer(k, x, work, w.layers[l], k_caches[l], v_caches[l], w.prompts[l], pos0, T, C, self->s_);
    k.rmsnorm(xn, x + (T - R) * C, w.final_norm, R, C, self->s_.eps);
    k.matmul(f32(logits), xn, w.classifier, R);
  }, tiny);
  return logits;
}

}  // namespace la::ops
