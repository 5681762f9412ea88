// The fused CPU scoring kernel: for each (image, unit) whose map can exceed T_k, evaluate the
// bilinear samples only around hot source pixels, threshold them straight into a bit-packed mask,
// and count popcount(M & L_c) against the packed masks of the concepts present in that image.
// No upsampled float map is ever stored beyond one source row of one map.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/bitpack.h"
#include "../common/upsample.h"
#include "cpu_ops.h"

namespace fd {
namespace {

#ifdef FD_EXHAUSTIVE
constexpr bool kExhaustiveBuild = true;  // FASTDISSECT_EXHAUSTIVE=ON: the brute evaluation only
#else
constexpr bool kExhaustiveBuild = false;
#endif

// Geometry shared by every (image, unit): taps per output row/column and, per source column,
// the span of output columns whose taps read it.
struct Geometry {
  std::vector<LinearTap> ty, tx;
  std::vector<int64_t> col_first, col_last;  // [w], empty span = (W, -1)
  // [W] last output column of x's run: the same source taps and a weight affine in x (the columns
  // clamped to the left edge, weight 0, form a run of their own)
  std::vector<int64_t> run_last;
  std::vector<int64_t> row_run_last;         // [H] last output row with the same source taps

  Geometry(int64_t h, int64_t w, int64_t H, int64_t W)
      : ty(H), tx(W), col_first(w, W), col_last(w, -1), run_last(W), row_run_last(H) {
    for (int64_t y = 0; y < H; ++y) ty[y] = linear_tap(y, h, H);
    for (int64_t x = 0; x < W; ++x) {
      tx[x] = linear_tap(x, w, W);
      for (int64_t c : {tx[x].i0, tx[x].i1}) {
        col_first[c] = std::min(col_first[c], x);
        col_last[c] = std::max(col_last[c], x);
      }
    }
    for (int64_t x = W - 1; x >= 0; --x)
      run_last[x] = (x + 1 < W && tx[x + 1].i0 == tx[x].i0 && tx[x + 1].i1 == tx[x].i1 &&
                     (tx[x + 1].l1 == 0.0) == (tx[x].l1 == 0.0)) ? run_last[x + 1] : x;
    for (int64_t y = H - 1; y >= 0; --y)
      row_run_last[y] = (y + 1 < H && ty[y + 1].i0 == ty[y].i0 && ty[y + 1].i1 == ty[y].i1) ? row_run_last[y + 1] : y;
  }
};

// Per-thread scratch, sized once.
struct Workspace {
  std::vector<double> src;        // [h, w] the map in double
  std::vector<int64_t> hot_lo, hot_hi;  // [h] per source row: its hot source columns, empty = (w, -1)
                                        // (Pillow mode: the output columns they reach, empty = (W, -1))
  std::vector<double> h0, h1;     // [W] the horizontal pass of one block's two source rows
  std::vector<uint64_t> mask;     // [words_per_mask], all zero between uses
  std::vector<char> cat_hit;      // [G]
  std::vector<float> pil_rows;    // [h, W] Pillow mode: the horizontal pass
  std::vector<float> pil_column;  // [W] Pillow mode: one output row's pixels
  std::vector<float> pil_row_max; // [h] Pillow mode: each source row's largest horizontal value
  // Testing mode (ScoreParams::branch_counts): branches taken, and whether a map left the scratch
  // mask dirty (checked after every map; debug builds check it always).
  bool counting;
  int64_t branches[kNumScoreBranches] = {};
  bool dirty_scratch = false;

  Workspace(const ScoreParams& p)
      : src(p.h * p.w), hot_lo(p.h), hot_hi(p.h), h0(p.W), h1(p.W),
        mask(p.words_per_mask, 0), cat_hit(std::max<int64_t>(p.G, 1)),
        pil_rows(p.pil_x_first ? p.h * p.W : 0), pil_column(p.pil_x_first ? p.W : 0),
        pil_row_max(p.pil_x_first ? p.h : 0), counting(p.branch_counts != nullptr) {}

