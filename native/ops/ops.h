// The op definitions: each checks its inputs' shapes and dtypes (throwing a la::Error that names
// the op and the shapes), allocates its output, and queues the body for the tensors' device on
// that device's executor. Shape letters as in cpu/kernels.h.
#pragma once
#include "../core/tensor.h"

#include <functional>
#include <memory>
#include <vector>

// The op families in files of their own (declarations, definitions, bodies per family)
#include "activation.h"
#include "matmul.h"
#include "norm.h"
#include "patches.h"

namespace la::ops {

// Queues `body` on the executor of the tensors' device. If an input is poisoned (its producer
// failed) the body is skipped and the outputs inherit the error; if the body throws, the outputs
// are poisoned with "op(shapes): message". `tiny`: a few tens of µs of CPU work, run on the
// calling thread when the executor is idle (Executor::enqueue).
void queue_op(const char* op, std::vector<TensorPtr> inputs, std::vector<TensorPtr> outputs, std::function<void()> body,
              bool tiny = false);


TensorPtr embedding(const TensorPtr& table /*(V,C)*/, const TensorPtr& tokens /*(T) i32*/);     // -> (T,C)
void rope(const TensorPtr& x /*(T,H,d)*/, int64_t pos0, float theta, bool interleaved);           // in place
void kv_write(const TensorPtr& cache /*(S,Hkv,d)*/, const TensorPtr& src /*(T,Hkv,d)*/, int64_t pos0);
// One decoder layer of cached inference, x (T, C) updated in place and the layer's keys/values
// written to the caches (S, Hkv, d) at pos0..: the whole attention and feed-forward block as one
// op (decoder.cpp), equal to the op-by-op forward. pk, pv, gate: the adapter branch, as attention().
struct DecoderWeights {
  TensorPtr attn_norm /*(C)*/, wq /*(H*d, C)*/, wk /*(Hkv*d, C)*/, wv /*(Hkv*d, C)*/, wo /*(C, H*d)*/;
  TensorPtr ffn_norm /*(C)*/, w1 /*(F, C)*/, w2 /*(C, F)*/, w3 /*(F, C)*/;
};
struct DecoderShape {
  int64_t heads = 0, kv_heads = 0;
  float eps = 1e-5f, theta = 10000.f;
  bool interleaved = true;
};
void decoder_layer(const TensorPtr& x, const DecoderWeights& w, const TensorPtr& k_cache, const TensorPtr& v_cache,
                   int64_t pos0, const DecoderShape& shape, const TensorPtr& pk = nullptr,
                   const TensorPtr& pv = nullptr, const TensorPtr& gate = nullptr);

// A model's weights for cached inference, checked once (shapes, dtypes, one device) when made;
// forward() runs the whole pass (embedding, every layer, final norm, classifier) as one op.
struct LayerPrompt {
  TensorPtr pk /*(K,Hkv,d)*/, pv /*(K,Hkv,d)*/, gate /*(H) or (1)*/;  // all null: no adapter branch
};
struct ModelWeights {
  TensorPtr embedding /*(V,C)*/, final_norm /*(C)*/, classifier /*(V,C)*/;
  std::vector<DecoderWeights> layers;
  std::vector<LayerPrompt> prompts;  // one per layer, or empty
};
class Model : public std::enable_shared_from_this<Model> {
 public:
  Model(ModelWeights weights, const DecoderShape& shape);
  // Runs `tokens` at positions pos0.., writing every layer's keys/values to its caches (S, Hkv, d);
  // returns the logits (1, V) of the last token, or (T, V) with all_logits.
  TensorPtr forward(const std::vector<int32_t>& tokens, const std::vector<TensorPtr>& k_caches,
                    const std::vector<TensorPtr>& v_caches, int64_t pos0, bool all_logits) const;
  Device device() const { return dev_; }
  int64_t layers() const { return int64_t(w_.layers.size()); }

 private:
  ModelWeights w_;
  DecoderShape s_;
  int64_t d_ = 0, F_ = 0, matrix_params_ = 0;
  // Up to this many flops (~0.1 ms on one core) a forward on the CPU may run on the caller's thread.
  static constexpr double kTinyFlops = 4e6;
  Device dev_ = Device::CPU;
  std::vector<TensorPtr> inputs_;  // every weight and prompt tensor
};

void add_inplace(const TensorPtr& x, const TensorPtr& y);                                          // x += y
TensorPtr slice_rows(const TensorPtr& x /*(T,...)*/, int64_t start, int64_t count);               // -> (count,...)
TensorPtr convert(const TensorPtr& x, DType to);                                                   // f32 <-> bf16
// A copy on `device` (queued in order); the same device gives a new handle on the same storage.
TensorPtr to_device(const TensorPtr& x, Device device);
// Element i = uniform [-scale, scale) from (seed, i) alone (core/random.h): the same on every device.
TensorPtr random_uniform(const std::vector<int64_t>& shape, DType dtype, Device device, uint64_t seed, float scale);
// The same storage seen with another shape of the same element count (no copy, no queueing).
TensorPtr reshape(const TensorPtr& x, const std::vector<int64_t>& shape);

}  // namespace la::ops
