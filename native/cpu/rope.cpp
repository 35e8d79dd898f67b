// Rotary position embedding: pair i of a head (channels 2i, 2i+1 interleaved, or i, i + d/2 in
// halves) rotated by the angle pos * theta^(-2i/d). cos and sin are computed in double and rounded
// to f32, the same values for rope_forward and rope_at, so that ropeAt at positions pos0 + t equals
// rope bit for bit.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/parallel.h"
#include "kernels.h"

namespace la::cpu {
namespace {

// Positions up to this many are served from the thread's table; beyond it (rare, arbitrary
// per-token positions) the angles are computed per token rather than kept.
constexpr int64_t kTablePositions = 1 << 14;

// cos and sin for positions 0 .. rows()-1, kept per thread and grown on demand: a decode step
// rotates one position, and recomputing its angles (pow, sin, cos in double) cost more than the
// rotation.
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
    const int64_t half = d / 2, have = rows();
    if (positions <= have) return;
    cos_.resize(size_t(positions * half));
    sin_.resize(cos_.size());
    for (int64_t p = have; p < positions; p++) angles(&cos_[p * half], &sin_[p * half], p);
  }
  // cs, sn (d/2) for any position
  void angles(float* cs, float* sn, int64_t p) const {
    for (size_t i = 0; i < freq_.size(); i++) {
      cs[i] = float(std::cos(double(p) * freq_[i]));
      sn[i] = float(std::sin(double(p) * freq_[i]));
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

// One head's pairs rotated by the angles cs, sn (d/2); sign -1 rotates backwards.
void rotate(float* v, const float* cs, const float* sn, int64_t half, bool interleaved, float sign) {
  for (int64_t i = 0; i < half; i++) {
    float* a = interleaved ? v + 2 * i : v + i;
    float* b = interleaved ? v + 2 * i + 1 : v + i + half;
    const float x0 = *a, x1 = *b, s = sign * sn[i];
    *a = x0 * cs[i] - x1 * s;
    *b = x0 * s + x1 * cs[i];
  }
}

// x (N, H, d): token t's heads rotated by the angles of position_of(t) (>= 0, at most pmax).
template <class PositionOf>
void rotate_rows(float* x, int64_t N, int64_t H, int64_t d, int64_t pmax, float theta, bool interleaved, float sign,
                 PositionOf position_of) {
  const int64_t half = d / 2;
  thread_local RopeTable table;  // filled here, only read by the pool's threads below
  table.ensure(theta, d, std::min(pmax + 1, kTablePositions));
  const RopeTable& tab = table;
  parallel_for(N, std::max<int64_t>(1, 4096 / (H * d)), [&](int64_t t0, int64_t t1) {
    std::vector<float> own(pmax < kTablePositions ? 0 : size_t(d));  // angles of a position past the table
    for (int64_t t = t0; t < t1; t++) {
      const int64_t p = position_of(t);
      const float *cs = own.data(), *sn = own.data() + half;
      if (p < kTablePositions) {
        cs = tab.cos(p);
        sn = tab.sin(p);
      } else {
        tab.angles(own.data(), own.data() + half, p);
      }
      for (int64_t h = 0; h < H; h++) rotate(x + (t * H + h) * d, cs, sn, half, interleaved, sign);
    }
  });
}

}  // namespace

void rope_forward(float* x, int64_t T, int64_t H, int64_t d, int64_t pos0, float theta, bool interleaved) {
  rotate_rows(x, T, H, d, pos0 + T - 1, theta, interleaved, 1.f, [pos0](int64_t t) { return pos0 + t; });
}

void rope_at(float* x, const int32_t* pos, int64_t N, int64_t H, int64_t d, float theta, bool interleaved,
             bool inverse) {
  int64_t pmax = 0;
  for (int64_t t = 0; t < N; t++) pmax = std::max<int64_t>(pmax, pos[t]);
  rotate_rows(x, N, H, d, pmax, theta, interleaved, inverse ? -1.f : 1.f, [pos](int64_t t) { return int64_t(pos[t]); });
}

}  // namespace la::cpu