  void count(ScoreBranch b) {
    if (counting) ++branches[b];
  }
  void check_scratch_zero() {
#ifndef FD_DEBUG_CHECKS
    if (!counting) return;
#endif
    for (uint64_t word : mask) dirty_scratch |= word != 0;
  }
};

// Largest value of one map, read in its storage type (widening to double is exact and monotone).
// Four running maxima break the dependency chain: most maps are settled by this alone.
template <typename scalar_t>
double map_peak(const ScoreParams& p, int64_t n, int64_t k) {
  const scalar_t* base = static_cast<const scalar_t*>(p.act) + n * p.act_stride[0] + k * p.act_stride[1];
  double m[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
  if (p.act_stride[3] == 1 && p.act_stride[2] == p.w) {
    const int64_t size = p.h * p.w;
    int64_t i = 0;
    for (; i + 4 <= size; i += 4)
      for (int j = 0; j < 4; ++j) m[j] = std::max(m[j], to_double(base[i + j]));
    for (; i < size; ++i) m[0] = std::max(m[0], to_double(base[i]));
  } else {
    for (int64_t i = 0; i < p.h; ++i)
      for (int64_t j = 0; j < p.w; ++j)
        m[j & 3] = std::max(m[j & 3], to_double(base[i * p.act_stride[2] + j * p.act_stride[3]]));
  }
  return std::max(std::max(m[0], m[1]), std::max(m[2], m[3]));
}

template <typename scalar_t>
void load_map(const ScoreParams& p, int64_t n, int64_t k, double* dst) {
  const scalar_t* base = static_cast<const scalar_t*>(p.act) + n * p.act_stride[0] + k * p.act_stride[1];
  if (p.act_stride[3] == 1 && p.act_stride[2] == p.w) {  // contiguous map: one flat, vectorisable loop
    for (int64_t i = 0; i < p.h * p.w; ++i) dst[i] = to_double(base[i]);
    return;
  }
  for (int64_t i = 0; i < p.h; ++i)
    for (int64_t j = 0; j < p.w; ++j) dst[i * p.w + j] = to_double(base[i * p.act_stride[2] + j * p.act_stride[3]]);
}

// The set bits of one map's mask and the word span [first, last) they touch.
struct MaskWriter {
  uint64_t* mask;
  int64_t W, first, last;

  void set_range(int64_t y, int64_t x0, int64_t x1) {  // pixels (y, x0..x1)
    set_bit_range(mask, y * W + x0, y * W + x1);
    touch(y, x0, y, x1);
  }
  void set_if(int64_t y, int64_t x, bool on) {
    mask[(y * W + x) / kBitsPerWord] |= bit_if(on, y * W + x);
  }
  void touch(int64_t y0, int64_t x0, int64_t y1, int64_t x1) {
    first = std::min(first, (y0 * W + x0) / kBitsPerWord);
    last = std::max(last, (y1 * W + x1) / kBitsPerWord + 1);
  }
};

// Pillow mode (NetDissect-Lite's masks): per source column / row, the span of output columns /
// rows whose Pillow window holds it (empty when none does), so that only pixels whose window holds
// a hot source are evaluated.
struct PillowGeometry {
  std::vector<int64_t> col_first, col_last;  // [w], empty span = (W, -1)
  std::vector<int64_t> row_first, row_last;  // [h], empty span = (H, -1)

  explicit PillowGeometry(const ScoreParams& p)
      : col_first(p.pil_x_first ? p.w : 0, p.W), col_last(p.pil_x_first ? p.w : 0, -1),
        row_first(p.pil_x_first ? p.h : 0, p.H), row_last(p.pil_x_first ? p.h : 0, -1) {
    if (!p.pil_x_first) return;
    spans(p.pil_x_first, p.pil_x_weights, p.W, p.pil_x_taps, p.w, col_first, col_last);
    spans(p.pil_y_first, p.pil_y_weights, p.H, p.pil_y_taps, p.h, row_first, row_last);
  }
  // A tap of weight 0 adds (finite source) * 0 = +-0 to the sum, which changes no comparison: it
  // does not make its source part of the window.
  static void spans(const int64_t* first, const double* weights, int64_t out, int64_t taps, int64_t in,
                    std::vector<int64_t>& lo, std::vector<int64_t>& hi) {
    for (int64_t x = 0; x < out; ++x)
      for (int64_t t = 0; t < taps && first[x] + t < in; ++t) {
        if (weights[x * taps + t] == 0.0) continue;
        lo[first[x] + t] = std::min(lo[first[x] + t], x);
        hi[first[x] + t] = std::max(hi[first[x] + t], x);
      }
  }
};

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

// ---- The mask of one map. Every shortcut below is exact; csrc/common/upsample.h ("Why the
// shortcuts are exact") derives the bounds they rest on. `exhaustive` bypasses all of them.

// The definition (upsample.h) at every output pixel: the brute reference of the shortcuts.
void mask_exhaustive(const ScoreParams& p, const Geometry& g, const double* src, double threshold, MaskWriter& out) {
  for (int64_t y = 0; y < p.H; ++y) {
    const LinearTap& ty = g.ty[y];
    const double* s0 = src + ty.i0 * p.w;
    const double* s1 = src + ty.i1 * p.w;
    bool any = false;
    for (int64_t x = 0; x < p.W; ++x) {
      const LinearTap& tx = g.tx[x];
      const double v = lerp_pair(ty.l0, lerp_pair(tx.l0, s0[tx.i0], tx.l1, s0[tx.i1]), ty.l1,
                                 lerp_pair(tx.l0, s1[tx.i0], tx.l1, s1[tx.i1]));
      out.set_if(y, x, v > threshold);
      any |= v > threshold;
    }
    if (any) out.touch(y, 0, y, p.W - 1);
  }
}

// Per source row, the span of columns above hot_floor(T) (ws.hot_lo / hot_hi, empty = (w, -1)).
// Returns the least source value (for the rounding bound) and whether any source is hot.
bool scan_hot_sources(const ScoreParams& p, Workspace& ws, double floor_hot, double* least) {
  bool any = false;
  for (int64_t i = 0; i < p.h; ++i) {
    int64_t lo = p.w, hi = -1;
    for (int64_t j = p.w - 1; j >= 0; --j) {
      const double v = ws.src[i * p.w + j];
      const bool hot = v > floor_hot;
      lo = hot ? j : lo;
      hi = hot && hi < 0 ? j : hi;
      *least = std::min(*least, v);
    }
    ws.hot_lo[i] = lo;
    ws.hot_hi[i] = hi;
    any |= hi >= 0;
  }
  return any;
}

// One row y of a run of columns [x0, x1] whose computed end samples vs, ve cross T: a sample
// beyond `margin` proves the rest of the run on its side (the real blend is affine in x there), so
// two walks start where the ends' secant crosses T, one toward each side, evaluating pixels exactly
// until one proves its side. The secant only chooses where to start: exactness rests on the proofs.
template <typename Sample>
void crossing_walk(int64_t y, int64_t x0, int64_t x1, double vs, double ve, double threshold, double margin,
                   const Sample& sample, MaskWriter& out) {
  const bool rising = ve > vs;
  const double cross = x0 + (threshold - vs) / (ve - vs) * static_cast<double>(x1 - x0);
  const int64_t split = static_cast<int64_t>(std::floor(std::min(std::max(cross, x0 - 1.0), x1 + 0.0))) + 1;
  // From x upward (step +1) or downward (-1) until a pixel proves itself on (to_on) or off;
  // returns that pixel, or the one past the run's end.
  auto walk = [&](int64_t x, int64_t step, bool to_on) {
    for (; x >= x0 && x <= x1; x += step) {
      const double v = sample(x);
      if (to_on ? v > threshold + margin : v <= threshold - margin) break;
      out.set_if(y, x, v > threshold);
    }
    return x;
  };
  const int64_t up = walk(split, 1, rising);          // [up, x1] proven on when rising
  const int64_t down = walk(split - 1, -1, !rising);  // [x0, down] proven on when falling
  if (rising && up <= x1) {
    set_bit_range(out.mask, y * out.W + up, y * out.W + x1);
  } else if (!rising && down >= x0) {
    set_bit_range(out.mask, y * out.W + x0, y * out.W + down);
  }
  out.touch(y, x0, y, x1);  // a loose span is harmless: words outside the set bits are zero
}

// The rows y0..y1 of a block (columns x0..x1 between the same two source columns) whose four
// sources straddle T: one horizontal pass shared by the rows, then each row is settled by its two
// computed ends when they prove it, by a crossing walk, or pixel by pixel.
void straddling_block(const Geometry& g, Workspace& ws, int64_t y0, int64_t y1,
                      int64_t x0, int64_t x1, const double quad[4], double threshold, double margin,
                      MaskWriter& out) {
  double* h0 = ws.h0.data();
  double* h1 = ws.h1.data();
  for (int64_t x = x0; x <= x1; ++x) {
    h0[x] = lerp_pair(g.tx[x].l0, quad[0], g.tx[x].l1, quad[1]);
    h1[x] = lerp_pair(g.tx[x].l0, quad[2], g.tx[x].l1, quad[3]);
  }
  for (int64_t y = y0; y <= y1; ++y) {
    const LinearTap& ty = g.ty[y];
    auto sample = [&](int64_t x) { return lerp_pair(ty.l0, h0[x], ty.l1, h1[x]); };
    const double vs = sample(x0), ve = sample(x1);
    if (std::max(vs, ve) <= threshold - margin) {
      ws.count(kRowOff);
    } else if (std::min(vs, ve) > threshold + margin) {
      ws.count(kRowOn);
      out.set_range(y, x0, x1);
    } else if (std::fabs(ve - vs) > 2.0 * margin) {
      ws.count(kRowCrossing);
      crossing_walk(y, x0, x1, vs, ve, threshold, margin, sample, out);
    } else {
      ws.count(kRowExact);
      bool any = false;
      for (int64_t x = x0; x <= x1; ++x) {
        const bool on = sample(x) > threshold;
        out.set_if(y, x, on);
        any |= on;
      }
      if (any) out.touch(y, x0, y, x1);
    }
  }
}

// Blocks of output pixels between the same two source rows and the same two source columns: every
// sample of a block is a convex combination of its four source values, so a block whose sources
// all lie beyond `margin` on one side of T is decided whole; only blocks that straddle T are
// evaluated further. Only output columns that read a hot source column are visited.
void mask_by_blocks(const ScoreParams& p, const Geometry& g, Workspace& ws, double threshold, double margin,
                    MaskWriter& out) {
  const double* src = ws.src.data();
  for (int64_t y0 = 0; y0 < p.H; y0 = g.row_run_last[y0] + 1) {
    const int64_t y1 = g.row_run_last[y0];
    const LinearTap& t = g.ty[y0];
    const int64_t clo = std::min(ws.hot_lo[t.i0], ws.hot_lo[t.i1]);
    const int64_t chi = std::max(ws.hot_hi[t.i0], ws.hot_hi[t.i1]);
    if (chi < 0) {  // no hot source in either row: every sample is <= T
      ws.count(kNoHotSource);
      continue;
    }
    int64_t xa = p.W, xb = -1;
    for (int64_t c = clo; c <= chi; ++c) {
      xa = std::min(xa, g.col_first[c]);
      xb = std::max(xb, g.col_last[c]);
    }
    const double* s0 = src + t.i0 * p.w;
    const double* s1 = src + t.i1 * p.w;
    for (int64_t x0 = xa; x0 <= xb;) {
      const int64_t x1 = std::min(g.run_last[x0], xb);
      const LinearTap& u = g.tx[x0];
      const double quad[4] = {s0[u.i0], s0[u.i1], s1[u.i0], s1[u.i1]};
      const double hi = std::max(std::max(quad[0], quad[1]), std::max(quad[2], quad[3]));
      const double lo = std::min(std::min(quad[0], quad[1]), std::min(quad[2], quad[3]));
      if (hi <= threshold - margin) {
        ws.count(kBlockOff);
      } else if (lo > threshold + margin) {
        ws.count(kBlockOn);
        for (int64_t y = y0; y <= y1; ++y) set_bit_range(out.mask, y * p.W + x0, y * p.W + x1);
        out.touch(y0, x0, y1, x1);
      } else {
        straddling_block(g, ws, y0, y1, x0, x1, quad, threshold, margin, out);
      }
      x0 = x1 + 1;
    }
  }
}

// Thresholded upsampled mask of map (n, k) into ws.mask; returns the touched word span
// [first, last), first == last when no pixel is on.
template <typename scalar_t>
void mask_of_map(const ScoreParams& p, const Geometry& g, int64_t n, int64_t k, Workspace& ws,
                 int64_t* first_word, int64_t* last_word) {
  *first_word = *last_word = 0;
  const double threshold = p.thresholds[k];
  MaskWriter out{ws.mask.data(), p.W, p.words_per_mask, 0};
  if (kExhaustiveBuild || p.exhaustive) {
    ws.count(kExhaustiveMap);
    load_map<scalar_t>(p, n, k, ws.src.data());
    mask_exhaustive(p, g, ws.src.data(), threshold, out);
  } else {
    // Most maps have no hot source at all: their peak settles them before any conversion.
    const double floor_hot = hot_floor(threshold);
    const double peak = map_peak<scalar_t>(p, n, k);
    if (!(peak > floor_hot)) {
      ws.count(kColdMap);
      return;
    }
    load_map<scalar_t>(p, n, k, ws.src.data());
    double least = peak;
    if (!scan_hot_sources(p, ws, floor_hot, &least)) {  // unreachable: the peak is hot
      ws.count(kColdMap);
      return;
    }
    const double margin = 2.0 * blend_error_bound(std::max(std::fabs(least), std::fabs(peak)));
    mask_by_blocks(p, g, ws, threshold, margin, out);
  }
  if (out.first < out.last) {
    *first_word = out.first;
    *last_word = out.last;
  }
}

// What the kernel derives from the masks once per call, shared read-only by every thread.
struct LabelIndex {
  // Word span [first, last) of each entry's packed mask: words outside it are zero, so the
  // intersection popcount runs over its overlap with the unit's span only (empty for most pairs).
  std::vector<int64_t> first, last;  // [nnz]
  std::vector<char> labeled;         // [N, G] image has a label of category g ("netdissect" union)

  LabelIndex(const ScoreParams& p, int n_threads) {
    const int64_t nnz = p.offsets[p.N];
    first.assign(nnz, 0);
    last.assign(nnz, 0);
#pragma omp parallel for num_threads(threads_for(n_threads, nnz)) schedule(static)
    for (int64_t e = 0; e < nnz; ++e) {
      if (p.mask_rows[e] < 0) continue;
      const uint64_t* l = p.words + p.mask_rows[e] * p.words_per_mask;
      int64_t a = 0, b = p.words_per_mask;
      while (a < b && l[a] == 0) ++a;
      while (b > a && l[b - 1] == 0) --b;
      first[e] = a;
      last[e] = b;
    }
    if (p.union_mode == UnionMode::kNetDissect) {
      labeled.assign(p.N * p.G, 0);
      for (int64_t n = 0; n < p.N; ++n)
        for (int64_t e = p.offsets[n]; e < p.offsets[n + 1]; ++e) labeled[n * p.G + p.categories[p.concept_ids[e]]] = 1;
    }
  }
};

// The union's unit term of map (n, k) with mask area `area`: per category, the netdissect union
// counts the mask where the image has a label of that category, the lite union where the mask
// meets one (ws.cat_hit); the global union needs none.
template <UnionMode U>
void add_union_term(const ScoreParams& p, const LabelIndex& labels, const Workspace& ws, int64_t n, int64_t area,
                    int64_t* cat_row) {
  if constexpr (U == UnionMode::kNetDissect) {
    for (int64_t c = 0; c < p.G; ++c)
      if (labels.labeled[n * p.G + c]) cat_row[c] += area;
  } else if constexpr (U == UnionMode::kLite) {
    for (int64_t c = 0; c < p.G; ++c)
      if (ws.cat_hit[c]) cat_row[c] += area;
  }
}

template <typename scalar_t, UnionMode U>
void score_units(const ScoreParams& p, const Geometry& g, const PillowGeometry& pg, const LabelIndex& labels,
                 Workspace& ws,
                 int64_t k_begin, int64_t k_end) {
  // Images in small blocks so that their packed masks stay in cache across these units.
  constexpr int64_t kImageBlock = 8;
  for (int64_t n0 = 0; n0 < p.N; n0 += kImageBlock)
  for (int64_t k = k_begin; k < k_end; ++k) {
    int64_t* inter_row = p.intersection + k * p.C;
    int64_t* cat_row = U == UnionMode::kGlobal ? nullptr : p.unit_category_area + k * p.G;
    for (int64_t n = n0; n < std::min(p.N, n0 + kImageBlock); ++n) {
      int64_t w0, w1;
      if (p.pil_x_first) {
        mask_of_map_pillow<scalar_t>(p, pg, n, k, ws, &w0, &w1);
      } else {
        mask_of_map<scalar_t>(p, g, n, k, ws, &w0, &w1);
      }
      if (w0 == w1) {
        ws.check_scratch_zero();
        continue;
      }
      const uint64_t* m = ws.mask.data();
      if (p.mask_out) std::copy(m + w0, m + w1, p.mask_out + (n * p.K + k) * p.words_per_mask + w0);
      int64_t area = 0;
      for (int64_t i = w0; i < w1; ++i) area += popcount64(m[i]);
      p.unit_area[k] += area;
      if constexpr (U == UnionMode::kLite) std::fill(ws.cat_hit.begin(), ws.cat_hit.end(), 0);
      for (int64_t e = p.offsets[n]; e < p.offsets[n + 1]; ++e) {
        int64_t inter = area;
        if (p.mask_rows[e] >= 0) {
          const uint64_t* l = p.words + p.mask_rows[e] * p.words_per_mask;
          const int64_t lo = std::max(w0, labels.first[e]), hi = std::min(w1, labels.last[e]);
          inter = 0;
          for (int64_t i = lo; i < hi; ++i) inter += popcount64(m[i] & l[i]);
        }
        inter_row[p.concept_ids[e]] += inter;
        if (p.image_hits && inter > 0) p.image_hits[k * p.C + p.concept_ids[e]] += 1;
        if constexpr (U == UnionMode::kLite) {
          if (inter > 0) ws.cat_hit[p.categories[p.concept_ids[e]]] = 1;
        }
      }
      add_union_term<U>(p, labels, ws, n, area, cat_row);
      std::fill(ws.mask.begin() + w0, ws.mask.begin() + w1, 0);
      ws.check_scratch_zero();
    }
  }
}

template <typename scalar_t, UnionMode U>
void score_all_units(const ScoreParams& p, const Geometry& g, const PillowGeometry& pg, const LabelIndex& labels,
                     int threads) {
  // Chunks of units handed out as threads free up: a thread that is slowed down (a busy core, units
  // with more active maps) holds no one up. Each unit's accumulators are written by one thread in
  // image order, so results do not depend on which thread takes which chunk.
  const int64_t chunk = std::max<int64_t>(1, p.K / (4 * threads));
  const int64_t num_chunks = (p.K + chunk - 1) / chunk;
  bool dirty = false;
#pragma omp parallel num_threads(threads) reduction(|| : dirty)
  {
    Workspace ws(p);
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < num_chunks; ++c)
      score_units<scalar_t, U>(p, g, pg, labels, ws, c * chunk, std::min(p.K, (c + 1) * chunk));
    if (ws.counting) {
#pragma omp critical(fd_branch_counts)
      for (int b = 0; b < kNumScoreBranches; ++b) p.branch_counts[b] += ws.branches[b];
    }
    dirty = dirty || ws.dirty_scratch;
  }
  // Outside the parallel region: an exception must not cross it.
  FD_ASSERT(!dirty, "a map left the scratch mask non-zero");
}

}  // namespace

void score_cpu(const ScoreParams& p, int n_threads) {
  if (p.N == 0 || p.K == 0) return;
  const Geometry g(p.h, p.w, p.H, p.W);
  const PillowGeometry pg(p);
  const LabelIndex labels(p, n_threads);
  const int threads = threads_for(n_threads, p.K);
  FD_DISPATCH_FLOAT(p.act_dtype, scalar_t, [&] {
    FD_UNION_SWITCH(p.union_mode, U, [&] { score_all_units<scalar_t, U>(p, g, pg, labels, threads); });
  });
}

}  // namespace fd
