// The forward kernels of either device behind one interface: op bodies (ops.cpp) and the fused
// decoder layer (decoder.cpp) choose the CPU or CUDA body here, once per kernel.
#pragma once
#include <cstring>
#include <initializer_list>

#include "../core/parallel.h"
#include "../core/quant.h"
#include "../core/tensor.h"
#include "../cpu/kernels.h"
#include "../cuda/kernels.h"
#include "../cuda/runtime.h"
#include "indices.h"

namespace la::ops {

struct Kernels {
  Device dev;

  // out (T, C) = rows `ids` (host values, already checked; `ids_here` where this device reads them)
  void embedding(float* out, const TensorPtr& table, const int32_t* ids, const int32_t* ids_here, int64_t T) const {
    const int64_t C = table->dim(1);
    if (is_quantized(table->dtype)) {
      if (dev == Device::CUDA) return LA_ON_CUDA(cuda::embedding_forward_q(out, table->raw(), table->dtype, ids_here, T, C));
      return cpu::embedding_forward_q(out, table->raw(), table->dtype, ids, T, C);
    }
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::embedding_forward(out, table->raw(), table->dtype == DType::BF16, ids_here, T, C));
    if (table->dtype == DType::F32) return cpu::embedding_forward(out, table->data<float>(), ids, T, C);
    cpu::embedding_forward_bf16(out, table->data<uint16_t>(), ids, T, C);
  }
  void rmsnorm(float* out, const float* x, const TensorPtr& w, int64_t T, int64_t C, float eps) const {
    if (dev == Device::CUDA) return LA_ON_CUDA(cuda::rmsnorm_forward(out, x, w->data<float>(), T, C, eps));
    cpu::rmsnorm_forward(out, x, w->data<float>(), T, C, eps);
  }
  void matmul(float* y, const float* x, const TensorPtr& w, int64_t M) const {
    int64_t N = w->dim(0), K = w->dim(1);
    if (is_quantized(w->dtype)) {
      if (dev == Device::CUDA) return LA_ON_CUDA(cuda::matmul_forward_q(y, x, w->raw(), w->dtype, M, N, K));
      return cpu::matmul_forward_q(y, x, w->raw(), w->dtype, M, N, K);
    }
    bool bf16 = w->dtype == DType::BF16;
    if (dev == Device::CUDA) return LA_ON_CUDA(cuda::matmul_forward(y, x, w->raw(), bf16, M, N, K));
    if (bf16) return cpu::matmul_forward_bf16(y, x, w->data<uint16_t>(), M, N, K);
    cpu::matmul_forward(y, x, w->data<float>(), M, N, K);
  }
  // Several frozen weights over the same x (q, k, v; w1, w3): decoding on the CPU runs them as one
  // parallel region (cpu::matvec_many, the same values), anything else one matmul each.
  struct MatmulOut {
    float* y;
    const TensorPtr* w;
  };
  void matmuls(const float* x, int64_t M, std::initializer_list<MatmulOut> outs) const {
    const Tensor& w0 = **outs.begin()->w;
    bool grouped = dev == Device::CPU && M == 1;
    for (const MatmulOut& o : outs) grouped = grouped && (*o.w)->dtype == w0.dtype && (*o.w)->dim(1) == w0.dim(1);
    if (!grouped) {
      for (const MatmulOut& o : outs) matmul(o.y, x, *o.w, M);
      return;
    }
    cpu::MatvecTarget targets[4];
    int n = 0;
    for (const MatmulOut& o : outs) targets[n++] = {o.y, (*o.w)->raw(), (*o.w)->dim(0)};
    cpu::matvec_many(targets, n, x, w0.dtype, w0.dim(1));
  }
  void rope(float* x, int64_t T, int64_t H, int64_t d, int64_t pos0, float theta, bool interleaved) const {
    if (dev == Device::CUDA) return LA_ON_CUDA(cuda::rope_forward(x, T, H, d, pos0, theta, interleaved));
    cpu::rope_forward(x, T, H, d, pos0, theta, interleaved);
  }

  // ---- the attention family (ops/attention.cpp, cpu/attention*.cpp, cuda/attention*.cu) ----------
  // out (T, H, d): causal attention of q at positions pos0 + t over the caches k, v (S, Hkv, d), plus
  // the adapter branch when K > 0 (pk, pv (K, Hkv, d), gate (G))
  void attention(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t H, int64_t Hkv,
                 int64_t d, int64_t S, int64_t pos0, const float* pk, const float* pv, const float* gate, int64_t G,
                 int64_t K) const {
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::attention_forward(out, q, k, v, T, H, Hkv, d, S, pos0, pk, pv, gate, G, K));
    cpu::attention_forward(out, q, k, v, T, H, Hkv, d, pos0);
    if (K) cpu::attention_prompt_add(out, q, pk, pv, gate, G, T, H, Hkv, d, K);
  }
  // The fused gated attention over packed segments, seg (S+1) offsets (checked) on the host and
  // where this device reads them; pk, pv, gate null: plain attention (cpu/kernels.h)
  void gated_attention(float* out, float* stats, const float* q, const float* k, const float* v, const int32_t* seg,
                       const int32_t* seg_here, int64_t S, const float* pk, const float* pv, const float* gate,
                       int64_t G, int64_t N, int64_t H, int64_t Hkv, int64_t d, int64_t K, bool causal,
                       bool per_segment) const {
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::gated_attention_forward(out, stats, q, k, v, seg_here, seg, S, pk, pv, gate, G, N, H,
                                                      Hkv, d, K, causal, per_segment));
    cpu::gated_attention_forward(out, stats, q, k, v, seg, S, pk, pv, gate, G, N, H, Hkv, d, K, causal, per_segment);
  }
  void gated_attention_backward(float* dq, float* dk, float* dv, float* dpk, float* dpv, float* dgate,
                                const float* dout, const float* q, const float* k, const float* v, const int32_t* seg,
                                const int32_t* seg_here, int64_t S, const float* pk, const float* pv, const float* gate,
                                int64_t G, const float* out, const float* stats, int64_t N, int64_t H, int64_t Hkv,
                                int64_t d, int64_t K, bool causal, bool per_segment) const {
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::gated_attention_backward(dq, dk, dv, dpk, dpv, dgate, dout, q, k, v, seg_here, seg, S,
                                                       pk, pv, gate, G, out, stats, N, H, Hkv, d, K, causal,
                                                       per_segment));
    cpu::gated_attention_backward(dq, dk, dv, dpk, dpv, dgate, dout, q, k, v, seg, S, pk, pv, gate, G, out, stats, N,
                                  H, Hkv, d, K, causal, per_segment);
  }

  void copy(float* dst, const float* src, int64_t n) const {
    if (dev == Device::CUDA) return LA_ON_CUDA(cuda::copy_on_device(dst, src, size_t(n) * 4));
    std::memcpy(dst, src, size_t(n) * 4);
  }
  void add(float* x, const float* y, int64_t n) const {
    if (dev == Device::CUDA) return LA_ON_CUDA(cuda::add_inplace(x, y, n));
    parallel_for(n, 1 << 15, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; i++) x[i] += y[i];
    });
  }
  void swiglu(float* out, const float* a, const float* b, int64_t n) const {
    if (dev == Device::CUDA) return LA_ON_CUDA(cuda::swiglu_forward(out, a, b, n));
    cpu::swiglu_forward(out, a, b, n);
  }
};

}  // namespace la::ops
