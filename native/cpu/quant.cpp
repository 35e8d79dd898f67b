// Frozen-weight products with block-quantized weights (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K; core/quant.h),
// which stay quantized in memory. Decoding (M = 1) uses llama.cpp's scheme for every type: x is
// rounded to int8 once per product (per 32 values for Q8_0 / Q4_0, per 256 for the K types) and
// each block's dot is integer arithmetic, scaled once per block in float. Few rows: each weight
// row is dequantised into a buffer in L1 and dotted with the rows of x, one pass over the (4-8x
// smaller) weights on all cores. Many rows (prompts, training): a panel of weight rows is
// dequantised to f32 and handed to sgemm, as the bf16 path. Each kernel has a plain body and
// AVX2 and AVX-512 (VNNI) bodies, chosen by simd_level() (simd.h); the integer sums are the same
// in all three, so they differ only in the order of the float sums, and the dequantisation is
// bit for bit the same (the reference arithmetic of quant.h, never fused into an FMA).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/blas.h"
#include "../core/parallel.h"
#include "../core/quant.h"
#include "kernels.h"
#include "simd.h"

#include "../core/x86.h"

namespace la::cpu {
namespace {

using quant_detail::half_at;

constexpr int64_t kSmallM = 8;  // up to this many rows, one pass over w beats sgemm (as matmul.cpp)

// ---- decoding: x as int8 -----------------------------------------------------------------------
// x rounded to int8 per block of qb values (32 for Q8_0 / Q4_0, 256 for the K types, as llama.cpp's
// q8_0 / q8_K): scale xd = amax / 127, q = round to nearest (x / xd). The integer sums of q per 16
// and per 32 values serve the offsets of the formats (the K types' mins, Q6_K's -32, Q4_0's -8).
// The only error beyond f32 rounding is x's int8 rounding: |error| <= sum_k |w_k| * xd(k) / 2
// (test/backend-quant.test.ts checks this bound).
struct Xq {
  std::vector<int8_t> q;       // (K)
  std::vector<int8_t> qp;      // (K) the AVX-512 K-type order: per 256, 32-value chunks 0 2 1 3 4 6 5 7
                               // (the low then the high nibbles of 64 packed bytes)
  std::vector<float> d;        // (K / qb)
  std::vector<int16_t> sum16;  // (K / 16) |sum| <= 16 * 127
  std::vector<int16_t> sum32;  // (K / 32) |sum| <= 32 * 127
};
void quantize_x_plain(const float* x, int64_t K, int64_t qb, Xq& out) {
  out.q.resize(size_t(K));
  out.d.resize(size_t(K / qb));
  out.sum16.resize(size_t(K / 16));
  out.sum32.resize(size_t(K / 32));
  for (int64_t b = 0; b < K / qb; b++) {
    float amax = 0;
    for (int64_t j = 0; j < qb; j++) amax = std::max(amax, std::fabs(x[qb * b + j]));
    float d = amax / 127.f, id = d > 0 ? 1.f / d : 0.f;
    for (int64_t j = 0; j < qb; j++) out.q[size_t(qb * b + j)] = int8_t(std::nearbyint(x[qb * b + j] * id));
    out.d[size_t(b)] = d;
  }
  for (int64_t s = 0; s < K / 16; s++) {
    int32_t sum = 0;
    for (int j = 0; j < 16; j++) sum += out.q[size_t(16 * s + j)];
    out.sum16[size_t(s)] = int16_t(sum);
  }
  for (int64_t s = 0; s < K / 32; s++) out.sum32[size_t(s)] = int16_t(out.sum16[size_t(2 * s)] + out.sum16[size_t(2 * s + 1)]);
}

// The 8 scales (sc[0..7]) and 8 mins (sc[8..15]) of a Q4_K / Q5_K block from its 12 packed bytes
// at once, as 32-bit words (the layout of scale_min_k4: sub-blocks 0-3 in the low 6 bits of bytes
// 0-3 / 4-7; 4-7 in the nibbles of bytes 8-11 with their top 2 bits in the top bits of bytes 0-7).
inline void unpack_scales_k4(const uint8_t* packed, uint8_t sc[16]) {
  uint32_t u[3], sm[4];
  std::memcpy(u, packed, 12);
  sm[0] = u[0] & 0x3f3f3f3fu;                                                // scales 0-3
  sm[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);         // scales 4-7
  sm[2] = u[1] & 0x3f3f3f3fu;                                                // mins 0-3
  sm[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);  // mins 4-7
  std::memcpy(sc, sm, 16);
}

// The plain bodies: one block's integer dot, times the block's scales, in float.
float dot_q8_0_plain(const Xq& x, const uint8_t* row, int64_t K) {
  float acc = 0;
  for (int64_t b = 0; b < K / 32; b++) {
    const uint8_t* blk = row + b * 34;
    const int8_t* xq = x.q.data() + 32 * b;
    int32_t s = 0;
    for (int j = 0; j < 32; j++) s += int8_t(blk[2 + j]) * xq[j];
    acc += half_at(blk) * x.d[size_t(b)] * float(s);
  }
  return acc;
}

float dot_q4_0_plain(const Xq& x, const uint8_t* row, int64_t K) {
  float acc = 0;
  for (int64_t b = 0; b < K / 32; b++) {
    const uint8_t* blk = row + b * 18;
    const int8_t* xq = x.q.data() + 32 * b;
    int32_t s = 0;
    for (int j = 0; j < 16; j++) s += ((blk[2 + j] & 0xF) - 8) * xq[j] + ((blk[2 + j] >> 4) - 8) * xq[j + 16];
    acc += half_at(blk) * x.d[size_t(b)] * float(s);
  }
  return acc;
}

template <bool Five>
float dot_q45_k_plain(const Xq& x, const uint8_t* row, int64_t K) {
  float acc = 0, mins = 0;
  const int64_t bb = Five ? 176 : 144;
  for (int64_t b = 0; b < K / 256; b++) {
    const uint8_t* blk = row + b * bb;
    const uint8_t* qh = blk + 16;
    const uint8_t* q = blk + (Five ? 48 : 16);
    const int8_t* xq = x.q.data() + 256 * b;
    uint8_t sc[16];
    unpack_scales_k4(blk + 4, sc);
    int32_t isum = 0, msum = 0;
    for (int i = 0; i < 4; i++) {
      int32_t s1 = 0, s2 = 0;
      for (int l = 0; l < 32; l++) {
        int lo = q[32 * i + l] & 0xF, hi = q[32 * i + l] >> 4;
        if (Five) {
          lo |= ((qh[l] >> (2 * i)) & 1) << 4;
          hi |= ((qh[l] >> (2 * i + 1)) & 1) << 4;
        }
        s1 += lo * xq[64 * i + l];
        s2 += hi * xq[64 * i + 32 + l];
      }
      isum += sc[2 * i] * s1 + sc[2 * i + 1] * s2;
    }
    for (int j = 0; j < 8; j++) msum += sc[8 + j] * x.sum32[size_t(8 * b + j)];
    acc += half_at(blk) * x.d[size_t(b)] * float(isum);
    mins += half_at(blk + 2) * x.d[size_t(b)] * float(msum);
  }
  return acc - mins;
}

float dot_q6_k_plain(const Xq& x, const uint8_t* row, int64_t K) {
  float acc = 0;
  for (int64_t b = 0; b < K / 256; b++) {
    const uint8_t* blk = row + b * 210;
    const uint8_t *ql = blk, *qh = blk + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
    const int8_t* xq = x.q.data() + 256 * b;
    int32_t sums[16] = {0};  // per sub-block of 16: sum q * x, q in 0..63
    for (int h = 0; h < 2; h++)
      for (int s = 0; s < 4; s++)  // value 128h + 32s + l: a nibble of ql and 2 bits of qh
        for (int l = 0; l < 32; l++) {
          int q = ((ql[64 * h + l + 32 * (s & 1)] >> (4 * (s >> 1))) & 0xF) | (((qh[32 * h + l] >> (2 * s)) & 3) << 4);
          sums[8 * h + 2 * s + l / 16] += q * xq[128 * h + 32 * s + l];
        }
    int32_t isum = 0;
    for (int j = 0; j < 16; j++) isum += sc[j] * (sums[j] - 32 * x.sum16[size_t(16 * b + j)]);
    acc += half_at(blk + 208) * x.d[size_t(b)] * float(isum);
  }
  return acc;
}

#ifdef LA_X86
#define LA_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))

// An fp16 scale by the F16C instruction: exact, as quant_detail::half_at (scales are finite:
// checked at load), without its branches.
LA_TARGET_AVX2 inline float half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

LA_TARGET_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// unpack_scales_k4 into a register: bytes 0-7 the scales, 8-15 the mins (no round trip through
// memory, whose 4-byte stores read back as 8 would stall store forwarding).
LA_TARGET_AVX2 inline __m128i scales_k4(const uint8_t* packed) {
  uint32_t u[3];
  std::memcpy(u, packed, 12);
  return _mm_setr_epi32(int(u[0] & 0x3f3f3f3fu), int((u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4)),
                        int(u[1] & 0x3f3f3f3fu), int(((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4)));
}
// sum_j m_j * (sum of x's int8 values in sub-block j of 32), from the mins in bytes 8-15 of sm.
LA_TARGET_AVX2 inline int32_t mins_dot(__m128i sm, const int16_t* sum32) {
  __m128i p = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_srli_si128(sm, 8)), _mm_loadu_si128(reinterpret_cast<const __m128i*>(sum32)));
  p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0x4e));
  p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0xb1));
  return _mm_cvtsi128_si32(p);
}

