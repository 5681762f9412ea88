// Bilinear upsampling with half-pixel centres and edge clamping (the semantics of
// torch.nn.functional.interpolate(mode="bilinear", align_corners=False)), evaluated in double:
//   out[y][x] = hl0[y] * (wl0[x] * a[y0][x0] + wl1[x] * a[y0][x1])
//             + hl1[y] * (wl0[x] * a[y1][x0] + wl1[x] * a[y1][x1])
// This exact order of operations is the definition every backend follows, so that masks agree bit
// for bit between backends (build with -ffp-contract=off: a fused multiply-add would change it).
#pragma once

#include <cfloat>

#include "macros.h"

namespace fd {

// Source taps of one output coordinate along one axis.
struct LinearTap {
  int64_t i0, i1;  // source indices, i1 == i0 at the far edge
  double l0, l1;   // weights, l0 = 1 - l1
};

FD_HOST_DEVICE FD_INLINE LinearTap linear_tap(int64_t out_index, int64_t in_size, int64_t out_size) {
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  double src = scale * (static_cast<double>(out_index) + 0.5) - 0.5;
  if (src < 0.0) src = 0.0;
  LinearTap t;
  t.i0 = static_cast<int64_t>(src);
  if (t.i0 > in_size - 1) t.i0 = in_size - 1;
  t.i1 = t.i0 + (t.i0 < in_size - 1 ? 1 : 0);
  double l1 = src - static_cast<double>(t.i0);
  l1 = l1 < 0.0 ? 0.0 : (l1 > 1.0 ? 1.0 : l1);
  t.l1 = l1;
  t.l0 = 1.0 - l1;
  return t;
}

FD_HOST_DEVICE FD_INLINE double lerp_pair(double l0, double a0, double l1, double a1) {
  return l0 * a0 + l1 * a1;
}

// Every source value <= hot_floor(T) implies every bilinear sample <= T, including the rounding of
// the blend above (each of its ~7 roundings can push a sample at most one unit in the last place
// beyond the largest source value). Sources above it are "hot": only their neighbourhoods are
// evaluated; everything else is provably off, so skipping it is exact.
FD_HOST_DEVICE FD_INLINE double hot_floor(double threshold) {
  const double margin = 8.0 * DBL_EPSILON * (threshold < 0 ? -threshold : threshold) + 16.0 * DBL_TRUE_MIN;
  if (threshold >= 0.0) {
    // Non-positive sources blend to a non-positive sample: never above a threshold >= 0.
    const double lo = threshold - margin;
    return lo > 0.0 ? lo : 0.0;
  }
  return threshold - margin;
}

// Bound on |computed - real| of one blended sample whose sources are at most `max_abs` in magnitude
// (about ten roundings of relative size 2^-53, doubled for safety, plus subnormal slack). Along an
// output row, between two source columns, the real blend is monotone in x, so a run whose computed
// end values both lie more than twice this bound on one side of T lies entirely on that side.
FD_HOST_DEVICE FD_INLINE double blend_error_bound(double max_abs) {
  return 16.0 * DBL_EPSILON * max_abs + 64.0 * DBL_TRUE_MIN;
}

}  // namespace fd
