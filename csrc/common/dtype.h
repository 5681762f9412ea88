// Storage types of activations and their exact conversion to double.
// Half types are converted from their bits so the CPU build needs no cuda_fp16.h.
#pragma once

#include <cstring>

#include "macros.h"

namespace fd {

// Mirrors python/fastdissect/_codes.py DTYPE_CODES (tests/test_dispatch.py compares the two).
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

FD_HOST_DEVICE FD_INLINE float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

FD_HOST_DEVICE FD_INLINE double to_double(float v) { return static_cast<double>(v); }
FD_HOST_DEVICE FD_INLINE double to_double(double v) { return v; }
FD_HOST_DEVICE FD_INLINE double to_double(BFloat16 v) {
  return static_cast<double>(bits_to_float(static_cast<uint32_t>(v.bits) << 16));
}
// Every half value is exact in float (a subnormal half is man * 2^-24, a normal float).
FD_HOST_DEVICE FD_INLINE float half_to_float(Half v) {
  const uint32_t sign = static_cast<uint32_t>(v.bits & 0x8000u) << 16;
  uint32_t exp = (v.bits >> 10) & 0x1fu;
  uint32_t man = v.bits & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    const float mag = static_cast<float>(man) * (1.0f / 16777216.0f);
    return sign ? -mag : mag;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}
FD_HOST_DEVICE FD_INLINE double to_double(Half v) { return static_cast<double>(half_to_float(v)); }

// The same values in float, for the CUDA kernel's float screen (exact for every type but double).
FD_HOST_DEVICE FD_INLINE float to_float(float v) { return v; }
FD_HOST_DEVICE FD_INLINE float to_float(double v) { return static_cast<float>(v); }
FD_HOST_DEVICE FD_INLINE float to_float(BFloat16 v) { return bits_to_float(static_cast<uint32_t>(v.bits) << 16); }
FD_HOST_DEVICE FD_INLINE float to_float(Half v) { return half_to_float(v); }

}  // namespace fd

// Instantiates `__VA_ARGS__` with scalar_t bound to the storage type of `dtype`.
#define FD_DISPATCH_FLOAT(dtype, scalar_t, ...)                                  \
  [&] {                                                                          \
    switch (dtype) {                                                             \
      case ::fd::DType::kFloat32: { using scalar_t = float; return __VA_ARGS__(); }     \
      case ::fd::DType::kFloat64: { using scalar_t = double; return __VA_ARGS__(); }    \
      case ::fd::DType::kFloat16: { using scalar_t = ::fd::Half; return __VA_ARGS__(); } \
      case ::fd::DType::kBFloat16: { using scalar_t = ::fd::BFloat16; return __VA_ARGS__(); } \
    }                                                                            \
    FD_ASSERT(false, "unknown dtype code");                                      \
  }()
