// Launcher only: the kernels and their launch plan are in score_kernels.cuh (also run by
// emu/score_emu.cpp).
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
  launch_score(p, s, CudaLauncher{reinterpret_cast<cudaStream_t>(stream_handle)});
}

}  // namespace fd
