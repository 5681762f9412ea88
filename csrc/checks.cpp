// The checks of checks.h, one function per op.
#include "checks.h"

namespace fd {

using checks::not_negative;
using checks::present;
using checks::require;

namespace {

// The permuted control's fields (ScoreParams::ctl_*): all of its mask set and outputs, or none.
void check_score_control(const ScoreParams& p) {
  const char* op = "score";
  const bool any = p.ctl_offsets || p.ctl_concept_ids || p.ctl_mask_rows || p.ctl_words || p.ctl_intersection ||
                   p.ctl_unit_area || p.ctl_unit_category_area || p.ctl_image_hits;
  if (!any) return;
  present(p.ctl_offsets, op, "ctl_offsets (the control's mask set, as its other ctl_ fields are set)");
  const bool entries = p.N > 0 && p.ctl_offsets[p.N] > 0;
  present(p.ctl_concept_ids, op, "ctl_concept_ids", entries);
  present(p.ctl_mask_rows, op, "ctl_mask_rows", entries);
  present(p.ctl_intersection, op, "ctl_intersection", p.K * p.C > 0);
  present(p.ctl_unit_area, op, "ctl_unit_area", p.K > 0);
  if (p.union_mode != UnionMode::kGlobal) present(p.ctl_unit_category_area, op, "ctl_unit_category_area", p.K > 0);
  require(!p.ctl_image_hits || p.image_hits, op,
          "params.ctl_image_hits needs params.image_hits (the control counts what the labels count)");
}

}  // namespace

void check_score(const ScoreParams& p) {
  const char* op = "score";
  checks::activations(p, op);
  present(p.thresholds, op, "thresholds", p.K > 0);
  require(p.H >= 1 && p.W >= 1, op, "params.H and params.W (the label size) must be >= 1");
  checks::concept_masks(p, op, p.H * p.W);
  present(p.intersection, op, "intersection", p.K * p.C > 0);
  present(p.unit_area, op, "unit_area", p.K > 0);
  const int mode = static_cast<int>(p.union_mode);
  require(mode >= 0 && mode <= static_cast<int>(UnionMode::kLite), op,
          "params.union_mode is not a union code: " + std::to_string(mode));
  if (p.union_mode != UnionMode::kGlobal) {
    present(p.categories, op, "categories", p.C > 0);
    present(p.unit_category_area, op, "unit_category_area", p.K > 0);
    require(p.G > 0, op, "params.G (categories) must be > 0 for this union");
  }
  check_score_control(p);
  if (p.pil_x_first) {
    present(p.pil_x_weights, op, "pil_x_weights");
    present(p.pil_y_first, op, "pil_y_first");
    present(p.pil_y_weights, op, "pil_y_weights");
    require(p.pil_x_taps > 0 && p.pil_y_taps > 0, op, "params.pil_x_taps and pil_y_taps must be > 0");
  }
}

void check_score_scratch(const ScoreParams& p, const ScoreScratch& s) {
  const char* op = "score (CUDA kernels)";
  present(s.map_scale, op, "scratch.map_scale", p.N * p.K > 0);
  present(s.taps, op, "scratch.taps");
  if (p.union_mode != UnionMode::kGlobal) present(s.map_area, op, "scratch.map_area", p.N * p.K > 0);
  if (p.union_mode == UnionMode::kLite) present(s.hit, op, "scratch.hit", p.N * p.K > 0);
  if (p.image_hits) {
    present(s.entry_hit, op, "scratch.entry_hit", p.K > 0);
    not_negative(s.num_entries, op, "scratch.num_entries");
  }
  if (p.ctl_offsets && p.union_mode == UnionMode::kLite) present(s.ctl_hit, op, "scratch.ctl_hit", p.N * p.K > 0);
  if (p.ctl_image_hits) {
    present(s.ctl_entry_hit, op, "scratch.ctl_entry_hit", p.K > 0);
    not_negative(s.ctl_num_entries, op, "scratch.ctl_num_entries");
  }
  require(!p.pil_x_first && !p.exhaustive && !p.branch_counts, op,
          "the CUDA kernels have no Pillow resampling (params.pil_*) or testing switches "
          "(params.exhaustive, params.branch_counts)");
}

void check_histogram(const HistogramParams& p) {
  const char* op = "histogram";
  checks::activations(p, op);
  present(p.floor_bin, op, "floor_bin", p.K > 0);
  present(p.counts, op, "counts", p.K > 0);
  present(p.min_max, op, "min_max", p.K > 0);
}

void check_histogram_scratch(const HistogramParams& p, const HistogramScratch& s) {
  const char* op = "histogram (CUDA kernels)";
  present(s.min_max_key, op, "scratch.min_max_key", p.K > 0);
  present(s.non_finite, op, "scratch.non_finite", p.K > 0);
  present(s.floor_value, op, "scratch.floor_value", p.K > 0);
  present(s.kept_count, op, "scratch.kept_count");
  present(s.overflow, op, "scratch.overflow", p.K > 0);
  not_negative(s.capacity, op, "scratch.capacity");
  if (s.capacity > 0) {
    present(s.kept_values, op, "scratch.kept_values");
    present(s.kept_units, op, "scratch.kept_units");
  }
}

void check_formula_counts(const FormulaCountsParams& p) {
  const char* op = "formula_counts";
  not_negative(p.B, op, "B");
  require(p.hw >= 1, op, "params.hw (pixels per image) must be >= 1");
  require(p.C > 0, op, "params.C (concepts) must be > 0");
  checks::concept_masks(p, op, p.hw);
  present(p.f_offsets, op, "f_offsets");
  present(p.fl, op, "fl", p.B > 0);  // the entries' arrays may be empty
  present(p.flu, op, "flu", p.B > 0);
}

void check_pair_counts(const PairCountsParams& p) {
  const char* op = "pair_counts";
  not_negative(p.B, op, "B");
  require(p.hw >= 1, op, "params.hw (pixels per image) must be >= 1");
  require(p.C > 0, op, "params.C (concepts) must be > 0");
  checks::concept_masks(p, op, p.hw);
  require(p.P > 0, op, "params.P (leaves) must be > 0");
  require(p.N > 0, op, "params.N (images) must be > 0");
  require(p.unit_only == 0 || p.unit_only == 1, op, "params.unit_only must be 0 or 1");
  present(p.leaf_offsets, op, "leaf_offsets");
  present(p.unit_rows, op, "unit_rows");
  present(p.pair_a, op, "pair_a", p.B > 0);
  present(p.pair_b, op, "pair_b", p.B > 0);
  present(p.t, op, "t", p.B > 0);
  present(p.tu, op, "tu", p.B > 0);
}

void check_union_iou(const UnionIouParams& p) {
  const char* op = "union_iou";
  not_negative(p.K, op, "K");
  not_negative(p.C, op, "C");
  not_negative(p.G, op, "G");
  const bool tables = p.K * p.C > 0;
  present(p.intersection, op, "intersection", tables);
  present(p.unit_term, op, "unit_term", p.K > 0);
  present(p.concept_area, op, "concept_area", p.C > 0);
  present(p.union_out, op, "union_out", tables);
  present(p.iou_out, op, "iou_out", tables);
  require(!p.categories || p.G > 0 || p.C == 0, op, "params.G must be > 0 with params.categories");
}

void check_png_labels(const PngLabelsParams& p) {
  const char* op = "png_labels";
  present(p.raw, op, "raw");
  present(p.scratch, op, "scratch");
  present(p.labels, op, "labels");
  require(p.height > 0 && p.width > 0, op, "params.height and params.width must be > 0");
  require(p.channels == 3 || p.channels == 4, op,
          "params.channels must be 3 (RGB) or 4 (RGBA), got " + std::to_string(p.channels));
}

void check_tiles(const TilesParams& p) {
  const char* op = "tiles";
  not_negative(p.M, op, "M");
  require(p.height > 0 && p.width > 0, op, "params.height and params.width must be > 0");
  require(p.words_per_mask == words_for_pixels(p.height * p.width), op,
          "params.words_per_mask must be ceil(height * width / 64)");
  require(p.out_row >= p.width, op, "params.out_row must be at least params.width");
  const bool tiles = p.M > 0;
  present(p.masks, op, "masks", tiles);
  present(p.bright, op, "bright", tiles);
  present(p.dim, op, "dim", tiles);
  present(p.thumbnail, op, "thumbnail", tiles);
  present(p.out, op, "out", tiles);
  present(p.offset, op, "offset", tiles);
}

}  // namespace fd
