// Small helpers compiled for both the CPU and the GPU (random.h, bf16.h).
#pragma once
#if defined(__CUDACC__)
#define LA_HOST_DEVICE __host__ __device__
#else
#define LA_HOST_DEVICE
#endif
