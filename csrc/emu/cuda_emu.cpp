#include "cuda_emu.h"

namespace fd {
namespace emu {
thread_local dim3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;
}  // namespace emu
}  // namespace fd
