// The patches op (ops/patches.h): argument checks, the output, and the body queued for the images'
// device.
#include "patches.h"

#include "../core/error.h"
#include "../cpu/kernels.h"
#include "../cuda/kernels.h"
#include "checks.h"
#include "indices.h"
#include "ops.h"

namespace la::ops {

TensorPtr patches(const TensorPtr& images, int64_t patch) {
  const char* op = "patches";
  expect_ndim(op, "images", images, 4);
  expect_dtype(op, "images", images, DType::F32);
  LA_CHECK(patch >= 1, op, ": patch must be >= 1, got ", patch);
  const int64_t B = images->dim(0), Cin = images->dim(1), Hi = images->dim(2), Wi = images->dim(3), P = patch;
  LA_CHECK(Hi % P == 0 && Wi % P == 0, op, ": images ", images->describe(), " (B, Cin, H, W): H = ", Hi, " and W = ",
           Wi, " must be multiples of the patch size ", P);
  Device dev = images->device;
  TensorPtr out = empty({B * (Hi / P) * (Wi / P), Cin * P * P}, DType::F32, dev);
  queue_op(op, {images}, {out}, [=] {
    if (dev == Device::CUDA)
      return LA_ON_CUDA(cuda::patches(out->data<float>(), images->data<float>(), B, Cin, Hi, Wi, P));
    cpu::patches(out->data<float>(), images->data<float>(), B, Cin, Hi, Wi, P);
  });
  return out;
}

}  // namespace la::ops
