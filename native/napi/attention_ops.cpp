// Bindings of the attention family (ops/attention.h): cached attention for inference and the fused
// gated attention of training with its backward. Arguments are read in order, so the first wrong
// one is the one reported; shapes and dtypes are checked by the ops.
#include "../ops/attention.h"
#include "common.h"

namespace la::napi {
namespace {

// The trailing options object {causal?: boolean} at argument i (absent or undefined: defaults);
// an unknown key is a TypeError too, so that a misspelt option is not silently ignored.
ops::AttentionOptions attention_options(const Args& a, size_t i) {
  ops::AttentionOptions o;
  if (i >= a.info.Length() || a.info[i].IsUndefined()) return o;
  if (!a.info[i].IsObject() || a.info[i].IsArray() || as_tensor(a.info.Env(), a.info[i]))
    a.type_error(i, "options", "an object {causal?: boolean} or undefined");
  Napi::Object obj = a.info[i].As<Napi::Object>();
  Napi::Array keys = obj.GetPropertyNames();
  for (uint32_t k = 0; k < keys.Length(); k++) {
    std::string key = keys.Get(k).ToString().Utf8Value();
    if (key != "causal")
      throw Napi::TypeError::New(a.info.Env(), std::string(a.fn) + ": unknown option '" + key +
                                                   "' (options are {causal?: boolean})");
  }
  Napi::Value causal = obj.Get("causal");
  if (!causal.IsUndefined()) {
    if (!causal.IsBoolean())
      throw Napi::TypeError::New(a.info.Env(), std::string(a.fn) + ": options.causal must be a boolean");
    o.causal = causal.As<Napi::Boolean>().Value();
  }
  return o;
}

LA_OP(attention, {
  TensorPtr q = a.tensor(0, "q"), k = a.tensor(1, "kCache"), v = a.tensor(2, "vCache");
  int64_t pos0 = a.integer(3, "pos0");
  // optional adapter branch: prompt keys/values (K, Hkv, d) and gate (H) or (1)
  TensorPtr pk = a.optional_tensor(4, "pk"), pv = a.optional_tensor(5, "pv"), gate = a.optional_tensor(6, "gate");
  return wrap(info.Env(), ops::attention(q, k, v, pos0, pk, pv, gate));
})

LA_OP(gatedAttention, {
  TensorPtr q = a.tensor(0, "q"), k = a.tensor(1, "k"), v = a.tensor(2, "v"), seg = a.tensor(3, "segments");
  TensorPtr pk = a.optional_tensor(4, "pk"), pv = a.optional_tensor(5, "pv"), gate = a.optional_tensor(6, "gate");
  ops::AttentionOptions options = attention_options(a, 7);
  ops::GatedAttentionResult r = ops::gated_attention(q, k, v, seg, pk, pv, gate, options);
  return wrap_all(info.Env(), {r.out, r.stats});
})

LA_OP(gatedAttentionBackward, {
  TensorPtr dout = a.tensor(0, "dout"), q = a.tensor(1, "q"), k = a.tensor(2, "k"), v = a.tensor(3, "v"),
            seg = a.tensor(4, "segments");
  TensorPtr pk = a.optional_tensor(5, "pk"), pv = a.optional_tensor(6, "pv"), gate = a.optional_tensor(7, "gate");
  TensorPtr out = a.tensor(8, "out"), stats = a.tensor(9, "stats");
  ops::AttentionOptions options = attention_options(a, 10);
  ops::GatedAttentionGrads g = ops::gated_attention_backward(dout, q, k, v, seg, pk, pv, gate, out, stats, options);
  return wrap_all(info.Env(), {g.dq, g.dk, g.dv, g.dpk, g.dpv, g.dgate});
})

}  // namespace

void register_attention_ops(Napi::Env env, Napi::Object exports) {
  export_fn(env, exports, "attention", attention);
  export_fn(env, exports, "gatedAttention", gatedAttention);
  export_fn(env, exports, "gatedAttentionBackward", gatedAttentionBackward);
}

}  // namespace la::napi
