// The CPU score kernel's bilinear mask: M_k(x) of upsample.h for one map, evaluated only around
// hot source pixels and thresholded straight into a bit-packed mask; no upsampled map is stored.
#include "score_mask.h"

namespace fd {
namespace score_detail {

Geometry::Geometry(int64_t h, int64_t w, int64_t H, int64_t W)
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

namespace {

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

}  // namespace

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

#define FD_INSTANTIATE(scalar_t)                                                                         \
  template void mask_of_map<scalar_t>(const ScoreParams&, const Geometry&, int64_t, int64_t, Workspace&, \
                                      int64_t*, int64_t*);
FD_FOR_EACH_ACT_TYPE(FD_INSTANTIATE)
#undef FD_INSTANTIATE

}  // namespace score_detail
}  // namespace fd
