// The NCCL engine: one process per GPU. NCCL (libnccl.so.2, e.g. from the pip wheel
// nvidia-nccl-cu13) and the CUDA driver (libcuda.so.1) are loaded at run time with dlopen, and the
// handful of their types and functions used here are declared below, so the addon builds and
// loads without either; the engine fails with a clear message when one is missing.
//
// The world: a single rank on its own, or, when launched by mpirun, the MPI world, over which rank
// 0's ncclUniqueId is broadcast (MPI is the bootstrap, and carries the host scalars). GPU tensors
// are summed in place; host tensors (the CPU backend's) are staged through one device buffer.
// Every NCCL call is queued on this engine's stream and polled against the deadline: on a
// timeout the NCCL communicator is aborted and the error says why.
#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "../core/error.h"
#include "communicator.h"

namespace la::comm {
namespace {

// ---- declarations of the NCCL API (nccl.h; stable ABI across NCCL 2.x) ----------------------
struct ncclComm;
using ncclComm_t = ncclComm*;
struct ncclUniqueId {
  char internal[128];
};
using ncclResult_t = int;  // enum: ncclSuccess = 0, ..., ncclInProgress = 7
constexpr ncclResult_t ncclSuccess = 0, ncclInProgress = 7;
constexpr int ncclFloat32 = 7, ncclSum = 0;

// ---- declarations of the CUDA driver API (cuda.h) -----------------------------------------------
using CUresult = int;
using CUdevice = int;
using CUcontext = void*;
using CUstream = void*;  // also cudaStream_t
using CUdeviceptr = unsigned long long;
constexpr CUresult CUDA_SUCCESS = 0, CUDA_ERROR_NOT_READY = 600;
constexpr unsigned CU_STREAM_NON_BLOCKING = 1;

template <class F>
F symbol(void* lib, const char* name, const std::string& libname) {
  void* p = dlsym(lib, name);
  LA_CHECK(p, libname, " has no symbol ", name, " (too old a version?)");
  return reinterpret_cast<F>(p);
}

struct Nccl {
  void* lib = nullptr;
  std::string path;
  ncclResult_t (*GetVersion)(int*);
  ncclResult_t (*GetUniqueId)(ncclUniqueId*);
  ncclResult_t (*CommInitRank)(ncclComm_t*, int, ncclUniqueId, int);
  ncclResult_t (*AllReduce)(const void*, void*, size_t, int, int, ncclComm_t, CUstream);
  ncclResult_t (*CommDestroy)(ncclComm_t);
  ncclResult_t (*CommAbort)(ncclComm_t);
  ncclResult_t (*CommGetAsyncError)(ncclComm_t, ncclResult_t*);
  const char* (*GetErrorString)(ncclResult_t);

  explicit Nccl(const std::string& want) {
    const char* tries[] = {want.c_str(), "libnccl.so.2", "libnccl.so"};
    std::string errors;
    for (const char* name : tries) {
      if (!*name) continue;
      lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib) {
        path = name;
        break;
      }
      const char* e = dlerror();
      errors += std::string("\n  ") + (e ? e : name);
    }
    LA_CHECK(lib, "NCCL could not be loaded:", errors,
             "\nThe NCCL engine loads libnccl.so.2 at run time. Install NCCL (e.g. `pip install nvidia-nccl-cu13`, "
             "or your distribution's libnccl2) and put its lib folder on LD_LIBRARY_PATH, or name the file with "
             "LLAMA_ADAPTER_NCCL=/path/to/libnccl.so.2");
    GetVersion = symbol<decltype(GetVersion)>(lib, "ncclGetVersion", path);
    GetUniqueId = symbol<decltype(GetUniqueId)>(lib, "ncclGetUniqueId", path);
    CommInitRank = symbol<decltype(CommInitRank)>(lib, "ncclCommInitRank", path);
    AllReduce = symbol<decltype(AllReduce)>(lib, "ncclAllReduce", path);
    CommDestroy = symbol<decltype(CommDestroy)>(lib, "ncclCommDestroy", path);
    CommAbort = symbol<decltype(CommAbort)>(lib, "ncclCommAbort", path);
    CommGetAsyncError = symbol<decltype(CommGetAsyncError)>(lib, "ncclCommGetAsyncError", path);
    GetErrorString = symbol<decltype(GetErrorString)>(lib, "ncclGetErrorString", path);
  }
  std::string version() const {
    int v = 0;
    if (GetVersion(&v) != ncclSuccess) return "NCCL (unknown version)";
    // NCCL_VERSION(X,Y,Z): X*1000+Y*100+Z up to 2.8, X*10000+Y*100+Z from 2.9 on
    int major = v >= 10000 ? v / 10000 : v / 1000, minor = v >= 10000 ? (v / 100) % 100 : (v / 100) % 10, patch = v % 100;
    return "NCCL " + std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
  }
  void check(ncclResult_t r, const char* what) const {
    LA_CHECK(r == ncclSuccess, what, " failed: ", GetErrorString(r));
  }
};

struct Cuda {
  void* lib = nullptr;
  CUresult (*Init)(unsigned);
  CUresult (*DeviceGetCount)(int*);
  CUresult (*DeviceGet)(CUdevice*, int);
  CUresult (*DevicePrimaryCtxRetain)(CUcontext*, CUdevice);
  CUresult (*CtxSetCurrent)(CUcontext);
  CUresult (*CtxSynchronize)();
  CUresult (*MemAlloc)(CUdeviceptr*, size_t);
  CUresult (*MemFree)(CUdeviceptr);
  CUresult (*MemcpyHtoDAsync)(CUdeviceptr, const void*, size_t, CUstream);
  CUresult (*MemcpyDtoHAsync)(void*, CUdeviceptr, size_t, CUstream);
  CUresult (*StreamCreate)(CUstream*, unsigned);
  CUresult (*StreamQuery)(CUstream);
  CUresult (*StreamDestroy)(CUstream);
  CUresult (*GetErrorString)(CUresult, const char**);

