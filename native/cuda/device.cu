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
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) {
      cudaGetLastError();
      continue;
    }
    info.reason += (i ? ", " : "") + std::string(p.name) + " (sm_" + std::to_string(p.major * 10 + p.minor) + ")";
    DeviceAttributes a;
    a.name = p.name;
    a.sm = p.major * 10 + p.minor;
    a.multiprocessors = p.multiProcessorCount;
    a.memory_bytes = p.totalGlobalMem;
    a.memory_bus_bits = p.memoryBusWidth;
    // clocks are attributes only (CUDA 13 took them out of cudaDeviceProp); 0 when not reported
    auto attr = [i](cudaDeviceAttr which) {
      int v = 0;
      if (cudaDeviceGetAttribute(&v, which, i) != cudaSuccess) {
        cudaGetLastError();
        v = 0;
      }
      return v;
    };
    a.clock_khz = attr(cudaDevAttrClockRate);
    a.memory_clock_khz = attr(cudaDevAttrMemoryClockRate);
    a.memory_pools = attr(cudaDevAttrMemoryPoolsSupported) != 0;
    info.list.push_back(a);
  }
  return info;
}

}  // namespace la::cuda
