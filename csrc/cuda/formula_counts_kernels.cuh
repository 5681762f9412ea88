// The formula popcounts as a CUDA kernel: one work item per (formula, image) entry, integer
// atomics into the [B, C] counts, so the result equals the CPU backend's whatever the order.
// Include after cuda_runtime.h or emu/cuda_emu.h.
#pragma once

#include "../common/formula_counts.h"
#include "launch.cuh"

namespace fd {
namespace {  // internal linkage: the CUDA and the emulated build of a kernel live in one library

// The formula owning entry j: the last b with f_offsets[b] <= j (formulas may be empty).
FD_HOST_DEVICE FD_INLINE int64_t formula_of_entry(const FormulaCountsParams& p, int64_t j) {
  int64_t lo = 0, hi = p.B;  // f_offsets[lo] <= j < f_offsets[hi]
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (p.f_offsets[mid] <= j) lo = mid; else hi = mid;
  }
  return lo;
}

__global__ void formula_counts_kernel(FormulaCountsParams p) {
  const int64_t words = p.words_per_mask;
  FD_GRID_STRIDE(j, p.f_offsets[p.B]) {
    const int64_t b = formula_of_entry(p, j);
    const int64_t n = p.f_images[j];
    const uint64_t* f = row_or_whole(p.f_words, p.f_rows[j], words);
    const uint64_t* u = p.f_unit_rows[j] >= 0 ? p.u_words + p.f_unit_rows[j] * words : nullptr;
    for (int64_t e = p.offsets[n]; e < p.offsets[n + 1]; ++e) {
      const PairCounts c = pair_counts(f, u, row_or_whole(p.words, p.mask_rows[e], words), words, p.hw);
      if (c.fl) atomic_add_i64(p.fl + b * p.C + p.concept_ids[e], c.fl);
      if (c.flu) atomic_add_i64(p.flu + b * p.C + p.concept_ids[e], c.flu);
    }
  }
}

// The launch plan of one formula-count call; `entries` = p.f_offsets[p.B], read by the caller.
struct FormulaCountsPlan {
  Launch counts;
};

inline FormulaCountsPlan formula_counts_plan(const FormulaCountsParams&, int64_t entries) {
  return FormulaCountsPlan{grid_stride_launch("formula_counts_kernel", entries)};
}

template <typename Launcher>
void launch_formula_counts(const FormulaCountsParams& p, int64_t entries, const Launcher& launch) {
  launch(formula_counts_plan(p, entries).counts, formula_counts_kernel, p);
}

}  // namespace
}  // namespace fd
