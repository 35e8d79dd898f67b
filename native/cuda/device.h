// What the CUDA backend can see. Built from device.cu when nvcc was found, otherwise from
// no_cuda.cpp, so callers never need an #ifdef.
#pragma once
#include <string>
#include <vector>

namespace la::cuda {

// One GPU as the runtime describes it: what the GPU check looks its datasheet peaks up by (the
// name), or estimates them from when the name is unknown (SMs, clocks, bus width).
struct DeviceAttributes {
  std::string name;
  int sm = 0;                 // compute capability, major * 10 + minor
  int multiprocessors = 0;
  int clock_khz = 0;          // peak SM clock
  int memory_clock_khz = 0;   // peak memory clock
  int memory_bus_bits = 0;
  size_t memory_bytes = 0;
  bool memory_pools = false;  // cudaDevAttrMemoryPoolsSupported (allocator.h)
};

struct DeviceInfo {
  bool compiled = false;   // this build contains the CUDA backend
  bool available = false;  // a usable GPU and driver are present now
  int devices = 0;
  std::string reason;      // why not available (or the device names when it is)
  std::vector<DeviceAttributes> list;
};

DeviceInfo device_info();

}  // namespace la::cuda
