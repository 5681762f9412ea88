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

}  // namespace fd
