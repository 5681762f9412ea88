// The CUDA pair-count kernel, compiled for the host against emu/cuda_emu.h and run with its plan's
// geometry (pair_counts_kernels.cuh), the GPU's.
#include "cuda_emu.h"

#include "../cuda/cuda_ops.h"
#include "../cuda/pair_counts_kernels.cuh"

namespace fd {

void pair_counts_cuda_emu(const PairCountsParams& p, const int64_t* item_offsets, int64_t total, int n_threads) {
  emu::begin_op(emu::planned_launches({pair_counts_plan(p, total).counts}));
  launch_pair_counts(p, PairCountsItems{item_offsets}, total, emu::Launcher{n_threads});
}

}  // namespace fd
