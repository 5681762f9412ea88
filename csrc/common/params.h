// Plain parameter structs: raw pointers, int64 sizes, strides in elements. Filled in one place
// (bindings.cpp) and shared by every backend.
#pragma once

#include "dtype.h"

namespace fd {

enum class UnionMode : int { kGlobal = 0, kNetDissect = 1, kLite = 2 };

struct ScoreParams {
  const void* act;     // [N, K, h, w] activations of `act_dtype`
  DType act_dtype;
  int64_t N, K, h, w;
  int64_t act_stride[4];  // in elements
  const double* thresholds;  // [K] T_k

  // Concept masks of the same N images, bit-packed, as a CSR list of the concepts present per image.
  int64_t H, W;                 // label resolution
  int64_t C;                    // number of concepts
  int64_t words_per_mask;       // ceil(H * W / 64)
  const int64_t* offsets;       // [N + 1] entries of image n: offsets[n] .. offsets[n + 1]
  const int64_t* concept_ids;   // [nnz] concept of each entry
  const int64_t* mask_rows;     // [nnz] row of `words`, or -1 for a whole-image (image-level) label
  const uint64_t* words;        // [rows, words_per_mask]

  UnionMode union_mode;
  const int64_t* categories;    // [C] primary category of each concept (netdissect / lite only)
  int64_t G;                    // number of categories

  // Pillow-compatible resampling (NetDissect-Lite's masks), used when pil_x_first is set: per output
  // column / row the first source index and `taps` weights; the map is read as float32, resampled
  // horizontally then vertically, each pass accumulated in double and stored as float32. Upsampling
  // only (the Python side checks), and a map whose max is <= T is skipped, as Lite does.
  const int64_t* pil_x_first = nullptr;   // [W]
  const double* pil_x_weights = nullptr;  // [W, pil_x_taps]
  int64_t pil_x_taps = 0;
  const int64_t* pil_y_first = nullptr;   // [H]
  const double* pil_y_weights = nullptr;  // [H, pil_y_taps]
  int64_t pil_y_taps = 0;
  // Accumulated in place (+=).
  int64_t* intersection;        // [K, C] sum_x |M_k(x) & L_c(x)|
  int64_t* unit_area;           // [K] sum_x |M_k(x)|
  int64_t* unit_category_area;  // [K, G] union term of the unit per category (netdissect / lite)
};

// Device scratch of the GPU score kernels (allocated by the caller, zeroed before each batch).
struct ScoreScratch {
  int64_t* map_area;    // [N, K] mask area of each map ("netdissect" / "lite" unions), else null
  int* hit;             // [N, K, G] map meets a label of category g ("lite" union), else null
  int64_t* non_finite;  // [K] NaN / inf activations seen (accumulated; reported when results are read)
};

}  // namespace fd
