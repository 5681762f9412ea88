// The streaming-quantile histogram's bin of a value: shared by the CPU kernel, the CUDA kernel and
// (mirrored in torch) python/fastdissect/histogram_keys.py. Changing it changes saved states.
#pragma once

#include <cstring>

#include "macros.h"

namespace fd {

// 4096 bins, monotone non-decreasing in the value: 0 has its own bin (ReLU maps are mostly 0 and a
// single-valued bin needs no stored values), and |x| in [2^-128, 2^128) is split into 1/8 octaves
// (sign, exponent, top 3 mantissa bits); smaller and larger magnitudes share the outermost bins.
constexpr int kHistBins = 4096;
constexpr int kZeroBin = 2048;

FD_HOST_DEVICE FD_INLINE int magnitude_index(uint64_t bits) {
  const int64_t exponent = static_cast<int64_t>((bits >> 52) & 0x7ff);
  const int64_t top3 = static_cast<int64_t>((bits >> 49) & 7);
  const int64_t idx = (exponent - 1023 + 128) * 8 + top3;
  return static_cast<int>(idx < 1 ? 1 : (idx > 2047 ? 2047 : idx));
}

FD_HOST_DEVICE FD_INLINE int histogram_bin(double v) {
  if (v == 0.0) return kZeroBin;  // also -0.0
  uint64_t bits;
  memcpy(&bits, &v, sizeof(bits));
  const int m = magnitude_index(bits);
  return (bits >> 63) ? kZeroBin - m : kZeroBin + m;
}

// The double whose order-preserving key (double_key below) is `key`.
FD_HOST_DEVICE FD_INLINE double key_to_double(int64_t key) {
  const uint64_t bits = key < 0 ? static_cast<uint64_t>(key ^ INT64_MAX) : static_cast<uint64_t>(key);
  double v;
  memcpy(&v, &bits, sizeof(v));
  return v;
}

// The smallest double in bin b or above (bins are monotone), so `v >= bin_lower_bound(b)` is
// `histogram_bin(v) >= b` for every finite v. Binary search over order-preserving keys.
FD_HOST_DEVICE FD_INLINE double bin_lower_bound(int b) {
  int64_t lo = -0x7ff0000000000000LL - 1;  // key of -inf
  int64_t hi = 0x7ff0000000000000LL;       // key of +inf
  if (histogram_bin(key_to_double(lo)) >= b) return key_to_double(lo);
  while (lo + 1 < hi) {  // invariant: bin(lo) < b <= bin(hi), or hi = +inf
    const int64_t mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1);  // hi - lo would overflow
    if (histogram_bin(key_to_double(mid)) >= b) hi = mid; else lo = mid;
  }
  return key_to_double(hi);
}

// The order-preserving int64 key of a double (-0.0 maps to key(0.0)); key_to_double inverts it.
FD_HOST_DEVICE FD_INLINE int64_t double_key(double v) {
  v = v + 0.0;
  int64_t bits;
  memcpy(&bits, &v, sizeof(bits));
  return bits < 0 ? bits ^ INT64_MAX : bits;
}

// The bin holding a unit's keep_top-th largest value, or `floor` if that is higher: the new floor.
// The walk starts at the top, where those values are.
FD_HOST_DEVICE FD_INLINE int raised_floor(const int64_t* counts, int floor, int64_t keep_top) {
  if (keep_top <= 0) return floor;
  int64_t above = 0;
  int bin = kHistBins - 1;
  for (; bin > floor; --bin) {
    above += counts[bin];
    if (above >= keep_top) break;
  }
  return bin;
}

}  // namespace fd