// The 5th bit of the values of pair i of a Q5_K block (bit `shift` of each qh byte), as 16.
LA_TARGET_AVX2 inline __m256i fifth_bit(__m256i qh, int shift) {
  __m256i bit = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(shift)), _mm256_set1_epi8(1));
  return _mm256_slli_epi16(bit, 4);
}

// AVX2: per sub-block u8 values x s8 x (maddubs) summed in pairs with the sub-block's scale as
// the multiplier (madd), accumulated in i32; then one float product per block.
template <bool Five>
LA_TARGET_AVX2 inline __attribute__((always_inline)) float dot_q45_k_avx2(const Xq& x, const uint8_t* row, int64_t K) {
  __m256 acc = _mm256_setzero_ps();
  const __m256i low = _mm256_set1_epi8(0x0F);
  const int64_t bb = Five ? 176 : 144;
  float mins = 0;
  for (int64_t b = 0; b < K / 256; b++) {
    const uint8_t* blk = row + b * bb;
    const uint8_t* qs = blk + (Five ? 48 : 16);
    const float d = half(blk) * x.d[size_t(b)], dmin = half(blk + 2) * x.d[size_t(b)];
    const int8_t* xq = x.q.data() + b * 256;
    const __m128i sm = scales_k4(blk + 4);
    const __m256i scw = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));  // the 8 scales as words, twice
    __m256i qh = Five ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16)) : _mm256_setzero_si256();
    __m256i isum = _mm256_setzero_si256();
    for (int i = 0; i < 4; i++) {
      __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * i));
      __m256i lo = _mm256_and_si256(q, low), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
      if (Five) {
        lo = _mm256_or_si256(lo, fifth_bit(qh, 2 * i));
        hi = _mm256_or_si256(hi, fifth_bit(qh, 2 * i + 1));
      }
      __m256i p1 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 64 * i)));
      __m256i p2 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 64 * i + 32)));
      isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p1, _mm256_shuffle_epi8(scw, _mm256_set1_epi16(short(0x0101 * 4 * i + 0x0100)))));
      isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p2, _mm256_shuffle_epi8(scw, _mm256_set1_epi16(short(0x0101 * (4 * i + 2) + 0x0100)))));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(isum), acc);
    mins += dmin * float(mins_dot(sm, x.sum32.data() + b * 8));
  }
  return hsum8(acc) - mins;
}

