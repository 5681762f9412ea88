// Launchers only: the kernels are in score_kernels.cuh (also run by emu/score_emu.cpp).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda_ops.h"
#include "score_kernels.cuh"

namespace fd {

void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("fastdissect: CUDA launch of ") + kernel + " failed: " +
                             cudaGetErrorString(err));
  }
}

void score_cuda(const ScoreParams& p, const ScoreScratch& s, uintptr_t stream_handle) {
  if (p.N * p.K == 0) return;
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  score_taps_kernel<<<blocks_for(p.H + p.W), kThreadsPerBlock, 0, stream>>>(p, s);
  check_launch("score_taps_kernel");
  FD_DISPATCH_FLOAT(p.act_dtype, scalar_t, [&] {
    score_peaks_kernel<scalar_t><<<blocks_for(p.N * p.K), kThreadsPerBlock, 0, stream>>>(p, s);
  });
  check_launch("score_peaks_kernel");
  FD_DISPATCH_FLOAT(p.act_dtype, scalar_t, [&] {
    score_words_kernel<scalar_t><<<map_blocks(p), map_threads(p), 0, stream>>>(p, s);
  });
  check_launch("score_words_kernel");
  if (p.union_mode != UnionMode::kGlobal) {
    score_union_kernel<<<blocks_for(p.N * p.K), kThreadsPerBlock, 0, stream>>>(p, s);
    check_launch("score_union_kernel");
  }
  if (p.image_hits) {
    const int64_t pairs = p.K * s.num_entries;
    if (pairs == 0) return;
    score_image_hits_kernel<<<blocks_for(pairs), kThreadsPerBlock, 0, stream>>>(p, s);
    check_launch("score_image_hits_kernel");
  }
}

}  // namespace fd
