// An ordered executor: ops are queued from the JS thread and run one after another on a worker
// thread, so a whole forward/backward pass is queued without the event loop waiting on each op.
// Waiting for a ticket is the synchronisation point. A failing op poisons the tensors it writes
// (see Storage::error) and the ops that read them; the executor also keeps the first failure
// since the last take_error(), which synchronize() reports.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace la {

class Executor {
 public:
  Executor();
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Queues `work`; `what` prefixes its error message (empty: the message says it all). Returns its
  // ticket. With `here_if_idle` (for work of a few tens of µs, such as a tiny model's decode step)
  // and nothing queued or running, the work runs now on the calling thread instead: handing it to
  // the executor and the result back would cost two thread wake-ups, more than the work itself.
  uint64_t enqueue(std::string what, std::function<void()> work, bool here_if_idle = false);
  // Blocks until the op with this ticket (and all before it) ran.
  void wait(uint64_t ticket);
  // Spins up to max_us for the ticket when it is at most 2 tasks away; returns whether it ran.
  // (A read right after a short op, as in decoding, then skips the hand-off to a libuv thread.)
  bool wait_briefly(uint64_t ticket, int max_us);
  uint64_t last_ticket();
  // The first failure since the previous call ("" if none), cleared.
  std::string take_error();
  // At process exit: drops queued ops and waits for the running one, so that no kernel is inside
  // BLAS when the libraries' own exit handlers run (OpenBLAS would wait for it forever).
  void shutdown();

 private:
  struct Task {
    uint64_t ticket;
    std::string what;
    std::function<void()> work;
  };
  void run();
  // Runs a task, returning its failure message ("" if none); then marks it done.
  static std::string execute(const std::string& what, std::function<void()>& work);
  void finish(uint64_t ticket, const std::string& failure);

  std::mutex mu_;
  std::condition_variable has_work_, done_;
  std::deque<Task> queue_;
  uint64_t next_ticket_ = 1, completed_ = 0;
  std::atomic<uint64_t> done_ticket_{0};  // completed_, readable without the lock
  std::atomic<size_t> queued_{0};          // queue_.size(), for the executor's spin
  std::string error_;
  bool stop_ = false;
  bool running_ = false;
  std::thread thread_;
};

// The CPU device's executor (created on first use).
Executor& cpu_executor();

}  // namespace la
