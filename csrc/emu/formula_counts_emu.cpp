// The CUDA formula-count kernel, compiled for the host against emu/cuda_emu.h.
#include "cuda_emu.h"

#include "../cuda/cuda_ops.h"
#include "../cuda/formula_counts_kernels.cuh"

namespace fd {

void formula_counts_cuda_emu(const FormulaCountsParams& p, int64_t entries, int n_threads) {
  if (entries == 0) return;
  emu::launch(n_threads, dim3(blocks_for(entries)), dim3(kThreadsPerBlock), formula_counts_kernel, p);
}

}  // namespace fd
