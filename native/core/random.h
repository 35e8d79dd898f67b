// A counter-based uniform generator: element i of a seeded fill depends on (seed, i) alone, so the
// CPU and CUDA backends (and any thread count) produce the same values. Used for random-weight
// models (benchmarks, tests).
#pragma once
#include <cstdint>

#include "host_device.h"

namespace la {

// SplitMix64's output function over seed and index: a well-mixed 64-bit value per element.
LA_HOST_DEVICE inline uint64_t mix64(uint64_t seed, uint64_t i) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + (i + 1) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [-1, 1), a multiple of 2^-23 (exact in f32).
LA_HOST_DEVICE inline float uniform_at(uint64_t seed, uint64_t i) {
  return float(int64_t(mix64(seed, i) >> 40) - (int64_t(1) << 23)) * (1.0f / float(1 << 23));
}

}  // namespace la