// sum over pairs of w * x for signed w: maddubs takes one unsigned operand, so |w| and x with w's
// sign (w = -128 gives 128 * -x, still exact: |x| <= 127).
LA_TARGET_AVX2 inline __m256i dot_i8_avx2(__m256i w, __m256i x) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)), _mm256_set1_epi16(1));
}

LA_TARGET_AVX2 inline __attribute__((always_inline)) float dot_q8_0_avx2(const Xq& x, const uint8_t* row, int64_t K) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < K / 32; b++) {
    const uint8_t* blk = row + b * 34;
    __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
    __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q.data() + 32 * b));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half(blk) * x.d[size_t(b)]), _mm256_cvtepi32_ps(dot_i8_avx2(w, xv)), acc);
  }
  return hsum8(acc);
}

// The 32 values of a Q4_0 block in order as signed bytes (q - 8): low nibbles, then high.
LA_TARGET_AVX2 inline __m256i q4_0_values(const uint8_t* blk) {
  __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
  __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(q), _mm_srli_epi16(q, 4), 1);
  return _mm256_sub_epi8(_mm256_and_si256(v, _mm256_set1_epi8(0x0F)), _mm256_set1_epi8(8));
}

LA_TARGET_AVX2 inline __attribute__((always_inline)) float dot_q4_0_avx2(const Xq& x, const uint8_t* row, int64_t K) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < K / 32; b++) {
    const uint8_t* blk = row + b * 18;
    __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q.data() + 32 * b));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half(blk) * x.d[size_t(b)]), _mm256_cvtepi32_ps(dot_i8_avx2(q4_0_values(blk), xv)), acc);
  }
  return hsum8(acc);
}

// Q6_K: values 0..63 (u8) x s8 x per sub-block of 16, times the int8 scale; the -32 offset as
// 32 * sum_j sc_j * (sum of x in sub-block j), subtracted in integers.
LA_TARGET_AVX2 inline __attribute__((always_inline)) float dot_q6_k_avx2(const Xq& x, const uint8_t* row, int64_t K) {
  __m256 acc = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
  for (int64_t b = 0; b < K / 256; b++) {
    const uint8_t* blk = row + b * 210;
    const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
    const int8_t* xq = x.q.data() + b * 256;
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
      __m256i ql0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * h));
      __m256i ql1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * h + 32));
      __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h));
      __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4)),
          _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4)),
      };
      for (int s = 0; s < 4; s++) {
        __m256i p = _mm256_maddubs_epi16(q[s], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 128 * h + 32 * s)));
        __m256i scw = _mm256_setr_m128i(_mm_set1_epi16(sc[8 * h + 2 * s]), _mm_set1_epi16(sc[8 * h + 2 * s + 1]));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, scw));
      }
    }
    __m256i corr = _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc))),
                                     _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.sum16.data() + 16 * b)));
    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(corr, 5));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half(blk + 208) * x.d[size_t(b)]), _mm256_cvtepi32_ps(isum), acc);
  }
  return hsum8(acc);
}

// ---- AVX-512 (VNNI): 64 values per instruction; vpdpbusd sums u8 x s8 in fours into i32,
// vpdpwssd multiplies the i16 pair sums of maddubs by the sub-block scales and accumulates.
LA_TARGET_AVX512 inline __m512i dot_i8_avx512(__m512i w, __m512i x) {
  const __m512i zero = _mm512_setzero_si512();
  return _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(w), _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), zero, x));
}
LA_TARGET_AVX512 inline __m256i dot_i8_avx512_256(__m256i w, __m256i x) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
}
LA_TARGET_AVX512 inline __m512i join(__m256i lo, __m256i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}
// 16 lanes: the first 8 times a, the last 8 times b.
LA_TARGET_AVX512 inline __m512 halves(float a, float b) {
  return _mm512_mask_blend_ps(__mmask16(0xFF00), _mm512_set1_ps(a), _mm512_set1_ps(b));
}

// Two blocks of 32 per step (a zmm of values against 64 x); an odd last block in 256 bits.
template <bool Q4>
LA_TARGET_AVX512 inline __m256i values(const uint8_t* blk) {  // a block's 32 values as signed bytes
  return Q4 ? q4_0_values(blk) : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
}
template <bool Q4>
LA_TARGET_AVX512 inline __attribute__((always_inline)) float dot_q8_0_q4_0_avx512(const Xq& x, const uint8_t* row, int64_t K) {
  const int64_t bb = Q4 ? 18 : 34, nb = K / 32;
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    const uint8_t* blk = row + b * bb;
    __m512i p0 = dot_i8_avx512(join(values<Q4>(blk), values<Q4>(blk + bb)), _mm512_loadu_si512(x.q.data() + 32 * b));
    __m512i p1 = dot_i8_avx512(join(values<Q4>(blk + 2 * bb), values<Q4>(blk + 3 * bb)), _mm512_loadu_si512(x.q.data() + 32 * b + 64));
    const float* xd = x.d.data() + b;
    acc0 = _mm512_fmadd_ps(halves(half(blk) * xd[0], half(blk + bb) * xd[1]), _mm512_cvtepi32_ps(p0), acc0);
    acc1 = _mm512_fmadd_ps(halves(half(blk + 2 * bb) * xd[2], half(blk + 3 * bb) * xd[3]), _mm512_cvtepi32_ps(p1), acc1);
  }
  for (; b + 2 <= nb; b += 2) {
    const uint8_t* blk = row + b * bb;
    __m512i p = dot_i8_avx512(join(values<Q4>(blk), values<Q4>(blk + bb)), _mm512_loadu_si512(x.q.data() + 32 * b));
    acc0 = _mm512_fmadd_ps(halves(half(blk) * x.d[size_t(b)], half(blk + bb) * x.d[size_t(b + 1)]), _mm512_cvtepi32_ps(p), acc0);
  }
  float r = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  if (b < nb) {
    const uint8_t* blk = row + b * bb;
    __m256i p = dot_i8_avx512_256(values<Q4>(blk), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q.data() + 32 * b)));
    r += hsum8(_mm256_mul_ps(_mm256_set1_ps(half(blk) * x.d[size_t(b)]), _mm256_cvtepi32_ps(p)));
  }
  return r;
}

