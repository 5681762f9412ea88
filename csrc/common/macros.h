// Compiles under g++ and nvcc alike: no torch, no pybind11, no cuda_runtime.h.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define FD_HOST_DEVICE __host__ __device__
#define FD_DEVICE __device__
#define FD_INLINE __forceinline__
#else
#define FD_HOST_DEVICE
#define FD_DEVICE
#define FD_INLINE inline
#endif

// A tripwire for invariants the Python boundary already guarantees; never a user-facing check.
#define FD_ASSERT(cond, msg)                                                            \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      throw std::logic_error(std::string("fastdissect internal error: ") + (msg) +      \
                             " (" __FILE__ ":" + std::to_string(__LINE__) + ")");       \
    }                                                                                   \
  } while (0)
