// The pair counts as a CUDA kernel: one work item per (pair, image of its leaf a), integer atomics
// into the [B, C] counts, so the result equals the CPU backend's whatever the order.
// Include after cuda_runtime.h or emu/cuda_emu.h.
#pragma once

#include "../common/pair_counts.h"
#include "launch.cuh"

namespace fd {
namespace {  // internal linkage: the CUDA and the emulated build of a kernel live in one library

// Work item j is image j - item_offsets[i] of pair i's leaf a; item_offsets[B] items in all.
struct PairCountsItems {
  const int64_t* item_offsets;  // [B + 1]
};

// The pair owning item j: the last i with item_offsets[i] <= j (pairs may have no items).
FD_HOST_DEVICE FD_INLINE int64_t pair_of_item(const int64_t* item_offsets, int64_t B, int64_t j) {
  int64_t lo = 0, hi = B;  // item_offsets[lo] <= j < item_offsets[hi]
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (item_offsets[mid] <= j) lo = mid; else hi = mid;
  }
  return lo;
}

__global__ void pair_counts_kernel(PairCountsParams p, PairCountsItems items, int64_t total) {
  FD_GRID_STRIDE(j, total) {
    const int64_t i = pair_of_item(items.item_offsets, p.B, j);
    const int64_t ea = p.leaf_offsets[p.pair_a[i]] + (j - items.item_offsets[i]);
    pair_image(p, i, ea, [&](int64_t c, const PairCounts& n) {
      atomic_add_i64(p.t + i * p.C + c, n.fl);
      if (n.flu) atomic_add_i64(p.tu + i * p.C + c, n.flu);
    });
  }
}

// The launch plan of one pair-count call; `total` = item_offsets[B], read by the caller.
struct PairCountsPlan {
  Launch counts;
};

inline PairCountsPlan pair_counts_plan(const PairCountsParams&, int64_t total) {
  return PairCountsPlan{grid_stride_launch("pair_counts_kernel", total)};
}

template <typename Launcher>
void launch_pair_counts(const PairCountsParams& p, const PairCountsItems& items, int64_t total,
                        const Launcher& launch) {
  launch(pair_counts_plan(p, total).counts, pair_counts_kernel, p, items, total);
}

}  // namespace
}  // namespace fd