  Cuda() {
    lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      fail("the NCCL engine needs an NVIDIA GPU and its driver, but the CUDA driver library could not be loaded (",
           e ? e : "libcuda.so.1", ")");
    }
    const std::string name = "libcuda.so.1";
    Init = symbol<decltype(Init)>(lib, "cuInit", name);
    DeviceGetCount = symbol<decltype(DeviceGetCount)>(lib, "cuDeviceGetCount", name);
    DeviceGet = symbol<decltype(DeviceGet)>(lib, "cuDeviceGet", name);
    DevicePrimaryCtxRetain = symbol<decltype(DevicePrimaryCtxRetain)>(lib, "cuDevicePrimaryCtxRetain", name);
    CtxSetCurrent = symbol<decltype(CtxSetCurrent)>(lib, "cuCtxSetCurrent", name);
    CtxSynchronize = symbol<decltype(CtxSynchronize)>(lib, "cuCtxSynchronize", name);
    MemAlloc = symbol<decltype(MemAlloc)>(lib, "cuMemAlloc_v2", name);
    MemFree = symbol<decltype(MemFree)>(lib, "cuMemFree_v2", name);
    MemcpyHtoDAsync = symbol<decltype(MemcpyHtoDAsync)>(lib, "cuMemcpyHtoDAsync_v2", name);
    MemcpyDtoHAsync = symbol<decltype(MemcpyDtoHAsync)>(lib, "cuMemcpyDtoHAsync_v2", name);
    StreamCreate = symbol<decltype(StreamCreate)>(lib, "cuStreamCreate", name);
    StreamQuery = symbol<decltype(StreamQuery)>(lib, "cuStreamQuery", name);
    StreamDestroy = symbol<decltype(StreamDestroy)>(lib, "cuStreamDestroy_v2", name);
    GetErrorString = symbol<decltype(GetErrorString)>(lib, "cuGetErrorString", name);
  }
  std::string error(CUresult r) const {
    const char* s = nullptr;
    if (GetErrorString(r, &s) != CUDA_SUCCESS || !s) return "CUDA driver error " + std::to_string(r);
    return s;
  }
  void check(CUresult r, const char* what) const { LA_CHECK(r == CUDA_SUCCESS, what, " failed: ", error(r)); }
};

