// The N-API surface. Every entry point validates its JS arguments (a wrong type or size is a
// TypeError naming the function and argument) and turns native errors into JS exceptions; work
// is queued on the executor, and read()/synchronize() wait for it off the JS thread.
#include <napi.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../core/bf16.h"
#include "../core/blas.h"
#include "../core/error.h"
#include "../core/executor.h"
#include "../core/parallel.h"
#include "../cuda/device.h"
#include "../io/mapping.h"
#include "../ops/ops.h"

// LA_VERSION is defined by the build as a bare token (quotes do not survive every generator).
#define LA_STRINGIFY2(x) #x
#define LA_STRINGIFY(x) LA_STRINGIFY2(x)

namespace la::napi {
namespace {

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
  Napi::FunctionReference tensor_ctor, mapping_ctor;
};

// ---- argument helpers -----------------------------------------------------------------------

struct Args {
  const Napi::CallbackInfo& info;
  const char* fn;

  [[noreturn]] void type_error(size_t i, const char* name, const char* want) const {
    throw Napi::TypeError::New(info.Env(), std::string(fn) + ": argument " + std::to_string(i + 1) + " (" + name +
                                               ") must be " + want);
  }
  TensorPtr tensor(size_t i, const char* name) const {
    auto* data = info.Env().GetInstanceData<AddonData>();
    if (i >= info.Length() || !info[i].IsObject() || !info[i].As<Napi::Object>().InstanceOf(data->tensor_ctor.Value()))
      type_error(i, name, "a Tensor");
    return TensorWrap::Unwrap(info[i].As<Napi::Object>())->tensor(fn);
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
  DType dtype(size_t i, DType fallback) const {
    if (i >= info.Length() || info[i].IsUndefined()) return fallback;
    std::string s = string(i, "dtype");
    if (s == "f32") return DType::F32;
    if (s == "bf16") return DType::BF16;
    if (s == "i32") return DType::I32;
    type_error(i, "dtype", "'f32', 'bf16' or 'i32'");
  }
};

Napi::Value wrap(Napi::Env env, TensorPtr t) {
  auto* data = env.GetInstanceData<AddonData>();
  Napi::Object obj = data->tensor_ctor.New({});
  TensorWrap::Unwrap(obj)->set(std::move(t));
  return obj;
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

Napi::Value TensorWrap::Shape(const Napi::CallbackInfo& info) {
  if (!tensor_) return info.Env().Undefined();
  Napi::Array a = Napi::Array::New(info.Env(), tensor_->shape.size());
  for (size_t i = 0; i < tensor_->shape.size(); i++) a.Set(uint32_t(i), double(tensor_->shape[i]));
  return a;
}

Napi::Value TensorWrap::Read(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    TensorPtr t = tensor("read");
    // Copy out on the executor, in order after every op queued before this read.
    auto out = std::make_shared<std::vector<uint8_t>>(size_t(t->numel()) * 4);
    uint64_t ticket = cpu_executor().enqueue("read(" + t->describe() + ")", [t, out] {
      if (t->storage->error) return;
      if (t->dtype == DType::BF16) {
        float* dst = reinterpret_cast<float*>(out->data());
        const uint16_t* src = t->data<uint16_t>();
        for (int64_t i = 0; i < t->numel(); i++) dst[i] = bf16_to_f32(src[i]);
      } else {
        std::memcpy(out->data(), t->raw(), out->size());
      }
    });
    bool ints = t->dtype == DType::I32;
    auto check = [t]() -> std::string { return t->storage->error ? *t->storage->error : std::string(); };
    auto* w = new WaitWorker(info.Env(), ticket, check, [out, ints](Napi::Env env) -> Napi::Value {
      auto buf = Napi::ArrayBuffer::New(env, out->size());
      std::memcpy(buf.Data(), out->data(), out->size());
      if (ints) return Napi::Int32Array::New(env, out->size() / 4, buf, 0);
      return Napi::Float32Array::New(env, out->size() / 4, buf, 0);
    });
    w->Queue();
    return w->promise();
  });
}

// ---- functions ------------------------------------------------------------------------------

Napi::Value Capabilities(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("version", LA_STRINGIFY(LA_VERSION));
  o.Set("blas", blas_name());
  cuda::DeviceInfo d = cuda::device_info();
  Napi::Object c = Napi::Object::New(env);
  c.Set("compiled", d.compiled);
  c.Set("available", d.available);
  c.Set("devices", d.devices);
  c.Set("reason", d.reason);
  o.Set("cuda", c);
  o.Set("threads", num_threads());
  Napi::Array simd = Napi::Array::New(env);
#if defined(__x86_64__)
  uint32_t k = 0;
  if (__builtin_cpu_supports("avx2")) simd.Set(k++, "avx2");
  if (__builtin_cpu_supports("fma")) simd.Set(k++, "fma");
  if (__builtin_cpu_supports("avx512f")) simd.Set(k++, "avx512f");
#endif
  o.Set("simd", simd);
  return o;
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Args a{info, "setThreads"};
    int64_t n = a.integer(0, "n", 1);
    LA_CHECK(n <= 1024, "setThreads: n must be at most 1024, got ", n);
    // Resizing the pool while a kernel runs would race: do it in order on the executor.
    uint64_t ticket = cpu_executor().enqueue("setThreads", [n] { set_num_threads(int(n)); });
    cpu_executor().wait(ticket);
    return info.Env().Undefined();
  });
}

Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  auto* w = new WaitWorker(
      info.Env(), cpu_executor().last_ticket(), [] { return cpu_executor().take_error(); },
      [](Napi::Env env) { return env.Undefined(); });
  w->Queue();
  return w->promise();
}