// Q4_K / Q5_K: 64 packed bytes (sub-blocks 4g .. 4g + 3) per load: their low nibbles are
// sub-blocks 4g and 4g + 2, the high ones 4g + 1 and 4g + 3, against x in that order (Xq::qp);
// the scales as 16-bit words, 16 of each sub-block's.
template <bool Five>
LA_TARGET_AVX512 inline __attribute__((always_inline)) float dot_q45_k_avx512(const Xq& x, const uint8_t* row, int64_t K) {
  const int64_t bb = Five ? 176 : 144;
  const __m512i low = _mm512_set1_epi8(0x0F);
  const __mmask32 upper = __mmask32(0xFFFF0000u);
  __m512i pick[4], shift[4];  // [lo of g=0, hi of g=0, lo of g=1, hi of g=1]: scale j (words < 16), j + 2
  for (int k = 0; k < 4; k++) {
    const int j = 4 * (k / 2) + k % 2;
    pick[k] = _mm512_mask_blend_epi16(upper, _mm512_set1_epi16(short(j)), _mm512_set1_epi16(short(j + 2)));
    shift[k] = _mm512_mask_blend_epi16(upper, _mm512_set1_epi16(short(j)), _mm512_set1_epi16(short(j + 2)));
  }
  __m512 acc = _mm512_setzero_ps();
  float mins = 0;
  for (int64_t b = 0; b < K / 256; b++) {
    const uint8_t* blk = row + b * bb;
    const uint8_t* qs = blk + (Five ? 48 : 16);
    const int8_t* xq = x.qp.data() + b * 256;
    const __m128i sm = scales_k4(blk + 4);
    const __m512i scw = _mm512_castsi128_si512(_mm_cvtepu8_epi16(sm));
    __m512i qh = Five ? _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16))) : _mm512_setzero_si512();
    __m512i isum = _mm512_setzero_si512();
    for (int g = 0; g < 2; g++) {
      __m512i q = _mm512_loadu_si512(qs + 64 * g);
      __m512i v[2] = {_mm512_and_si512(q, low), _mm512_and_si512(_mm512_srli_epi16(q, 4), low)};
      for (int h = 0; h < 2; h++) {
        const int k = 2 * g + h;
        if (Five)  // the 5th bit: bit j of each qh byte for sub-block j, as 16
          v[h] = _mm512_or_si512(v[h], _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, shift[k]), _mm512_set1_epi8(1)), 4));
        __m512i p = _mm512_maddubs_epi16(v[h], _mm512_loadu_si512(xq + 64 * k));
        isum = _mm512_dpwssd_epi32(isum, p, _mm512_permutexvar_epi16(pick[k], scw));
      }
    }
    acc = _mm512_fmadd_ps(_mm512_set1_ps(half(blk) * x.d[size_t(b)]), _mm512_cvtepi32_ps(isum), acc);
    mins += half(blk + 2) * x.d[size_t(b)] * float(mins_dot(sm, x.sum32.data() + b * 8));
  }
  return _mm512_reduce_add_ps(acc) - mins;
}

// Q6_K: per half of 128 values, ql's 64 bytes and qh (and qh >> 2) as one zmm each give values
// 0-63 (low nibbles) and 64-127 (high nibbles) of the half in order: 4 sub-blocks of 16 per zmm.
LA_TARGET_AVX512 inline __attribute__((always_inline)) float dot_q6_k_avx512(const Xq& x, const uint8_t* row, int64_t K) {
  const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(3);
  __m512i pick[4];  // word k of group g: scale 4g + k / 8
  for (int g = 0; g < 4; g++) {
    alignas(64) int16_t idx[32];
    for (int k = 0; k < 32; k++) idx[k] = int16_t(4 * g + k / 8);
    pick[g] = _mm512_load_si512(idx);
  }
  __m512 acc = _mm512_setzero_ps();
  for (int64_t b = 0; b < K / 256; b++) {
    const uint8_t* blk = row + b * 210;
    const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
    const int8_t* xq = x.q.data() + b * 256;
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sc));
    const __m512i scw = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(sc8));
    __m512i isum = _mm512_setzero_si512();
    for (int h = 0; h < 2; h++) {
      __m512i ql = _mm512_loadu_si512(blk + 64 * h);
      __m256i qh8 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h));
      __m512i qh = join(qh8, _mm256_srli_epi16(qh8, 2));
      __m512i qa = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16(_mm512_and_si512(qh, m2), 4));
      __m512i qb = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                   _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, 4), m2), 4));
      isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(qa, _mm512_loadu_si512(xq + 128 * h)),
                                 _mm512_permutexvar_epi16(pick[2 * h], scw));
      isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(qb, _mm512_loadu_si512(xq + 128 * h + 64)),
                                 _mm512_permutexvar_epi16(pick[2 * h + 1], scw));
    }
    __m256i corr = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.sum16.data() + 16 * b)));
    isum = _mm512_sub_epi32(isum, _mm512_zextsi256_si512(_mm256_slli_epi32(corr, 5)));
    acc = _mm512_fmadd_ps(_mm512_set1_ps(half(blk + 208) * x.d[size_t(b)]), _mm512_cvtepi32_ps(isum), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// The bit unpacking both dequantisation bodies share (SSE2, so it inlines into either).
// Q4_K / Q5_K sub-block pair i, half h: 16 bytes of nibbles -> lo (values 64i + 16h ..) and hi
// (values 64i + 32 + 16h ..) as unsigned bytes, with Q5_K's fifth bits from qh.
inline void q45_nibbles(const uint8_t* q, const uint8_t* qh, int i, int h, bool five, __m128i& lo, __m128i& hi) {
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 32 * i + 16 * h));
  lo = _mm_and_si128(v, m4);
  hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
  if (!five) return;
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qh + 16 * h)), one = _mm_set1_epi8(1);
  lo = _mm_or_si128(lo, _mm_slli_epi16(_mm_and_si128(_mm_srl_epi16(bits, _mm_cvtsi32_si128(2 * i)), one), 4));
  hi = _mm_or_si128(hi, _mm_slli_epi16(_mm_and_si128(_mm_srl_epi16(bits, _mm_cvtsi32_si128(2 * i + 1)), one), 4));
}

