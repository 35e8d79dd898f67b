// Collective communication for data parallelism: one process per rank, every rank holds the same
// adapter and optimiser state, and the gradients are summed over the ranks once per step.
//
// Engines (each a Communicator):
//   none  a world of one: every collective is the identity (the default; no library needed)
//   mpi   Open MPI, for CPU ranks (mpi.cpp; compiled when CMake found MPI, else a stub that says so)
//   nccl  NCCL, for GPU ranks (nccl.cpp; libnccl.so.2 and the CUDA driver are loaded at run time,
//         nothing of them is needed to build); bootstrapped over MPI when the world has > 1 rank
//
// Threading: the bindings call every collective from the CPU executor's thread, in order with the
// ops that produce and consume the data (so MPI is used from one thread at a time); only abort()
// may come from another thread. Collectives never block without bound: each waits at most
// `timeout_s` for the other ranks and then fails with a message that says so (a rank died or
// hangs), and a communicator that failed refuses further collectives with the same message.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace la::comm {

// Where the values of a float all-reduce live.
enum class Where { Host, Device };

struct Options {
  double timeout_s = 600;       // the longest any collective waits for the other ranks
  int device = 0;               // nccl: the CUDA device of this rank
  std::string nccl_library;     // nccl: a path to libnccl.so.2 ("" = the dynamic loader's search)
  bool bootstrap_mpi = false;   // nccl: the world comes from MPI (launched by mpirun) instead of one rank
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual const char* kind() const = 0;  // "none", "mpi" or "nccl"
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // data[0..n) = the sum over the ranks of their data[0..n), in place, on every rank.
  virtual void allreduce_sum(float* data, size_t n, Where where) = 0;
  virtual void allreduce_sum(double* data, size_t n) = 0;  // host memory
  // data[0..bytes) of `root` copied to every rank (host memory).
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Leaves the world (MPI_Finalize); the communicator is unusable afterwards. Idempotent.
  virtual void finalize() = 0;
  // Ends every rank of the world now with `code` (MPI_Abort); a world of one exits this process.
  [[noreturn]] virtual void abort(int code) = 0;
  // A description for capabilities, e.g. "Open MPI v4.1.4" or "NCCL 2.27.3".
  virtual std::string library() const = 0;
};

std::unique_ptr<Communicator> make_single();
// Throws when this build has no MPI (the stub explains how to get it).
std::unique_ptr<Communicator> make_mpi(const Options& opts);
// Throws when NCCL, the CUDA driver or a GPU is missing, naming what and how to provide it.
std::unique_ptr<Communicator> make_nccl(const Options& opts);
bool mpi_compiled();
std::string mpi_build_info();  // "Open MPI ..." or why it is absent

// The process's world: a world of one until set_world().
Communicator& world();
void set_world(std::unique_ptr<Communicator> c);
bool world_initialized();

// Set at process exit (and by abort) so that a collective still waiting gives up at once.
std::atomic<bool>& cancelled();

// Polls `done` until it returns true: spinning briefly, then sleeping with a growing backoff
// (at most 1 ms), so that a rank waiting for a slower one does not take a core away from it.
// Throws la::Error naming `what` when `timeout_s` passes or the process is exiting.
void wait_until(const std::function<bool()>& done, double timeout_s, const std::string& what);

}  // namespace la::comm
