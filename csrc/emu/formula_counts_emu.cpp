// The CUDA formula-count kernel, compiled for the host against emu/cuda_emu.h and run with its
// plan's geometry (formula_counts_kernels.cuh), the GPU's.
#include "cuda_emu.h"

#include "../cuda/cuda_ops.h"
#include "../cuda/formula_counts_kernels.cuh"

namespace fd {

void formula_counts_cuda_emu(const FormulaCountsParams& p, int64_t entries, int n_threads) {
  emu::begin_op(emu::planned_launches({formula_counts_plan(p, entries).counts}));
  launch_formula_counts(p, entries, emu::Launcher{n_threads});
}

}  // namespace fd
