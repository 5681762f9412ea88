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
  // One entry as the counting loop reads it, contiguous per image: the word span [first, last) of
  // its packed mask (words outside it are zero, so a map whose span misses it is not counted
  // against it: most pairs), its words (null: a whole-image label, spanning every word), its concept.
  struct Entry {
    int64_t first, last;
    const uint64_t* words;
    int64_t concept;
  };
  std::vector<Entry> entries;  // [nnz]
  std::vector<char> labeled;   // [N, G] image has a label of category g ("netdissect" union)

  LabelIndex(const ScoreParams& p, const EntrySet& set, int n_threads) {
    const int64_t nnz = set.offsets[p.N];
    entries.resize(nnz);
    // A parallel region costs a wake-up of every thread (a scheduler slice on a busy machine): only
    // a scan of many words is worth one, and a batch's entries rarely are.
    const int threads = nnz * p.words_per_mask >= (int64_t{1} << 22) ? threads_for(n_threads, nnz) : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t e = 0; e < nnz; ++e) {
      Entry& entry = entries[e];
      entry = Entry{0, p.words_per_mask, nullptr, set.concept_ids[e]};  // a whole-image label meets every map
      if (set.mask_rows[e] < 0) continue;
      const uint64_t* l = set.words + set.mask_rows[e] * p.words_per_mask;
      int64_t a = 0, b = p.words_per_mask;
      while (a < b && l[a] == 0) ++a;
      while (b > a && l[b - 1] == 0) --b;
      entry.first = a;
      entry.last = b;
      entry.words = l;
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

// The current map's mask as the counting reads it: the dense words m (set bits within [w0, w1)) and
// its `nnz` non-zero words gathered (ws.nz_index / nz_word), `area` bits in all.
struct MapMask {
  const uint64_t* m;
  int64_t w0, w1, nnz, area;
};

// |M & L| for one entry: over the map's non-zero words only (a blob of a thresholded map spans many
// rows but covers a few words of each), the same number of them for every entry of the map, so the
// loop's trip count is predictable. Exact: a word zero in M contributes nothing.
inline int64_t intersect(const MapMask& mm, const Workspace& ws, const LabelIndex::Entry& entry) {
  if (!entry.words) return mm.area;  // a whole-image label
  int64_t inter = 0;
  for (int64_t j = 0; j < mm.nnz; ++j) inter += popcount64(ws.nz_word[j] & entry.words[ws.nz_index[j]]);
  return inter;
}

// Map (n, k)'s mask counted against image n's entries of one mask set into that set's tallies:
// |M & L_e| per entry, its image hit, the union term. The entries whose word span meets the map's
// are listed first (a branch-free pass), so that the counting loop runs only over them; the counts
// are added without a branch on their value (most pairs are unpredictable: on or off at random).
template <UnionMode U>
void count_map(const ScoreParams& p, const IndexedSet& s, Workspace& ws, int64_t n, int64_t k, const MapMask& mm) {
  const EntrySet& set = s.set;
  int64_t* inter_row = set.intersection + k * p.C;
  set.unit_area[k] += mm.area;
  if constexpr (U == UnionMode::kLite) std::fill(ws.cat_hit.begin(), ws.cat_hit.end(), 0);
  const LabelIndex::Entry* entries = s.labels.entries.data() + set.offsets[n];
  const int64_t count = set.offsets[n + 1] - set.offsets[n];
  if (static_cast<int64_t>(ws.meeting.size()) < count) ws.meeting.resize(count);
  int64_t meeting = 0;
  for (int64_t j = 0; j < count; ++j) {
    ws.meeting[meeting] = j;
    meeting += std::max(mm.w0, entries[j].first) < std::min(mm.w1, entries[j].last);
  }
  int64_t* hits_row = set.image_hits ? set.image_hits + k * p.C : ws.no_hits.data();
  const int64_t hits_stride = set.image_hits ? 1 : 0;  // without image hits: one scratch counter
  for (int64_t j = 0; j < meeting; ++j) {
    const LabelIndex::Entry& entry = entries[ws.meeting[j]];
    const int64_t inter = intersect(mm, ws, entry);
    inter_row[entry.concept] += inter;
    hits_row[entry.concept * hits_stride] += inter > 0;
    if constexpr (U == UnionMode::kLite) ws.cat_hit[p.categories[entry.concept]] |= inter > 0;
  }
  add_union_term<U>(p, s.labels, ws, n, mm.area, U == UnionMode::kGlobal ? nullptr : set.unit_category_area + k * p.G);
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
      MapMask mm{m, w0, w1, 0, 0};
      for (int64_t i = w0; i < w1; ++i) {
        ws.nz_index[mm.nnz] = i;
        ws.nz_word[mm.nnz] = m[i];
        mm.nnz += m[i] != 0;  // branch-free gather: a zero word is overwritten by the next
        mm.area += popcount64(m[i]);
      }
      for (const IndexedSet* s : sets)
        if (s) count_map<U>(p, *s, ws, n, k, mm);
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
