// The Open MPI engine: CPU ranks started by mpirun (or by `llama-adapter train --devices N`).
// Compiled with LA_HAVE_MPI when CMake found MPI (apt-get install libopenmpi-dev); otherwise a stub
// whose make_mpi() explains how to get it.
//
// Every collective is the nonblocking MPI call polled against a deadline (wait_until), so a peer
// that died or hangs gives a clear error instead of a hang; errors are returned, not fatal
// (MPI_ERRORS_RETURN), so that they reach JavaScript with their MPI message. A dead peer usually
// ends the job sooner: mpirun stops every rank when one exits without finishing.
#include "communicator.h"

#include "../core/error.h"

#ifdef LA_HAVE_MPI
#include <dlfcn.h>
// the C API only (mpi.h would pull in the deprecated C++ bindings, which need libmpi_cxx)
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>

namespace la::comm {
namespace {

std::string mpi_error(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, size_t(len));
}

// Open MPI's plugins (mca_*.so) resolve symbols of libmpi; Node loads the addon (and so libmpi)
// with RTLD_LOCAL, so make libmpi's symbols global before MPI_Init loads them.
void promote_libmpi() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&MPI_Init_thread), &info) && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
}

class Mpi final : public Communicator {
 public:
  explicit Mpi(const Options& opts) : timeout_s_(opts.timeout_s) {
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    LA_CHECK(!finalized, "MPI was already finalized in this process; it cannot be started again");
    if (!inited) {
      promote_libmpi();
      int provided = 0;
      int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
      LA_CHECK(rc == MPI_SUCCESS, "MPI_Init_thread failed: ", mpi_error(rc));
      owns_ = true;
      thread_multiple_ = provided >= MPI_THREAD_MULTIPLE;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(version, &len);
    library_ = std::string(version, size_t(len));
    if (auto nl = library_.find_first_of(",\n"); nl != std::string::npos) library_.resize(nl);
  }

  const char* kind() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string library() const override { return library_; }

  void allreduce_sum(float* data, size_t n, Where where) override {
    LA_CHECK(where == Where::Host, "the MPI engine sums host memory only; use the NCCL engine for GPU tensors");
    allreduce(data, n, MPI_FLOAT, "MPI all-reduce of float32 values");
  }
  void allreduce_sum(double* data, size_t n) override { allreduce(data, n, MPI_DOUBLE, "MPI all-reduce of float64 values"); }

  void broadcast(void* data, size_t bytes, int root) override {
    LA_CHECK(root >= 0 && root < size_, "broadcast: root ", root, " is outside the world of ", size_, " ranks");
    char* p = static_cast<char*>(data);
    size_t done = 0;
    do {
      int chunk = int(std::min<size_t>(bytes - done, size_t(1) << 30));
      MPI_Request req;
      run("MPI broadcast", MPI_Ibcast(p + done, chunk, MPI_BYTE, root, MPI_COMM_WORLD, &req), req);
      done += size_t(chunk);
    } while (done < bytes);
  }

  void barrier() override {
    MPI_Request req;
    run("MPI barrier", MPI_Ibarrier(MPI_COMM_WORLD, &req), req);
  }

  void finalize() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_ && !finalized) MPI_Finalize();
    broken_ = "the MPI world was finalized";
  }

  [[noreturn]] void abort(int code) override {
    cancelled().store(true);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; this is for the type system
  }

 private:
  template <class T>
  void allreduce(T* data, size_t n, MPI_Datatype type, const char* what) {
    for (size_t done = 0; done < n;) {
      int chunk = int(std::min<size_t>(n - done, size_t(1) << 28));
      MPI_Request req;
      run(what, MPI_Iallreduce(MPI_IN_PLACE, data + done, chunk, type, MPI_SUM, MPI_COMM_WORLD, &req), req);
      done += size_t(chunk);
    }
  }

  // Waits for a started nonblocking call against the deadline.
  void run(const char* what, int started, MPI_Request& req) {
    LA_CHECK(broken_.empty(), what, ": the communicator is unusable after an earlier failure: ", broken_);
    if (started != MPI_SUCCESS) {
      broken_ = std::string(what) + " failed: " + mpi_error(started);
      fail(broken_);
    }
    std::string label = std::string(what) + " (rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ")";
    try {
      wait_until(
          [&] {
            int flag = 0;
            MPI_Status status;
            int rc = MPI_Test(&req, &flag, &status);
            if (rc != MPI_SUCCESS) fail(what, " failed: ", mpi_error(rc));
            return flag != 0;
          },
          timeout_s_, label);
    } catch (const std::exception& e) {
      broken_ = e.what();
      throw;
    }
  }

  double timeout_s_;
  int rank_ = 0, size_ = 1;
  bool owns_ = false, thread_multiple_ = false;
  std::string library_, broken_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi(const Options& opts) { return std::make_unique<Mpi>(opts); }
bool mpi_compiled() { return true; }
std::string mpi_build_info() {
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(version, &len);
  std::string v(version, size_t(len));
  if (auto nl = v.find_first_of(",\n"); nl != std::string::npos) v.resize(nl);
  return v;
}

}  // namespace la::comm

#else  // no MPI in this build

namespace la::comm {

std::unique_ptr<Communicator> make_mpi(const Options&) {
  fail("this build of the native addon has no MPI support (Open MPI's development files were not found when it was "
       "built). Install them and rebuild: apt-get install openmpi-bin libopenmpi-dev && npm run build:native");
}
bool mpi_compiled() { return false; }
std::string mpi_build_info() {
  return "not built with MPI (apt-get install openmpi-bin libopenmpi-dev, then npm run build:native)";
}

}  // namespace la::comm

#endif
