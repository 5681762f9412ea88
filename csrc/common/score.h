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
};

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
};

}  // namespace fd