// Q6_K half h, column c: the four groups s of 16 values (128h + 32s + 16c ..) as unsigned 6-bit bytes
inline void q6_groups(const uint8_t* b, int h, int c, __m128i q[4]) {
  const __m128i m4 = _mm_set1_epi8(0x0F), m2 = _mm_set1_epi8(3);
  auto load16 = [](const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); };
  const __m128i ql0 = load16(b + 64 * h + 16 * c), ql1 = load16(b + 64 * h + 32 + 16 * c);
  const __m128i qh = load16(b + 128 + 32 * h + 16 * c);
  q[0] = _mm_or_si128(_mm_and_si128(ql0, m4), _mm_slli_epi16(_mm_and_si128(qh, m2), 4));
  q[1] = _mm_or_si128(_mm_and_si128(ql1, m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(qh, 2), m2), 4));
  q[2] = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(ql0, 4), m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(qh, 4), m2), 4));
  q[3] = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(ql1, 4), m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(qh, 6), m2), 4));
}

// ---- AVX2 dequantisation, bit for bit quant.h's: the same float products and differences, kept
// apart (opaque8) so that no compiler fuses them into an FMA; 8 values per instruction.
LA_TARGET_AVX2 inline __m256 opaque8(__m256 v) {
  __asm__("" : "+x"(v));
  return v;
}
LA_TARGET_AVX2 inline __m256 i8x8_to_ps(__m128i b) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)); }  // bytes 0-7
LA_TARGET_AVX2 inline __m256 u8x8_to_ps(__m128i b) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)); }

LA_TARGET_AVX2 void dequant_block_avx2(DType t, const uint8_t* b, float* out) {
  const __m128i m4 = _mm_set1_epi8(0x0F);
  auto load = [](const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); };
  switch (t) {
    case DType::Q8_0: {
      const __m256 d = _mm256_set1_ps(half(b));
      for (int j = 0; j < 2; j++) {
        __m128i q = load(b + 2 + 16 * j);
        _mm256_storeu_ps(out + 16 * j, _mm256_mul_ps(i8x8_to_ps(q), d));
        _mm256_storeu_ps(out + 16 * j + 8, _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(q, 8)), d));
      }
      return;
    }
    case DType::Q4_0: {
      const __m256 d = _mm256_set1_ps(half(b));
      const __m128i q = load(b + 2), eight = _mm_set1_epi8(8);
      const __m128i lo = _mm_sub_epi8(_mm_and_si128(q, m4), eight), hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), eight);
      _mm256_storeu_ps(out, _mm256_mul_ps(i8x8_to_ps(lo), d));
      _mm256_storeu_ps(out + 8, _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(lo, 8)), d));
      _mm256_storeu_ps(out + 16, _mm256_mul_ps(i8x8_to_ps(hi), d));
      _mm256_storeu_ps(out + 24, _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(hi, 8)), d));
      return;
    }
    case DType::Q4_K:
    case DType::Q5_K: {
      const bool five = t == DType::Q5_K;
      const float d = half(b), dmin = half(b + 2);
      const uint8_t* qh = b + 16;
      const uint8_t* q = b + (five ? 48 : 16);
      uint8_t sc[16];
      unpack_scales_k4(b + 4, sc);
      for (int i = 0; i < 4; i++) {
        const __m256 d1 = _mm256_set1_ps(d * float(sc[2 * i])), m1 = _mm256_set1_ps(dmin * float(sc[8 + 2 * i]));
        const __m256 d2 = _mm256_set1_ps(d * float(sc[2 * i + 1])), m2 = _mm256_set1_ps(dmin * float(sc[8 + 2 * i + 1]));
        for (int half16 = 0; half16 < 2; half16++) {
          __m128i lo, hi;
          q45_nibbles(q, qh, i, half16, five, lo, hi);
          float* o = out + 64 * i + 16 * half16;
          _mm256_storeu_ps(o, _mm256_sub_ps(opaque8(_mm256_mul_ps(d1, u8x8_to_ps(lo))), m1));
          _mm256_storeu_ps(o + 8, _mm256_sub_ps(opaque8(_mm256_mul_ps(d1, u8x8_to_ps(_mm_srli_si128(lo, 8)))), m1));
          _mm256_storeu_ps(o + 32, _mm256_sub_ps(opaque8(_mm256_mul_ps(d2, u8x8_to_ps(hi))), m2));
          _mm256_storeu_ps(o + 40, _mm256_sub_ps(opaque8(_mm256_mul_ps(d2, u8x8_to_ps(_mm_srli_si128(hi, 8)))), m2));
        }
      }
      return;
    }
    case DType::Q6_K: {
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
      const float d = half(b + 208);
      const __m128i k32 = _mm_set1_epi8(32);
      for (int h = 0; h < 2; h++)
        for (int c = 0; c < 2; c++) {  // values 128h + 32s + 16c + l (l < 16) of the 4 groups s
          __m128i q[4];
          q6_groups(b, h, c, q);
          for (int s = 0; s < 4; s++) {
            const __m256 ds = _mm256_set1_ps(d * float(sc[8 * h + 2 * s + c]));
            const __m128i v = _mm_sub_epi8(q[s], k32);
            float* o = out + 128 * h + 32 * s + 16 * c;
            _mm256_storeu_ps(o, _mm256_mul_ps(ds, i8x8_to_ps(v)));
            _mm256_storeu_ps(o + 8, _mm256_mul_ps(ds, i8x8_to_ps(_mm_srli_si128(v, 8))));
          }
        }
      return;
    }
    default: return;
  }
}

