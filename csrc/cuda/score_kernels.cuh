// The fused score kernels: bilinear upsampling, threshold, bit packing and popcount against the
// packed concept masks. A first kernel reads each map once (its peak settles most maps: cold maps
// cost nothing more); the second evaluates the other maps' words, a block per map, screening
// pixels in float and falling back to double only near T, and sums their counts per entry in
// shared memory before one global atomic per (map, entry). Integer atomics only, so
// results are identical to the CPU backend bit for bit, whatever the order. Include after
// cuda_runtime.h or emu/cuda_emu.h. The roofline is in the README (Performance, "On a GPU").
#pragma once

#include "../common/bitpack.h"
#include "../common/score.h"
#include "../common/upsample.h"
#include "launch.cuh"

namespace fd {
namespace {  // internal linkage: the CUDA and the emulated build of a kernel live in one library

// Source (y, x) of map (n, k) in its storage type, then widened: exactly (double), or for the float
// screen (float: exact for every type but double).
template <typename scalar_t>
FD_HOST_DEVICE FD_INLINE scalar_t source_at(const ScoreParams& p, int64_t n, int64_t k, int64_t y, int64_t x) {
  const scalar_t* a = static_cast<const scalar_t*>(p.act);
  return a[n * p.act_stride[0] + k * p.act_stride[1] + y * p.act_stride[2] + x * p.act_stride[3]];
}

template <typename scalar_t>
FD_HOST_DEVICE FD_INLINE double source_value(const ScoreParams& p, int64_t n, int64_t k, int64_t y, int64_t x) {
  return to_double(source_at<scalar_t>(p, n, k, y, x));
}

template <typename scalar_t>
FD_HOST_DEVICE FD_INLINE float source_float(const ScoreParams& p, int64_t n, int64_t k, int64_t y, int64_t x) {
  return to_float(source_at<scalar_t>(p, n, k, y, x));
}

// Work item: one output row's (item < H) or column's taps, for every map of the call.
__global__ void score_taps_kernel(ScoreParams p, ScoreScratch s) {
  FD_GRID_STRIDE(item, p.H + p.W) {
    const LinearTap t = item < p.H ? linear_tap(item, p.h, p.H) : linear_tap(item - p.H, p.w, p.W);
    s.taps[item] = ScreenTap{t.i0, t.i1, t.l0, t.l1, static_cast<float>(t.l0), static_cast<float>(t.l1)};
  }
}

// The sample of a pixel in double: upsample.h's expression in its fixed order, as on the CPU.
template <typename scalar_t>
FD_HOST_DEVICE FD_INLINE double sample_f64(const ScoreParams& p, int64_t n, int64_t k, const ScreenTap& ty,
                                           const ScreenTap& tx) {
  const double top = lerp_pair(tx.l0, source_value<scalar_t>(p, n, k, ty.i0, tx.i0), tx.l1,
                               source_value<scalar_t>(p, n, k, ty.i0, tx.i1));
  const double bottom = lerp_pair(tx.l0, source_value<scalar_t>(p, n, k, ty.i1, tx.i0), tx.l1,
                                  source_value<scalar_t>(p, n, k, ty.i1, tx.i1));
  return lerp_pair(ty.l0, top, ty.l1, bottom);
}

// The same expression in float, float operations only: the screen of upsample.h bound (5).
template <typename scalar_t>
FD_HOST_DEVICE FD_INLINE float sample_f32(const ScoreParams& p, int64_t n, int64_t k, const ScreenTap& ty,
                                          const ScreenTap& tx) {
  const float top = tx.f0 * source_float<scalar_t>(p, n, k, ty.i0, tx.i0) +
                    tx.f1 * source_float<scalar_t>(p, n, k, ty.i0, tx.i1);
  const float bottom = tx.f0 * source_float<scalar_t>(p, n, k, ty.i1, tx.i0) +
                       tx.f1 * source_float<scalar_t>(p, n, k, ty.i1, tx.i1);
  return ty.f0 * top + ty.f1 * bottom;
}

// Whether every source a pixel of word `word` reads is <= hot_floor(T) (bound (1): the word is
// zero). The word's pixels, row segment by row segment, read source rows i0..i1 and the columns
// from the first pixel's i0 to the last pixel's i1.
template <typename scalar_t>
FD_HOST_DEVICE FD_INLINE bool word_is_cold(const ScoreParams& p, const ScoreScratch& s, int64_t n, int64_t k,
                                           int64_t first, int64_t end, double floor_hot) {
  for (int64_t pixel = first; pixel < end;) {
    const int64_t y = pixel / p.W, xa = pixel % p.W;
    const int64_t xb = (end - 1) / p.W == y ? (end - 1) % p.W : p.W - 1;
    const ScreenTap& ty = s.taps[y];
    const int64_t c0 = s.taps[p.H + xa].i0, c1 = s.taps[p.H + xb].i1;
    for (int64_t i = ty.i0; i <= ty.i1; ++i)
      for (int64_t j = c0; j <= c1; ++j)
        if (source_value<scalar_t>(p, n, k, i, j) > floor_hot) return false;
    pixel = (y + 1) * p.W;
  }
  return true;
}

// Word `word` of M_k(x_n): bit b is pixel word * 64 + b, set iff its bilinear sample exceeds T_k.
// `scale` is the map's max |source| (score_peaks_kernel). Cold words are zero without a sample;
// every other pixel is screened in float and evaluated in double only when the screen cannot
// decide it (upsample.h bound (5)), so the word is the double definition's, bit for bit.
template <typename scalar_t>
FD_HOST_DEVICE FD_INLINE uint64_t mask_word(const ScoreParams& p, const ScoreScratch& s, int64_t n, int64_t k,
                                            int64_t word, double scale) {
  const double threshold = p.thresholds[k];
  const int64_t first = word * kBitsPerWord;
  const int64_t end = first + kBitsPerWord < p.H * p.W ? first + kBitsPerWord : p.H * p.W;
  if (word_is_cold<scalar_t>(p, s, n, k, first, end, hot_floor(threshold))) return 0;
  const double magnitude = threshold < 0 ? -threshold : threshold;
  const double bound = scale > magnitude ? scale : magnitude;  // max(A, |T|), bound (5)
  const bool screen = bound <= kScreenMaxAbs;
  const double margin = screen_margin(bound);
  const float on_above = static_cast<float>(threshold + 2.0 * margin);
  const float off_at_most = static_cast<float>(threshold - 2.0 * margin);
  uint64_t bits = 0;
  for (int64_t pixel = first; pixel < end; ++pixel) {
    const ScreenTap& ty = s.taps[pixel / p.W];
    const ScreenTap& tx = s.taps[p.H + pixel % p.W];
    bool on;
    const float coarse = screen ? sample_f32<scalar_t>(p, n, k, ty, tx) : 0.0f;
    if (screen && coarse > on_above) {
      on = true;
    } else if (screen && coarse <= off_at_most) {
      on = false;
    } else {
      on = sample_f64<scalar_t>(p, n, k, ty, tx) > threshold;
    }
    bits |= bit_if(on, pixel);
  }
  return bits;
}

// Work item (n, k): the map's sources read once. Counts its NaN / inf sources (bad input is
// reported without a host sync) and sets map_scale[n, k] to its max |source| when its peak is
// above hot_floor(T_k), else to -1: a cold map, off everywhere (bound (1)), which the words
// kernel skips before any pixel work.
template <typename scalar_t>
__global__ void score_peaks_kernel(ScoreParams p, ScoreScratch s) {
  FD_GRID_STRIDE(item, p.N * p.K) {
    const int64_t k = item % p.K, n = item / p.K;
    int64_t bad = 0;
    double peak = -DBL_MAX, max_abs = 0.0;  // finite starts: a map with NaN / inf is reported, not scored
    for (int64_t y = 0; y < p.h; ++y)
      for (int64_t x = 0; x < p.w; ++x) {
        const double v = source_value<scalar_t>(p, n, k, y, x);
        bad += !(v - v == 0.0);
        peak = v > peak ? v : peak;
        const double magnitude = v < 0.0 ? -v : v;
        max_abs = magnitude > max_abs ? magnitude : max_abs;
      }
    if (bad) atomic_add_i64(s.non_finite + k, bad);
    s.map_scale[item] = peak > hot_floor(p.thresholds[k]) ? max_abs : -1.0;
  }
}

// Words one thread evaluates per pass over a map: a pass covers blockDim.x * kWordsPerThread words.
constexpr int64_t kWordsPerThread = 4;
// Entries of an image counted per round through shared memory; blockDim.x must be at least this.
constexpr int64_t kEntryTile = 64;

// Blocks of the words kernel: one map each, the grid-stride loop covering the rest.
FD_HOST_DEVICE FD_INLINE int64_t map_blocks(const ScoreParams& p) {
  const int64_t maps = p.N * p.K;
  return maps < 1 ? 1 : (maps > kMaxGridBlocks ? kMaxGridBlocks : maps);
}

// Threads of a words-kernel block: enough for a map's words in one pass, in whole warps, at least
// kEntryTile (every counter has its flusher), at most kThreadsPerBlock.
FD_HOST_DEVICE FD_INLINE unsigned map_threads(const ScoreParams& p) {
  const int64_t needed = (p.words_per_mask + kWordsPerThread - 1) / kWordsPerThread;
  const int64_t warps = ((needed + 31) / 32) * 32;
  return static_cast<unsigned>(warps < kEntryTile ? kEntryTile : (warps > kThreadsPerBlock ? kThreadsPerBlock : warps));
}

// One pass of a block over words [base, base + blockDim.x * kWordsPerThread) of map (n, k): thread t
// evaluates its kWordsPerThread words into m (written to mask_out when asked) and returns their area.
template <typename scalar_t>
FD_DEVICE FD_INLINE int64_t evaluate_words(const ScoreParams& p, const ScoreScratch& s, int64_t n, int64_t k,
                                           int64_t base, uint64_t (&m)[kWordsPerThread]) {
  const int64_t words = p.words_per_mask, t = threadIdx.x, stride = blockDim.x, map = n * p.K + k;
  int64_t area = 0;
  for (int64_t i = 0; i < kWordsPerThread; ++i) {
    const int64_t w = base + i * stride + t;
    m[i] = w < words ? mask_word<scalar_t>(p, s, n, k, w, s.map_scale[map]) : 0;
    area += popcount64(m[i]);
    if (m[i] && p.mask_out) p.mask_out[map * words + w] = m[i];  // mask_out arrives zeroed
  }
  return area;
}

// The flags one mask set's counts raise in the scratch: per (unit, entry) with image hits, per
// (map, category) for the "lite" union.
struct EntryFlags {
  int* entry_hit;
  int64_t num_entries;
  int* hit;
};

FD_HOST_DEVICE FD_INLINE EntryFlags entry_flags(const ScoreScratch& s, bool control) {
  return control ? EntryFlags{s.ctl_entry_hit, s.ctl_num_entries, s.ctl_hit}
                 : EntryFlags{s.entry_hit, s.num_entries, s.hit};
}

// Entries [e0, e0 + tile) of image n in `set` against this pass's words: each thread adds its
// popcounts per entry into the shared counters, then thread t flushes counter t to the set's
// intersection (and the hit flags). Only thread t zeroes counter t for the next tile, so no barrier
// is needed between the two.
FD_DEVICE FD_INLINE void count_entry_tile(const ScoreParams& p, const EntrySet& set, const EntryFlags& flags,
                                          int64_t n, int64_t k, int64_t base, const uint64_t (&m)[kWordsPerThread],
                                          int64_t area, int64_t e0, int64_t tile, unsigned long long* block_counts) {
  const int64_t words = p.words_per_mask, t = threadIdx.x, stride = blockDim.x, map = n * p.K + k;
  if (t < tile) block_counts[t] = 0;
  __syncthreads();
  for (int64_t j = 0; j < tile && area; ++j) {
    const int64_t row = set.mask_rows[e0 + j];
    int64_t inter = area;  // row -1: a concept covering the whole image
    if (row >= 0) {
      inter = 0;
      for (int64_t i = 0; i < kWordsPerThread; ++i) {
        const int64_t w = base + i * stride + t;
        if (w < words) inter += popcount64(m[i] & set.words[row * words + w]);
      }
    }
    if (inter) atomicAdd(block_counts + j, static_cast<unsigned long long>(inter));
  }
  __syncthreads();
  if (t < tile) {
    const int64_t inter = static_cast<int64_t>(block_counts[t]), e = e0 + t;
    if (inter) {
      atomic_add_i64(set.intersection + k * p.C + set.concept_ids[e], inter);
      if (flags.entry_hit) atomicOr(flags.entry_hit + k * flags.num_entries + e, 1);
      if (flags.hit) atomicOr(flags.hit + map * p.G + p.categories[set.concept_ids[e]], 1);
    }
  }
}

// This pass's words of map (n, k) against every entry of image n in `set`, a tile at a time. The
// loop bounds depend on the map and the set only, so every thread of the block meets each barrier.
FD_DEVICE FD_INLINE void count_entries(const ScoreParams& p, const ScoreScratch& s, bool control, int64_t n,
                                       int64_t k, int64_t base, const uint64_t (&m)[kWordsPerThread], int64_t area,
                                       unsigned long long* block_counts) {
  const EntrySet set = entry_set(p, control);
  const EntryFlags flags = entry_flags(s, control);
  for (int64_t e0 = set.offsets[n]; e0 < set.offsets[n + 1]; e0 += kEntryTile) {
    const int64_t left = set.offsets[n + 1] - e0;
    count_entry_tile(p, set, flags, n, k, base, m, area, e0, left < kEntryTile ? left : kEntryTile, block_counts);
  }
}

// One block per map that is not cold (a grid-stride loop over maps). Its threads evaluate the map's
// words, kWordsPerThread each, and add their popcounts per entry into the block's shared counters,
// which kEntryTile threads then add to intersection: one global atomic per (map, entry) met and one
// per map for its area, whatever the number of words. Also the per-map scratch: map_area[n, k]
// and, for the "lite" union, hit[n, k, g] when the map meets category g. Every loop bound and
// branch around a barrier depends on the map only, so all threads of a block meet the same barriers.
template <typename scalar_t>
__global__ void score_words_kernel(ScoreParams p, ScoreScratch s) {
  __shared__ unsigned long long block_area;
  __shared__ unsigned long long block_counts[kEntryTile];
  const int64_t words = p.words_per_mask;
  for (int64_t map = blockIdx.x; map < p.N * p.K; map += gridDim.x) {
    if (s.map_scale[map] < 0.0) continue;  // a cold map: off everywhere
    const int64_t k = map % p.K, n = map / p.K;
    for (int64_t base = 0; base < words; base += static_cast<int64_t>(blockDim.x) * kWordsPerThread) {
      uint64_t m[kWordsPerThread];
      const int64_t area = evaluate_words<scalar_t>(p, s, n, k, base, m);
      if (threadIdx.x == 0) block_area = 0;
      __syncthreads();
      if (area) atomicAdd(&block_area, static_cast<unsigned long long>(area));
      __syncthreads();
      const int64_t total = static_cast<int64_t>(block_area);
      if (total != 0) {
        if (threadIdx.x == 0) {
          atomic_add_i64(p.unit_area + k, total);
          if (p.ctl_unit_area) atomic_add_i64(p.ctl_unit_area + k, total);
          if (s.map_area) atomic_add_i64(s.map_area + map, total);
        }
        // The same words, in registers, against the labels and then the permuted control's.
        count_entries(p, s, false, n, k, base, m, area, block_counts);
        if (has_control(p)) count_entries(p, s, true, n, k, base, m, area, block_counts);
      }
      __syncthreads();  // every thread has read block_area before the next pass zeroes it
    }
  }
}

// Whether map `item` = (n, k) of `set` adds its area to category g's union term: the "netdissect"
// union when image n has a label of g, the "lite" union when the map met one (flags.hit).
FD_HOST_DEVICE FD_INLINE bool union_counts(const ScoreParams& p, const EntrySet& set, const EntryFlags& flags,
                                           int64_t item, int64_t n, int64_t g) {
  if (p.union_mode == UnionMode::kLite) return flags.hit[item * p.G + g] != 0;
  for (int64_t e = set.offsets[n]; e < set.offsets[n + 1]; ++e)
    if (p.categories[set.concept_ids[e]] == g) return true;
  return false;
}

// Work item (n, k): the union term of the "netdissect" (image has a label of g) and "lite" (the map
// meets a label of g) unions, for the labels and the permuted control's (the same map area).
__global__ void score_union_kernel(ScoreParams p, ScoreScratch s) {
  FD_GRID_STRIDE(item, p.N * p.K) {
    const int64_t k = item % p.K, n = item / p.K;
    const int64_t area = s.map_area[item];
    if (area == 0) continue;
    for (int c = 0; c < (has_control(p) ? 2 : 1); ++c) {
      const EntrySet set = entry_set(p, c == 1);
      const EntryFlags flags = entry_flags(s, c == 1);
      for (int64_t g = 0; g < p.G; ++g)
        if (union_counts(p, set, flags, item, n, g)) atomic_add_i64(set.unit_category_area + k * p.G + g, area);
    }
  }
}

// Work item (k, e): one image hit for the unit and the entry's concept when some word met it.
// Separate from the words kernel because the words of one map are counted by many threads. Items
// K * E onward are the permuted control's entries (k, e') when it counts image hits.
__global__ void score_image_hits_kernel(ScoreParams p, ScoreScratch s) {
  const int64_t entries = s.num_entries, own = p.image_hits ? p.K * entries : 0;
  const int64_t control = p.ctl_image_hits ? p.K * s.ctl_num_entries : 0;
  FD_GRID_STRIDE(item, own + control) {
    if (item < own) {
      if (s.entry_hit[item]) atomic_add_i64(p.image_hits + (item / entries) * p.C + p.concept_ids[item % entries], 1);
    } else {
      const int64_t i = item - own, e = i % s.ctl_num_entries;
      if (s.ctl_entry_hit[i]) atomic_add_i64(p.ctl_image_hits + (i / s.ctl_num_entries) * p.C + p.ctl_concept_ids[e], 1);
    }
  }
}

// The launch plan of one score call: the GPU's geometry of every kernel, also the emulator's.
struct ScorePlan {
  Launch taps, peaks, words, unions, image_hits;
};

inline ScorePlan score_plan(const ScoreParams& p, const ScoreScratch& s) {
  const int64_t maps = p.N * p.K;
  ScorePlan plan;
  plan.taps = grid_stride_launch("score_taps_kernel", maps > 0 ? p.H + p.W : 0);
  plan.peaks = grid_stride_launch("score_peaks_kernel", maps);
  plan.words.kernel = "score_words_kernel";
  plan.words.grid = static_cast<unsigned>(map_blocks(p));
  plan.words.block = map_threads(p);
  plan.words.barriers = true;
  plan.words.run = maps > 0;
  plan.unions = grid_stride_launch("score_union_kernel", p.union_mode != UnionMode::kGlobal ? maps : 0);
  const int64_t hit_items = (p.image_hits ? p.K * s.num_entries : 0) + (p.ctl_image_hits ? p.K * s.ctl_num_entries : 0);
  plan.image_hits = grid_stride_launch("score_image_hits_kernel", maps > 0 ? hit_items : 0);
  return plan;
}

// The score call's kernels in order, each launched by `launch` (CudaLauncher or emu::Launcher) with
// its plan's geometry: the one sequence both builds run.
template <typename Launcher>
void launch_score(const ScoreParams& p, const ScoreScratch& s, const Launcher& launch) {
  const ScorePlan plan = score_plan(p, s);
  launch(plan.taps, score_taps_kernel, p, s);
  FD_DISPATCH_FLOAT(p.act_dtype, scalar_t, [&] {
    launch(plan.peaks, score_peaks_kernel<scalar_t>, p, s);
    launch(plan.words, score_words_kernel<scalar_t>, p, s);
  });
  launch(plan.unions, score_union_kernel, p, s);
  launch(plan.image_hits, score_image_hits_kernel, p, s);
}

}  // namespace
}  // namespace fd
