// The world of one, the process-wide world, and the bounded wait every engine uses.
#include "communicator.h"

#include <chrono>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <thread>

#include "../core/error.h"

namespace la::comm {
namespace {

class Single final : public Communicator {
 public:
  const char* kind() const override { return "none"; }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allreduce_sum(float*, size_t, Where) override {}
  void allreduce_sum(double*, size_t) override {}
  void broadcast(void*, size_t, int root) override {
    LA_CHECK(root == 0, "broadcast: root ", root, " is outside a world of 1 rank");
  }
  void barrier() override {}
  void finalize() override {}
  [[noreturn]] void abort(int code) override { std::_Exit(code); }
  std::string library() const override { return "none (a world of one)"; }
};

std::mutex world_mu;
std::unique_ptr<Communicator> the_world;
bool initialized = false;

}  // namespace

std::unique_ptr<Communicator> make_single() { return std::make_unique<Single>(); }

Communicator& world() {
  std::lock_guard<std::mutex> lock(world_mu);
  if (!the_world) the_world = make_single();
  return *the_world;
}

void set_world(std::unique_ptr<Communicator> c) {
  std::lock_guard<std::mutex> lock(world_mu);
  the_world = std::move(c);
  initialized = true;
}

bool world_initialized() {
  std::lock_guard<std::mutex> lock(world_mu);
  return initialized;
}

std::atomic<bool>& cancelled() {
  static std::atomic<bool> flag{false};
  return flag;
}

void wait_until(const std::function<bool()>& done, double timeout_s, const std::string& what) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const auto spin_until = start + std::chrono::milliseconds(2);
  const auto deadline = start + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(timeout_s));
  auto nap = std::chrono::microseconds(10);
  for (;;) {
    if (done()) return;
    if (cancelled().load())
      fail(what, ": cancelled (the process is exiting or the world was aborted)");
    auto now = clock::now();
    if (now >= deadline) {
      std::ostringstream s;
      s << what << ": no answer from the other ranks within " << timeout_s
        << " s: a rank died, hangs or is far behind (--comm-timeout / LLAMA_ADAPTER_COMM_TIMEOUT sets the limit)";
      throw Error(s.str());
    }
    if (now < spin_until) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(nap);
      if (nap < std::chrono::microseconds(1000)) nap *= 2;
    }
  }
}

}  // namespace la::comm
