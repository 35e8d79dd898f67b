// What the CUDA backend can see. Built from device.cu when nvcc was found, otherwise from
// no_cuda.cpp, so callers never need an #ifdef.
#pragma once
#include <string>

namespace la::cuda {

struct DeviceInfo {
  bool compiled = false;   // this build contains the CUDA backend
  bool available = false;  // a usable GPU and driver are present now
  int devices = 0;
  std::string reason;      // why not available (or the device names when it is)
};

DeviceInfo device_info();

}  // namespace la::cuda
