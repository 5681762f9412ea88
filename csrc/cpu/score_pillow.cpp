// The CPU score kernel's Pillow mask (NetDissect-Lite's): the map resampled as Pillow's BILINEAR
// resize of an "F" image does, from ScoreParams' tables, then thresholded into a bit-packed mask.
#include "score_mask.h"

namespace fd {
namespace score_detail {

namespace {

// A tap of weight 0 adds (finite source) * 0 = +-0 to the sum, which changes no comparison: it
// does not make its source part of the window.
void spans(const int64_t* first, const double* weights, int64_t out, int64_t taps, int64_t in,
           std::vector<int64_t>& lo, std::vector<int64_t>& hi) {
  for (int64_t x = 0; x < out; ++x)
    for (int64_t t = 0; t < taps && first[x] + t < in; ++t) {
      if (weights[x * taps + t] == 0.0) continue;
      lo[first[x] + t] = std::min(lo[first[x] + t], x);
      hi[first[x] + t] = std::max(hi[first[x] + t], x);
    }
}

}  // namespace

PillowGeometry::PillowGeometry(const ScoreParams& p)
    : col_first(p.pil_x_first ? p.w : 0, p.W), col_last(p.pil_x_first ? p.w : 0, -1),
      row_first(p.pil_x_first ? p.h : 0, p.H), row_last(p.pil_x_first ? p.h : 0, -1) {
  if (!p.pil_x_first) return;
  spans(p.pil_x_first, p.pil_x_weights, p.W, p.pil_x_taps, p.w, col_first, col_last);
  spans(p.pil_y_first, p.pil_y_weights, p.H, p.pil_y_taps, p.h, row_first, row_last);
}

namespace {

// Pillow's pixel is a convex combination (weights >= 0 summing to 1 within a few ulps) of the
// window's float32 sources, rounded to float32 after each pass: it exceeds its window's largest
// source M by less than 2 * 2^-24 * A + 1e-44 (A = the map's largest |source|, the rounding of both
// passes dominating). So a pixel whose window holds no source above T - (1e-6 * A + 1e-44) is off,
// with a 4x margin; every other pixel is evaluated exactly as Pillow does.
FD_INLINE double pillow_cold_cut(double threshold, double max_abs) { return threshold - (1e-6 * max_abs + 1e-44); }

// Horizontal pass of source row y at output columns [x0, x1] into ws.pil_rows (taps in Pillow's
// order; columns whose three taps lie inside the row take the spelt-out loop).
void pillow_row_pass(const ScoreParams& p, Workspace& ws, int64_t y, int64_t x0, int64_t x1) {
  const double* src = ws.src.data() + y * p.w;
  float* out = ws.pil_rows.data() + y * p.W;
  for (int64_t x = x0; x <= x1; ++x) {
    const double* w = p.pil_x_weights + x * p.pil_x_taps;
    const int64_t first = p.pil_x_first[x];
    double acc = 0.0;
    if (p.pil_x_taps == 3 && first + 3 <= p.w) {
      acc += src[first] * w[0];
      acc += src[first + 1] * w[1];
      acc += src[first + 2] * w[2];
    } else {
      for (int64_t t = 0; t < p.pil_x_taps && first + t < p.w; ++t) acc += src[first + t] * w[t];
    }
    out[x] = static_cast<float>(acc);
  }
}

// The largest float <= t: for a float x, x > t exactly when x > float_at_most(t) (a float above the
// largest float <= t is above t), so Pillow's float32 pixel is compared in float.
inline float float_at_most(double t) {
  const float f = static_cast<float>(t);
  return static_cast<double>(f) > t ? std::nextafter(f, -INFINITY) : f;
}

// Vertical pass of output row y at columns [x0, x1], thresholded (against float_at_most(T)) into
// the mask. The taps are added in Pillow's order (source rows ascending, from 0.0); with the usual
// three taps the loop is spelt out so that it vectorises over x, each lane doing the same additions
// in the same order.
void pillow_column_pass(const ScoreParams& p, Workspace& ws, int64_t y, int64_t x0, int64_t x1, float threshold,
                        MaskWriter& out) {
  const double* w = p.pil_y_weights + y * p.pil_y_taps;
  const int64_t first = p.pil_y_first[y];
  const int64_t taps = std::min(p.pil_y_taps, p.h - first);
  const float* rows = ws.pil_rows.data() + first * p.W;
  float* value = ws.pil_column.data();  // [W] the pixels first, the bits after: both loops vectorise
  if (taps == 3) {
    const float *r0 = rows, *r1 = rows + p.W, *r2 = rows + 2 * p.W;
    for (int64_t x = x0; x <= x1; ++x) {
      double a = 0.0;
      a += static_cast<double>(r0[x]) * w[0];
      a += static_cast<double>(r1[x]) * w[1];
      a += static_cast<double>(r2[x]) * w[2];
      value[x] = static_cast<float>(a);
    }
  } else {
    for (int64_t x = x0; x <= x1; ++x) {
      double a = 0.0;
      for (int64_t t = 0; t < taps; ++t) a += static_cast<double>(rows[t * p.W + x]) * w[t];
      value[x] = static_cast<float>(a);
    }
  }
  // Bits gathered a word at a time in a register, each word or-ed into the mask once.
  bool any = false;
  int64_t pixel = y * p.W + x0, word_index = pixel / kBitsPerWord;
  uint64_t word = 0;
  for (int64_t x = x0; x <= x1; ++x, ++pixel) {
    word |= static_cast<uint64_t>(value[x] > threshold) << (pixel % kBitsPerWord);
    if ((pixel + 1) % kBitsPerWord == 0) {
      out.mask[word_index++] |= word;
      any |= word != 0;
      word = 0;
    }
  }
  if (word != 0) {  // a row ending on a word boundary leaves nothing here (word_index may be past the mask)
    out.mask[word_index] |= word;
    any = true;
  }
  if (any) out.touch(y, x0, y, x1);
}

}  // namespace

// The map resampled as Pillow does for an "F" image, then thresholded; `exhaustive` evaluates
// every pixel (the reference the cold-window skip is tested against).
template <typename scalar_t>
void mask_of_map_pillow(const ScoreParams& p, const PillowGeometry& g, int64_t n, int64_t k, Workspace& ws,
                        int64_t* first_word, int64_t* last_word) {
  *first_word = *last_word = 0;
  const double threshold = p.thresholds[k];
  if (!(map_peak<scalar_t>(p, n, k) > threshold)) return;  // Lite never resizes such a map
  load_map<scalar_t>(p, n, k, ws.src.data());
  double max_abs = 0.0;
  for (auto& v : ws.src) {
    v = static_cast<double>(static_cast<float>(v));  // the map as an "F" image
    max_abs = std::max(max_abs, std::fabs(v));
  }
  MaskWriter out{ws.mask.data(), p.W, p.words_per_mask, 0};
  const float threshold_f = float_at_most(threshold);
  const bool every_pixel = kExhaustiveBuild || p.exhaustive;
  const double cut = every_pixel ? -INFINITY : pillow_cold_cut(threshold, max_abs);
  // Per source row, the output columns whose window holds one of its hot sources (ws.hot_lo /
  // hot_hi, empty = (W, -1)); their union over rows, and the output rows a hot source reaches.
  int64_t x_lo = p.W, x_hi = -1, y0 = p.H, y1 = -1;
  for (int64_t i = 0; i < p.h; ++i) {
    int64_t lo = p.W, hi = -1;
    for (int64_t j = 0; j < p.w; ++j)
      if (ws.src[i * p.w + j] > cut) {
        lo = std::min(lo, g.col_first[j]);
        hi = std::max(hi, g.col_last[j]);
      }
    ws.hot_lo[i] = lo;
    ws.hot_hi[i] = hi;
    if (hi >= lo) {
      x_lo = std::min(x_lo, lo);
      x_hi = std::max(x_hi, hi);
      y0 = std::min(y0, g.row_first[i]);
      y1 = std::max(y1, g.row_last[i]);
    }
  }
  if (y1 < y0) return;  // every window cold
  // pil_y_first is non-decreasing: rows y0..y1 read source rows in this range only.
  const int64_t src_last = std::min(p.h - 1, p.pil_y_first[y1] + p.pil_y_taps - 1);
  for (int64_t i = p.pil_y_first[y0]; i <= src_last; ++i) {
    pillow_row_pass(p, ws, i, x_lo, x_hi);
    const float* r = ws.pil_rows.data() + i * p.W;
    ws.pil_row_max[i] = *std::max_element(r + x_lo, r + x_hi + 1);
  }
  // A row's pixels are at most sum_t wy_t * (largest horizontal value of source row t), the rounding
  // of both passes within 1e-6 * A + 1e-44 of it as for the cold cut: rows below T by that are off.
  const double row_cut = every_pixel ? -INFINITY : threshold - (1e-6 * max_abs + 1e-44);
  for (int64_t y = y0; y <= y1; ++y) {
    int64_t lo = p.W, hi = -1;
    double bound = 0.0;
    for (int64_t t = 0; t < p.pil_y_taps && p.pil_y_first[y] + t < p.h; ++t) {
      const double weight = p.pil_y_weights[y * p.pil_y_taps + t];
      if (weight == 0.0) continue;  // as in PillowGeometry::spans
      lo = std::min(lo, ws.hot_lo[p.pil_y_first[y] + t]);
      hi = std::max(hi, ws.hot_hi[p.pil_y_first[y] + t]);
      bound += weight * static_cast<double>(ws.pil_row_max[p.pil_y_first[y] + t]);
    }
    if (hi >= lo && !(bound <= row_cut)) pillow_column_pass(p, ws, y, lo, hi, threshold_f, out);
  }
  if (out.first < out.last) {
    *first_word = out.first;
    *last_word = out.last;
  }
}

#define FD_INSTANTIATE(scalar_t)                                                                   \
  template void mask_of_map_pillow<scalar_t>(const ScoreParams&, const PillowGeometry&, int64_t, int64_t, \
                                             Workspace&, int64_t*, int64_t*);
FD_FOR_EACH_ACT_TYPE(FD_INSTANTIATE)
#undef FD_INSTANTIATE

}  // namespace score_detail
}  // namespace fd