// ---- AVX-512 dequantisation, bit for bit quant.h's: the same float products and differences,
// kept apart (opaque) so that no compiler fuses them into an FMA.
LA_TARGET_AVX512 inline __m512 opaque(__m512 v) {
  __asm__("" : "+v"(v));
  return v;
}
LA_TARGET_AVX512 inline __m512 i8_to_ps(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }
LA_TARGET_AVX512 inline __m512 u8_to_ps(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)); }
LA_TARGET_AVX512 inline __m128i load128(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

LA_TARGET_AVX512 void dequant_block_avx512(DType t, const uint8_t* b, float* out) {
  const __m128i m4 = _mm_set1_epi8(0x0F);
  switch (t) {
    case DType::Q8_0: {
      const __m512 d = _mm512_set1_ps(half(b));
      _mm512_storeu_ps(out, _mm512_mul_ps(i8_to_ps(load128(b + 2)), d));
      _mm512_storeu_ps(out + 16, _mm512_mul_ps(i8_to_ps(load128(b + 18)), d));
      return;
    }
    case DType::Q4_0: {
      const __m512 d = _mm512_set1_ps(half(b));
      const __m128i q = load128(b + 2), eight = _mm_set1_epi8(8);
      _mm512_storeu_ps(out, _mm512_mul_ps(i8_to_ps(_mm_sub_epi8(_mm_and_si128(q, m4), eight)), d));
      _mm512_storeu_ps(out + 16, _mm512_mul_ps(i8_to_ps(_mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), eight)), d));
      return;
    }
    case DType::Q4_K:
    case DType::Q5_K: {
      const bool five = t == DType::Q5_K;
      const float d = half(b), dmin = half(b + 2);
      const uint8_t* qh = b + 16;
      const uint8_t* q = b + (five ? 48 : 16);
      uint8_t sc[16];
      unpack_scales_k4(b + 4, sc);
      for (int i = 0; i < 4; i++) {
        const __m512 d1 = _mm512_set1_ps(d * float(sc[2 * i])), m1 = _mm512_set1_ps(dmin * float(sc[8 + 2 * i]));
        const __m512 d2 = _mm512_set1_ps(d * float(sc[2 * i + 1])), m2 = _mm512_set1_ps(dmin * float(sc[8 + 2 * i + 1]));
        for (int half = 0; half < 2; half++) {
          __m128i lo, hi;
          q45_nibbles(q, qh, i, half, five, lo, hi);
          _mm512_storeu_ps(out + 64 * i + 16 * half, _mm512_sub_ps(opaque(_mm512_mul_ps(d1, u8_to_ps(lo))), m1));
          _mm512_storeu_ps(out + 64 * i + 32 + 16 * half, _mm512_sub_ps(opaque(_mm512_mul_ps(d2, u8_to_ps(hi))), m2));
        }
      }
      return;
    }
    case DType::Q6_K: {
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
      const float d = half(b + 208);
      const __m128i k32 = _mm_set1_epi8(32);
      for (int h = 0; h < 2; h++)
        for (int c = 0; c < 2; c++) {  // values 128h + 32s + 16c + l (l < 16) of the 4 groups s
          __m128i q[4];
          q6_groups(b, h, c, q);
          for (int s = 0; s < 4; s++) {
            const __m512 ds = _mm512_set1_ps(d * float(sc[8 * h + 2 * s + c]));
            _mm512_storeu_ps(out + 128 * h + 32 * s + 16 * c, _mm512_mul_ps(ds, i8_to_ps(_mm_sub_epi8(q[s], k32))));
          }
        }
      return;
    }
    default: return;
  }
}
#endif

