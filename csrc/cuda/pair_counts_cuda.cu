// Launcher only: the kernel and its launch plan are in pair_counts_kernels.cuh (also run by
// emu/pair_counts_emu.cpp).
#include <cuda_runtime.h>

#include "cuda_ops.h"
#include "pair_counts_kernels.cuh"

namespace fd {

void pair_counts_cuda(const PairCountsParams& p, const int64_t* item_offsets, int64_t total,
                      uintptr_t stream_handle) {
  launch_pair_counts(p, PairCountsItems{item_offsets}, total,
                     CudaLauncher{reinterpret_cast<cudaStream_t>(stream_handle)});
}

}  // namespace fd
