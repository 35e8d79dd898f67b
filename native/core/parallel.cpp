#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace la {
namespace {

class Pool {
 public:
  explicit Pool(int threads) { resize(threads); }

  int size() const { return int(workers_.size()) + 1; }

  void resize(int threads) {
    stop_workers();
    stop_ = false;
    for (int i = 1; i < threads; i++) workers_.emplace_back([this] { work(); });
  }

  void run(int64_t n, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      n_ = n;
      chunk_ = chunk;
      next_.store(0);
      active_.store(int(workers_.size()));
      generation_.fetch_add(1);
    }
    wake_.notify_all();  // no system call when every worker is still spinning
    drain();
    // The workers finish about when we do: spin a little before sleeping on the condition.
    for (int i = 0; i < kSpins && active_.load(std::memory_order_acquire) != 0; i++) cpu_relax();
    if (active_.load() != 0) {
      std::unique_lock<std::mutex> lock(mu_);
      idle_.wait(lock, [&] { return active_.load() == 0; });
    }
    fn_ = nullptr;
  }

  ~Pool() { stop_workers(); }

 private:
  void drain() {
    for (;;) {
      int64_t b = next_.fetch_add(chunk_);
      if (b >= n_) return;
      (*fn_)(b, std::min(n_, b + chunk_));
    }
  }

  void work() {
    uint64_t seen = 0;
    for (;;) {
      // Kernels come in bursts (a forward pass is hundreds of them): spin briefly for the next
      // one before sleeping, which saves its caller a wake-up (~10 µs, more than a small kernel).
      for (int i = 0; i < kSpins && generation_.load(std::memory_order_acquire) == seen && !stop_.load(); i++)
        cpu_relax();
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return stop_ || generation_.load() != seen; });
        if (stop_) return;
        seen = generation_.load();
      }
      drain();
      bool last;
      {
        std::lock_guard<std::mutex> lock(mu_);
        last = active_.fetch_sub(1) == 1;
      }
      if (last) idle_.notify_one();
    }
  }

  // ~5-10 µs (pause is ~10-40 ns on recent x86): enough for the back-to-back kernels of one op
  // (a fused layer), short enough not to take a core from the JS thread between ops.
  static constexpr int kSpins = 256;

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_, idle_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  std::atomic<int64_t> next_{0};
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int> active_{0};
  std::atomic<uint64_t> generation_{0};  // written under mu_, read without it while spinning
  std::atomic<bool> stop_{false};  // written under mu_, read without it while spinning
};

int default_threads() {
  unsigned hw = std::thread::hardware_concurrency();
  return hw ? int(hw) : 1;
}

Pool& pool() {
  static Pool* p = new Pool(default_threads());  // leaked: workers may outlive static destructors
  return *p;
}

}  // namespace

void set_num_threads(int n) {
  n = std::max(1, n);
  static std::mutex resizing;
  std::lock_guard<std::mutex> lock(resizing);
  if (n != pool().size()) pool().resize(n);
}

int num_threads() { return pool().size(); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  int threads = pool().size();
  grain = std::max<int64_t>(1, grain);
  // Nested calls (from inside a chunk, or from a pool worker) run serially on their thread.
  thread_local bool inside = false;
  if (threads == 1 || n <= grain || inside) {
    fn(0, n);
    return;
  }
  // About 4 chunks per thread balances uneven rows without much scheduling overhead.
  int64_t chunk = std::max(grain, (n + threads * 4 - 1) / (threads * 4));
  static std::mutex one_caller;  // the executor and the JS thread may both get here
  std::lock_guard<std::mutex> lock(one_caller);
  inside = true;
  pool().run(n, chunk, [&](int64_t b, int64_t e) {
    bool was = inside;
    inside = true;
    fn(b, e);
    inside = was;
  });
  inside = false;
}

}  // namespace la