#ifdef LA_X86
// quantize_x's values with vector instructions: the same max, the same scale, the same product
// rounded to nearest even (cvtps: the default rounding mode, as nearbyint), the same sums.
LA_TARGET_AVX2 void quantize_x_avx2(const float* x, int64_t K, int64_t qb, Xq& out) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t b = 0; b < K / qb; b++) {
    const float* xb = x + qb * b;
    __m256 m = _mm256_setzero_ps();
    for (int64_t j = 0; j < qb; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + j)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float d = _mm_cvtss_f32(h) / 127.f, id = d > 0 ? 1.f / d : 0.f;
    out.d[size_t(b)] = d;
    for (int64_t j = 0; j < qb; j += 16) {
      __m256i v0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + j), _mm256_set1_ps(id)));
      __m256i v1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 8), _mm256_set1_ps(id)));
      __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(v0, v1), 0xD8);  // 16 x i16 in order
      __m128i q = _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));  // in order
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out.q.data() + qb * b + j), q);
      __m256i s = _mm256_add_epi32(v0, v1);
      __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
      t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
      t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
      out.sum16[size_t((qb * b + j) / 16)] = int16_t(_mm_cvtsi128_si32(t));
    }
  }
}
LA_TARGET_AVX512 void quantize_x_avx512(const float* x, int64_t K, int64_t qb, Xq& out) {
  for (int64_t b = 0; b < K / qb; b++) {
    const float* xb = x + qb * b;
    __m512 m = _mm512_setzero_ps();
    for (int64_t j = 0; j < qb; j += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(xb + j)));
    const float d = _mm512_reduce_max_ps(m) / 127.f, id = d > 0 ? 1.f / d : 0.f;
    out.d[size_t(b)] = d;
    for (int64_t j = 0; j < qb; j += 16) {
      __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + j), _mm512_set1_ps(id)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out.q.data() + qb * b + j), _mm512_cvtsepi32_epi8(v));
      out.sum16[size_t((qb * b + j) / 16)] = int16_t(_mm512_reduce_add_epi32(v));
    }
  }
}
#endif

// x as int8 per qb values (Xq), by the chosen instruction set (the same values from each).
void quantize_x(const float* x, int64_t K, int64_t qb, Xq& out) {
#ifdef LA_X86
  const Simd level = simd_level();
  if (level != Simd::Scalar) {
    out.q.resize(size_t(K));
    out.d.resize(size_t(K / qb));
    out.sum16.resize(size_t(K / 16));
    out.sum32.resize(size_t(K / 32));
    if (level == Simd::Avx512) quantize_x_avx512(x, K, qb, out);
    else quantize_x_avx2(x, K, qb, out);
    for (int64_t s = 0; s < K / 32; s++) out.sum32[size_t(s)] = int16_t(out.sum16[size_t(2 * s)] + out.sum16[size_t(2 * s + 1)]);
    if (level == Simd::Avx512 && qb == 256) {
      out.qp.resize(size_t(K));
      static const int order[8] = {0, 2, 1, 3, 4, 6, 5, 7};
      for (int64_t c = 0; c < K / 32; c++)
        std::memcpy(out.qp.data() + 32 * c, out.q.data() + 32 * ((c & ~int64_t(7)) + order[c & 7]), 32);
    }
    return;
  }
#endif
  quantize_x_plain(x, K, qb, out);
}

using DotQ = float (*)(const Xq&, const uint8_t*, int64_t);
// y[n] = the decode dot of weight row n for n in [n0, n1), rows rb bytes apart. The row loop is
// inside each instruction set's body (the dot inlined), so that its constants stay in registers:
// a row of K = 768 is only 3 blocks of 256.
using DotRows = void (*)(float* y, const Xq& x, const uint8_t* w, int64_t rb, int64_t K, int64_t n0, int64_t n1);
template <DotQ Dot>
void rows_plain(float* y, const Xq& x, const uint8_t* w, int64_t rb, int64_t K, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; n++) y[n] = Dot(x, w + n * rb, K);
}
#ifdef LA_X86
template <DotQ Dot>
LA_TARGET_AVX2 void rows_avx2(float* y, const Xq& x, const uint8_t* w, int64_t rb, int64_t K, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; n++) y[n] = Dot(x, w + n * rb, K);
}
template <DotQ Dot>
LA_TARGET_AVX512 void rows_avx512(float* y, const Xq& x, const uint8_t* w, int64_t rb, int64_t K, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; n++) y[n] = Dot(x, w + n * rb, K);
}
#endif

// The decode rows of dtype t for the chosen instruction set.
DotRows decode_rows(DType t) {
#ifdef LA_X86
  const Simd level = simd_level();
  const bool v512 = level == Simd::Avx512, v256 = level == Simd::Avx2;
  switch (t) {
    case DType::Q8_0: return v512 ? rows_avx512<dot_q8_0_q4_0_avx512<false>> : v256 ? rows_avx2<dot_q8_0_avx2> : rows_plain<dot_q8_0_plain>;
    case DType::Q4_0: return v512 ? rows_avx512<dot_q8_0_q4_0_avx512<true>> : v256 ? rows_avx2<dot_q4_0_avx2> : rows_plain<dot_q4_0_plain>;
    case DType::Q4_K: return v512 ? rows_avx512<dot_q45_k_avx512<false>> : v256 ? rows_avx2<dot_q45_k_avx2<false>> : rows_plain<dot_q45_k_plain<false>>;
    case DType::Q5_K: return v512 ? rows_avx512<dot_q45_k_avx512<true>> : v256 ? rows_avx2<dot_q45_k_avx2<true>> : rows_plain<dot_q45_k_plain<true>>;
    case DType::Q6_K: return v512 ? rows_avx512<dot_q6_k_avx512> : v256 ? rows_avx2<dot_q6_k_avx2> : rows_plain<dot_q6_k_plain>;
    default: return nullptr;
  }
#else
  switch (t) {
    case DType::Q8_0: return rows_plain<dot_q8_0_plain>;
    case DType::Q4_0: return rows_plain<dot_q4_0_plain>;
    case DType::Q4_K: return rows_plain<dot_q45_k_plain<false>>;
    case DType::Q5_K: return rows_plain<dot_q45_k_plain<true>>;
    case DType::Q6_K: return rows_plain<dot_q6_k_plain>;
    default: return nullptr;
  }
#endif
}

