// Launchers only: the kernels are in histogram_kernels.cuh (also run by emu/histogram_emu.cpp).
#include <cuda_runtime.h>

#include "cuda_ops.h"
#include "histogram_kernels.cuh"

namespace fd {


void histogram_cuda(const HistogramParams& p, const HistogramScratch& s, uintptr_t stream_handle) {
  const int64_t items = p.K * p.N * p.h * p.w;
  if (items == 0) return;
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  FD_DISPATCH_FLOAT(p.act_dtype, scalar_t, [&] {
    histogram_count_kernel<scalar_t><<<blocks_for(items), kThreadsPerBlock, 0, stream>>>(p, s);
  });
  check_launch("histogram_count_kernel");
  histogram_floor_kernel<<<blocks_for(p.K), kThreadsPerBlock, 0, stream>>>(p, s);
  check_launch("histogram_floor_kernel");
  FD_DISPATCH_FLOAT(p.act_dtype, scalar_t, [&] {
    histogram_keep_kernel<scalar_t><<<blocks_for(items), kThreadsPerBlock, 0, stream>>>(p, s);
  });
  check_launch("histogram_keep_kernel");
}

}  // namespace fd
