// Launcher only: the kernel and its launch plan are in formula_counts_kernels.cuh (also run by
// emu/formula_counts_emu.cpp).
#include <cuda_runtime.h>

#include "cuda_ops.h"
#include "formula_counts_kernels.cuh"

namespace fd {

void formula_counts_cuda(const FormulaCountsParams& p, int64_t entries, uintptr_t stream_handle) {
  launch_formula_counts(p, entries, CudaLauncher{reinterpret_cast<cudaStream_t>(stream_handle)});
}

}  // namespace fd