// out (K) = one row of dtype t, through the chosen instruction set's blocks (the same values).
void dequant_row_fast(DType t, const uint8_t* row, float* out, int64_t K) {
#ifdef LA_X86
  if (is_quantized(t) && simd_level() != Simd::Scalar) {
    const int64_t be = block_elems(t), bb = block_bytes(t);
    if (simd_level() == Simd::Avx512)
      for (int64_t i = 0; i < K / be; i++) dequant_block_avx512(t, row + i * bb, out + i * be);
    else
      for (int64_t i = 0; i < K / be; i++) dequant_block_avx2(t, row + i * bb, out + i * be);
    return;
  }
#endif
  dequant_row(t, row, out, K);
}

// out[r] = dot(x_r, w) for R rows of x (stride K) against one quantized row; buf holds K floats.
void dots_q(float* out, const float* x, int64_t R, const uint8_t* wrow, DType t, int64_t K, float* buf) {
  dequant_row_fast(t, wrow, buf, K);
  dots_f32(out, x, K, R, buf, K);
}

// Rows [n0, n0 + rows) of w as f32 into panel (rows, K), in parallel.
void dequant_panel(float* panel, const uint8_t* w, DType t, int64_t n0, int64_t rows, int64_t K) {
  int64_t rb = row_bytes(t, K);
  parallel_for(rows, std::max<int64_t>(1, 16384 / K), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) dequant_row_fast(t, w + (n0 + r) * rb, panel + r * K, K);
  });
}

// Weight rows per dequantised panel: about 4 MiB of f32.
int64_t panel_rows(int64_t N, int64_t K) { return std::min(N, std::max<int64_t>(64, (int64_t(1) << 20) / K)); }

}  // namespace

void dequantize_rows(float* out, const void* w, DType t, int64_t rows, int64_t K) {
  dequant_panel(out, static_cast<const uint8_t*>(w), t, 0, rows, K);
}

void matvec_many_q(const MatvecTarget* targets, int count, const float* x, DType t, int64_t K) {
  // x as int8 once for all; then one parallel region over the rows of every target (each row's
  // integer block dots do not depend on how the rows are split)
  Xq xq;
  quantize_x(x, K, t == DType::Q8_0 || t == DType::Q4_0 ? 32 : 256, xq);
  const DotRows rows = decode_rows(t);
  const int64_t rb = row_bytes(t, K);
  int64_t total = 0;
  for (int i = 0; i < count; i++) total += targets[i].N;
  parallel_for(total, std::max<int64_t>(1, 16384 / K), [&](int64_t g0, int64_t g1) {
    int64_t start = 0;  // the first global row of target i
    for (int i = 0; i < count && start < g1; start += targets[i].N, i++) {
      const int64_t n0 = std::max<int64_t>(g0 - start, 0), n1 = std::min<int64_t>(g1 - start, targets[i].N);
      if (n0 < n1) rows(targets[i].y, xq, static_cast<const uint8_t*>(targets[i].w), rb, K, n0, n1);
    }
  });
}

void matmul_forward_q(float* y, const float* x, const void* wv, DType t, int64_t M, int64_t N, int64_t K) {
  const uint8_t* w = static_cast<const uint8_t*>(wv);
  int64_t rb = row_bytes(t, K);
  if (M == 1) {
    // decoding: x as int8 once, then each weight row's integer block dots, on all cores
    Xq xq;
    quantize_x(x, K, t == DType::Q8_0 || t == DType::Q4_0 ? 32 : 256, xq);
    const DotRows rows = decode_rows(t);
    parallel_for(N, std::max<int64_t>(1, 16384 / K), [&](int64_t n0, int64_t n1) { rows(y, xq, w, rb, K, n0, n1); });
    return;
  }
  if (M <= kSmallM) {
    // y (M, N): each weight row is read once, dequantised (or dotted directly) for every row of x.
    parallel_for(N, std::max<int64_t>(1, 16384 / K), [&](int64_t n0, int64_t n1) {
      std::vector<float> buf(static_cast<size_t>(K));
      float acc[kSmallM];
      for (int64_t n = n0; n < n1; n++) {
        dots_q(acc, x, M, w + n * rb, t, K, buf.data());
        for (int64_t m = 0; m < M; m++) y[m * N + n] = acc[m];
      }
    });
    return;
  }
  // y[:, n0:n0+nb] = x · panelᵀ, one panel of dequantised weight rows at a time.
  int64_t nb = panel_rows(N, K);
  std::vector<float> panel(size_t(nb) * K);
  for (int64_t n0 = 0; n0 < N; n0 += nb) {
    int64_t rows = std::min(nb, N - n0);
    dequant_panel(panel.data(), w, t, n0, rows, K);
    sgemm(false, true, int(M), int(rows), int(K), 1.f, x, int(K), panel.data(), int(K), 0.f, y + n0, int(N));
  }
}

void matmul_backward_q(float* dx, const float* dy, const void* wv, DType t, int64_t M, int64_t N, int64_t K) {
  // dx (M, K) = sum over panels of dy[:, n0:n0+nb] · panel, the first panel overwriting dx.
  const uint8_t* w = static_cast<const uint8_t*>(wv);
  int64_t nb = panel_rows(N, K);
  std::vector<float> panel(size_t(nb) * K);
  for (int64_t n0 = 0; n0 < N; n0 += nb) {
    int64_t rows = std::min(nb, N - n0);
    dequant_panel(panel.data(), w, t, n0, rows, K);
    sgemm(false, false, int(M), int(K), int(rows), 1.f, dy + n0, int(N), panel.data(), int(K), n0 == 0 ? 0.f : 1.f,
          dx, int(K));
  }
}

void embedding_forward_q(float* out, const void* table, DType t, const int32_t* tokens, int64_t T, int64_t C) {
  const uint8_t* w = static_cast<const uint8_t*>(table);
  int64_t rb = row_bytes(t, C);
  for (int64_t i = 0; i < T; i++) dequant_row_fast(t, w + int64_t(tokens[i]) * rb, out + i * C, C);
}

}  // namespace la::cpu
