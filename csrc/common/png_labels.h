// Broden label images: 8-bit RGB(A) PNG, label number R + 256 * G. After zlib's inflate (done by
// the caller), PNG's scanlines carry one filter byte each; undoing the filters (PNG spec, section 9)
// and reading the labels is the per-pixel work, done here rather than through a general image library.
#pragma once

#include <cstdint>

#include "macros.h"

namespace fd {

struct PngLabelsParams {
  const uint8_t* raw;   // [height * (1 + width * channels)] inflated scanlines, each led by its filter byte
  int64_t height, width, channels;  // channels: 3 (RGB) or 4 (RGBA)
  uint8_t* scratch;     // [2 * width * channels] the previous and the current unfiltered scanline
  int64_t* labels;      // [height, width] out: R + 256 * G
};

// The Paeth predictor of the PNG specification: a, b, c are left, up and upper-left.
FD_HOST_DEVICE FD_INLINE uint8_t paeth(int a, int b, int c) {
  const int p = a + b - c;
  const int pa = p > a ? p - a : a - p, pb = p > b ? p - b : b - p, pc = p > c ? p - c : c - p;
  if (pa <= pb && pa <= pc) return static_cast<uint8_t>(a);
  return static_cast<uint8_t>(pb <= pc ? b : c);
}

}  // namespace fd
