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
// A Tensor field of the object `o`, named `where` in errors (a TypeError), or nullptr when the
// field is null/undefined and `optional`.
TensorPtr field_tensor(const Args& a, Napi::Object o, const std::string& where, const char* field,
                       bool optional = false) {
  Napi::Value v = o.Get(field);
  if (optional && (v.IsNull() || v.IsUndefined())) return nullptr;
  TensorWrap* w = as_tensor(a.info.Env(), v);
  if (!w)
    throw Napi::TypeError::New(a.info.Env(), std::string(a.fn) + ": " + where + "." + field + " must be a Tensor" +
                                                 (optional ? " or null" : ""));
  return w->tensor(a.fn);
}

std::string argument(size_t i) { return "argument " + std::to_string(i + 1); }

Napi::Object object_arg(const Args& a, size_t i, const char* name, const char* want) {
  if (i >= a.info.Length() || !a.info[i].IsObject()) a.type_error(i, name, want);
  return a.info[i].As<Napi::Object>();
}

ops::DecoderWeights layer_weights(const Args& a, Napi::Object o, const std::string& where) {
  return {field_tensor(a, o, where, "attnNorm"), field_tensor(a, o, where, "wq"),      field_tensor(a, o, where, "wk"),
          field_tensor(a, o, where, "wv"),       field_tensor(a, o, where, "wo"),      field_tensor(a, o, where, "ffnNorm"),
          field_tensor(a, o, where, "w1"),       field_tensor(a, o, where, "w2"),      field_tensor(a, o, where, "w3")};
}

// {heads, kvHeads, eps, theta, layout} at argument i.
ops::DecoderShape decoder_shape(const Args& a, size_t i) {
  Napi::Object o = object_arg(a, i, "shape", "an object {heads, kvHeads, eps, theta, layout}");
  auto number = [&](const char* field) {
    Napi::Value v = o.Get(field);
    if (!v.IsNumber() || !std::isfinite(v.As<Napi::Number>().DoubleValue()))
      throw Napi::TypeError::New(a.info.Env(), std::string(a.fn) + ": " + argument(i) + "." + field +
                                                   " must be a finite number");
    return v.As<Napi::Number>().DoubleValue();
  };
  ops::DecoderShape shape;
  double heads = number("heads"), kv = number("kvHeads");
  if (heads < 1 || kv < 1 || heads != std::floor(heads) || kv != std::floor(kv) || heads > 1e6 || kv > 1e6)
    a.type_error(i, "shape.heads/kvHeads", "positive integers");
  shape.heads = int64_t(heads);
  shape.kv_heads = int64_t(kv);
  shape.eps = float(number("eps"));
  shape.theta = float(number("theta"));
  Napi::Value layout = o.Get("layout");
  if (!layout.IsString() || (layout.As<Napi::String>().Utf8Value() != "interleaved" &&
                             layout.As<Napi::String>().Utf8Value() != "half"))
    a.type_error(i, "shape.layout", "'interleaved' or 'half'");
  shape.interleaved = layout.As<Napi::String>().Utf8Value() == "interleaved";
  return shape;
}

LA_OP(decoderLayer, {
  TensorPtr x = a.tensor(0, "x");
  ops::DecoderWeights w = layer_weights(a, object_arg(a, 1, "weights", "an object of the layer's Tensors"), argument(1));
  TensorPtr kc = a.tensor(2, "kCache"), vc = a.tensor(3, "vCache");
  int64_t pos0 = a.integer(4, "pos0");
  ops::DecoderShape shape = decoder_shape(a, 5);
  TensorPtr pk = a.optional_tensor(6, "pk"), pv = a.optional_tensor(7, "pv"), gate = a.optional_tensor(8, "gate");
  ops::decoder_layer(x, w, kc, vc, pos0, shape, pk, pv, gate);
  return info.Env().Undefined();
})

// ---- whole-model inference ----------------------------------------------------------------------

// A checked ops::Model behind a JS handle; dispose() drops its references to the weights.
class ModelWrap : public Napi::ObjectWrap<ModelWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Model",
                       {InstanceAccessor<&ModelWrap::Layers>("layers"), InstanceAccessor<&ModelWrap::DeviceName>("device"),
                        InstanceAccessor<&ModelWrap::Disposed>("disposed"),
                        InstanceMethod<&ModelWrap::Dispose>("dispose")});
  }
  explicit ModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelWrap>(info) {}
  std::shared_ptr<const ops::Model> model;

  const ops::Model& get(const char* fn) const {
    LA_CHECK(model, fn, ": the model was disposed");
    return *model;
  }

 private:
  Napi::Value Layers(const Napi::CallbackInfo& info) {
    return model ? Napi::Number::New(info.Env(), double(model->layers())) : info.Env().Undefined();
  }
  Napi::Value DeviceName(const Napi::CallbackInfo& info) {
    return model ? Napi::String::New(info.Env(), device_name(model->device())) : info.Env().Undefined();
  }
  Napi::Value Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !model); }
  void Dispose(const Napi::CallbackInfo&) { model.reset(); }
};

