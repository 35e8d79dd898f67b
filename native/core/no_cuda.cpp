// The CUDA backend's stand-in for builds without nvcc.
#include "../cuda/device.h"

namespace la::cuda {

DeviceInfo device_info() {
  DeviceInfo info;
  info.reason = "this build has no CUDA backend (nvcc was not found, or LLAMA_ADAPTER_CUDA=OFF)";
  return info;
}

}  // namespace la::cuda
