// The formula popcounts on the CPU: formulas in parallel, each formula's output rows written by
// the one thread that owns it, in image order, so any thread count gives the same integers.
#include "../common/formula_counts.h"
#include "cpu_ops.h"

namespace fd {

namespace {

void count_formula(const FormulaCountsParams& p, int64_t b) {
  int64_t* fl_row = p.fl + b * p.C;
  int64_t* flu_row = p.flu + b * p.C;
  const int64_t words = p.words_per_mask;
  for (int64_t j = p.f_offsets[b]; j < p.f_offsets[b + 1]; ++j) {
    const int64_t n = p.f_images[j];
    const uint64_t* f = row_or_whole(p.f_words, p.f_rows[j], words);
    const uint64_t* u = p.f_unit_rows[j] >= 0 ? p.u_words + p.f_unit_rows[j] * words : nullptr;
    for (int64_t e = p.offsets[n]; e < p.offsets[n + 1]; ++e) {
      const PairCounts c = pair_counts(f, u, row_or_whole(p.words, p.mask_rows[e], words), words, p.hw);
      fl_row[p.concept_ids[e]] += c.fl;
      flu_row[p.concept_ids[e]] += c.flu;
    }
  }
}

}  // namespace

void formula_counts_cpu(const FormulaCountsParams& p, int n_threads) {
  const int threads = threads_for(n_threads, p.B);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t b = 0; b < p.B; ++b) count_formula(p, b);
}

}  // namespace fd
