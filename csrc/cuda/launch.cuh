// Kernel plumbing shared by the CUDA launchers (.cu) and their host emulation (emu/*.cpp): the
// grid-stride loop, the launch geometry (Launch) that each op's plan (`<op>_plan` in
// `<op>_kernels.cuh`) gives for its Params, and the one place a CUDA build launches a kernel.
#pragma once

#include <cstddef>

#include "../common/macros.h"

// Kernels are grid-stride loops over independent work items (the score words kernel strides over
// maps, a block each); blocks cooperate only through global atomics, which the host emulation
// (emu/cuda_emu.h) reproduces exactly.
#define FD_GRID_STRIDE(i, n)                                                                           \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);              \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

namespace fd {

constexpr unsigned kThreadsPerBlock = 256;
constexpr int64_t kMaxGridBlocks = 65535;

// One kernel launch as the GPU runs it and as the emulator runs it: a launcher (CudaLauncher
// below, emu::Launcher in emu/cuda_emu.h) takes its geometry from here and from nowhere else, so
// emulated tests exercise the GPU's grid and block sizes.
struct Launch {
  const char* kernel = "";  // the kernel's name, for launch errors and the emulator's record
  unsigned grid = 0, block = 0;
  size_t shared_bytes = 0;  // dynamic shared memory; the kernels declare theirs statically
  bool barriers = false;    // the kernel synchronises its block: the emulator runs its threads as fibers
  bool run = false;         // whether these Params launch the kernel at all
};

// Enough blocks for the work, capped: the grid-stride loop covers the rest.
inline unsigned blocks_for(int64_t items) {
  const int64_t blocks = (items + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxGridBlocks ? kMaxGridBlocks : blocks));
}

// A grid-stride kernel over `items` work items, kThreadsPerBlock threads a block; not run for none.
inline Launch grid_stride_launch(const char* kernel, int64_t items) {
  Launch l;
  l.kernel = kernel;
  l.grid = blocks_for(items);
  l.block = kThreadsPerBlock;
  l.run = items > 0;
  return l;
}

// int64 counters through CUDA's unsigned long long atomics (two's complement: adding works alike).
FD_DEVICE FD_INLINE void atomic_add_i64(int64_t* address, int64_t v) {
  atomicAdd(reinterpret_cast<unsigned long long*>(address), static_cast<unsigned long long>(v));
}

#if defined(__CUDACC__)
// Throws naming `kernel` when its launch failed (score_cuda.cu).
void check_launch(const char* kernel);

// The only kernel launch of the CUDA build (tests/test_cuda_emu.py checks that no .cu launches
// otherwise): asynchronous on `stream`, geometry from the op's plan.
struct CudaLauncher {
  cudaStream_t stream;

  template <typename... Params, typename... Args>
  void operator()(const Launch& l, void (*kernel)(Params...), const Args&... args) const {
    if (!l.run) return;
    kernel<<<l.grid, l.block, l.shared_bytes, stream>>>(args...);
    check_launch(l.kernel);
  }
};
#endif

}  // namespace fd
