// The counts behind the optimal search's length-3 formulas. For a prefix F made of two concepts A
// and B, every |F & L| and |F & U & L| follows from |A & L|, |B & L| (the pair table) and the
// triple counts |A & B & L|, |A & B & U & L| counted here:
//   F = A OR B:      |F & L| = |A & L| + |B & L| - |A & B & L|
//   F = A AND B:     |F & L| = |A & B & L|
//   F = A AND NOT B: |F & L| = |A & L| - |A & B & L|
// (the same with U), so one pair {A, B} serves its four prefixes, and only the images holding both
// A and B are read: no prefix mask is ever built (python/fastdissect/engine/compositional/optimal.py).
#pragma once

#include "formula_counts.h"

namespace fd {

// Pair i is leaves a[i] and b[i] of a CSR mask set (per leaf, its images in increasing order and
// rows of leaf_words, -1: the whole image). The unit's mask on image n is row unit_rows[n] of
// u_words, -1: the unit is off there. unit_only: count on the unit's images only.
struct PairCountsParams {
  int64_t B;                    // pairs
  int64_t hw;                   // pixels per image, H * W
  int64_t words_per_mask;       // ceil(hw / 64)
  const int64_t* pair_a;        // [B] leaf ids; a's images are looked up in b's (a: the shorter list)
  const int64_t* pair_b;        // [B]
  int64_t P;                    // leaves
  const int64_t* leaf_offsets;  // [P + 1]
  const int64_t* leaf_images;   // [nnz]
  const int64_t* leaf_rows;     // [nnz]
  const uint64_t* leaf_words;   // [rows, words_per_mask]
  int64_t N;                    // images
  const int64_t* unit_rows;     // [N]
  const uint64_t* u_words;      // [unit rows, words_per_mask]
  int64_t unit_only;            // 0 or 1
  // The concept masks: a ConceptMasks (ScoreParams has the same fields).
  int64_t C;
  const int64_t* offsets;
  const int64_t* concept_ids;
  const int64_t* mask_rows;
  const uint64_t* words;
  // Accumulated in place (+=).
  int64_t* t;                   // [B, C] sum_x |A_i(x) & B_i(x) & L_c(x)|
  int64_t* tu;                  // [B, C] sum_x |A_i(x) & B_i(x) & U(x) & L_c(x)|
};

// The entry of `image` in the increasing images[lo, hi), or -1.
FD_HOST_DEVICE FD_INLINE int64_t find_image(const int64_t* images, int64_t lo, int64_t hi, int64_t image) {
  const int64_t end = hi;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (images[mid] < image) lo = mid + 1; else hi = mid;
  }
  return (lo < end && images[lo] == image) ? lo : -1;
}

// Whether a & b is empty on one image (null: the whole image).
FD_HOST_DEVICE FD_INLINE bool disjoint(const uint64_t* a, const uint64_t* b, int64_t words, int64_t hw) {
  for (int64_t i = 0; i < words; ++i) {
    if (word_of(a, i, words, hw) & word_of(b, i, words, hw)) return false;
  }
  return true;
}

// |A & B & L| and |A & B & U & L| on one image; u null: the unit is off there.
FD_HOST_DEVICE FD_INLINE PairCounts triple_counts(const uint64_t* a, const uint64_t* b, const uint64_t* u,
                                                  const uint64_t* l, int64_t words, int64_t hw) {
  PairCounts out{0, 0};
  for (int64_t i = 0; i < words; ++i) {
    const uint64_t abl = word_of(a, i, words, hw) & word_of(b, i, words, hw) & word_of(l, i, words, hw);
    out.fl += popcount64(abl);
    if (u) out.flu += popcount64(abl & u[i]);
  }
  return out;
}

// One image's share of pair i: entry ea of leaf a, looked up in leaf b; `add` receives (concept,
// counts) for every concept entry of the image with a non-zero count.
template <typename Add>
FD_HOST_DEVICE FD_INLINE void pair_image(const PairCountsParams& p, int64_t i, int64_t ea, const Add& add) {
  const int64_t words = p.words_per_mask;
  const int64_t n = p.leaf_images[ea];
  const int64_t ur = p.unit_rows[n];
  if (p.unit_only && ur < 0) return;
  const int64_t b = p.pair_b[i];
  const int64_t eb = find_image(p.leaf_images, p.leaf_offsets[b], p.leaf_offsets[b + 1], n);
  if (eb < 0) return;
  const uint64_t* fa = row_or_whole(p.leaf_words, p.leaf_rows[ea], words);
  const uint64_t* fb = row_or_whole(p.leaf_words, p.leaf_rows[eb], words);
  if (disjoint(fa, fb, words, p.hw)) return;
  const uint64_t* u = ur >= 0 ? p.u_words + ur * words : nullptr;
  for (int64_t e = p.offsets[n]; e < p.offsets[n + 1]; ++e) {
    const PairCounts c = triple_counts(fa, fb, u, row_or_whole(p.words, p.mask_rows[e], words), words, p.hw);
    if (c.fl) add(p.concept_ids[e], c);
  }
}

}  // namespace fd
