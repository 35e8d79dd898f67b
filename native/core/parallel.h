// A small thread pool for CPU kernels. parallel_for splits [0, n) into chunks of at least `grain`
// items and runs them on the pool and the calling thread. Idle workers spin for a few µs (the
// next kernel of a burst often comes that soon), then sleep, so they do not hold cores between ops.
#pragma once
#include <cstdint>
#include <functional>
#include <thread>

namespace la {

void set_num_threads(int n);  // the pool's size (BLAS's own threads: blas_set_threads)
int num_threads();

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn);

// One step of a spin-wait: the CPU's pause hint (it frees the core's resources for its sibling).
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

}  // namespace la
