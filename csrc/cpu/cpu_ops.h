#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/formula_counts.h"
#include "../common/histogram.h"
#include "../common/pair_counts.h"
#include "../common/png_labels.h"
#include "../common/score.h"
#include "../common/tiles.h"
#include "../common/union_iou.h"

namespace fd {

// Threads for `items` independent pieces of work: at least one, never more than there are pieces.
inline int threads_for(int n_threads, int64_t items) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_threads, items)));
}

// Adds one batch of activations scored against its concept masks into p's accumulators.
// Deterministic: every output row (unit) is owned by one thread.
void score_cpu(const ScoreParams& p, int n_threads);

// Adds |F_b & L_c| and |F_b & U_b & L_c| of FormulaCountsParams (formula_counts.h) into p.fl / p.flu.
// Deterministic: every formula's rows are owned by one thread.
void formula_counts_cpu(const FormulaCountsParams& p, int n_threads);

// Adds |A_i & B_i & L_c| and |A_i & B_i & U & L_c| of PairCountsParams (pair_counts.h) into p.t / p.tu.
// Deterministic: every pair's rows are owned by one thread.
void pair_counts_cpu(const PairCountsParams& p, int n_threads);

// The union and IoU tables of UnionIouParams (union_iou.h).
void union_iou_cpu(const UnionIouParams& p, int n_threads);

// Adds one batch into the per-unit histograms and returns the values each unit keeps exactly:
// kept[k] holds unit k's values in bins >= floor_bin[k] other than the zero bin, in input order.
// Returns false, with bad_units[k] = 1 for each unit holding NaN or inf, and changes nothing when
// the batch is not finite.
bool histogram_cpu(const HistogramParams& p, int n_threads, std::vector<std::vector<double>>& kept,
                   uint8_t* bad_units);

// Labels of one inflated PNG (PngLabelsParams, png_labels.h); returns -1, or the first row whose
// filter type is unknown (nothing after it is written).
int64_t png_labels_cpu(const PngLabelsParams& p);

// Draws the report's tiles (TilesParams, tiles.h) into their strips; tiles never overlap.
void tiles_cpu(const TilesParams& p, int n_threads);

}  // namespace fd
