// The score op's parameters (ScoreParams, the CPU and CUDA kernels') and the CUDA kernels' scratch:
// plain structs of raw pointers, int64 sizes and strides in elements, declared to Python once as a
// field table in bindings.cpp and filled once in python/fastdissect/kernels/dispatch.py.
#pragma once

#include "dtype.h"
#include "macros.h"

namespace fd {

// Mirrors python/fastdissect/core/codes.py UNION_CODES (tests/test_dispatch.py compares the two).
enum class UnionMode : int { kGlobal = 0, kNetDissect = 1, kLite = 2 };

// Instantiates `__VA_ARGS__` with the constexpr UnionMode `U` bound to `mode`, so that a kernel's
// per-map loop carries no branch on the union (flash-attention's BOOL_SWITCH pattern).
#define FD_UNION_SWITCH(mode, U, ...)                                                          \
  [&] {                                                                                        \
    switch (mode) {                                                                            \
      case ::fd::UnionMode::kGlobal: { constexpr auto U = ::fd::UnionMode::kGlobal; return __VA_ARGS__(); } \
      case ::fd::UnionMode::kNetDissect: { constexpr auto U = ::fd::UnionMode::kNetDissect; return __VA_ARGS__(); } \
      case ::fd::UnionMode::kLite: { constexpr auto U = ::fd::UnionMode::kLite; return __VA_ARGS__(); } \
    }                                                                                          \
    FD_ASSERT(false, "unknown union mode");                                                    \
  }()

// Branches of the CPU score kernel's mask construction (cpu/score_bilinear.cpp), counted when
// ScoreParams::branch_counts is set so that a test can show every shortcut was exercised.
enum ScoreBranch : int {
  kColdMap = 0,      // the map's peak is at most hot_floor(T): no pixel can be on
  kNoHotSource,      // a block of rows whose two source rows hold no hot value
  kBlockOff,         // a block whose four sources all lie below T - margin
  kBlockOn,          // a block whose four sources all lie above T + margin
  kRowOff,           // a row of a straddling block whose two ends prove it off
  kRowOn,            // ... whose two ends prove it on
  kRowCrossing,      // ... that crosses T once: two walks from the secant's crossing
  kRowExact,         // ... evaluated pixel by pixel (ends within 2 * margin of each other)
  kExhaustiveMap,    // a map evaluated at every pixel (ScoreParams::exhaustive)
  kNumScoreBranches
};

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
  // Testing switches. `exhaustive` evaluates every pixel of every map by the definition, with none
  // of the shortcuts (the brute reference the shortcuts are compared against); `branch_counts`
  // ([kNumScoreBranches], accumulated) counts the branches taken and checks, after every map, that
  // the scratch mask was left zero. The FASTDISSECT_EXHAUSTIVE build option makes `exhaustive` the
  // only path.
  bool exhaustive = false;
  int64_t* branch_counts = nullptr;
  // [N, K, words_per_mask], zeroed by the caller: when set, every map's mask M_k(x_n) is also
  // written out (the unit masks of the compositional search).
  uint64_t* mask_out = nullptr;
  // Accumulated in place (+=).
  int64_t* intersection;        // [K, C] sum_x |M_k(x) & L_c(x)|
  int64_t* unit_area;           // [K] sum_x |M_k(x)|
  int64_t* unit_category_area;  // [K, G] union term of the unit per category (netdissect / lite)
  // [K, C], accumulated when set: the entries (images, one entry per image and concept) whose
  // concept mask M_k meets, |M_k(x) & L_c(x)| > 0: the numerator of the label's image coverage.
  int64_t* image_hits = nullptr;

  // The permuted control, counted in the same call when ctl_offsets is set: a second CSR list of
  // concept masks for the same N images (image n's entry list is another image's labels), of the same
  // H, W, C, words_per_mask and categories, intersected with the same unit masks M_k(x_n), so that
  // each map is read, upsampled and thresholded once for both. Its own mask rows and words pointer:
  // ConceptMasks.take shares the data set's packed store, so the control's rows index that store
  // (ctl_words == words there) and no word is copied, yet any second mask set works. Its outputs
  // mirror the ones above (+=); ctl_image_hits and ctl_unit_category_area as image_hits and
  // unit_category_area are (the union's term over the control's labels).
  const int64_t* ctl_offsets = nullptr;      // [N + 1]
  const int64_t* ctl_concept_ids = nullptr;  // [ctl nnz]
  const int64_t* ctl_mask_rows = nullptr;    // [ctl nnz] row of ctl_words, or -1
  const uint64_t* ctl_words = nullptr;       // [ctl rows, words_per_mask]
  int64_t* ctl_intersection = nullptr;       // [K, C]
  int64_t* ctl_unit_area = nullptr;          // [K] (the same masks: equal to unit_area's increment)
  int64_t* ctl_unit_category_area = nullptr; // [K, G] (netdissect / lite)
  int64_t* ctl_image_hits = nullptr;         // [K, C], when set
};

// One mask set of a score call with its outputs: the labels (ScoreParams' first set) or the
// permuted control's (its ctl_ fields), so that one counting routine serves both.
struct EntrySet {
  const int64_t* offsets;
  const int64_t* concept_ids;
  const int64_t* mask_rows;
  const uint64_t* words;
  int64_t* intersection;
  int64_t* unit_area;
  int64_t* unit_category_area;
  int64_t* image_hits;
};

FD_HOST_DEVICE FD_INLINE bool has_control(const ScoreParams& p) { return p.ctl_offsets != nullptr; }

FD_HOST_DEVICE FD_INLINE EntrySet entry_set(const ScoreParams& p, bool control) {
  return control ? EntrySet{p.ctl_offsets, p.ctl_concept_ids, p.ctl_mask_rows, p.ctl_words, p.ctl_intersection,
                            p.ctl_unit_area, p.ctl_unit_category_area, p.ctl_image_hits}
                 : EntrySet{p.offsets, p.concept_ids, p.mask_rows, p.words, p.intersection, p.unit_area,
                            p.unit_category_area, p.image_hits};
}

// Device scratch of the GPU score kernels (allocated by the caller, zeroed before each batch).
// One output coordinate's taps, computed once per call by the CUDA kernels (score_taps_kernel): the
// exact double weights of linear_tap and their float roundings for the float screen (upsample.h (5)).
struct ScreenTap {
  int64_t i0, i1;
  double l0, l1;
  float f0, f1;
};

struct ScoreScratch {
  int64_t* map_area;    // [N, K] mask area of each map ("netdissect" / "lite" unions), else null
  int* hit;             // [N, K, G] map meets a label of category g ("lite" union), else null
  int64_t* non_finite;  // [K] NaN / inf activations seen (accumulated; reported when results are read)
  double* map_scale;    // [N, K] max |source| of each map that is not cold, -1 for a cold map
  ScreenTap* taps;      // [H + W] the output rows' taps, then the output columns'
  int* entry_hit = nullptr;  // [K, E] map k meets entry e, with image_hits (zeroed by the caller)
  int64_t num_entries = 0;   // E = offsets[N], known on the host (offsets may live on the device)
  // The permuted control's (ScoreParams::ctl_offsets): its "lite" hit flags [N, K, G] and, with
  // ctl_image_hits, its entries' flags [K, E'] (E' = ctl_offsets[N]).
  int* ctl_hit = nullptr;
  int* ctl_entry_hit = nullptr;
  int64_t ctl_num_entries = 0;
};

}  // namespace fd
