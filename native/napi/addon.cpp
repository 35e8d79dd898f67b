// The N-API surface. Every entry point validates its JS arguments (a wrong type or size is a
// TypeError naming the function and argument) and turns native errors into JS exceptions; work
// is queued on the executor, and read()/synchronize() wait for it off the JS thread.
#include <napi.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../core/bf16.h"
#include "../core/bf16_gemm.h"
#include "../cpu/kernels.h"
#include "../cpu/simd.h"
#include "../core/quant.h"
#include "../core/blas.h"
#include "../core/error.h"
#include "../core/executor.h"
#include "../core/parallel.h"
#include "../cuda/device.h"
#include "../cuda/runtime.h"
#include "../io/mapping.h"
#include "../ops/ops.h"

// LA_VERSION is defined by the build as a bare token (quotes do not survive every generator).
#define LA_STRINGIFY2(x) #x
#define LA_STRINGIFY(x) LA_STRINGIFY2(x)

#include "common.h"

namespace la::napi {

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
      std::vector<uint8_t> staged;  // a device tensor's bytes, copied back (waits for its producers)
      const void* bytes = t->raw();
      if (t->device == Device::CUDA) {
        staged.resize(t->nbytes());
        cuda::copy_to_host(staged.data(), t->raw(), t->nbytes());
        bytes = staged.data();
      }
      if (is_quantized(t->dtype)) {  // the values, dequantised exactly as ggml's dequantize_row_*
        cpu::dequantize_rows(reinterpret_cast<float*>(out->data()), bytes, t->dtype, t->numel() / t->dim(-1),
                             t->dim(-1));
      } else if (t->dtype == DType::BF16) {
        float* dst = reinterpret_cast<float*>(out->data());
        const uint16_t* src = static_cast<const uint16_t*>(bytes);
        for (int64_t i = 0; i < t->numel(); i++) dst[i] = bf16_to_f32(src[i]);
      } else {
        std::memcpy(out->data(), bytes, out->size());
      }
    }, /*here_if_idle=*/t->device == Device::CPU && t->nbytes() <= (1 << 20));  // a small copy: tens of µs at most
    bool ints = t->dtype == DType::I32;
    auto check = [t]() -> std::string { return t->storage->error ? *t->storage->error : std::string(); };
    auto make = [out, ints](Napi::Env env) -> Napi::Value {
      auto buf = Napi::ArrayBuffer::New(env, out->size());
      std::memcpy(buf.Data(), out->data(), out->size());
      if (ints) return Napi::Int32Array::New(env, out->size() / 4, buf, 0);
      return Napi::Float32Array::New(env, out->size() / 4, buf, 0);
    };
    // A read right behind a short op (decoding: the logits of one token) is ready within tens of
    // µs: settle it here rather than through a libuv thread (~40 µs of hand-offs per token).
    if (cpu_executor().wait_briefly(ticket, 100)) {
      auto deferred = Napi::Promise::Deferred::New(info.Env());
      std::string err = check();
      if (err.empty())
        deferred.Resolve(make(info.Env()));
      else
        deferred.Reject(Napi::Error::New(info.Env(), err).Value());
      return deferred.Promise();
    }
    auto* w = new WaitWorker(info.Env(), ticket, check, make);
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
  o.Set("blasThreads", blas_threads());
  cuda::DeviceInfo d = cuda::device_info();
  Napi::Object c = Napi::Object::New(env);
  c.Set("compiled", d.compiled);
  c.Set("available", d.available);
  c.Set("devices", d.devices);
  c.Set("reason", d.reason);
  c.Set("gemm", d.available ? cuda::gemm_engine() : std::string("none"));
  Napi::Array list = Napi::Array::New(env);
  for (size_t i = 0; i < d.list.size(); i++) {
    const cuda::DeviceAttributes& a = d.list[i];
    Napi::Object g = Napi::Object::New(env);
    g.Set("name", a.name);
    g.Set("sm", a.sm);
    g.Set("multiprocessors", a.multiprocessors);
    g.Set("clockKHz", a.clock_khz);
    g.Set("memoryClockKHz", a.memory_clock_khz);
    g.Set("memoryBusBits", a.memory_bus_bits);
    g.Set("memoryBytes", double(a.memory_bytes));
    g.Set("memoryPools", a.memory_pools);
    list.Set(uint32_t(i), g);
  }
  c.Set("deviceList", list);
  o.Set("cuda", c);
  o.Set("threads", num_threads());
  o.Set("matmulPrecision", matmul_precision() == MatmulPrecision::Medium ? "medium" : "highest");
  o.Set("bf16Gemm", bf16_gemm_native() ? "avx512bf16" : "widen+sgemm");
  Napi::Array simd = Napi::Array::New(env);
