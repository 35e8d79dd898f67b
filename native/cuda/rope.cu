// Rotary position embedding, in place on x (T, H, d): one block per token. The block first forms
// the token's cos/sin table in shared memory exactly as the CPU bodies do (frequency theta^(-2i/d),
// angle and cos/sin in double, rounded to f32; the sine negated for the inverse), so results agree
// bit for bit up to the rounding of the rotation itself; then its threads rotate every head's pairs.
// Layouts: interleaved pairs (2i, 2i+1), or halves (i, i + d/2); with d odd the last element stays.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "compat.h"
#include "kernels.h"

namespace la::cuda {
namespace {

constexpr int kMaxThreads = 256;

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// cos and sin of a double angle to about 1 ulp, as the CPU's libm gives them (so the f32 roundings
// agree), without CUDA's cos/sin: their Payne-Hanek path for huge arguments costs a stack frame.
// Cody-Waite reduction by pi/2 in four 26-bit pieces (k * piece exact for |k| < 2^27, i.e. angles
// below ~2e8, far above any position times a frequency <= 1), then Taylor polynomials on
// |r| <= pi/4 (truncation below 1e-18 relative).
__device__ inline void cos_sin(double a, double& c, double& s) {
  const double k = rint(a * 0x1.45f306dc9c883p-1);  // a * 2/pi
  double r = a - k * 0x1.921fb5p+0;                 // exact (Sterbenz)
  r -= k * 0x1.110b46p-26;
  r -= k * 0x1.1a6263p-54;
  r -= k * 0x1.8a2e03707344ap-81;
  const double z = r * r;
  // sin r = r - r^3/3! + ... + r^17/17!;  cos r = 1 - r^2/2! + ... + r^16/16!
  double ps = -1.0 / 355687428096000.0;  // -1/17!
  ps = ps * z + 1.0 / 1307674368000.0;     // 1/15!
  ps = ps * z - 1.0 / 6227020800.0;
  ps = ps * z + 1.0 / 39916800.0;
  ps = ps * z - 1.0 / 362880.0;
  ps = ps * z + 1.0 / 5040.0;
  ps = ps * z - 1.0 / 120.0;
  ps = ps * z + 1.0 / 6.0;
  const double sr = r - r * z * ps;  // r - r^3 (1/3! - r^2/5! + ...)
  double pc = 1.0 / 20922789888000.0;  // 1/16!
  pc = pc * z - 1.0 / 87178291200.0;
  pc = pc * z + 1.0 / 479001600.0;
  pc = pc * z - 1.0 / 3628800.0;
  pc = pc * z + 1.0 / 40320.0;
  pc = pc * z - 1.0 / 720.0;
  pc = pc * z + 1.0 / 24.0;
  pc = pc * z - 0.5;
  const double cr = 1.0 + z * pc;
  switch (int(int64_t(k) & 3)) {  // a = k pi/2 + r
    case 0: c = cr, s = sr; break;
    case 1: c = -sr, s = cr; break;
    case 2: c = -cr, s = -sr; break;
    default: c = sr, s = -cr; break;
  }
}

// Rotates (a, b) by the angle with cosine c and sine s, as the CPU body.
__device__ inline void rot(float& a, float& b, float c, float s) {
  const float x0 = a, x1 = b;
  a = x0 * c - x1 * s;
  b = x0 * s + x1 * c;
}

// Token t sits at pos[t], or pos0 + t when pos is null. VEC: float4 units of x (interleaved: d % 4
// == 0, two pairs per unit; halves: d % 8 == 0, one unit from each half). Dynamic shared memory:
// cos (half) then sin (half) floats.
template <bool INTERLEAVED, bool VEC>
__global__ void rope_kernel(float* __restrict__ x, const int32_t* __restrict__ pos, int64_t pos0, int64_t H, int64_t d,
                            float theta, float sign) {
  LA_DYNAMIC_SHARED(float, cs);
  // Within a token, 32-bit indices (H * d < 2^31): 64-bit divisions cost tens of instructions.
  const int64_t t = blockIdx.x;
  const int half = int(d / 2), hd = int(d);
  float* sn = cs + half;
  const double p = double(pos ? int64_t(pos[t]) : pos0 + t);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double c, sa;
    cos_sin(p * pow(double(theta), -double(2 * i) / double(d)), c, sa);
    cs[i] = float(c);
    sn[i] = sign * float(sa);
  }
  __syncthreads();
  float* xt = x + t * H * d;
  if (VEC && INTERLEAVED) {
    const int per_head = hd / 4, units = int(H) * per_head;  // unit k of a head: pairs 2k, 2k + 1
    for (int u = threadIdx.x; u < units; u += blockDim.x) {
      const int h = u / per_head, k = u - h * per_head;
      float4* v = reinterpret_cast<float4*>(xt + h * hd) + k;
      float4 e = *v;
      rot(e.x, e.y, cs[2 * k], sn[2 * k]);
      rot(e.z, e.w, cs[2 * k + 1], sn[2 * k + 1]);
      *v = e;
    }
  } else if (VEC) {
    const int per_head = half / 4, units = int(H) * per_head;  // unit k of a head: pairs 4k .. 4k + 3
    for (int u = threadIdx.x; u < units; u += blockDim.x) {
      const int h = u / per_head, k = u - h * per_head;
      float4* va = reinterpret_cast<float4*>(xt + h * hd) + k;
      float4* vb = reinterpret_cast<float4*>(xt + h * hd + half) + k;
      float4 a = *va, b = *vb;
      const float4 c = reinterpret_cast<const float4*>(cs)[k], s = reinterpret_cast<const float4*>(sn)[k];
      rot(a.x, b.x, c.x, s.x);
      rot(a.y, b.y, c.y, s.y);
      rot(a.z, b.z, c.z, s.z);
      rot(a.w, b.w, c.w, s.w);
      *va = a;
      *vb = b;
    }
  } else {
    const int pairs = int(H) * half;
    for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
      const int h = j / half, i = j - h * half;
      float* v = xt + h * hd;
      float* a = INTERLEAVED ? v + 2 * i : v + i;
      float* b = INTERLEAVED ? v + 2 * i + 1 : v + i + half;
      rot(*a, *b, cs[i], sn[i]);
    }
  }
}

