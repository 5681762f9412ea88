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

// ---- Why the shortcuts are exact
// The CPU score kernel (cpu/score_bilinear.cpp) decides most pixels without evaluating them. Each
// decision rests on one of the bounds below; `ScoreParams::exhaustive` (or the build option
// FASTDISSECT_EXHAUSTIVE) turns every shortcut off, and tests/test_score_shortcuts.py compares the
// two over many seeds and geometries, checking that every branch was taken.
//
// Notation: u = DBL_EPSILON / 2, the unit roundoff. A sample is computed as
//   S = fl(fl(l0y * h0) + fl(l1y * h1)),  h0 = fl(fl(l0x * a) + fl(l1x * b)),  h1 likewise (c, d),
// six roundings, with the computed weights l1 in [0, 1] and l0 = fl(1 - l1), so l0 + l1 = 1 + d,
// |d| <= u. Rounding is monotone, and each rounding of a normal result is a relative error of at
// most u; a subnormal result is off by at most DBL_TRUE_MIN / 2 in absolute terms.
//
// (1) Cold sources, hot_floor(T). If every source is <= M, then S <= M * (1 + u)^8 when M > 0
//     (two weight sums, six roundings), S <= 0 when M <= 0, and S <= M * (1 - 8u) when M < 0.
//     With M <= T - 8 eps |T| - 16 DBL_TRUE_MIN this gives S <= T in every case, with room to
//     spare (8 eps = 16u against the 8u needed), and the subnormal slack covers six absolute
//     errors. For T >= 0 the floor is clamped at 0 because non-positive sources give S <= 0 <= T.
//     So a map whose peak is <= hot_floor(T) is off everywhere (kColdMap), and so is a block of
//     rows whose two source rows hold no hot value (kNoHotSource).
// (2) Blocks. Let R be the real blend with the computed weights: a combination of the block's
//     four sources a, b, c, d with non-negative weights summing to (1 + d)^2, so R lies within
//     [lo, hi] widened by 2u * max|source|. The six roundings move S from R by at most
//     ~6u * max|S|. Hence |S - [lo, hi]| <= 8u * max_abs + 3 DBL_TRUE_MIN; blend_error_bound
//     (16 eps * max_abs + 64 DBL_TRUE_MIN = 32u * max_abs + ...) is four times that, and the
//     kernel's margin is twice blend_error_bound. A block with hi <= T - margin is off
//     (kBlockOff), one with lo > T + margin is on (kBlockOn).
// (3) Rows of a straddling block. Within a run (output columns between the same two source
//     columns with the same edge clamping) l1x is a monotone function of x (computed from an
//     affine source coordinate by monotone roundings, i0 fixed), and R is affine in l1x up to
//     the 2u * max_abs of the weight sums, so R is monotone along the run up to that term.
//     If both computed ends are <= T - margin (kRowOff), both real ends are <= T - margin/2 + 2u
//     max_abs, every R in between is too, and every S <= T. Symmetrically for kRowOn.
// (4) A row that crosses T (kRowCrossing). A pixel with S > T + margin has R above T by more than
//     the error, so by monotonicity every later pixel of a rising run has S > T: the walk stops
//     there and the rest of the run is set whole (and falling runs the other way). Pixels
//     before the proof are evaluated exactly. Rows whose ends lie within 2 * margin of each other
//     carry no usable slope and are evaluated pixel by pixel (kRowExact).
// Max_abs is bounded by max(|least source|, |peak|) of the map, read before the blocks.
// (5) Float32 screening (the CUDA kernel: consumer GPUs run float64 at 1/64 rate). S32 is the same
//     expression evaluated in float: sources and weights rounded to float (relative error at most
//     v = FLT_EPSILON / 2 each; exact for float, half and bfloat16 sources), six float roundings.
//     With A = max|source| of the map: rounding the weights moves each pass by <= 1.01 v A,
//     rounding the sources by <= 1.01 v A, the six roundings by <= 6.1 v A + 3 FLT_TRUE_MIN, so
//     |S32 - R| <= 9.2 v A + 3 FLT_TRUE_MIN and, with (2), |S32 - S| <= 10 v A + 4 FLT_TRUE_MIN.
//     margin = screen_margin(max(A, |T|)) (16 FLT_EPSILON B + 64 FLT_TRUE_MIN = 32 v B + ...) is at
//     least three times that: a pixel with S32 > T + margin has S > T, one with S32 <= T - margin
//     has S <= T, and only pixels between are evaluated in double. The kernel compares S32 in float
//     against T +- 2 margin rounded to float; the rounding moves them by at most v |T +- 2 margin|,
//     less than margin, so its tests imply the two above. Maps with max(A, |T|) > kScreenMaxAbs
//     (float would overflow) are evaluated in double throughout.

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
// (see (2) above: four times the derived bound, plus subnormal slack).
FD_HOST_DEVICE FD_INLINE double blend_error_bound(double max_abs) {
  return 16.0 * DBL_EPSILON * max_abs + 64.0 * DBL_TRUE_MIN;
}

// The margin of bound (5), for max_abs = max(A, |T|).
constexpr double kScreenMaxAbs = FLT_MAX / 4;
FD_HOST_DEVICE FD_INLINE double screen_margin(double max_abs) {
  return 16.0 * static_cast<double>(FLT_EPSILON) * max_abs + 64.0 * static_cast<double>(FLT_TRUE_MIN);
}

}  // namespace fd
