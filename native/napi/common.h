// Shared pieces of the N-API bindings: the Tensor and FileMapping handle classes, argument
// checking (a wrong JS argument is a TypeError naming the function and argument), turning native
// errors into JS exceptions, and the worker that waits for the executor off the JS thread.
#pragma once
#include <napi.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../core/error.h"
#include "../core/executor.h"
#include "../core/tensor.h"
#include "../io/mapping.h"

namespace la::napi {

// ---- classes --------------------------------------------------------------------------------

class TensorWrap : public Napi::ObjectWrap<TensorWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Tensor",
                       {InstanceAccessor<&TensorWrap::Shape>("shape"), InstanceAccessor<&TensorWrap::DTypeName>("dtype"),
                        InstanceAccessor<&TensorWrap::DeviceName>("device"), InstanceAccessor<&TensorWrap::Bytes>("bytes"),
                        InstanceAccessor<&TensorWrap::Disposed>("disposed"), InstanceMethod<&TensorWrap::Read>("read"),
                        InstanceMethod<&TensorWrap::Dispose>("dispose")});
  }
  explicit TensorWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorWrap>(info) {}
  ~TensorWrap() override { release(); }

  void set(TensorPtr t) {
    tensor_ = std::move(t);
    reported_ = int64_t(tensor_->nbytes());
    Napi::MemoryManagement::AdjustExternalMemory(Env(), reported_);
  }
  const TensorPtr& tensor(const char* fn) const {
    LA_CHECK(tensor_, fn, ": the tensor was disposed");
    return tensor_;
  }

 private:
  void release() {
    if (!tensor_) return;
    tensor_.reset();
    // The environment may be shutting down when the finaliser runs; skip the accounting then.
    if (reported_) Napi::MemoryManagement::AdjustExternalMemory(Env(), -reported_);
    reported_ = 0;
  }
  Napi::Value Shape(const Napi::CallbackInfo& info);
  Napi::Value DTypeName(const Napi::CallbackInfo& info) {
    return tensor_ ? Napi::String::New(info.Env(), dtype_name(tensor_->dtype)) : info.Env().Undefined();
  }
  Napi::Value DeviceName(const Napi::CallbackInfo& info) {
    return tensor_ ? Napi::String::New(info.Env(), device_name(tensor_->device)) : info.Env().Undefined();
  }
  Napi::Value Bytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), tensor_ ? double(tensor_->nbytes()) : 0);
  }
  Napi::Value Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !tensor_); }
  Napi::Value Read(const Napi::CallbackInfo& info);
  void Dispose(const Napi::CallbackInfo&) { release(); }

  TensorPtr tensor_;
  int64_t reported_ = 0;
};

class MappingWrap : public Napi::ObjectWrap<MappingWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FileMapping",
                       {InstanceAccessor<&MappingWrap::Path>("path"), InstanceAccessor<&MappingWrap::Size>("size"),
                        InstanceMethod<&MappingWrap::Close>("close")});
  }
  explicit MappingWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<MappingWrap>(info) {}
  io::MappingPtr map;
  std::string path;
  double size = 0;

 private:
  Napi::Value Path(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), path); }
  Napi::Value Size(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), size); }
  // Tensors made from the mapping keep it alive; closing drops only this handle's reference.
  void Close(const Napi::CallbackInfo&) { map.reset(); }
};

struct AddonData {
  Napi::FunctionReference tensor_ctor, mapping_ctor, model_ctor;
};

// ---- argument helpers -----------------------------------------------------------------------

// The Tensor handle `v` holds, or nullptr when v is not a Tensor.
inline TensorWrap* as_tensor(Napi::Env env, Napi::Value v) {
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(env.GetInstanceData<AddonData>()->tensor_ctor.Value()))
    return nullptr;
  return TensorWrap::Unwrap(v.As<Napi::Object>());
}

struct Args {
  const Napi::CallbackInfo& info;
  const char* fn;

