// The CPU score kernel's pieces shared by its three files: the driver (score_cpu.cpp: maps to
// tallies), the bilinear mask (score_bilinear.cpp: the definition of upsample.h, with its exact
// shortcuts) and the Pillow mask (score_pillow.cpp: NetDissect-Lite's resampling). Internal to them.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/bitpack.h"
#include "../common/upsample.h"
#include "cpu_ops.h"

namespace fd {
namespace score_detail {

#ifdef FD_EXHAUSTIVE
constexpr bool kExhaustiveBuild = true;  // FASTDISSECT_EXHAUSTIVE=ON: the brute evaluation only
#else
constexpr bool kExhaustiveBuild = false;
#endif

// Geometry shared by every (image, unit): taps per output row/column and, per source column,
// the span of output columns whose taps read it.
struct Geometry {
  std::vector<LinearTap> ty, tx;
  std::vector<int64_t> col_first, col_last;  // [w], empty span = (W, -1)
  // [W] last output column of x's run: the same source taps and a weight affine in x (the columns
  // clamped to the left edge, weight 0, form a run of their own)
  std::vector<int64_t> run_last;
  std::vector<int64_t> row_run_last;         // [H] last output row with the same source taps

  Geometry(int64_t h, int64_t w, int64_t H, int64_t W);  // score_bilinear.cpp
};

// Pillow mode (NetDissect-Lite's masks): per source column / row, the span of output columns /
// rows whose Pillow window holds it (empty when none does), so that only pixels whose window holds
// a hot source are evaluated.
struct PillowGeometry {
  std::vector<int64_t> col_first, col_last;  // [w], empty span = (W, -1)
  std::vector<int64_t> row_first, row_last;  // [h], empty span = (H, -1)

  explicit PillowGeometry(const ScoreParams& p);  // score_pillow.cpp
};

// Per-thread scratch, sized once.
struct Workspace {
  std::vector<double> src;        // [h, w] the map in double
  std::vector<int64_t> hot_lo, hot_hi;  // [h] per source row: its hot source columns, empty = (w, -1)
                                        // (Pillow mode: the output columns they reach, empty = (W, -1))
  std::vector<double> h0, h1;     // [W] the horizontal pass of one block's two source rows
  std::vector<uint64_t> mask;     // [words_per_mask], all zero between uses
  std::vector<char> cat_hit;      // [G]
  // The current map's non-zero mask words, gathered once and counted against every entry of both
  // mask sets (the labels' and the permuted control's): their indices and values.
  std::vector<int64_t> nz_index;  // [words_per_mask]
  std::vector<uint64_t> nz_word;  // [words_per_mask]
  std::vector<int64_t> meeting;   // the entries of an image whose span meets the map's (grown as needed)
  std::vector<int64_t> no_hits = std::vector<int64_t>(1);  // the image-hit counter of a call without them
  std::vector<float> pil_rows;    // [h, W] Pillow mode: the horizontal pass
  std::vector<float> pil_column;  // [W] Pillow mode: one output row's pixels
  std::vector<float> pil_row_max; // [h] Pillow mode: each source row's largest horizontal value
  // Testing mode (ScoreParams::branch_counts): branches taken, and whether a map left the scratch
  // mask dirty (checked after every map; debug builds check it always).
  bool counting;
  int64_t branches[kNumScoreBranches] = {};
  bool dirty_scratch = false;

  Workspace(const ScoreParams& p)
      : src(p.h * p.w), hot_lo(p.h), hot_hi(p.h), h0(p.W), h1(p.W),
        mask(p.words_per_mask, 0), cat_hit(std::max<int64_t>(p.G, 1)), nz_index(p.words_per_mask),
        nz_word(p.words_per_mask),
        pil_rows(p.pil_x_first ? p.h * p.W : 0), pil_column(p.pil_x_first ? p.W : 0),
        pil_row_max(p.pil_x_first ? p.h : 0), counting(p.branch_counts != nullptr) {}