#if defined(__x86_64__)
  uint32_t k = 0;
  if (__builtin_cpu_supports("avx2")) simd.Set(k++, "avx2");
  if (__builtin_cpu_supports("fma")) simd.Set(k++, "fma");
  if (__builtin_cpu_supports("avx512f")) simd.Set(k++, "avx512f");
  if (__builtin_cpu_supports("avx512bw")) simd.Set(k++, "avx512bw");
  if (__builtin_cpu_supports("avx512vl")) simd.Set(k++, "avx512vl");
  if (__builtin_cpu_supports("avx512vnni")) simd.Set(k++, "avx512vnni");
  if (__builtin_cpu_supports("avx512bf16")) simd.Set(k++, "avx512bf16");
#endif
  o.Set("simd", simd);
  o.Set("simdLevel", cpu::simd_name(cpu::simd_level()));
  return o;
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Args a{info, "setThreads"};
    int64_t n = a.integer(0, "n", 1);
    LA_CHECK(n <= 1024, "setThreads: n must be at most 1024, got ", n);
    // Resizing the pool while a kernel runs would race: do it in order on the executor.
    uint64_t ticket = cpu_executor().enqueue("setThreads", [n] {
      set_num_threads(int(n));
      blas_set_threads(int(n));  // 1 while our pool splits each GEMM, n with LLAMA_ADAPTER_GEMM_SPLIT=0
    });
    cpu_executor().wait(ticket);
    return info.Env().Undefined();
  });
}

Napi::Value SetMatmulPrecision(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Args a{info, "setMatmulPrecision"};
    std::string p = a.string(0, "precision");
    LA_CHECK(p == "highest" || p == "medium", "setMatmulPrecision: precision must be \"highest\" or \"medium\", got ",
             "\"", p, "\"");
    // kernels already queued keep the precision they were queued under: switch in order
    MatmulPrecision mp = p == "medium" ? MatmulPrecision::Medium : MatmulPrecision::Highest;
    uint64_t ticket = cpu_executor().enqueue("setMatmulPrecision", [mp] { set_matmul_precision(mp); });
    cpu_executor().wait(ticket);
    return info.Env().Undefined();
  });
}

Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  uint64_t ticket = cpu_executor().last_ticket();
  if (any_cuda_tensor())  // and wait for the GPU too: its kernels' failures surface here
    ticket = cpu_executor().enqueue("synchronize", [] { cuda::synchronize(); });
  auto* w = new WaitWorker(
      info.Env(), ticket, [] { return cpu_executor().take_error(); }, [](Napi::Env env) { return env.Undefined(); });
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
    Device device = a.device(3, Device::CPU);
    if ((kind == napi_int32_array) != (dtype == DType::I32))
      throw Napi::TypeError::New(info.Env(), std::string("fromArray: ") +
                                                 (kind == napi_int32_array ? "an Int32Array" : "a Float32Array") +
                                                 " cannot make a tensor of dtype " + dtype_name(dtype));
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    LA_CHECK(int64_t(ta.ElementLength()) == n, "fromArray: data has ", ta.ElementLength(),
             " elements but shape ", shape_str(shape), " needs ", n);
    TensorPtr t = empty(shape, dtype);  // staged on the host, then moved in op order
    const uint8_t* src = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    if (dtype == DType::BF16) {
      const float* f = reinterpret_cast<const float*>(src);
      for (int64_t i = 0; i < n; i++) t->data<uint16_t>()[i] = f32_to_bf16(f[i]);
    } else {
      std::memcpy(t->raw(), src, t->nbytes());
    }
    return wrap(info.Env(), device == Device::CPU ? t : ops::to_device(t, device));
  });
}

Napi::Value Zeros(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Args a{info, "zeros"};
    return wrap(info.Env(), zeros(a.shape(0), a.dtype(1, DType::F32), a.device(2, Device::CPU)));
  });
}

Napi::Value ToDevice(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Args a{info, "toDevice"};
    TensorPtr x = a.tensor(0, "x");
    if (info.Length() < 2 || info[1].IsUndefined()) a.type_error(1, "device", "'cpu' or 'cuda'");
    return wrap(info.Env(), ops::to_device(x, a.device(1, Device::CPU)));
  });
}

