// The block-quantized weight formats of GGUF files (ggml's Q8_0, Q4_0, Q4_K, Q5_K, Q6_K), written
// from the format: a row of K weights is K / QK blocks, each a few fp16 scales and packed integers.
// Dequantisation follows ggml's reference arithmetic operation for operation (the same products
// and differences in float, in the same order, never fused into an FMA), so that its values equal
// llama.cpp's dequantize_row_* bit for bit (test/golden/ggml-quants.bin). Compiled for the CPU and
// the GPU (one definition of the formats: the kernels of both call dequant_block).
#pragma once
#include <cstdint>
#include <cstring>

#include "bf16.h"
#include "host_device.h"
#include "tensor.h"

namespace la {

// Elements per block and bytes per block of each dtype (1 and the element size for plain dtypes).
LA_HOST_DEVICE inline int64_t block_elems(DType t) {
  switch (t) {
    case DType::Q8_0:
    case DType::Q4_0: return 32;
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K: return 256;
    default: return 1;
  }
}
LA_HOST_DEVICE inline int64_t block_bytes(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    case DType::Q8_0: return 34;   // fp16 d, int8 q[32]:            x = q * d
    case DType::Q4_0: return 18;   // fp16 d, q[16] nibbles:          x = (q - 8) * d
    case DType::Q4_K: return 144;  // fp16 d, dmin, 12 bytes of 6-bit scales/mins for 8 sub-blocks of 32, q[128] nibbles
    case DType::Q5_K: return 176;  // as Q4_K plus qh[32]: the 5th bit of each value
    case DType::Q6_K: return 210;  // ql[128] low nibbles, qh[64] 2 high bits, int8 scales[16] (sub-blocks of 16), fp16 d
  }
  return 0;
}
LA_HOST_DEVICE inline bool is_quantized(DType t) { return block_elems(t) > 1; }
// Bytes of one row of K elements (K a multiple of block_elems).
LA_HOST_DEVICE inline int64_t row_bytes(DType t, int64_t K) { return K / block_elems(t) * block_bytes(t); }

namespace quant_detail {
LA_HOST_DEVICE inline float half_at(const uint8_t* p) {
  uint16_t h = uint16_t(p[0] | (p[1] << 8));
  return f16_to_f32(h);
}
// The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block from its 12 packed bytes.
LA_HOST_DEVICE inline void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}
// Separate statements so that no compiler contracts a*b - c into one rounding (an FMA).
LA_HOST_DEVICE inline float mul_sub(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(__fmul_rn(a, b), c);
#else
  volatile float p = a * b;
  return p - c;
#endif
}
}  // namespace quant_detail

// out (block_elems(t)) = the values of one block `b` of dtype t.
LA_HOST_DEVICE inline void dequant_block(DType t, const uint8_t* b, float* out) {
  using namespace quant_detail;
  switch (t) {
    case DType::Q8_0: {
      float d = half_at(b);
      for (int j = 0; j < 32; j++) out[j] = float(int8_t(b[2 + j])) * d;
      return;
    }
    case DType::Q4_0: {
      float d = half_at(b);
      for (int j = 0; j < 16; j++) {
        out[j] = float((b[2 + j] & 0xF) - 8) * d;
        out[j + 16] = float((b[2 + j] >> 4) - 8) * d;
      }
      return;
    }
    case DType::Q4_K:
    case DType::Q5_K: {
      bool five = t == DType::Q5_K;
      float d = half_at(b), dmin = half_at(b + 2);
      const uint8_t* scales = b + 4;
      const uint8_t* qh = b + 16;               // Q5_K only
      const uint8_t* q = b + (five ? 48 : 16);  // 128 bytes: sub-blocks 2i (low nibbles), 2i+1 (high)
      for (int i = 0; i < 4; i++) {
        uint8_t sc, m;
        scale_min_k4(2 * i, scales, &sc, &m);
        float d1 = d * float(sc), m1 = dmin * float(m);
        scale_min_k4(2 * i + 1, scales, &sc, &m);
        float d2 = d * float(sc), m2 = dmin * float(m);
        for (int l = 0; l < 32; l++) {
          int lo = q[32 * i + l] & 0xF, hi = q[32 * i + l] >> 4;
          if (five) {
            lo += (qh[l] >> (2 * i)) & 1 ? 16 : 0;
            hi += (qh[l] >> (2 * i + 1)) & 1 ? 16 : 0;
          }
          out[64 * i + l] = mul_sub(d1, float(lo), m1);
          out[64 * i + 32 + l] = mul_sub(d2, float(hi), m2);
        }
      }
      return;
    }
    case DType::Q6_K: {
      const uint8_t* ql = b;
      const uint8_t* qh = b + 128;
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
      float d = half_at(b + 208);
      // Two halves of 128 values; in each, value l + 32s (s = 0..3) takes a nibble of ql and 2 bits of qh.
      for (int h = 0; h < 2; h++) {
        for (int l = 0; l < 32; l++) {
          int is = l / 16;
          int q1 = ((ql[64 * h + l] & 0xF) | (((qh[32 * h + l] >> 0) & 3) << 4)) - 32;
          int q2 = ((ql[64 * h + l + 32] & 0xF) | (((qh[32 * h + l] >> 2) & 3) << 4)) - 32;
          int q3 = ((ql[64 * h + l] >> 4) | (((qh[32 * h + l] >> 4) & 3) << 4)) - 32;
          int q4 = ((ql[64 * h + l + 32] >> 4) | (((qh[32 * h + l] >> 6) & 3) << 4)) - 32;
          const int8_t* s = sc + 8 * h;
          out[128 * h + l] = d * float(s[is]) * float(q1);
          out[128 * h + l + 32] = d * float(s[is + 2]) * float(q2);
          out[128 * h + l + 64] = d * float(s[is + 4]) * float(q3);
          out[128 * h + l + 96] = d * float(s[is + 6]) * float(q4);
        }
      }
      return;
    }
    default: return;
  }
}

// out (K) = one row of K values stored as dtype t at `row` (f32 and bf16 too).
LA_HOST_DEVICE inline void dequant_row(DType t, const void* row, float* out, int64_t K) {
  const uint8_t* p = static_cast<const uint8_t*>(row);
  if (t == DType::F32) {
    std::memcpy(out, p, size_t(K) * 4);
    return;
  }
  if (t == DType::BF16) {
    for (int64_t i = 0; i < K; i++) out[i] = bf16_to_f32(uint16_t(p[2 * i] | (p[2 * i + 1] << 8)));
    return;
  }
  int64_t be = block_elems(t), bb = block_bytes(t);
  for (int64_t i = 0; i < K / be; i++) dequant_block(t, p + i * bb, out + i * be);
}

// Whether every fp16 scale of a row of blocks is finite (then every value is): the load-time check.
inline bool scales_finite(DType t, const uint8_t* row, int64_t nblocks) {
  int64_t bb = block_bytes(t);
  auto ok = [](const uint8_t* p) { return ((p[1] & 0x7C) != 0x7C); };  // exponent all ones: Inf or NaN
  for (int64_t i = 0; i < nblocks; i++) {
    const uint8_t* b = row + i * bb;
    if (t == DType::Q6_K) {
      if (!ok(b + 208)) return false;
    } else if (!ok(b) || ((t == DType::Q4_K || t == DType::Q5_K) && !ok(b + 2))) {
      return false;
    }
  }
  return true;
}

}  // namespace la
