// The report's strips: each tile is an image's thumbnail, bright inside the unit's mask and dimmed
// outside it, with the mask's outline (and, optionally, a second mask's outline beneath it: the
// unit's formula) drawn over it. The masks arrive bit-packed as the score kernel writes them, so a
// strip is drawn in one pass over its pixels instead of numpy's several passes over bytes. Pixels
// are RGBX words (Pillow's own layout for RGB), so a drawn sheet goes to the JPEG encoder uncopied.
#pragma once

#include <cstdint>

#include "macros.h"

namespace fd {

struct TilesParams {
  int64_t M;                  // tiles
  int64_t height, width;      // of every tile (one call per tile size)
  int64_t words_per_mask;     // ceil(height * width / 64)
  const int64_t* masks;       // [M, words_per_mask] pixel y * width + x at bit p % 64 of word p / 64
  const int64_t* second;      // [M, words_per_mask] or null: the mask outlined beneath the first
  const uint32_t* bright;     // [thumbnails, height, width] RGBX shown inside the mask
  const uint32_t* dim;        // [thumbnails, height, width] RGBX shown outside it
  const int64_t* thumbnail;   // [M] the thumbnail each tile shows
  uint32_t* out;              // the strips, RGBX
  int64_t out_row;            // pixels from one row of `out` to the next
  const int64_t* offset;      // [M] pixel offset in `out` of each tile's top-left pixel
  uint32_t outline, second_outline;  // RGBX of the two outlines
};

// The 64 bits of a packed mask from bit `begin` on; bits past its last word read as 0.
FD_HOST_DEVICE FD_INLINE uint64_t bits_at(const int64_t* words, int64_t words_per_mask, int64_t begin) {
  const int64_t w = begin >> 6, s = begin & 63;
  const uint64_t lo = w < words_per_mask ? static_cast<uint64_t>(words[w]) : 0;
  if (s == 0) return lo;
  const uint64_t hi = w + 1 < words_per_mask ? static_cast<uint64_t>(words[w + 1]) : 0;
  return (lo >> s) | (hi << (64 - s));
}

// Row y of a height x width mask as ceil(width / 64) words from bit 0; bits beyond the row are 0.
FD_HOST_DEVICE FD_INLINE void row_bits(const int64_t* words, int64_t words_per_mask, int64_t y, int64_t width,
                                       uint64_t* row) {
  const int64_t n = (width + 63) >> 6;
  for (int64_t i = 0; i < n; ++i) row[i] = bits_at(words, words_per_mask, y * width + 64 * i);
  if (width & 63) row[n - 1] &= ~uint64_t{0} >> (64 - (width & 63));
}

// Word i (of n) of a row's outline: the row's mask pixels with a 4-neighbour outside the mask.
// Beyond the frame counts as outside, so a mask reaching the frame is outlined along it: the rows
// above the first and below the last are passed as zero rows, and bits beyond a row are zero.
FD_HOST_DEVICE FD_INLINE uint64_t outline_word(const uint64_t* up, const uint64_t* row, const uint64_t* down,
                                               int64_t i, int64_t n) {
  const uint64_t left = (row[i] << 1) | (i > 0 ? row[i - 1] >> 63 : 0);       // bit x: pixel x - 1
  const uint64_t right = (row[i] >> 1) | (i + 1 < n ? row[i + 1] << 63 : 0);  // bit x: pixel x + 1
  return row[i] & ~(up[i] & down[i] & left & right);
}

}  // namespace fd