void launch_rope(float* x, const int32_t* pos, int64_t pos0, int64_t T, int64_t H, int64_t d, float theta,
                 bool interleaved, float sign) {
  const int64_t half = d / 2;
  if (T <= 0 || H <= 0 || half <= 0) return;
  // The float4 paths need every head's units aligned: x aligned and d a multiple of 4 (8 for halves,
  // whose sine table at cs + half must be 16-byte aligned too).
  const bool vec = aligned16(x) && (interleaved ? d % 4 == 0 : d % 8 == 0);
  const int64_t units = vec ? H * d / 4 : H * half;
  const unsigned threads = unsigned(std::min<int64_t>(kMaxThreads, std::max<int64_t>(32, (units + 31) / 32 * 32)));
  const size_t shared = size_t(2 * half) * sizeof(float);  // under the default 48 KiB for any d < 12288
  if (interleaved) {
    if (vec)
      LA_LAUNCH(unsigned(T), threads, shared, rope_kernel<true, true>)(x, pos, pos0, H, d, theta, sign);
    else
      LA_LAUNCH(unsigned(T), threads, shared, rope_kernel<true, false>)(x, pos, pos0, H, d, theta, sign);
  } else {
    if (vec)
      LA_LAUNCH(unsigned(T), threads, shared, rope_kernel<false, true>)(x, pos, pos0, H, d, theta, sign);
    else
      LA_LAUNCH(unsigned(T), threads, shared, rope_kernel<false, false>)(x, pos, pos0, H, d, theta, sign);
  }
  check_launch("rope");
}

}  // namespace

void rope_forward(float* x, int64_t T, int64_t H, int64_t d, int64_t pos0, float theta, bool interleaved) {
  launch_rope(x, nullptr, pos0, T, H, d, theta, interleaved, 1.f);
}

void rope_at(float* x, const int32_t* pos, int64_t N, int64_t H, int64_t d, float theta, bool interleaved,
             bool inverse) {
  launch_rope(x, pos, 0, N, H, d, theta, interleaved, inverse ? -1.f : 1.f);
}

}  // namespace la::cuda
