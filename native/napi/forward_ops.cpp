// Bindings of the forward (inference) ops; shapes and dtypes are checked in ops/ops.cpp.
#include "../ops/ops.h"
#include "common.h"

namespace la::napi {
namespace {

LA_OP(embedding, return wrap(info.Env(), ops::embedding(a.tensor(0, "table"), a.tensor(1, "tokens")));)
LA_OP(rmsnorm, return wrap(info.Env(), ops::rmsnorm(a.tensor(0, "x"), a.tensor(1, "w"), float(a.number(2, "eps"))));)
LA_OP(rope, {
  std::string layout = a.string(3, "layout");
  if (layout != "interleaved" && layout != "half") a.type_error(3, "layout", "'interleaved' or 'half'");
  ops::rope(a.tensor(0, "x"), a.integer(1, "pos0"), float(a.number(2, "theta")), layout == "interleaved");
  return info.Env().Undefined();
})
LA_OP(matmul, return wrap(info.Env(), ops::matmul(a.tensor(0, "x"), a.tensor(1, "w")));)
LA_OP(kvWrite, {
  ops::kv_write(a.tensor(0, "cache"), a.tensor(1, "src"), a.integer(2, "pos0"));
  return info.Env().Undefined();
})
LA_OP(attention, {
  TensorPtr q = a.tensor(0, "q"), k = a.tensor(1, "kCache"), v = a.tensor(2, "vCache");
  int64_t pos0 = a.integer(3, "pos0");
  // optional adapter branch: prompt keys/values (K, Hkv, d) and gate (H) or (1)
  TensorPtr pk = a.optional_tensor(4, "pk"), pv = a.optional_tensor(5, "pv"), gate = a.optional_tensor(6, "gate");
  return wrap(info.Env(), ops::attention(q, k, v, pos0, pk, pv, gate));
})
LA_OP(swiglu, return wrap(info.Env(), ops::swiglu(a.tensor(0, "a"), a.tensor(1, "b")));)
LA_OP(addInPlace, {
  ops::add_inplace(a.tensor(0, "x"), a.tensor(1, "y"));
  return info.Env().Undefined();
})
LA_OP(sliceRows, return wrap(info.Env(), ops::slice_rows(a.tensor(0, "x"), a.integer(1, "start"), a.integer(2, "count", 1)));)
LA_OP(reshape, return wrap(info.Env(), ops::reshape(a.tensor(0, "x"), a.shape(1)));)
LA_OP(convert, return wrap(info.Env(), ops::convert(a.tensor(0, "x"), a.dtype(1, DType::F32)));)


}  // namespace

void register_forward_ops(Napi::Env env, Napi::Object exports) {
  export_fn(env, exports, "embedding", embedding);
  export_fn(env, exports, "rmsnorm", rmsnorm);
  export_fn(env, exports, "rope", rope);
  export_fn(env, exports, "matmul", matmul);
  export_fn(env, exports, "kvWrite", kvWrite);
  export_fn(env, exports, "attention", attention);
  export_fn(env, exports, "swiglu", swiglu);
  export_fn(env, exports, "addInPlace", addInPlace);
  export_fn(env, exports, "sliceRows", sliceRows);
  export_fn(env, exports, "reshape", reshape);
  export_fn(env, exports, "convert", convert);
}

}  // namespace la::napi
