// Host emulation of the CUDA built-ins fastdissect's kernels use, so that the very same .cuh kernel
// source runs on the CPU (backend="cuda_emu"). Include this, then the .cuh, then launch with
// fd::emu::launch. Kernels may only cooperate through global atomics (no __syncthreads, no warp
// intrinsics: using one fails to compile here, which keeps the emulation honest). Blocks run in
// parallel (OpenMP), the threads of a block one after another, so atomics must be real atomics.
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
#error "cuda_emu.h is for host compilers only"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace fd {
namespace emu {
extern thread_local dim3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;
}  // namespace emu
}  // namespace fd

using fd::emu::blockDim;
using fd::emu::blockIdx;
using fd::emu::gridDim;
using fd::emu::threadIdx;

// Atomics with CUDA's signatures (they return the old value).
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long v) {
  return __atomic_fetch_add(address, v, __ATOMIC_RELAXED);
}
inline int atomicAdd(int* address, int v) { return __atomic_fetch_add(address, v, __ATOMIC_RELAXED); }
inline unsigned int atomicAdd(unsigned int* address, unsigned int v) {
  return __atomic_fetch_add(address, v, __ATOMIC_RELAXED);
}
inline int atomicOr(int* address, int v) { return __atomic_fetch_or(address, v, __ATOMIC_RELAXED); }
inline long long atomicMin(long long* address, long long v) {
  long long old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (v < old && !__atomic_compare_exchange_n(address, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline long long atomicMax(long long* address, long long v) {
  long long old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (v > old && !__atomic_compare_exchange_n(address, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}

namespace fd {
namespace emu {

// Runs kernel(args...) over grid x block, like kernel<<<grid, block>>>(args...).
template <typename Kernel, typename... Args>
void launch(int n_threads, dim3 grid, dim3 block, Kernel kernel, Args... args) {
  const int64_t blocks = static_cast<int64_t>(grid.x) * grid.y * grid.z;
  (void)n_threads;
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
  for (int64_t b = 0; b < blocks; ++b) {
    gridDim = grid;
    blockDim = block;
    blockIdx = dim3(static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                    static_cast<unsigned>(b / (static_cast<int64_t>(grid.x) * grid.y)));
    for (unsigned z = 0; z < block.z; ++z)
      for (unsigned y = 0; y < block.y; ++y)
        for (unsigned x = 0; x < block.x; ++x) {
          threadIdx = dim3(x, y, z);
          kernel(args...);
        }
  }
}

}  // namespace emu
}  // namespace fd