  [[noreturn]] void type_error(size_t i, const char* name, const char* want) const {
    throw Napi::TypeError::New(info.Env(), std::string(fn) + ": argument " + std::to_string(i + 1) + " (" + name +
                                               ") must be " + want);
  }
  TensorPtr tensor(size_t i, const char* name) const {
    TensorWrap* w = i < info.Length() ? as_tensor(info.Env(), info[i]) : nullptr;
    if (!w) type_error(i, name, "a Tensor");
    return w->tensor(fn);
  }
  // A Tensor, or nullptr for null, undefined or a missing argument.
  TensorPtr optional_tensor(size_t i, const char* name) const {
    if (i >= info.Length() || info[i].IsNull() || info[i].IsUndefined()) return nullptr;
    TensorWrap* w = as_tensor(info.Env(), info[i]);
    if (!w) type_error(i, name, "a Tensor or null");
    return w->tensor(fn);
  }
  // A JS array of Tensors.
  std::vector<TensorPtr> tensors(size_t i, const char* name) const {
    if (i >= info.Length() || !info[i].IsArray()) type_error(i, name, "an array of Tensors");
    auto arr = info[i].As<Napi::Array>();
    std::vector<TensorPtr> out(arr.Length());
    for (uint32_t k = 0; k < arr.Length(); k++) {
      TensorWrap* w = as_tensor(info.Env(), arr.Get(k));
      if (!w) type_error(i, name, "an array of Tensors");
      out[k] = w->tensor(fn);
    }
    return out;
  }
  bool boolean(size_t i, const char* name) const {
    if (i >= info.Length() || !info[i].IsBoolean()) type_error(i, name, "a boolean");
    return info[i].As<Napi::Boolean>().Value();
  }
  double number(size_t i, const char* name) const {
    if (i >= info.Length() || !info[i].IsNumber()) type_error(i, name, "a number");
    double v = info[i].As<Napi::Number>().DoubleValue();
    if (!std::isfinite(v)) type_error(i, name, "a finite number");
    return v;
  }
  int64_t integer(size_t i, const char* name, int64_t lo = 0) const {
    double v = number(i, name);
    if (v != std::floor(v) || v < double(lo) || v > 9007199254740991.0)
      type_error(i, name, lo == 0 ? "a non-negative integer" : "a positive integer");
    return int64_t(v);
  }
  std::string string(size_t i, const char* name) const {
    if (i >= info.Length() || !info[i].IsString()) type_error(i, name, "a string");
    return info[i].As<Napi::String>().Utf8Value();
  }
  std::vector<int64_t> shape(size_t i) const {
    if (i >= info.Length() || !info[i].IsArray()) type_error(i, "shape", "an array of positive integers");
    auto arr = info[i].As<Napi::Array>();
    std::vector<int64_t> s;
    for (uint32_t k = 0; k < arr.Length(); k++) {
      Napi::Value v = arr.Get(k);
      if (!v.IsNumber()) type_error(i, "shape", "an array of positive integers");
      double d = v.As<Napi::Number>().DoubleValue();
      if (!(d >= 1 && d == std::floor(d) && d < 1e15)) type_error(i, "shape", "an array of positive integers");
      s.push_back(int64_t(d));
    }
    if (s.empty() || s.size() > 8) type_error(i, "shape", "an array of 1 to 8 positive integers");
    return s;
  }
  Device device(size_t i, Device fallback) const {
    if (i >= info.Length() || info[i].IsUndefined()) return fallback;
    std::string s = string(i, "device");
    if (s == "cpu") return Device::CPU;
    if (s == "cuda") return Device::CUDA;
    type_error(i, "device", "'cpu' or 'cuda'");
  }
  DType dtype(size_t i, DType fallback) const {
    if (i >= info.Length() || info[i].IsUndefined()) return fallback;
    std::string s = string(i, "dtype");
    if (s == "f32") return DType::F32;
    if (s == "bf16") return DType::BF16;
    if (s == "i32") return DType::I32;
    type_error(i, "dtype", "'f32', 'bf16' or 'i32'");
  }
};

inline Napi::Value wrap(Napi::Env env, TensorPtr t) {
  auto* data = env.GetInstanceData<AddonData>();
  Napi::Object obj = data->tensor_ctor.New({});
  TensorWrap::Unwrap(obj)->set(std::move(t));
  return obj;
}

// A JS array of tensors; a null TensorPtr becomes null.
inline Napi::Value wrap_all(Napi::Env env, std::initializer_list<TensorPtr> ts) {
  Napi::Array arr = Napi::Array::New(env, ts.size());
  uint32_t i = 0;
  for (const TensorPtr& t : ts) arr.Set(i++, t ? wrap(env, t) : env.Null());
  return arr;
}

// Runs a binding body; native errors become JS errors (never an abort).
template <class F>
Napi::Value guarded(const Napi::CallbackInfo& info, F&& body) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(info.Env(), "out of memory");
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), e.what());
  }
}

// ---- waiting off the JS thread --------------------------------------------------------------

// Waits for a ticket on the CPU executor in the libuv pool, then resolves with `make(env)`.
class WaitWorker : public Napi::AsyncWorker {
 public:
  // `check` runs after the wait, off the JS thread, and returns an error message or "".
  WaitWorker(Napi::Env env, uint64_t ticket, std::function<std::string()> check,
             std::function<Napi::Value(Napi::Env)> make)
      : Napi::AsyncWorker(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        ticket_(ticket),
        check_(std::move(check)),
        make_(std::move(make)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    cpu_executor().wait(ticket_);
    std::string err = check_();
    if (!err.empty()) SetError(err);
  }
  void OnOK() override {
    try {
      deferred_.Resolve(make_(Env()));
    } catch (const std::exception& e) {
      deferred_.Reject(Napi::Error::New(Env(), e.what()).Value());
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  uint64_t ticket_;
  std::function<std::string()> check_;
  std::function<Napi::Value(Napi::Env)> make_;
};

// One binding: `Name(info)` runs the body with `a` = Args{info, "Name"}, errors converted. The body
// is variadic so that it may contain unparenthesised commas.
#define LA_OP(Name, ...)                             \
  Napi::Value Name(const Napi::CallbackInfo& info) { \
    return guarded(info, [&]() -> Napi::Value {      \
      Args a{info, #Name};                           \
      __VA_ARGS__                                    \
    });                                              \
  }

// Each op family's bindings add themselves to the exports.
void register_forward_ops(Napi::Env env, Napi::Object exports);
void register_train_ops(Napi::Env env, Napi::Object exports);
void register_encoder_ops(Napi::Env env, Napi::Object exports);  // encoder_ops.cpp: LayerNorm, GELU, bias, patches
void register_attention_ops(Napi::Env env, Napi::Object exports);  // attention_ops.cpp
void register_comm(Napi::Env env, Napi::Object exports);  // comm.cpp: data-parallel collectives

inline void export_fn(Napi::Env env, Napi::Object exports, const char* name, Napi::Function::Callback cb) {
  exports.Set(name, Napi::Function::New(env, cb, name));
}

}  // namespace la::napi