  void count(ScoreBranch b) {
    if (counting) ++branches[b];
  }
  void check_scratch_zero() {
#ifndef FD_DEBUG_CHECKS
    if (!counting) return;
#endif
    for (uint64_t word : mask) dirty_scratch |= word != 0;
  }
};

// Largest value of one map, read in its storage type (widening to double is exact and monotone).
// Four running maxima break the dependency chain: most maps are settled by this alone.
template <typename scalar_t>
double map_peak(const ScoreParams& p, int64_t n, int64_t k) {
  const scalar_t* base = static_cast<const scalar_t*>(p.act) + n * p.act_stride[0] + k * p.act_stride[1];
  double m[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
  if (p.act_stride[3] == 1 && p.act_stride[2] == p.w) {
    const int64_t size = p.h * p.w;
    int64_t i = 0;
    for (; i + 4 <= size; i += 4)
      for (int j = 0; j < 4; ++j) m[j] = std::max(m[j], to_double(base[i + j]));
    for (; i < size; ++i) m[0] = std::max(m[0], to_double(base[i]));
  } else {
    for (int64_t i = 0; i < p.h; ++i)
      for (int64_t j = 0; j < p.w; ++j)
        m[j & 3] = std::max(m[j & 3], to_double(base[i * p.act_stride[2] + j * p.act_stride[3]]));
  }
  return std::max(std::max(m[0], m[1]), std::max(m[2], m[3]));
}

template <typename scalar_t>
void load_map(const ScoreParams& p, int64_t n, int64_t k, double* dst) {
  const scalar_t* base = static_cast<const scalar_t*>(p.act) + n * p.act_stride[0] + k * p.act_stride[1];
  if (p.act_stride[3] == 1 && p.act_stride[2] == p.w) {  // contiguous map: one flat, vectorisable loop
    for (int64_t i = 0; i < p.h * p.w; ++i) dst[i] = to_double(base[i]);
    return;
  }
  for (int64_t i = 0; i < p.h; ++i)
    for (int64_t j = 0; j < p.w; ++j) dst[i * p.w + j] = to_double(base[i * p.act_stride[2] + j * p.act_stride[3]]);
}

// The set bits of one map's mask and the word span [first, last) they touch.
struct MaskWriter {
  uint64_t* mask;
  int64_t W, first, last;

  void set_range(int64_t y, int64_t x0, int64_t x1) {  // pixels (y, x0..x1)
    set_bit_range(mask, y * W + x0, y * W + x1);
    touch(y, x0, y, x1);
  }
  void set_if(int64_t y, int64_t x, bool on) {
    mask[(y * W + x) / kBitsPerWord] |= bit_if(on, y * W + x);
  }
  void touch(int64_t y0, int64_t x0, int64_t y1, int64_t x1) {
    first = std::min(first, (y0 * W + x0) / kBitsPerWord);
    last = std::max(last, (y1 * W + x1) / kBitsPerWord + 1);
  }
};

// The thresholded mask of map (n, k) into ws.mask, and the touched word span [first, last), first ==
// last when no pixel is on: the bilinear definition (score_bilinear.cpp) or, with ScoreParams'
// Pillow tables, Pillow's resampling (score_pillow.cpp). Instantiated for every activation type.
template <typename scalar_t>
void mask_of_map(const ScoreParams& p, const Geometry& g, int64_t n, int64_t k, Workspace& ws, int64_t* first_word,
                 int64_t* last_word);
template <typename scalar_t>
void mask_of_map_pillow(const ScoreParams& p, const PillowGeometry& g, int64_t n, int64_t k, Workspace& ws,
                        int64_t* first_word, int64_t* last_word);

// Instantiates X(scalar_t) for every activation type of FD_DISPATCH_FLOAT.
#define FD_FOR_EACH_ACT_TYPE(X) X(float) X(double) X(::fd::Half) X(::fd::BFloat16)

}  // namespace score_detail
}  // namespace fd
