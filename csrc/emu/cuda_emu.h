// Host emulation of the CUDA built-ins fastdissect's kernels use, so that the very same .cuh kernel
// source runs on the CPU (backend="cuda_emu"). Include this, then the .cuh, then run the op's launch
// sequence with fd::emu::Launcher: each kernel with its plan's geometry (the GPU's), by
// fd::emu::launch (threads of a block one after another) or, for a kernel that synchronises its
// block (Launch::barriers), fd::emu::launch_blocks (the threads of a block as fibers that switch at
// each barrier: every thread reaches a barrier before any passes it, as on a GPU). No warp
// intrinsics: using one fails to compile here. Blocks run in parallel (OpenMP), so atomics must be
// real atomics. Every launch is recorded (LaunchLog) so that a test can compare it with the plan.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__CUDACC__)
#error "cuda_emu.h is for host compilers only"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// A block's fibers run on one OS thread, so per-OS-thread storage is per-block storage.
#define __shared__ static thread_local
#define __syncthreads() fd::emu::syncthreads()

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

#include "../cuda/cuda_ops.h"
#include "../cuda/launch.cuh"

namespace fd {
namespace emu {

using LaunchRecord = EmuLaunchRecord;

// The launches of the last emulated op call (fd::emu_last_launches): its plan, set before the op's
// first launch, and what the emulation then ran, recorded by launch / launch_blocks themselves.
void begin_op(std::vector<LaunchRecord> planned);
void record_launch(LaunchRecord launched);

// The plan's launches that run, as records.
inline std::vector<LaunchRecord> planned_launches(std::initializer_list<Launch> launches) {
  std::vector<LaunchRecord> out;
  for (const Launch& l : launches)
    if (l.run) out.push_back(LaunchRecord{l.kernel, l.grid, l.block, l.shared_bytes});
  return out;
}

// The barrier of a block run by launch_blocks: the calling thread's fiber waits until every thread
// of its block has arrived (or ended). Outside launch_blocks it throws (a kernel launched with
// `launch` must not synchronise).
void syncthreads();

// Runs body() once for every thread of `block` (threadIdx set), each thread a fiber of this OS thread.
void run_block_fibers(dim3 block, const std::function<void()>& body);

// Runs run(block) for every block of `grid` (built-ins set), blocks in parallel; the first
// exception a block throws is rethrown here (none may leave an OpenMP region).
template <typename Run>
void for_each_block(int n_threads, const char* kernel, dim3 grid, dim3 block, Run run) {
  record_launch(LaunchRecord{kernel, grid.x * grid.y * grid.z, block.x * block.y * block.z, 0});
  const int64_t blocks = static_cast<int64_t>(grid.x) * grid.y * grid.z;
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
  for (int64_t b = 0; b < blocks; ++b) {
    gridDim = grid;
    blockDim = block;
    blockIdx = dim3(static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                    static_cast<unsigned>(b / (static_cast<int64_t>(grid.x) * grid.y)));
    try {
      run(block);
    } catch (...) {
#pragma omp critical(fd_emu_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// Like launch, for kernels that use __shared__ memory and __syncthreads.
template <typename Kernel, typename... Args>
void launch_blocks(int n_threads, const char* name, dim3 grid, dim3 block, Kernel kernel, Args... args) {
  for_each_block(n_threads, name, grid, block, [&](dim3 b) { run_block_fibers(b, [&] { kernel(args...); }); });
}

// Runs kernel(args...) over grid x block, like kernel<<<grid, block>>>(args...).
template <typename Kernel, typename... Args>
void launch(int n_threads, const char* name, dim3 grid, dim3 block, Kernel kernel, Args... args) {
  for_each_block(n_threads, name, grid, block, [&](dim3 b) {
    for (unsigned z = 0; z < b.z; ++z)
      for (unsigned y = 0; y < b.y; ++y)
        for (unsigned x = 0; x < b.x; ++x) {
          threadIdx = dim3(x, y, z);
          kernel(args...);
        }
  });
}

// The emulated counterpart of CudaLauncher (cuda/launch.cuh): the op's launch sequence calls it
// with each kernel's plan, whose geometry it runs unchanged.
struct Launcher {
  int n_threads;

  template <typename Kernel, typename... Args>
  void operator()(const Launch& l, Kernel kernel, const Args&... args) const {
    if (!l.run) return;
    FD_ASSERT(l.shared_bytes == 0, "the emulation has no dynamic shared memory");
    if (l.barriers) {
      launch_blocks(n_threads, l.kernel, dim3(l.grid), dim3(l.block), kernel, args...);
    } else {
      launch(n_threads, l.kernel, dim3(l.grid), dim3(l.block), kernel, args...);
    }
  }
};

}  // namespace emu
}  // namespace fd
