// The CUDA score kernels, compiled for the host against emu/cuda_emu.h and run with their plan's
// geometry (score_kernels.cuh), the GPU's.
#include "cuda_emu.h"

#include "../cuda/cuda_ops.h"
#include "../cuda/score_kernels.cuh"

namespace fd {

void score_cuda_emu(const ScoreParams& p, const ScoreScratch& s, int n_threads) {
  const ScorePlan plan = score_plan(p, s);
  emu::begin_op(emu::planned_launches({plan.taps, plan.peaks, plan.words, plan.unions, plan.image_hits}));
  launch_score(p, s, emu::Launcher{n_threads});
}

}  // namespace fd
