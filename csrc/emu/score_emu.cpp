// The CUDA score kernels, compiled for the host against emu/cuda_emu.h.
#include "cuda_emu.h"

#include <algorithm>

#include "../cuda/cuda_ops.h"
#include "../cuda/score_kernels.cuh"

namespace fd {

void score_cuda_emu(const ScoreParams& p, const ScoreScratch& s, int n_threads) {
  if (p.N * p.K == 0) return;
  emu::launch(n_threads, dim3(blocks_for(p.H + p.W)), dim3(kThreadsPerBlock), score_taps_kernel, p, s);
  FD_DISPATCH_FLOAT(p.act_dtype, scalar_t, [&] {
    emu::launch(n_threads, dim3(blocks_for(p.N * p.K)), dim3(kThreadsPerBlock), score_peaks_kernel<scalar_t>, p, s);
    // kEntryTile threads a block (the fewest the kernel takes: each emulated barrier switches every
    // thread), and a few blocks per OS thread, each looping over many maps.
    const int64_t blocks = std::min<int64_t>(map_blocks(p), 8 * static_cast<int64_t>(n_threads));
    emu::launch_blocks(n_threads, dim3(static_cast<unsigned>(blocks)), dim3(kEntryTile),
                       score_words_kernel<scalar_t>, p, s);
  });
  if (p.union_mode != UnionMode::kGlobal) {
    emu::launch(n_threads, dim3(blocks_for(p.N * p.K)), dim3(kThreadsPerBlock), score_union_kernel, p, s);
  }
  if (p.image_hits && p.K * s.num_entries > 0) {
    emu::launch(n_threads, dim3(blocks_for(p.K * s.num_entries)), dim3(kThreadsPerBlock), score_image_hits_kernel,
                p, s);
  }
}

}  // namespace fd