Napi::Value RandomUniform(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Args a{info, "randomUniform"};
    std::vector<int64_t> shape = a.shape(0);
    DType dtype = a.dtype(1, DType::F32);
    Device device = a.device(2, Device::CPU);
    int64_t seed = a.integer(3, "seed");
    double scale = a.number(4, "scale");
    return wrap(info.Env(), ops::random_uniform(shape, dtype, device, uint64_t(seed), float(scale)));
  });
}

// Device memory of the CUDA backend, in bytes: live tensors now, their peak since the last
// cudaResetPeak(), and what the pool holds from the driver; and which allocator (allocator.h).
// All 0 (allocator "") before any CUDA tensor.
Napi::Value CudaMemory(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Object o = Napi::Object::New(info.Env());
    cuda::MemoryStats m = any_cuda_tensor() ? cuda::memory_stats() : cuda::MemoryStats{};
    o.Set("inUse", double(m.in_use));
    o.Set("peak", double(m.peak));
    o.Set("reserved", double(m.reserved));
    o.Set("allocator", m.allocator);
    return o;
  });
}

Napi::Value CudaResetPeak(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (any_cuda_tensor()) cuda::reset_peak();
    return info.Env().Undefined();
  });
}

Napi::Value MapFile(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Args a{info, "mapFile"};
    std::string path = a.string(0, "path");
    bool copy = info.Length() > 1 && !info[1].IsUndefined() ? a.boolean(1, "copy") : false;
    io::MappingPtr m = io::map_file(path, copy);
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
    else if (fd == "q8_0") file_dtype = io::FileDType::Q8_0;
    else if (fd == "q4_0") file_dtype = io::FileDType::Q4_0;
    else if (fd == "q4_k") file_dtype = io::FileDType::Q4_K;
    else if (fd == "q5_k") file_dtype = io::FileDType::Q5_K;
    else if (fd == "q6_k") file_dtype = io::FileDType::Q6_K;
    else a.type_error(3, "fileDtype", "'f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_k', 'q5_k' or 'q6_k'");
    // A quantized file dtype loads as itself (the dtype argument may repeat it or be left out).
    bool quantized = fd[0] == 'q';
    DType dtype = quantized ? DType::F32 : a.dtype(4, DType::F32);
    if (quantized) {
      static const std::pair<const char*, DType> names[] = {{"q8_0", DType::Q8_0}, {"q4_0", DType::Q4_0},
          {"q4_k", DType::Q4_K}, {"q5_k", DType::Q5_K}, {"q6_k", DType::Q6_K}};
      for (auto& [nm, d] : names) if (fd == nm) dtype = d;
      if (info.Length() > 4 && !info[4].IsUndefined() && a.string(4, "dtype") != fd)
        a.type_error(4, "dtype", ("'" + fd + "' (a quantized tensor loads as itself)").c_str());
    }
    std::string name = info.Length() > 5 && !info[5].IsUndefined() ? a.string(5, "name") : std::string();
    return wrap(info.Env(), io::tensor_from_mapping(m->map, uint64_t(offset), shape, file_dtype, dtype, name));
  });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  static bool exit_hook = (std::atexit([] { cpu_executor().shutdown(); }), true);
  (void)exit_hook;
  auto* data = new AddonData();
  data->tensor_ctor = Napi::Persistent(TensorWrap::Define(env));
  data->mapping_ctor = Napi::Persistent(MappingWrap::Define(env));
  env.SetInstanceData(data);
  exports.Set("Tensor", data->tensor_ctor.Value());
  exports.Set("FileMapping", data->mapping_ctor.Value());
  auto fn = [&](const char* name, Napi::Function::Callback cb) { exports.Set(name, Napi::Function::New(env, cb, name)); };
  fn("capabilities", Capabilities);
  fn("setThreads", SetThreads);
  fn("setMatmulPrecision", SetMatmulPrecision);
  fn("synchronize", Synchronize);
  fn("fromArray", FromArray);
  fn("zeros", Zeros);
  fn("toDevice", ToDevice);
  fn("randomUniform", RandomUniform);
  fn("cudaMemory", CudaMemory);
  fn("cudaResetPeak", CudaResetPeak);
  fn("mapFile", MapFile);
  fn("fromFile", FromFile);
  register_forward_ops(env, exports);
  register_train_ops(env, exports);
  register_encoder_ops(env, exports);
  register_attention_ops(env, exports);
  register_comm(env, exports);
  return exports;
}

}  // namespace la::napi

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return la::napi::Init(env, exports); }

NODE_API_MODULE(llama_adapter, InitAddon)
