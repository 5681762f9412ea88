// Undoes PNG's scanline filters and reads Broden's label numbers (csrc/common/png_labels.h).
#include <cstring>

#include "../common/png_labels.h"
#include "cpu_ops.h"

namespace fd {

int64_t png_labels_cpu(const PngLabelsParams& p) {
  const int64_t bpp = p.channels, stride = p.width * p.channels;
  uint8_t* prev = p.scratch;
  uint8_t* cur = p.scratch + stride;
  std::memset(prev, 0, static_cast<size_t>(stride));  // the row above the first is all zero
  for (int64_t y = 0; y < p.height; ++y) {
    const uint8_t* line = p.raw + y * (stride + 1);
    const uint8_t filter = line[0];
    const uint8_t* in = line + 1;
    switch (filter) {
      case 0:
        std::memcpy(cur, in, static_cast<size_t>(stride));
        break;
      case 1:
        for (int64_t i = 0; i < stride; ++i) cur[i] = static_cast<uint8_t>(in[i] + (i >= bpp ? cur[i - bpp] : 0));
        break;
      case 2:
        for (int64_t i = 0; i < stride; ++i) cur[i] = static_cast<uint8_t>(in[i] + prev[i]);
        break;
      case 3:
        for (int64_t i = 0; i < stride; ++i)
          cur[i] = static_cast<uint8_t>(in[i] + (((i >= bpp ? cur[i - bpp] : 0) + prev[i]) >> 1));
        break;
      case 4:
        for (int64_t i = 0; i < stride; ++i)
          cur[i] = static_cast<uint8_t>(in[i] + paeth(i >= bpp ? cur[i - bpp] : 0, prev[i], i >= bpp ? prev[i - bpp] : 0));
        break;
      default:
        return y;  // the row with an unknown filter type: the file is damaged
    }
    int64_t* out = p.labels + y * p.width;
    for (int64_t x = 0; x < p.width; ++x) out[x] = cur[x * bpp] + 256 * static_cast<int64_t>(cur[x * bpp + 1]);
    std::swap(prev, cur);
  }
  return -1;
}

}  // namespace fd
