// Draws the report's tiles into their strips (csrc/common/tiles.h): a row is the dimmed image,
// then the mask's pixels, then the outlines, each visited through the set bits of its words.
#include <cstring>
#include <vector>

#include "../common/tiles.h"
#include "cpu_ops.h"

namespace fd {
namespace {

// The three rows around row y of a mask (zero rows beyond the frame), as outline_word reads them.
struct RowWindow {
  const int64_t* words;
  int64_t words_per_mask, height, width, n;
  uint64_t* buffer;  // [3 * n]: the row above, the row, the row below

  const uint64_t* up() const { return buffer; }
  const uint64_t* row() const { return buffer + n; }
  const uint64_t* down() const { return buffer + 2 * n; }

  bool load(int64_t y) {  // false when the row holds no mask pixel
    row_bits(words, words_per_mask, y, width, buffer + n);
    uint64_t any = 0;
    for (int64_t i = 0; i < n; ++i) any |= row()[i];
    if (!any) return false;
    neighbour(y - 1, buffer);
    neighbour(y + 1, buffer + 2 * n);
    return true;
  }

  void neighbour(int64_t y, uint64_t* out) const {
    if (y >= 0 && y < height) {
      row_bits(words, words_per_mask, y, width, out);
    } else {
      std::memset(out, 0, static_cast<size_t>(n) * sizeof(uint64_t));
    }
  }
};

// Calls f(x) for each set bit x of the n words.
template <typename F>
inline void for_each_bit(const uint64_t* words, int64_t n, F&& f) {
  for (int64_t i = 0; i < n; ++i) {
    for (uint64_t b = words[i]; b; b &= b - 1) f(64 * i + __builtin_ctzll(b));
  }
}

}  // namespace

void tiles_cpu(const TilesParams& p, int n_threads) {
  const int64_t H = p.height, W = p.width, hw = H * W, n = (W + 63) >> 6;
#pragma omp parallel num_threads(threads_for(n_threads, p.M))
  {
    std::vector<uint64_t> buffers(7 * n, 0);  // two RowWindows and one outline row
    uint64_t* edge = buffers.data() + 6 * n;
#pragma omp for schedule(static)
    for (int64_t m = 0; m < p.M; ++m) {
      RowWindow mask{p.masks + m * p.words_per_mask, p.words_per_mask, H, W, n, buffers.data()};
      RowWindow second{p.second ? p.second + m * p.words_per_mask : nullptr, p.words_per_mask, H, W, n,
                       buffers.data() + 3 * n};
      const uint32_t* bright = p.bright + p.thumbnail[m] * hw;
      const uint32_t* dim = p.dim + p.thumbnail[m] * hw;
      for (int64_t y = 0; y < H; ++y) {
        uint32_t* dst = p.out + p.offset[m] + y * p.out_row;
        const uint32_t* lit = bright + y * W;
        std::memcpy(dst, dim + y * W, static_cast<size_t>(W) * sizeof(uint32_t));
        const bool in_mask = mask.load(y);  // outlines lie on their masks' pixels
        if (in_mask) for_each_bit(mask.row(), n, [&](int64_t x) { dst[x] = lit[x]; });
        if (p.second && second.load(y)) {
          for (int64_t i = 0; i < n; ++i) edge[i] = outline_word(second.up(), second.row(), second.down(), i, n);
          for_each_bit(edge, n, [&](int64_t x) { dst[x] = p.second_outline; });
        }
        if (!in_mask) continue;
        for (int64_t i = 0; i < n; ++i) edge[i] = outline_word(mask.up(), mask.row(), mask.down(), i, n);
        for_each_bit(edge, n, [&](int64_t x) { dst[x] = p.outline; });
      }
    }
  }
}

}  // namespace fd
