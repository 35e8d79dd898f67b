// A small thread pool for CPU kernels. parallel_for splits [0, n) into chunks of at least `grain`
// items and runs them on the pool and the calling thread. Idle workers sleep (no spinning), so
// they do not steal the cores from BLAS's own threads between ops.
#pragma once
#include <cstdint>
#include <functional>

namespace la {

void set_num_threads(int n);  // also sets BLAS's thread count
int num_threads();

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn);

}  // namespace la
