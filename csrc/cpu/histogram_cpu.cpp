// Per-unit streaming histogram for exact quantiles (see python/fastdissect/top_quantile.py).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "../common/histogram_key.h"
#include "cpu_ops.h"

namespace fd {
namespace {

// Unit k's map of image n as h * w doubles in out.
template <typename scalar_t>
FD_INLINE void load_map(const HistogramParams& p, int64_t n, int64_t k, double* out) {
  const scalar_t* map = static_cast<const scalar_t*>(p.act) + n * p.act_stride[0] + k * p.act_stride[1];
  if (p.act_stride[3] == 1 && p.act_stride[2] == p.w) {  // contiguous map: one flat loop
    for (int64_t i = 0; i < p.h * p.w; ++i) out[i] = to_double(map[i]);
    return;
  }
  for (int64_t y = 0; y < p.h; ++y) {
    for (int64_t x = 0; x < p.w; ++x) out[y * p.w + x] = to_double(map[y * p.act_stride[2] + x * p.act_stride[3]]);
  }
}

// One unit's running update over a batch.
struct UnitPass {
  int64_t* counts;
  double lo, hi, old_floor_value;
  int64_t zeros = 0, non_finite = 0, run = 0;
  int run_bin = kZeroBin;
  int64_t step;  // +1 adds, -1 undoes
  std::vector<double>* kept;

  void add_map(const double* map, int64_t hw, double* nonzero) {
    // ReLU maps are mostly 0: zeros are dropped without a branch, so the loop below sees only
    // non-zero values (no mispredicted branch, no serial increments of the zero bin).
    int64_t m = 0;
    for (int64_t i = 0; i < hw; ++i) {
      const double v = map[i];
      non_finite += !(std::fabs(v) <= std::numeric_limits<double>::max());
      nonzero[m] = v;
      m += (v != 0.0);
    }
    zeros += hw - m;
    // Neighbouring pixels of a smooth map often share a bin: counting runs in a register avoids a
    // chain of increments through memory.
    for (int64_t i = 0; i < m; ++i) {
      const double v = nonzero[i];
      lo = std::min(lo, v);
      hi = std::max(hi, v);
      const int bin = histogram_bin(v);
      if (bin != run_bin) {
        counts[run_bin] += step * run;
        run_bin = bin;
        run = 0;
      }
      ++run;
      if (v >= old_floor_value) kept->push_back(v);
    }
  }

  void finish() {
    counts[run_bin] += step * run;
    counts[kZeroBin] += step * zeros;
    if (zeros > 0) {
      lo = std::min(lo, 0.0);
      hi = std::max(hi, 0.0);
    }
  }
};

// Maps of neighbouring units are adjacent in memory, so a group of units is read image by image
// (contiguous spans, shared cache lines and pages) with one histogram per unit.
constexpr int64_t kGroup = 8;

// Adds units [k0, k1) to their histograms; keeps the values from each floor bin up, raising the
// floor first. Sets bad[k] for units holding NaN or inf; `undo` subtracts a batch added before.
template <typename scalar_t>
void histogram_group(const HistogramParams& p, int64_t k0, int64_t k1, bool undo, std::vector<double>& map,
                     std::vector<double>& nonzero, std::vector<std::vector<double>>& kept, uint8_t* bad) {
  UnitPass units[kGroup];
  for (int64_t k = k0; k < k1; ++k) {
    UnitPass& u = units[k - k0];
    u.counts = p.counts + k * kHistBins;
    u.lo = p.min_max[2 * k];
    u.hi = p.min_max[2 * k + 1];
    u.old_floor_value = bin_lower_bound(p.floor_bin[k]);
    u.step = undo ? -1 : 1;
    u.kept = &kept[k];
  }
  const int64_t hw = p.h * p.w;
  for (int64_t n = 0; n < p.N; ++n) {
    for (int64_t k = k0; k < k1; ++k) {
      load_map<scalar_t>(p, n, k, map.data());
      units[k - k0].add_map(map.data(), hw, nonzero.data());
    }
  }
  for (int64_t k = k0; k < k1; ++k) {
    UnitPass& u = units[k - k0];
    u.finish();
    bad[k] = u.non_finite > 0;
    if (undo) continue;
    p.min_max[2 * k] = u.lo;
    p.min_max[2 * k + 1] = u.hi;
    const int floor = p.floor_bin[k] = raised_floor(u.counts, p.floor_bin[k], p.keep_top);
    const double floor_value = bin_lower_bound(floor);
    auto& mine = kept[k];
    mine.erase(std::remove_if(mine.begin(), mine.end(), [&](double v) { return !(v >= floor_value); }), mine.end());
  }
}

template <typename scalar_t>
bool histogram_units(const HistogramParams& p, int n_threads, std::vector<std::vector<double>>& kept,
                     uint8_t* bad_units) {
  // A batch holding NaN or inf is rejected with the state unchanged: the rare bad batch is
  // subtracted again, instead of every batch paying for a separate check.
  std::vector<double> old_min_max(p.min_max, p.min_max + 2 * p.K);
  std::vector<int32_t> old_floor(p.floor_bin, p.floor_bin + p.K);
  const int64_t groups = (p.K + kGroup - 1) / kGroup;
  std::atomic<bool> all_finite{true};
#pragma omp parallel num_threads(threads_for(n_threads, groups))
  {
    std::vector<double> map(p.h * p.w), nonzero(p.h * p.w);
#pragma omp for schedule(dynamic, 1)
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k0 = g * kGroup, k1 = std::min(p.K, k0 + kGroup);
      histogram_group<scalar_t>(p, k0, k1, false, map, nonzero, kept, bad_units);
      for (int64_t k = k0; k < k1; ++k) {
        if (bad_units[k]) all_finite = false;
      }
    }
    if (!all_finite) {
      std::vector<uint8_t> ignored(p.K);
#pragma omp for schedule(dynamic, 1)
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t k0 = g * kGroup, k1 = std::min(p.K, k0 + kGroup);
        for (int64_t k = k0; k < k1; ++k) p.floor_bin[k] = old_floor[k];
        histogram_group<scalar_t>(p, k0, k1, true, map, nonzero, kept, ignored.data());
        for (int64_t k = k0; k < k1; ++k) {
          p.min_max[2 * k] = old_min_max[2 * k];
          p.min_max[2 * k + 1] = old_min_max[2 * k + 1];
        }
      }
    }
  }
  return all_finite;
}

}  // namespace

bool histogram_cpu(const HistogramParams& p, int n_threads, std::vector<std::vector<double>>& kept,
                   uint8_t* bad_units) {
  kept.assign(p.K, {});
  return FD_DISPATCH_FLOAT(p.act_dtype, scalar_t,
                           [&] { return histogram_units<scalar_t>(p, n_threads, kept, bad_units); });
}

}  // namespace fd
