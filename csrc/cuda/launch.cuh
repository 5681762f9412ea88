// Kernel plumbing shared by the CUDA launchers (.cu) and their host emulation (emu/*.cpp).
#pragma once

#include "../common/macros.h"

// Kernels are grid-stride loops over independent work items (the score words kernel strides over
// maps, a block each); blocks cooperate only through global atomics, which the host emulation
// (emu/cuda_emu.h) reproduces exactly.
#define FD_GRID_STRIDE(i, n)                                                                           \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);              \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

namespace fd {

constexpr unsigned kThreadsPerBlock = 256;

// Enough blocks for the work, capped: the grid-stride loop covers the rest.
inline unsigned blocks_for(int64_t items) {
  const int64_t blocks = (items + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

// int64 counters through CUDA's unsigned long long atomics (two's complement: adding works alike).
FD_DEVICE FD_INLINE void atomic_add_i64(int64_t* address, int64_t v) {
  atomicAdd(reinterpret_cast<unsigned long long*>(address), static_cast<unsigned long long>(v));
}

}  // namespace fd
