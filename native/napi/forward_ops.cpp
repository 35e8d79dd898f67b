// Bindings of the forward (inference) ops; shapes and dtypes are checked in ops/ops.cpp.
#include "../ops/ops.h"
#include "common.h"

namespace la::napi {
namespace {

LA_OP(embedding, return wrap(info.Env(), ops::embedding(a.tensor(0, "table"), a.tensor(1, "tokens")));)
LA_OP(rmsnorm, return wrap(info.Env(), ops::rmsnorm(a.tensor(0, "x"), a.tensor(1, "w"), float(a.number(2, "eps"))));)
LA_OP(rope, {
  std::string layout = a.string(3, "layout");
  if (layout != "interleaved" && layout != "half") a.type_error(3, "layout", "'interleaved' or 'half'");
  ops::rope(a.tensor(0, "x"), a.integer(1, "pos0"), float(a.number(2, "theta")), layout == "interleaved");
  return info.Env().Undefined();
})
LA_OP(matmul, return wrap(info.Env(), ops::matmul(a.tensor(0, "x"), a.tensor(1, "w")));)
LA_OP(kvWrite, {
  ops::kv_write(a.tensor(0, "cache"), a.tensor(1, "src"), a.integer(2, "pos0"));
  return info.Env().Undefined();
})
LA_OP(attention, {
  TensorPtr q = a.tensor(0, "q"), k = a.tensor(1, "kCache"), v = a.tensor(2, "vCache");
  int64_t pos0 = a.integer(3, "pos0");
  // optional adapter branch: prompt keys/values (K, Hkv, d) and gate (H) or (1)
  TensorPtr pk = a.optional_tensor(4, "pk"), pv = a.optional_tensor(5, "pv"), gate = a.optional_tensor(6, "gate");
  return wrap(info.Env(), ops::attention(q, k, v, pos0, pk, pv, gate));
})
// A Tensor field of the options object at argument i (a TypeError names the field).
TensorPtr field_tensor(const Args& a, size_t i, const char* field) {
  Napi::Object o = a.info[i].As<Napi::Object>();
  Napi::Value v = o.Get(field);
  auto* data = a.info.Env().GetInstanceData<AddonData>();
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(data->tensor_ctor.Value()))
    throw Napi::TypeError::New(a.info.Env(), std::string(a.fn) + ": argument " + std::to_string(i + 1) + "." + field +
                                                 " must be a Tensor");
  return TensorWrap::Unwrap(v.As<Napi::Object>())->tensor(a.fn);
}

double field_number(const Args& a, size_t i, const char* field) {
  Napi::Value v = a.info[i].As<Napi::Object>().Get(field);
  if (!v.IsNumber() || !std::isfinite(v.As<Napi::Number>().DoubleValue()))
    throw Napi::TypeError::New(a.info.Env(), std::string(a.fn) + ": argument " + std::to_string(i + 1) + "." + field +
                                                 " must be a finite number");
  return v.As<Napi::Number>().DoubleValue();
}

LA_OP(decoderLayer, {
  TensorPtr x = a.tensor(0, "x");
  if (info.Length() < 2 || !info[1].IsObject()) a.type_error(1, "weights", "an object of the layer's Tensors");
  ops::DecoderWeights w{field_tensor(a, 1, "attnNorm"), field_tensor(a, 1, "wq"),      field_tensor(a, 1, "wk"),
                        field_tensor(a, 1, "wv"),       field_tensor(a, 1, "wo"),      field_tensor(a, 1, "ffnNorm"),
                        field_tensor(a, 1, "w1"),       field_tensor(a, 1, "w2"),      field_tensor(a, 1, "w3")};
  TensorPtr kc = a.tensor(2, "kCache"), vc = a.tensor(3, "vCache");
  int64_t pos0 = a.integer(4, "pos0");
  if (info.Length() < 6 || !info[5].IsObject()) a.type_error(5, "shape", "an object {heads, kvHeads, eps, theta, layout}");
  ops::DecoderShape shape;
  double heads = field_number(a, 5, "heads"), kv = field_number(a, 5, "kvHeads");
  if (heads < 1 || kv < 1 || heads != std::floor(heads) || kv != std::floor(kv) || heads > 1e6 || kv > 1e6)
    a.type_error(5, "shape.heads/kvHeads", "positive integers");
  shape.heads = int64_t(heads);
  shape.kv_heads = int64_t(kv);
  shape.eps = float(field_number(a, 5, "eps"));
  shape.theta = float(field_number(a, 5, "theta"));
  Napi::Value layout = info[5].As<Napi::Object>().Get("layout");
  if (!layout.IsString() || (layout.As<Napi::String>().Utf8Value() != "interleaved" &&
                             layout.As<Napi::String>().Utf8Value() != "half"))
    a.type_error(5, "shape.layout", "'interleaved' or 'half'");
  shape.interleaved = layout.As<Napi::String>().Utf8Value() == "interleaved";
  TensorPtr pk = a.optional_tensor(6, "pk"), pv = a.optional_tensor(7, "pv"), gate = a.optional_tensor(8, "gate");
  ops::decoder_layer(x, w, kc, vc, pos0, shape, pk, pv, gate);
  return info.Env().Undefined();
})
LA_OP(swiglu, return wrap(info.Env(), ops::swiglu(a.tensor(0, "a"), a.tensor(1, "b")));)
LA_OP(addInPlace, {
  ops::add_inplace(a.tensor(0, "x"), a.tensor(1, "y"));
  return info.Env().Undefined();
})
LA_OP(sliceRows, return wrap(info.Env(), ops::slice_rows(a.tensor(0, "x"), a.integer(1, "start"), a.integer(2, "count", 1)));)
LA_OP(reshape, return wrap(info.Env(), ops::reshape(a.tensor(0, "x"), a.shape(1)));)
LA_OP(convert, return wrap(info.Env(), ops::convert(a.tensor(0, "x"), a.dtype(1, DType::F32)));)


}  // namespace

void register_forward_ops(Napi::Env env, Napi::Object exports) {
  export_fn(env, exports, "embedding", embedding);
  export_fn(env, exports, "rmsnorm", rmsnorm);
  export_fn(env, exports, "rope", rope);
  export_fn(env, exports, "matmul", matmul);
  export_fn(env, exports, "kvWrite", kvWrite);
  export_fn(env, exports, "attention", attention);
  export_fn(env, exports, "swiglu", swiglu);
  export_fn(env, exports, "decoderLayer", decoderLayer);
  export_fn(env, exports, "addInPlace", addInPlace);
  export_fn(env, exports, "sliceRows", sliceRows);
  export_fn(env, exports, "reshape", reshape);
  export_fn(env, exports, "convert", convert);
}

}  // namespace la::napi