Napi::Value FromArray(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Args a{info, "fromArray"};
    if (info.Length() < 1 || !info[0].IsTypedArray()) a.type_error(0, "data", "a Float32Array or Int32Array");
    auto ta = info[0].As<Napi::TypedArray>();
    auto kind = ta.TypedArrayType();
    if (kind != napi_float32_array && kind != napi_int32_array) a.type_error(0, "data", "a Float32Array or Int32Array");
    std::vector<int64_t> shape = a.shape(1);
    DType dtype = a.dtype(2, kind == napi_int32_array ? DType::I32 : DType::F32);
    if ((kind == napi_int32_array) != (dtype == DType::I32))
      throw Napi::TypeError::New(info.Env(), std::string("fromArray: an ") +
                                                 (kind == napi_int32_array ? "Int32Array" : "Float32Array") +
                                                 " cannot make a " + dtype_name(dtype) + " tensor");
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    LA_CHECK(int64_t(ta.ElementLength()) == n, "fromArray: data has ", ta.ElementLength(),
             " elements but shape ", shape_str(shape), " needs ", n);
    TensorPtr t = empty(shape, dtype);
    const uint8_t* src = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    if (dtype == DType::BF16) {
      const float* f = reinterpret_cast<const float*>(src);
      for (int64_t i = 0; i < n; i++) t->data<uint16_t>()[i] = f32_to_bf16(f[i]);
    } else {
      std::memcpy(t->raw(), src, t->nbytes());
    }
    return wrap(info.Env(), t);
  });
}

Napi::Value Zeros(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Args a{info, "zeros"};
    return wrap(info.Env(), zeros(a.shape(0), a.dtype(1, DType::F32)));
  });
}

Napi::Value MapFile(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Args a{info, "mapFile"};
    std::string path = a.string(0, "path");
    io::MappingPtr m = io::map_file(path);
    Napi::Object obj = info.Env().GetInstanceData<AddonData>()->mapping_ctor.New({});
    auto* w = MappingWrap::Unwrap(obj);
    w->map = m;
    w->path = path;
    w->size = double(m->size);
    return obj;
  });
}

