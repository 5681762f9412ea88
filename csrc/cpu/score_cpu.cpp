// The fused CPU scoring kernel's driver: for each (image, unit), the map's bit-packed mask
// (score_bilinear.cpp, or score_pillow.cpp with Pillow tables) counted, popcount(M & L_c), against
// the packed masks of the concepts present in that image, into the unit's tallies.
#include <memory>

#include "score_mask.h"

namespace fd {
namespace {

using score_detail::Geometry;
using score_detail::PillowGeometry;
using score_detail::Workspace;

// What the kernel derives from one mask set (EntrySet: the labels or the control's) once per call,
// shared read-only by every thread.
struct LabelIndex {
  // Word span [first, last) of each entry's packed mask: words outside it are zero, so the
  // intersection popcount runs over its overlap with the unit's span only (empty for most pairs).
  std::vector<int64_t> first, last;  // [nnz]
  std::vector<char> labeled;         // [N, G] image has a label of category g ("netdissect" union)

  LabelIndex(const ScoreParams& p, const EntrySet& set, int n_threads) {
    const int64_t nnz = set.offsets[p.N];
    first.assign(nnz, 0);
    last.assign(nnz, 0);
#pragma omp parallel for num_threads(threads_for(n_threads, nnz)) schedule(static)
    for (int64_t e = 0; e < nnz; ++e) {
      if (set.mask_rows[e] < 0) continue;
      const uint64_t* l = set.words + set.mask_rows[e] * p.words_per_mask;
      int64_t a = 0, b = p.words_per_mask;
      while (a < b && l[a] == 0) ++a;
      while (b > a && l[b - 1] == 0) --b;
      first[e] = a;
      last[e] = b;
    }
    if (p.union_mode == UnionMode::kNetDissect) {
      labeled.assign(p.N * p.G, 0);
      for (int64_t n = 0; n < p.N; ++n)
        for (int64_t e = set.offsets[n]; e < set.offsets[n + 1]; ++e)
          labeled[n * p.G + p.categories[set.concept_ids[e]]] = 1;
    }
  }
};

// A mask set and its index, as the driver counts maps against it.
struct IndexedSet {
  EntrySet set;
  LabelIndex labels;

  IndexedSet(const ScoreParams& p, bool control, int n_threads)
      : set(entry_set(p, control)), labels(p, set, n_threads) {}
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

// Map (n, k)'s mask m (set bits within words [w0, w1), `area` of them) counted against image n's
// entries of one mask set into that set's tallies: |M & L_e| per entry, its image hit, the union term.
template <UnionMode U>
void count_map(const ScoreParams& p, const IndexedSet& s, Workspace& ws, int64_t n, int64_t k, const uint64_t* m,
               int64_t w0, int64_t w1, int64_t area) {
  const EntrySet& set = s.set;
  int64_t* inter_row = set.intersection + k * p.C;
  set.unit_area[k] += area;
  if constexpr (U == UnionMode::kLite) std::fill(ws.cat_hit.begin(), ws.cat_hit.end(), 0);
  for (int64_t e = set.offsets[n]; e < set.offsets[n + 1]; ++e) {
    int64_t inter = area;
    if (set.mask_rows[e] >= 0) {
      const uint64_t* l = set.words + set.mask_rows[e] * p.words_per_mask;
      const int64_t lo = std::max(w0, s.labels.first[e]), hi = std::min(w1, s.labels.last[e]);
      inter = 0;
      for (int64_t i = lo; i < hi; ++i) inter += popcount64(m[i] & l[i]);
    }
    inter_row[set.concept_ids[e]] += inter;
    if (set.image_hits && inter > 0) set.image_hits[k * p.C + set.concept_ids[e]] += 1;
    if constexpr (U == UnionMode::kLite) {
      if (inter > 0) ws.cat_hit[p.categories[set.concept_ids[e]]] = 1;
    }
  }
  add_union_term<U>(p, s.labels, ws, n, area, U == UnionMode::kGlobal ? nullptr : set.unit_category_area + k * p.G);
}

template <typename scalar_t, UnionMode U>
void score_units(const ScoreParams& p, const Geometry& g, const PillowGeometry& pg, const IndexedSet* const (&sets)[2],
                 Workspace& ws, int64_t k_begin, int64_t k_end) {
  // Images in small blocks so that their packed masks stay in cache across these units.
  constexpr int64_t kImageBlock = 8;
  for (int64_t n0 = 0; n0 < p.N; n0 += kImageBlock)
  for (int64_t k = k_begin; k < k_end; ++k) {
    for (int64_t n = n0; n < std::min(p.N, n0 + kImageBlock); ++n) {
      int64_t w0, w1;
      if (p.pil_x_first) {
        score_detail::mask_of_map_pillow<scalar_t>(p, pg, n, k, ws, &w0, &w1);
      } else {
        score_detail::mask_of_map<scalar_t>(p, g, n, k, ws, &w0, &w1);
      }
      if (w0 == w1) {
        ws.check_scratch_zero();
        continue;
      }
      const uint64_t* m = ws.mask.data();
      if (p.mask_out) std::copy(m + w0, m + w1, p.mask_out + (n * p.K + k) * p.words_per_mask + w0);
      int64_t area = 0;
      for (int64_t i = w0; i < w1; ++i) area += popcount64(m[i]);
      for (const IndexedSet* s : sets)
        if (s) count_map<U>(p, *s, ws, n, k, m, w0, w1, area);
      std::fill(ws.mask.begin() + w0, ws.mask.begin() + w1, 0);
      ws.check_scratch_zero();
    }
  }
}

template <typename scalar_t, UnionMode U>
void score_all_units(const ScoreParams& p, const Geometry& g, const PillowGeometry& pg,
                     const IndexedSet* const (&sets)[2], int threads) {
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
      score_units<scalar_t, U>(p, g, pg, sets, ws, c * chunk, std::min(p.K, (c + 1) * chunk));
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
  // The labels, and the permuted control's when asked for: each map's mask is made once for both.
  const IndexedSet labels(p, false, n_threads);
  std::unique_ptr<IndexedSet> control;
  if (has_control(p)) control = std::make_unique<IndexedSet>(p, true, n_threads);
  const IndexedSet* const sets[2] = {&labels, control.get()};
  const int threads = threads_for(n_threads, p.K);
  FD_DISPATCH_FLOAT(p.act_dtype, scalar_t, [&] {
    FD_UNION_SWITCH(p.union_mode, U, [&] { score_all_units<scalar_t, U>(p, g, pg, sets, threads); });
  });
}

}  // namespace fd
