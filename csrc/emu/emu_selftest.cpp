// A kernel that exercises every emulated built-in, for tests/test_cuda_emu.py: the shims are
// checked on their own, not only through the kernels that use them.
#include "cuda_emu.h"


namespace fd {
namespace {

struct ShimOutputs {
  int64_t* visits;    // [items] times each item was visited by the grid-stride loop
  int64_t* sum;       // [1] atomicAdd (int64 via unsigned long long) of all item values
  int* bits;          // [items / 32 + 1] atomicOr of bit (item % 32)
  long long* lo_hi;   // [2] atomicMin / atomicMax of (item * 7919) % 1000 - 500
  int64_t* last_index;  // [items] blockIdx.x * blockDim.x + threadIdx.x that visited the item
};

__global__ void shim_kernel(ShimOutputs out, int64_t items) {
  FD_GRID_STRIDE(i, items) {
    atomic_add_i64(out.visits + i, 1);
    atomic_add_i64(out.sum, i);
    atomicOr(out.bits + i / 32, 1 << (i % 32));
    const long long v = (i * 7919) % 1000 - 500;
    atomicMin(out.lo_hi, v);
    atomicMax(out.lo_hi + 1, v);
    out.last_index[i] = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  }
}

// Each thread writes its slot, then reads its right neighbour's, then (after its neighbours read)
// overwrites its own with twice that: out[b * T + t] = 2 * (1000 b + t) only if every thread passes
// each barrier after all threads of its block reached it.
__global__ void barrier_kernel(int64_t* out) {
  __shared__ int64_t slots[1024];
  const int64_t t = threadIdx.x, threads = blockDim.x;
  slots[t] = static_cast<int64_t>(blockIdx.x) * 1000 + t;
  __syncthreads();
  const int64_t right = slots[(t + 1) % threads];
  __syncthreads();
  slots[t] = 2 * right;
  __syncthreads();
  out[blockIdx.x * threads + t] = slots[(t + threads - 1) % threads];
}

}  // namespace

void emu_barrier_selftest(unsigned blocks, unsigned threads, int n_threads, int64_t* out, bool barriers) {
  if (barriers) {
    emu::launch_blocks(n_threads, "barrier_kernel", dim3(blocks), dim3(threads), barrier_kernel, out);
  } else {
    emu::launch(n_threads, "barrier_kernel", dim3(blocks), dim3(threads), barrier_kernel, out);  // must throw
  }
}

void emu_shim_selftest(int64_t items, unsigned blocks, unsigned threads, int n_threads, int64_t* visits,
                       int64_t* sum, int* bits, long long* lo_hi, int64_t* last_index) {
  emu::launch(n_threads, "shim_kernel", dim3(blocks), dim3(threads), shim_kernel, ShimOutputs{visits, sum, bits, lo_hi, last_index},
              items);
}

}  // namespace fd