class NcclComm final : public Communicator {
 public:
  explicit NcclComm(const Options& opts) : timeout_s_(opts.timeout_s), nccl_(opts.nccl_library) {
    // the device first: a machine without a GPU fails here, before any rank waits for it
    CUresult r = cuda_.Init(0);
    LA_CHECK(r == CUDA_SUCCESS, "the NCCL engine needs an NVIDIA GPU: cuInit failed: ", cuda_.error(r));
    int count = 0;
    cuda_.check(cuda_.DeviceGetCount(&count), "cuDeviceGetCount");
    LA_CHECK(count > 0, "the NCCL engine needs an NVIDIA GPU, and the CUDA driver sees none");
    LA_CHECK(opts.device >= 0 && opts.device < count, "CUDA device ", opts.device, " does not exist (", count,
             " visible)");
    CUdevice dev = 0;
    cuda_.check(cuda_.DeviceGet(&dev, opts.device), "cuDeviceGet");
    cuda_.check(cuda_.DevicePrimaryCtxRetain(&ctx_, dev), "cuDevicePrimaryCtxRetain");
    cuda_.check(cuda_.CtxSetCurrent(ctx_), "cuCtxSetCurrent");
    cuda_.check(cuda_.StreamCreate(&stream_, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    device_ = opts.device;

    if (opts.bootstrap_mpi) {
      boot_ = make_mpi(opts);
      rank_ = boot_->rank();
      size_ = boot_->size();
    }
    ncclUniqueId id;
    std::memset(&id, 0, sizeof id);
    if (rank_ == 0) nccl_.check(nccl_.GetUniqueId(&id), "ncclGetUniqueId");
    if (boot_) boot_->broadcast(&id, sizeof id, 0);
    nccl_.check(nccl_.CommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
    library_ = nccl_.version() + " (" + nccl_.path + ", device " + std::to_string(device_) + ")";
  }

  ~NcclComm() override { release(); }

  const char* kind() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string library() const override { return library_; }

  void allreduce_sum(float* data, size_t n, Where where) override {
    usable("NCCL all-reduce");
    if (n == 0) return;
    cuda_.check(cuda_.CtxSetCurrent(ctx_), "cuCtxSetCurrent");
    if (where == Where::Device) {
      // the producers may run on other streams of this context: let them finish first
      cuda_.check(cuda_.CtxSynchronize(), "cuCtxSynchronize");
      nccl_.check(nccl_.AllReduce(data, data, n, ncclFloat32, ncclSum, comm_, stream_), "ncclAllReduce");
    } else {
      reserve(n * sizeof(float));
      cuda_.check(cuda_.MemcpyHtoDAsync(buf_, data, n * sizeof(float), stream_), "cuMemcpyHtoDAsync");
      void* d = reinterpret_cast<void*>(buf_);
      nccl_.check(nccl_.AllReduce(d, d, n, ncclFloat32, ncclSum, comm_, stream_), "ncclAllReduce");
      cuda_.check(cuda_.MemcpyDtoHAsync(data, buf_, n * sizeof(float), stream_), "cuMemcpyDtoHAsync");
    }
    wait_stream("NCCL all-reduce");
  }

  void allreduce_sum(double* data, size_t n) override {
    usable("all-reduce");
    if (boot_) boot_->allreduce_sum(data, n);
  }
  void broadcast(void* data, size_t bytes, int root) override {
    usable("broadcast");
    if (boot_) boot_->broadcast(data, bytes, root);
    else LA_CHECK(root == 0, "broadcast: root ", root, " is outside a world of 1 rank");
  }
  void barrier() override {
    usable("barrier");
    if (boot_) boot_->barrier();
  }
  void finalize() override {
    release();
    if (boot_) boot_->finalize();
    broken_ = "the NCCL world was finalized";
  }
  [[noreturn]] void abort(int code) override {
    cancelled().store(true);
    if (comm_) nccl_.CommAbort(comm_);
    comm_ = nullptr;
    if (boot_) boot_->abort(code);
    std::_Exit(code);
  }

 private:
  void usable(const char* what) const {
    LA_CHECK(broken_.empty(), what, ": the communicator is unusable after an earlier failure: ", broken_);
  }
  void reserve(size_t bytes) {
    if (bytes <= buf_bytes_) return;
    if (buf_) cuda_.MemFree(buf_);
    buf_ = 0;
    buf_bytes_ = 0;
    cuda_.check(cuda_.MemAlloc(&buf_, bytes), "cuMemAlloc");
    buf_bytes_ = bytes;
  }
  void wait_stream(const char* what) {
    std::string label = std::string(what) + " (rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ")";
    try {
      wait_until(
          [&] {
            CUresult q = cuda_.StreamQuery(stream_);
            if (q == CUDA_SUCCESS) return true;
            if (q != CUDA_ERROR_NOT_READY) fail(what, " failed on the GPU: ", cuda_.error(q));
            ncclResult_t async = ncclSuccess;
            if (nccl_.CommGetAsyncError(comm_, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress)
              fail(what, " failed: ", nccl_.GetErrorString(async));
            return false;
          },
          timeout_s_, label);
    } catch (const std::exception& e) {
      broken_ = e.what();
      if (comm_) nccl_.CommAbort(comm_);  // frees the kernels waiting for the missing peers
      comm_ = nullptr;
      throw;
    }
  }
  void release() {
    if (ctx_) cuda_.CtxSetCurrent(ctx_);
    if (comm_) {
      if (stream_) wait_quietly();
      nccl_.CommDestroy(comm_);
      comm_ = nullptr;
    }
    if (buf_) cuda_.MemFree(buf_);
    buf_ = 0;
    buf_bytes_ = 0;
    if (stream_) cuda_.StreamDestroy(stream_);
    stream_ = nullptr;
  }
  void wait_quietly() {
    try {
      wait_until([&] { return cuda_.StreamQuery(stream_) != CUDA_ERROR_NOT_READY; }, timeout_s_, "NCCL shutdown");
    } catch (...) {
    }
  }

  double timeout_s_;
  Cuda cuda_;
  Nccl nccl_;
  std::unique_ptr<Communicator> boot_;
  CUcontext ctx_ = nullptr;
  CUstream stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  CUdeviceptr buf_ = 0;
  size_t buf_bytes_ = 0;
  int rank_ = 0, size_ = 1, device_ = 0;
  std::string library_, broken_;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl(const Options& opts) { return std::make_unique<NcclComm>(opts); }

}  // namespace la::comm
