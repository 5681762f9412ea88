// The histogram op's parameters (the first pass of TopQuantile: cpu/histogram_cpu.cpp and the
// CUDA histogram kernels) and the CUDA kernels' scratch.
#pragma once

#include "dtype.h"

namespace fd {

// One batch of values for the per-unit streaming histogram. Values of unit k are
// act[n, k, y, x] for all n, y, x (a (M, K) input arrives as (M, K, 1, 1)).
struct HistogramParams {
  const void* act;
  DType act_dtype;
  int64_t N, K, h, w;
  int64_t act_stride[4];
  int32_t* floor_bin;        // (K,) values in bins >= floor_bin[k] (except the zero bin) are kept;
                             // afterwards raised to the bin holding the top keep_top values
  int64_t keep_top;          // <= 0: leave floors as they are
  int64_t* counts;           // (K, kHistBins) accumulated
  double* min_max;           // (K, 2) running min and max, accumulated
};

// Scratch and outputs of one GPU histogram update, all in device memory.
struct HistogramScratch {
  int64_t* min_max_key;  // [K, 2] batch min / max as double_key (atomicMin / atomicMax), preset to +-max
  int64_t* non_finite;   // [K] NaN / inf values seen (accumulated; reported when thresholds are read)
  double* floor_value;   // [K] bin_lower_bound of the new floor
  double* kept_values;   // [capacity] kept values, any order
  int64_t* kept_units;   // [capacity] their units
  int64_t* kept_count;   // [1] values kept (may exceed capacity)
  int64_t capacity;
  int* overflow;         // [K] set when a kept value did not fit: the unit's kept set is incomplete
};

}  // namespace fd
