// The two popcounts behind every candidate of the compositional search. For a formula F, a concept
// L and the unit's mask U, the candidates F OR L, F AND L and F AND NOT L follow exactly from
// |F|, |L|, |F & U|, |L & U| (known) and |F & L|, |F & U & L| (counted here, only on the images
// where both F and L are present): python/fastdissect/engine/compositional.py has the algebra.
#pragma once

#include "bitpack.h"

namespace fd {

// Popcounts of B formula masks against every concept mask (the compositional search,
// python/fastdissect/engine/compositional.py). Formula b's mask is a CSR list over the images where it is
// non-empty, in increasing image order: a row of f_words (or -1: the whole image) and, aligned, the
// row of b's unit mask in u_words for that image (or -1: the unit is off there).
struct FormulaCountsParams {
  int64_t B;                    // formulas
  int64_t hw;                   // pixels per image, H * W
  int64_t words_per_mask;       // ceil(hw / 64)
  const int64_t* f_offsets;     // [B + 1]
  const int64_t* f_images;      // [nnz]
  const int64_t* f_rows;        // [nnz]
  const int64_t* f_unit_rows;   // [nnz]
  const uint64_t* f_words;      // [rows, words_per_mask]
  const uint64_t* u_words;      // [unit rows, words_per_mask]
  // The concept masks: a ConceptMasks (ScoreParams has the same fields).
  int64_t C;
  const int64_t* offsets;
  const int64_t* concept_ids;
  const int64_t* mask_rows;
  const uint64_t* words;
  // Accumulated in place (+=).
  int64_t* fl;                  // [B, C] sum_x |F_b(x) & L_c(x)|
  int64_t* flu;                 // [B, C] sum_x |F_b(x) & U_b(x) & L_c(x)|
};

// Word i of a whole-image mask: every pixel on, the last word's bits past hw off.
FD_HOST_DEVICE FD_INLINE uint64_t whole_word(int64_t i, int64_t words, int64_t hw) {
  const int64_t tail = hw - (words - 1) * kBitsPerWord;  // 1..64 bits in the last word
  if (i < words - 1 || tail == kBitsPerWord) return ~uint64_t{0};
  return (uint64_t{1} << tail) - 1;
}

// Word i of a mask given as a row pointer, null meaning the whole image.
FD_HOST_DEVICE FD_INLINE uint64_t word_of(const uint64_t* row, int64_t i, int64_t words, int64_t hw) {
  return row ? row[i] : whole_word(i, words, hw);
}

struct PairCounts {
  int64_t fl, flu;
};

// |F & L| and |F & U & L| on one image. f / l null: the whole image; u null: the unit is off there.
FD_HOST_DEVICE FD_INLINE PairCounts pair_counts(const uint64_t* f, const uint64_t* u, const uint64_t* l,
                                                int64_t words, int64_t hw) {
  PairCounts out{0, 0};
  for (int64_t i = 0; i < words; ++i) {
    const uint64_t fl = word_of(f, i, words, hw) & word_of(l, i, words, hw);
    out.fl += popcount64(fl);
    if (u) out.flu += popcount64(fl & u[i]);
  }
  return out;
}

FD_HOST_DEVICE FD_INLINE const uint64_t* row_or_whole(const uint64_t* words, int64_t row, int64_t words_per_mask) {
  return row >= 0 ? words + row * words_per_mask : nullptr;
}

}  // namespace fd
