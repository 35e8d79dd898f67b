#include "executor.h"

#include <algorithm>
#include <chrono>
#include <exception>

#include "parallel.h"

namespace la {

Executor::Executor() : thread_([this] { run(); }) {}

Executor::~Executor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  has_work_.notify_all();
  thread_.join();
}

uint64_t Executor::enqueue(std::string what, std::function<void()> work, bool here_if_idle) {
  uint64_t ticket;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ticket = next_ticket_++;
    here_if_idle = here_if_idle && queue_.empty() && !running_;
    if (here_if_idle) {
      running_ = true;  // the executor thread starts nothing until finish()
    } else {
      queue_.push_back({ticket, std::move(what), std::move(work)});
      queued_.store(queue_.size(), std::memory_order_release);
    }
  }
  if (!here_if_idle) {
    has_work_.notify_one();
    return ticket;
  }
  std::string failure = execute(what, work);
  work = nullptr;
  finish(ticket, failure);
  return ticket;
}

std::string Executor::execute(const std::string& what, std::function<void()>& work) {
  try {
    work();
  } catch (const std::exception& e) {
    return what.empty() ? std::string(e.what()) : what + ": " + e.what();
  } catch (...) {
    return (what.empty() ? std::string("an op") : what) + ": unknown error";
  }
  return std::string();
}

void Executor::finish(uint64_t ticket, const std::string& failure) {
  bool more;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failure.empty() && error_.empty()) error_ = failure;
    completed_ = std::max(completed_, ticket);
    done_ticket_.store(completed_, std::memory_order_release);
    running_ = false;
    more = !queue_.empty();
  }
  done_.notify_all();
  if (more) has_work_.notify_one();  // queued while a caller ran its task: the executor may start it
}

uint64_t Executor::last_ticket() {
  std::lock_guard<std::mutex> lock(mu_);
  return next_ticket_ - 1;
}

void Executor::wait(uint64_t ticket) {
  std::unique_lock<std::mutex> lock(mu_);
  done_.wait(lock, [&] { return completed_ >= ticket; });
}

bool Executor::wait_briefly(uint64_t ticket, int max_us) {
  auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(max_us);
  for (int i = 0;; i++) {
    if (done_ticket_.load(std::memory_order_acquire) >= ticket) return true;
    // Only worth it when the ticket is next or nearly: a long queue takes longer than the spin.
    if (ticket > done_ticket_.load() + 2) return false;
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) return false;
    cpu_relax();
  }
}

std::string Executor::take_error() {
  std::lock_guard<std::mutex> lock(mu_);
  std::string e;
  e.swap(error_);
  return e;
}

void Executor::run() {
  for (;;) {
    Task task;
    // Ops arrive in bursts a few µs apart while JS queues a forward pass: spin briefly for the
    // next before sleeping, which spares each enqueue a wake-up (a system call on both sides).
    for (int i = 0; i < 512 && queued_.load(std::memory_order_acquire) == 0; i++) cpu_relax();
    {
      std::unique_lock<std::mutex> lock(mu_);
      // (running_ here: a caller runs a task on its own thread; see enqueue)
      has_work_.wait(lock, [&] { return !running_ && (stop_ || !queue_.empty()); });
      if (queue_.empty()) return;  // stopping, nothing left
      task = std::move(queue_.front());
      queue_.pop_front();
      queued_.store(queue_.size(), std::memory_order_release);
      running_ = true;
    }
    std::string failure = execute(task.what, task.work);
    task.work = nullptr;  // release the tensors it held before reporting completion
    finish(task.ticket, failure);
  }
}

void Executor::shutdown() {
  std::unique_lock<std::mutex> lock(mu_);
  stop_ = true;
  if (!queue_.empty()) completed_ = std::max(completed_, queue_.back().ticket);
  done_ticket_.store(completed_);
  queue_.clear();
  queued_.store(0);
  has_work_.notify_all();
  done_.notify_all();
  done_.wait(lock, [&] { return !running_; });
}

Executor& cpu_executor() {
  // Leaked on purpose: the worker must outlive every static that may still queue work at exit.
  static Executor* e = new Executor();
  return *e;
}

}  // namespace la
