// TopQuantile's first-pass update on the GPU: histogram, min/max, floor, kept values. Same bins,
// floor rule and kept set as csrc/cpu/histogram_cpu.cpp (all from common/histogram_key.h).
// Include after cuda_runtime.h or emu/cuda_emu.h.
#pragma once

#include "../common/histogram_key.h"
#include "../common/histogram.h"
#include "launch.cuh"

namespace fd {
namespace {  // internal linkage: the CUDA and the emulated build of a kernel live in one library

template <typename scalar_t>
FD_HOST_DEVICE FD_INLINE double histogram_value(const HistogramParams& p, int64_t k, int64_t i) {
  const int64_t hw = p.h * p.w;
  const int64_t n = i / hw, y = (i % hw) / p.w, x = i % p.w;
  const scalar_t* a = static_cast<const scalar_t*>(p.act);
  return to_double(a[n * p.act_stride[0] + k * p.act_stride[1] + y * p.act_stride[2] + x * p.act_stride[3]]);
}

FD_HOST_DEVICE FD_INLINE bool is_finite(double v) { return v - v == 0.0; }

// Work item (k, i): value i of unit k into its histogram and min/max.
template <typename scalar_t>
__global__ void histogram_count_kernel(HistogramParams p, HistogramScratch s) {
  const int64_t values = p.N * p.h * p.w;
  FD_GRID_STRIDE(item, p.K * values) {
    const int64_t k = item / values;
    const double v = histogram_value<scalar_t>(p, k, item % values);
    if (!is_finite(v)) {
      atomic_add_i64(s.non_finite + k, 1);
      continue;
    }
    atomic_add_i64(p.counts + k * kHistBins + histogram_bin(v), 1);
    const long long key = double_key(v);
    atomicMin(reinterpret_cast<long long*>(s.min_max_key + 2 * k), key);
    atomicMax(reinterpret_cast<long long*>(s.min_max_key + 2 * k + 1), key);
  }
}

// Work item k: fold the batch's min/max into the state and raise the floor.
__global__ void histogram_floor_kernel(HistogramParams p, HistogramScratch s) {
  FD_GRID_STRIDE(k, p.K) {
    const double lo = key_to_double(s.min_max_key[2 * k]), hi = key_to_double(s.min_max_key[2 * k + 1]);
    if (lo < p.min_max[2 * k]) p.min_max[2 * k] = lo;
    if (hi > p.min_max[2 * k + 1]) p.min_max[2 * k + 1] = hi;
    p.floor_bin[k] = raised_floor(p.counts + k * kHistBins, p.floor_bin[k], p.keep_top);
    s.floor_value[k] = bin_lower_bound(p.floor_bin[k]);
  }
}

// Work item (k, i): keep value i of unit k when it is in the floor bin or above (never 0).
template <typename scalar_t>
__global__ void histogram_keep_kernel(HistogramParams p, HistogramScratch s) {
  const int64_t values = p.N * p.h * p.w;
  FD_GRID_STRIDE(item, p.K * values) {
    const int64_t k = item / values;
    const double v = histogram_value<scalar_t>(p, k, item % values);
    if (!(v >= s.floor_value[k]) || v == 0.0 || !is_finite(v)) continue;
    const int64_t slot = static_cast<int64_t>(
        atomicAdd(reinterpret_cast<unsigned long long*>(s.kept_count), 1ull));
    if (slot < s.capacity) {
      s.kept_values[slot] = v;
      s.kept_units[slot] = k;
    } else {
      atomicOr(s.overflow + k, 1);
    }
  }
}

// The launch plan of one histogram update: the GPU's geometry of every kernel, also the emulator's.
struct HistogramPlan {
  Launch count, floor, keep;
};

inline HistogramPlan histogram_plan(const HistogramParams& p) {
  const int64_t items = p.K * p.N * p.h * p.w;
  HistogramPlan plan;
  plan.count = grid_stride_launch("histogram_count_kernel", items);
  plan.floor = grid_stride_launch("histogram_floor_kernel", items > 0 ? p.K : 0);
  plan.keep = grid_stride_launch("histogram_keep_kernel", items);
  return plan;
}

// The update's kernels in order, each launched by `launch` with its plan's geometry.
template <typename Launcher>
void launch_histogram(const HistogramParams& p, const HistogramScratch& s, const Launcher& launch) {
  const HistogramPlan plan = histogram_plan(p);
  FD_DISPATCH_FLOAT(p.act_dtype, scalar_t, [&] { launch(plan.count, histogram_count_kernel<scalar_t>, p, s); });
  launch(plan.floor, histogram_floor_kernel, p, s);
  FD_DISPATCH_FLOAT(p.act_dtype, scalar_t, [&] { launch(plan.keep, histogram_keep_kernel<scalar_t>, p, s); });
}

}  // namespace
}  // namespace fd