LA_OP(model, {
  Napi::Object o = object_arg(a, 0, "weights", "an object {embedding, finalNorm, classifier, layers, prompts?}");
  ops::ModelWeights w;
  w.embedding = field_tensor(a, o, argument(0), "embedding");
  w.final_norm = field_tensor(a, o, argument(0), "finalNorm");
  w.classifier = field_tensor(a, o, argument(0), "classifier");
  Napi::Value layers = o.Get("layers");
  if (!layers.IsArray()) a.type_error(0, "weights.layers", "an array of the layers' weights");
  for (uint32_t l = 0; l < layers.As<Napi::Array>().Length(); l++) {
    std::string where = argument(0) + ".layers[" + std::to_string(l) + "]";
    Napi::Value v = layers.As<Napi::Array>().Get(l);
    if (!v.IsObject()) throw Napi::TypeError::New(info.Env(), std::string(a.fn) + ": " + where + " must be an object");
    w.layers.push_back(layer_weights(a, v.As<Napi::Object>(), where));
  }
  Napi::Value prompts = o.Get("prompts");
  if (!prompts.IsUndefined() && !prompts.IsNull()) {
    if (!prompts.IsArray()) a.type_error(0, "weights.prompts", "an array of {pk, pv, gate} or null per layer");
    for (uint32_t l = 0; l < prompts.As<Napi::Array>().Length(); l++) {
      std::string where = argument(0) + ".prompts[" + std::to_string(l) + "]";
      Napi::Value v = prompts.As<Napi::Array>().Get(l);
      if (v.IsNull() || v.IsUndefined()) {
        w.prompts.push_back({});
        continue;
      }
      if (!v.IsObject()) throw Napi::TypeError::New(info.Env(), std::string(a.fn) + ": " + where + " must be an object or null");
      Napi::Object p = v.As<Napi::Object>();
      w.prompts.push_back({field_tensor(a, p, where, "pk", true), field_tensor(a, p, where, "pv", true),
                           field_tensor(a, p, where, "gate", true)});
    }
  }
  ops::DecoderShape shape = decoder_shape(a, 1);
  auto model = std::make_shared<const ops::Model>(std::move(w), shape);
  Napi::Object obj = info.Env().GetInstanceData<AddonData>()->model_ctor.New({});
  ModelWrap::Unwrap(obj)->model = std::move(model);
  return obj;
})

LA_OP(modelForward, {
  auto* data = info.Env().GetInstanceData<AddonData>();
  if (info.Length() < 1 || !info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(data->model_ctor.Value()))
    a.type_error(0, "model", "a Model (from native.model)");
  const ops::Model& model = ModelWrap::Unwrap(info[0].As<Napi::Object>())->get(a.fn);
  std::vector<int32_t> tokens;
  if (info.Length() > 1 && info[1].IsTypedArray() && info[1].As<Napi::TypedArray>().TypedArrayType() == napi_int32_array) {
    auto arr = info[1].As<Napi::Int32Array>();
    tokens.assign(arr.Data(), arr.Data() + arr.ElementLength());
  } else {
    if (info.Length() < 2 || !info[1].IsArray()) a.type_error(1, "tokens", "an Int32Array or an array of token ids");
    auto arr = info[1].As<Napi::Array>();
    for (uint32_t k = 0; k < arr.Length(); k++) {
      Napi::Value v = arr.Get(k);
      double id = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
      if (!v.IsNumber() || id != std::floor(id) || id < -2147483648.0 || id > 2147483647.0)
        a.type_error(1, "tokens", "an Int32Array or an array of integer token ids");
      tokens.push_back(int32_t(id));
    }
  }
  std::vector<TensorPtr> kc = a.tensors(2, "kCaches"), vc = a.tensors(3, "vCaches");
  int64_t pos0 = a.integer(4, "pos0");
  bool all = info.Length() > 5 && !info[5].IsUndefined() ? a.boolean(5, "allLogits") : false;
  return wrap(info.Env(), model.forward(tokens, kc, vc, pos0, all));
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
  auto* data = env.GetInstanceData<AddonData>();
  data->model_ctor = Napi::Persistent(ModelWrap::Define(env));
  exports.Set("Model", data->model_ctor.Value());
  export_fn(env, exports, "model", model);
  export_fn(env, exports, "modelForward", modelForward);
  export_fn(env, exports, "embedding", embedding);
  export_fn(env, exports, "rmsnorm", rmsnorm);
  export_fn(env, exports, "rope", rope);
  export_fn(env, exports, "matmul", matmul);
  export_fn(env, exports, "kvWrite", kvWrite);
  export_fn(env, exports, "swiglu", swiglu);
  export_fn(env, exports, "decoderLayer", decoderLayer);
  export_fn(env, exports, "addInPlace", addInPlace);
  export_fn(env, exports, "sliceRows", sliceRows);
  export_fn(env, exports, "reshape", reshape);
  export_fn(env, exports, "convert", convert);
}

}  // namespace la::napi
