#include <cmath>
#include <vector>

#include "../core/parallel.h"
#include "kernels.h"

namespace la::cpu {
namespace {

// cos and sin of pos * theta^(-2i/d) for pos < rows(), i < d/2, kept per thread and grown on
// demand: a decode step rotates one position, and recomputing its angles (pow, sin, cos in
// double) cost more than the rotation.
class RopeTable {
 public:
  void ensure(float theta, int64_t d, int64_t positions) {
    if (theta != theta_ || d != d_) {
      theta_ = theta;
      d_ = d;
      freq_.resize(size_t(d / 2));
      for (int64_t i = 0; i < d / 2; i++) freq_[i] = std::pow(double(theta), -double(2 * i) / double(d));
      cos_.clear();
      sin_.clear();
    }
    const int64_t half = d / 2;
    for (int64_t p = rows(); p < positions; p++)
      for (int64_t i = 0; i < half; i++) {
        cos_.push_back(float(std::cos(double(p) * freq_[i])));
        sin_.push_back(float(std::sin(double(p) * freq_[i])));
      }
  }
  int64_t rows() const { return d_ ? int64_t(cos_.size()) / (d_ / 2) : 0; }
  const float* cos(int64_t pos) const { return cos_.data() + pos * (d_ / 2); }
  const float* sin(int64_t pos) const { return sin_.data() + pos * (d_ / 2); }

 private:
  float theta_ = 0;
  int64_t d_ = 0;
  std::vector<double> freq_;
  std::vector<float> cos_, sin_;  // (positions, d/2)
};

}  // namespace

void rope_forward(float* x, int64_t T, int64_t H, int64_t d, int64_t pos0, float theta, bool interleaved) {
  const int64_t half = d / 2;
  thread_local RopeTable table;
  table.ensure(theta, d, pos0 + T);
  const RopeTable& tab = table;
  parallel_for(T, std::max<int64_t>(1, 4096 / (H * d)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
      const float *cs = tab.cos(pos0 + t), *sn = tab.sin(pos0 + t);
      for (int64_t h = 0; h < H; h++) {
        float* v = x + (t * H + h) * d;
        for (int64_t i = 0; i < half; i++) {
          float* a = interleaved ? v + 2 * i : v + i;
          float* b = interleaved ? v + 2 * i + 1 : v + i + half;
          float x0 = *a, x1 = *b;
          *a = x0 * cs[i] - x1 * sn[i];
          *b = x0 * sn[i] + x1 * cs[i];
        }
      }
    }
  });
}

}  // namespace la::cpu
