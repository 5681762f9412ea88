// Launcher only: the kernels and their launch plan are in histogram_kernels.cuh (also run by
// emu/histogram_emu.cpp).
#include <cuda_runtime.h>

#include "cuda_ops.h"
#include "histogram_kernels.cuh"

namespace fd {

void histogram_cuda(const HistogramParams& p, const HistogramScratch& s, uintptr_t stream_handle) {
  launch_histogram(p, s, CudaLauncher{reinterpret_cast<cudaStream_t>(stream_handle)});
}

}  // namespace fd
