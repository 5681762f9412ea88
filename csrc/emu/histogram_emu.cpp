// The CUDA histogram kernels, compiled for the host against emu/cuda_emu.h and run with their
// plan's geometry (histogram_kernels.cuh), the GPU's.
#include "cuda_emu.h"

#include "../cuda/cuda_ops.h"
#include "../cuda/histogram_kernels.cuh"

namespace fd {

void histogram_cuda_emu(const HistogramParams& p, const HistogramScratch& s, int n_threads) {
  const HistogramPlan plan = histogram_plan(p);
  emu::begin_op(emu::planned_launches({plan.count, plan.floor, plan.keep}));
  launch_histogram(p, s, emu::Launcher{n_threads});
}

}  // namespace fd
