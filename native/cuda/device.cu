// CUDA runtime discovery. The runtime is linked statically, so the addon loads (and the CPU
// backend works) on machines without a driver; this only reports what is there.
#include <cuda_runtime.h>

#include <string>

#include "device.h"

namespace la::cuda {

DeviceInfo device_info() {
  DeviceInfo info;
  info.compiled = true;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    info.reason = std::string("no usable GPU: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error
    return info;
  }
  info.devices = count;
  info.available = count > 0;
  for (int i = 0; i < count; i++) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) == cudaSuccess)
      info.reason += (i ? ", " : "") + std::string(p.name) + " (sm_" + std::to_string(p.major * 10 + p.minor) + ")";
  }
  return info;
}

}  // namespace la::cuda