Napi::Value FromFile(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Args a{info, "fromFile"};
    auto* data = info.Env().GetInstanceData<AddonData>();
    if (info.Length() < 1 || !info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(data->mapping_ctor.Value()))
      a.type_error(0, "map", "a FileMapping");
    auto* m = MappingWrap::Unwrap(info[0].As<Napi::Object>());
    LA_CHECK(m->map, "fromFile: the mapping of ", m->path, " was closed");
    int64_t offset = a.integer(1, "byteOffset");
    std::vector<int64_t> shape = a.shape(2);
    std::string fd = a.string(3, "fileDtype");
    io::FileDType file_dtype;
    if (fd == "f32") file_dtype = io::FileDType::F32;
    else if (fd == "f16") file_dtype = io::FileDType::F16;
    else if (fd == "bf16") file_dtype = io::FileDType::BF16;
    else a.type_error(3, "fileDtype", "'f32', 'f16' or 'bf16'");
    DType dtype = a.dtype(4, DType::F32);
    std::string name = info.Length() > 5 && !info[5].IsUndefined() ? a.string(5, "name") : std::string();
    return wrap(info.Env(), io::tensor_from_mapping(m->map, uint64_t(offset), shape, file_dtype, dtype, name));
  });
}

#define LA_OP(Name, body)                                                     \
  Napi::Value Name(const Napi::CallbackInfo& info) {                          \
    return guarded(info, [&]() -> Napi::Value {                               \
      Args a{info, #Name};                                                    \
      body                                                                    \
    });                                                                       \
  }

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
LA_OP(attention, return wrap(info.Env(), ops::attention(a.tensor(0, "q"), a.tensor(1, "kCache"), a.tensor(2, "vCache"),
                                                        a.integer(3, "pos0")));)
LA_OP(swiglu, return wrap(info.Env(), ops::swiglu(a.tensor(0, "a"), a.tensor(1, "b")));)
LA_OP(addInPlace, {
  ops::add_inplace(a.tensor(0, "x"), a.tensor(1, "y"));
  return info.Env().Undefined();
})
LA_OP(sliceRows, return wrap(info.Env(), ops::slice_rows(a.tensor(0, "x"), a.integer(1, "start"), a.integer(2, "count", 1)));)
LA_OP(reshape, return wrap(info.Env(), ops::reshape(a.tensor(0, "x"), a.shape(1)));)
LA_OP(convert, return wrap(info.Env(), ops::convert(a.tensor(0, "x"), a.dtype(1, DType::F32)));)

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->tensor_ctor = Napi::Persistent(TensorWrap::Define(env));
  data->mapping_ctor = Napi::Persistent(MappingWrap::Define(env));
  env.SetInstanceData(data);
  exports.Set("Tensor", data->tensor_ctor.Value());
  exports.Set("FileMapping", data->mapping_ctor.Value());
  auto fn = [&](const char* name, Napi::Function::Callback cb) { exports.Set(name, Napi::Function::New(env, cb, name)); };
  fn("capabilities", Capabilities);
  fn("setThreads", SetThreads);
  fn("synchronize", Synchronize);
  fn("fromArray", FromArray);
  fn("zeros", Zeros);
  fn("mapFile", MapFile);
  fn("fromFile", FromFile);
  fn("embedding", embedding);
  fn("rmsnorm", rmsnorm);
  fn("rope", rope);
  fn("matmul", matmul);
  fn("kvWrite", kvWrite);
  fn("attention", attention);
  fn("swiglu", swiglu);
  fn("addInPlace", addInPlace);
  fn("sliceRows", sliceRows);
  fn("convert", convert);
  fn("reshape", reshape);
  return exports;
}

}  // namespace la::napi

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return la::napi::Init(env, exports); }

NODE_API_MODULE(llama_adapter, InitAddon)
