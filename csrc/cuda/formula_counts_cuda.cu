// Launcher only: the kernel is in formula_counts_kernels.cuh (also run by emu/formula_counts_emu.cpp).
#include <cuda_runtime.h>

#include "cuda_ops.h"
#include "formula_counts_kernels.cuh"

namespace fd {

void formula_counts_cuda(const FormulaCountsParams& p, int64_t entries, uintptr_t stream_handle) {
  if (entries == 0) return;
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  formula_counts_kernel<<<blocks_for(entries), kThreadsPerBlock, 0, stream>>>(p);
  check_launch("formula_counts_kernel");
}

}  // namespace fd
