// The CUDA histogram kernels, compiled for the host against emu/cuda_emu.h.
#include "cuda_emu.h"

#include "../cuda/cuda_ops.h"
#include "../cuda/histogram_kernels.cuh"

namespace fd {

void histogram_cuda_emu(const HistogramParams& p, const HistogramScratch& s, int n_threads) {
  const int64_t items = p.K * p.N * p.h * p.w;
  if (items == 0) return;
  FD_DISPATCH_FLOAT(p.act_dtype, scalar_t, [&] {
    emu::launch(n_threads, dim3(blocks_for(items)), dim3(kThreadsPerBlock), histogram_count_kernel<scalar_t>, p, s);
  });
  emu::launch(n_threads, dim3(blocks_for(p.K)), dim3(kThreadsPerBlock), histogram_floor_kernel, p, s);
  FD_DISPATCH_FLOAT(p.act_dtype, scalar_t, [&] {
    emu::launch(n_threads, dim3(blocks_for(items)), dim3(kThreadsPerBlock), histogram_keep_kernel<scalar_t>, p, s);
  });
}

}  // namespace fd
