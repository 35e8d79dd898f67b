// Bindings of the communicator (native/comm): joining the world, and collectives queued on the CPU
// executor in order with the ops, so that an all-reduce of gradients runs after the backward that
// produced them and before the optimiser step that reads them, without blocking the event loop.
#include <chrono>
#include <cstdlib>
#include <future>
#include <cmath>
#include <mutex>
#include <optional>

#include "../comm/communicator.h"
#include "../ops/ops.h"
#include "../cuda/device.h"
#include "../cuda/runtime.h"
#include "common.h"

namespace la::napi {
namespace {

struct Stats {
  std::mutex mu;
  double allreduces = 0, bytes = 0, seconds = 0;
  void add(double b, double s) {
    std::lock_guard<std::mutex> lock(mu);
    allreduces += 1;
    bytes += b;
    seconds += s;
  }
};
Stats stats;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Queues `fn` on the executor; the Promise resolves with make(env) or rejects with its error.
Napi::Value queue_async(Napi::Env env, const std::string& what, std::function<void()> fn,
                        std::function<Napi::Value(Napi::Env)> make) {
  auto err = std::make_shared<std::string>();
  uint64_t t = cpu_executor().enqueue(what, [what, fn = std::move(fn), err] {
    try {
      fn();
    } catch (const std::exception& e) {
      *err = what + ": " + e.what();
    }
  });
  auto* w = new WaitWorker(env, t, [err] { return *err; }, std::move(make));
  w->Queue();
  return w->promise();
}

Napi::Object world_info(Napi::Env env) {
  comm::Communicator& w = comm::world();
  Napi::Object o = Napi::Object::New(env);
  o.Set("kind", w.kind());
  o.Set("rank", w.rank());
  o.Set("size", w.size());
  o.Set("library", w.library());
  return o;
}

LA_OP(commInit, {
  std::string kind = a.string(0, "kind");
  if (kind != "none" && kind != "mpi" && kind != "nccl") a.type_error(0, "kind", "'none', 'mpi' or 'nccl'");
  comm::Options opts;
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    if (!info[1].IsObject()) a.type_error(1, "options", "an object");
    Napi::Object o = info[1].As<Napi::Object>();
    auto num = [&](const char* key, double lo, double hi) -> std::optional<double> {
      Napi::Value v = o.Get(key);
      if (v.IsUndefined()) return std::nullopt;
      double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
      if (!(d >= lo && d <= hi))
        throw Napi::TypeError::New(info.Env(), std::string("commInit: options.") + key + " must be a number in [" +
                                                     std::to_string(lo) + ", " + std::to_string(hi) + "]");
      return d;
    };
    if (auto t = num("timeoutS", 0.001, 1e7)) opts.timeout_s = *t;
    if (auto d = num("device", 0, 1 << 20)) opts.device = int(*d);
    Napi::Value lib = o.Get("ncclLibrary");
    if (!lib.IsUndefined() && !lib.IsNull()) {
      if (!lib.IsString()) throw Napi::TypeError::New(info.Env(), "commInit: options.ncclLibrary must be a string");
      opts.nccl_library = lib.As<Napi::String>().Utf8Value();
    }
    Napi::Value mpi = o.Get("mpi");
    if (!mpi.IsUndefined()) {
      if (!mpi.IsBoolean()) throw Napi::TypeError::New(info.Env(), "commInit: options.mpi must be a boolean");
      opts.bootstrap_mpi = mpi.As<Napi::Boolean>().Value();
    }
  }
  if (comm::world_initialized()) {
    std::string have = comm::world().kind();
    LA_CHECK(have == kind, "commInit: this process already joined a world as '", have, "'; it cannot join again as '",
             kind, "'");
    return world_info(info.Env());
  }
  static bool exit_hook = (std::atexit([] { comm::cancelled().store(true); }), true);
  (void)exit_hook;
  // MPI and NCCL are used from the executor's thread only: start them there too. Joining waits
  // for every rank (MPI_Init, ncclCommInitRank), which no MPI call bounds: wait here with the
  // deadline, and leave the executor stuck behind if it passes (the caller will exit).
  auto done = std::make_shared<std::promise<std::string>>();
  std::future<std::string> result = done->get_future();
  cpu_executor().enqueue("commInit(" + kind + ")", [kind, opts, done] {
    try {
      if (kind == "mpi") comm::set_world(comm::make_mpi(opts));
      else if (kind == "nccl") {
        // this rank's tensors live on the GPU its NCCL communicator uses (one process per GPU)
        if (cuda::device_info().compiled) cuda::set_device(opts.device);
        comm::set_world(comm::make_nccl(opts));
      }
      else comm::set_world(comm::make_single());
      done->set_value("");
    } catch (const std::exception& e) {
      done->set_value(e.what());
    }
  });
  if (result.wait_for(std::chrono::duration<double>(opts.timeout_s)) != std::future_status::ready)
    fail("commInit(", kind, "): joining the world took longer than ", opts.timeout_s,
         " s: a rank died or hangs before joining (--comm-timeout / LLAMA_ADAPTER_COMM_TIMEOUT sets the limit)");
  std::string err = result.get();
  if (!err.empty()) throw Error(err);
  return world_info(info.Env());
})

LA_OP(commInfo, {
  (void)a;
  Napi::Env env = info.Env();
  Napi::Object o = world_info(env);
  o.Set("initialized", comm::world_initialized());
  Napi::Object mpi = Napi::Object::New(env);
  mpi.Set("compiled", comm::mpi_compiled());
  mpi.Set("library", comm::mpi_build_info());
  o.Set("mpi", mpi);
  Napi::Object s = Napi::Object::New(env);
  {
    std::lock_guard<std::mutex> lock(stats.mu);
    s.Set("allreduces", stats.allreduces);
    s.Set("bytes", stats.bytes);
    s.Set("seconds", stats.seconds);
  }
  o.Set("stats", s);
  return o;
})

LA_OP(allreduceSum, {
  const std::vector<TensorPtr> ts = a.tensors(0, "tensors");
  int64_t total = 0;
  for (size_t i = 0; i < ts.size(); i++) {
    const TensorPtr& t = ts[i];
    LA_CHECK(t->dtype == DType::F32, "allreduceSum: tensor ", i, " must be f32, got ", t->describe());
    LA_CHECK(!t->storage->read_only, "allreduceSum: tensor ", i, " ", t->describe(), " views a read-only weight file");
    LA_CHECK(t->device == ts[0]->device, "allreduceSum: all tensors must be on one device, tensor ", i, " is on ",
             device_name(t->device), " and tensor 0 on ", device_name(ts[0]->device));
    for (size_t j = 0; j < i; j++)
      LA_CHECK(ts[j]->storage != t->storage, "allreduceSum: tensor ", i, " shares its storage with an earlier one");
    total += t->numel();
  }
  if (!ts.empty()) {
    ops::queue_op("allreduceSum", ts, ts, [ts, total] {
      comm::Communicator& w = comm::world();
      if (w.size() == 1 && std::string(w.kind()) == "none") return;  // a world of one: the identity
      auto t0 = std::chrono::steady_clock::now();
      if (ts[0]->device != Device::CPU && ts.size() == 1) {
        w.allreduce_sum(ts[0]->data<float>(), size_t(total), comm::Where::Device);
      } else if (ts[0]->device != Device::CPU) {
        // one collective for all (a 7B adapter is 60 tensors): packed on the device, in stream
        // order; the engine waits for the stream's copies before it starts and for its sum to end
        TensorPtr packed = empty({total}, DType::F32, ts[0]->device);
        size_t off = 0;
        for (const TensorPtr& t : ts) {
          cuda::copy_on_device(packed->data<float>() + off, t->raw(), t->nbytes());
          off += size_t(t->numel());
        }
        w.allreduce_sum(packed->data<float>(), size_t(total), comm::Where::Device);
        off = 0;
        for (const TensorPtr& t : ts) {
          cuda::copy_on_device(t->raw(), packed->data<float>() + off, t->nbytes());
          off += size_t(t->numel());
        }
      } else if (ts.size() == 1) {
        w.allreduce_sum(ts[0]->data<float>(), size_t(total), comm::Where::Host);
      } else {
        // one collective for all: pack, sum, unpack
        static thread_local std::vector<float> packed;
        packed.resize(size_t(total));
        size_t off = 0;
        for (const TensorPtr& t : ts) {
          std::memcpy(packed.data() + off, t->raw(), t->nbytes());
          off += size_t(t->numel());
        }
        w.allreduce_sum(packed.data(), packed.size(), comm::Where::Host);
        off = 0;
        for (const TensorPtr& t : ts) {
          std::memcpy(t->raw(), packed.data() + off, t->nbytes());
          off += size_t(t->numel());
        }
      }
      stats.add(double(total) * 4, seconds_since(t0));
    });
  }
  TensorPtr first = ts.empty() ? nullptr : ts[0];
  auto* w = new WaitWorker(
      info.Env(), cpu_executor().last_ticket(),
      [first]() -> std::string { return first && first->storage->error ? *first->storage->error : std::string(); },
      [](Napi::Env env) { return env.Undefined(); });
  w->Queue();
  return w->promise();
})

LA_OP(allreduceScalars, {
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
    a.type_error(0, "values", "a Float64Array");
  auto ta = info[0].As<Napi::Float64Array>();
  auto values = std::make_shared<std::vector<double>>(ta.Data(), ta.Data() + ta.ElementLength());
  return queue_async(
      info.Env(), "allreduceScalars(" + std::to_string(values->size()) + ")",
      [values] {
        if (!values->empty()) comm::world().allreduce_sum(values->data(), values->size());
      },
      [values](Napi::Env env) -> Napi::Value {
        auto out = Napi::Float64Array::New(env, values->size());
        std::copy(values->begin(), values->end(), out.Data());
        return out;
      });
})

LA_OP(broadcast, {
  int64_t root = info.Length() > 1 && !info[1].IsUndefined() ? a.integer(1, "root") : 0;
  comm::Communicator& w = comm::world();
  LA_CHECK(root < w.size(), "broadcast: root ", root, " is outside the world of ", w.size(), " ranks");
  bool have = info.Length() > 0 && info[0].IsTypedArray() &&
              info[0].As<Napi::TypedArray>().TypedArrayType() == napi_uint8_array;
  if (!have && !(info.Length() > 0 && (info[0].IsNull() || info[0].IsUndefined())))
    a.type_error(0, "data", "a Uint8Array or null");
  if (w.rank() == root && !have) a.type_error(0, "data", "a Uint8Array on the root rank");
  auto buf = std::make_shared<std::vector<uint8_t>>();
  if (have && w.rank() == root) {
    auto u = info[0].As<Napi::Uint8Array>();
    buf->assign(u.Data(), u.Data() + u.ElementLength());
  }
  int r = int(root);
  return queue_async(
      info.Env(), "broadcast",
      [buf, r] {
        comm::Communicator& w = comm::world();
        uint64_t n = buf->size();
        w.broadcast(&n, sizeof n, r);
        buf->resize(size_t(n));
        if (n) w.broadcast(buf->data(), size_t(n), r);
      },
      [buf](Napi::Env env) -> Napi::Value {
        auto out = Napi::Uint8Array::New(env, buf->size());
        std::copy(buf->begin(), buf->end(), out.Data());
        return out;
      });
})

LA_OP(commBarrier, (void)a; return queue_async(info.Env(), "barrier", [] { comm::world().barrier(); }, [](Napi::Env env) { return env.Undefined(); });)

LA_OP(commFinalize, (void)a; return queue_async(info.Env(), "commFinalize", [] { comm::world().finalize(); }, [](Napi::Env env) { return env.Undefined(); });)

LA_OP(commAbort, {
  int64_t code = info.Length() > 0 && !info[0].IsUndefined() ? a.integer(0, "code") : 1;
  comm::world().abort(int(code));  // never returns
  return info.Env().Undefined();
})

}  // namespace

void register_comm(Napi::Env env, Napi::Object exports) {
  export_fn(env, exports, "commInit", commInit);
  export_fn(env, exports, "commInfo", commInfo);
  export_fn(env, exports, "allreduceSum", allreduceSum);
  export_fn(env, exports, "allreduceScalars", allreduceScalars);
  export_fn(env, exports, "broadcast", broadcast);
  export_fn(env, exports, "commBarrier", commBarrier);
  export_fn(env, exports, "commFinalize", commFinalize);
  export_fn(env, exports, "commAbort", commAbort);
}

}  // namespace la::napi
