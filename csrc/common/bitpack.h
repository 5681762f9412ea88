// Masks are bit-packed row-major: pixel p = y * W + x is bit (p % 64) of word p / 64.
#pragma once

#include "macros.h"

namespace fd {

constexpr int64_t kBitsPerWord = 64;

FD_HOST_DEVICE FD_INLINE int64_t words_for_pixels(int64_t pixels) {
  return (pixels + kBitsPerWord - 1) / kBitsPerWord;
}

FD_HOST_DEVICE FD_INLINE int popcount64(uint64_t v) {
#if defined(__CUDA_ARCH__)
  return __popcll(v);
#else
  return __builtin_popcountll(v);
#endif
}

// The bit of `pixel` within its word, set iff `on`.
FD_HOST_DEVICE FD_INLINE uint64_t bit_if(bool on, int64_t pixel) {
  return static_cast<uint64_t>(on) << (pixel % kBitsPerWord);
}

// Sets pixels [first, last] (inclusive).
FD_HOST_DEVICE FD_INLINE void set_bit_range(uint64_t* words, int64_t first, int64_t last) {
  for (int64_t word = first / kBitsPerWord; word <= last / kBitsPerWord; ++word) {
    const int64_t lo = word == first / kBitsPerWord ? first % kBitsPerWord : 0;
    const int64_t hi = word == last / kBitsPerWord ? last % kBitsPerWord : kBitsPerWord - 1;
    const uint64_t upper = hi == kBitsPerWord - 1 ? ~uint64_t{0} : ((uint64_t{1} << (hi + 1)) - 1);
    words[word] |= upper & ~((uint64_t{1} << lo) - 1);
  }
}

}  // namespace fd
