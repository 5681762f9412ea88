// The fused score kernels: bilinear upsampling, threshold, bit packing and popcount against the
// packed concept masks, one 64-pixel mask word per work item. Integer atomics only, so results are
// identical to the CPU backend bit for bit, whatever the order. Include after cuda_runtime.h or
// emu/cuda_emu.h.
#pragma once

#include "../common/bitpack.h"
#include "../common/params.h"
#include "../common/upsample.h"
#include "launch.cuh"

namespace fd {
namespace {  // internal linkage: the CUDA and the emulated build of a kernel live in one library

template <typename scalar_t>
FD_HOST_DEVICE FD_INLINE double source_value(const ScoreParams& p, int64_t n, int64_t k, int64_t y, int64_t x) {
  const scalar_t* a = static_cast<const scalar_t*>(p.act);
  return to_double(a[n * p.act_stride[0] + k * p.act_stride[1] + y * p.act_stride[2] + x * p.act_stride[3]]);
}

// Word `word` of M_k(x_n): bit b is pixel word * 64 + b, set iff its bilinear sample exceeds T_k.
// The sample is upsample.h's expression in its fixed order, as on the CPU.
template <typename scalar_t>
FD_HOST_DEVICE FD_INLINE uint64_t mask_word(const ScoreParams& p, int64_t n, int64_t k, int64_t word) {
  const double threshold = p.thresholds[k];
  const int64_t first = word * kBitsPerWord;
  const int64_t end = first + kBitsPerWord < p.H * p.W ? first + kBitsPerWord : p.H * p.W;
  uint64_t bits = 0;
  for (int64_t pixel = first; pixel < end; ++pixel) {
    const LinearTap ty = linear_tap(pixel / p.W, p.h, p.H);
    const LinearTap tx = linear_tap(pixel % p.W, p.w, p.W);
    const double top = lerp_pair(tx.l0, source_value<scalar_t>(p, n, k, ty.i0, tx.i0), tx.l1,
                                 source_value<scalar_t>(p, n, k, ty.i0, tx.i1));
    const double bottom = lerp_pair(tx.l0, source_value<scalar_t>(p, n, k, ty.i1, tx.i0), tx.l1,
                                    source_value<scalar_t>(p, n, k, ty.i1, tx.i1));
    bits |= bit_if(lerp_pair(ty.l0, top, ty.l1, bottom) > threshold, pixel);
  }
  return bits;
}

// Work item (n, k, word). Adds the word's popcounts into unit_area, intersection, and the per-map
// scratch: map_area[n, k] and, for the "lite" union, hit[n, k, g] when the map meets category g.
// Word 0 also counts the map's NaN / inf sources, so bad input is reported without a host sync.
template <typename scalar_t>
__global__ void score_words_kernel(ScoreParams p, ScoreScratch s) {
  const int64_t words = p.words_per_mask;
  FD_GRID_STRIDE(item, p.N * p.K * words) {
    const int64_t word = item % words;
    const int64_t k = (item / words) % p.K;
    const int64_t n = item / (words * p.K);
    if (word == 0) {
      int64_t bad = 0;
      for (int64_t y = 0; y < p.h; ++y)
        for (int64_t x = 0; x < p.w; ++x) {
          const double v = source_value<scalar_t>(p, n, k, y, x);
          bad += !(v - v == 0.0);
        }
      if (bad) atomic_add_i64(s.non_finite + k, bad);
    }
    const uint64_t m = mask_word<scalar_t>(p, n, k, word);
    if (m == 0) continue;
    if (p.mask_out) p.mask_out[item] = m;  // item = (n * K + k) * words + word
    const int64_t area = popcount64(m);
    atomic_add_i64(p.unit_area + k, area);
    if (s.map_area) atomic_add_i64(s.map_area + n * p.K + k, area);
    for (int64_t e = p.offsets[n]; e < p.offsets[n + 1]; ++e) {
      const int64_t row = p.mask_rows[e];
      const int64_t inter = row >= 0 ? popcount64(m & p.words[row * words + word]) : area;
      if (inter == 0) continue;
      atomic_add_i64(p.intersection + k * p.C + p.concept_ids[e], inter);
      if (s.entry_hit) atomicOr(s.entry_hit + k * s.num_entries + e, 1);
      if (s.hit) atomicOr(s.hit + (n * p.K + k) * p.G + p.categories[p.concept_ids[e]], 1);
    }
  }
}

// Work item (n, k): the union term of the "netdissect" (image has a label of g) and "lite" (the map
// meets a label of g) unions.
__global__ void score_union_kernel(ScoreParams p, ScoreScratch s) {
  FD_GRID_STRIDE(item, p.N * p.K) {
    const int64_t k = item % p.K, n = item / p.K;
    const int64_t area = s.map_area[item];
    if (area == 0) continue;
    for (int64_t g = 0; g < p.G; ++g) {
      bool counts = false;
      if (p.union_mode == UnionMode::kLite) {
        counts = s.hit[item * p.G + g] != 0;
      } else {
        for (int64_t e = p.offsets[n]; e < p.offsets[n + 1] && !counts; ++e)
          counts = p.categories[p.concept_ids[e]] == g;
      }
      if (counts) atomic_add_i64(p.unit_category_area + k * p.G + g, area);
    }
  }
}

// Work item (k, e): one image hit for the unit and the entry's concept when some word met it.
// Separate from the words kernel because the words of one map are counted by many threads.
__global__ void score_image_hits_kernel(ScoreParams p, ScoreScratch s) {
  const int64_t entries = s.num_entries;
  FD_GRID_STRIDE(item, p.K * entries) {
    if (s.entry_hit[item]) atomic_add_i64(p.image_hits + (item / entries) * p.C + p.concept_ids[item % entries], 1);
  }
}

}  // namespace
}  // namespace fd
