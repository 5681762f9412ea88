// The argument checks of every op, `check_<op>`, run by its bindings before any kernel: what the
// kernels index by (pointers present, sizes, dtype and enum codes, strides, the packed-mask word
// count). A failure is std::invalid_argument, a Python ValueError naming the op and the field of its
// Params, never a crash. dispatch.py checks the tensors these fields come from; these checks keep a
// wrong call from reaching a kernel.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/bitpack.h"
#include "common/formula_counts.h"
#include "common/pair_counts.h"
#include "common/histogram.h"
#include "common/png_labels.h"
#include "common/score.h"
#include "common/tiles.h"
#include "common/union_iou.h"

namespace fd {
namespace checks {

inline void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

// A pointer the kernel reads: null is refused unless the array is empty (`needed` false), as an
// empty tensor's data_ptr() is null.
inline void present(const void* pointer, const char* op, const char* field, bool needed = true) {
  require(pointer != nullptr || !needed, op, std::string("params.") + field + " is required (null)");
}

inline void not_negative(int64_t v, const char* op, const char* field) {
  require(v >= 0, op, std::string("params.") + field + " must be >= 0, got " + std::to_string(v));
}

// The (N, K, h, w) activation view that set_activations fills.
template <typename P>
void activations(const P& p, const char* op) {
  const int code = static_cast<int>(p.act_dtype);
  require(code >= 0 && code <= static_cast<int>(DType::kBFloat16), op,
          "params.act_dtype is not a dtype code: " + std::to_string(code));
  not_negative(p.N, op, "N");
  not_negative(p.K, op, "K");
  require(p.h >= 1 && p.w >= 1, op, "params.h and params.w (the map size) must be >= 1, got " +
                                        std::to_string(p.h) + " x " + std::to_string(p.w));
  for (int i = 0; i < 4; ++i)
    require(p.act_stride[i] >= 0, op, "params.act_stride must be >= 0 (element strides), got " +
                                          std::to_string(p.act_stride[i]) + " in dimension " + std::to_string(i));
  if (p.N * p.K > 0) present(p.act, op, "act");
}

// The packed concept masks (a ConceptMasks) as ScoreParams and FormulaCountsParams hold them.
template <typename P>
void concept_masks(const P& p, const char* op, int64_t pixels) {
  not_negative(p.C, op, "C");
  require(p.words_per_mask == words_for_pixels(pixels), op,
          "params.words_per_mask must be ceil(pixels / 64) = " + std::to_string(words_for_pixels(pixels)) +
              ", got " + std::to_string(p.words_per_mask));
  present(p.offsets, op, "offsets");  // [N + 1]; the entries' arrays may be empty
}

}  // namespace checks

void check_score(const ScoreParams& p);
void check_score_scratch(const ScoreParams& p, const ScoreScratch& s);
void check_histogram(const HistogramParams& p);
void check_histogram_scratch(const HistogramParams& p, const HistogramScratch& s);
void check_formula_counts(const FormulaCountsParams& p);
void check_pair_counts(const PairCountsParams& p);
void check_union_iou(const UnionIouParams& p);
void check_png_labels(const PngLabelsParams& p);
void check_tiles(const TilesParams& p);

}  // namespace fd
