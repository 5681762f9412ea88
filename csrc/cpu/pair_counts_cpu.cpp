// The pair counts on the CPU: pairs in parallel, each pair's output rows written by the one thread
// that owns it, in image order, so any thread count gives the same integers.
#include "../common/pair_counts.h"
#include "cpu_ops.h"

namespace fd {

void pair_counts_cpu(const PairCountsParams& p, int n_threads) {
  const int threads = threads_for(n_threads, p.B);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t i = 0; i < p.B; ++i) {
    int64_t* t_row = p.t + i * p.C;
    int64_t* tu_row = p.tu + i * p.C;
    const int64_t a = p.pair_a[i];
    for (int64_t ea = p.leaf_offsets[a]; ea < p.leaf_offsets[a + 1]; ++ea) {
      pair_image(p, i, ea, [&](int64_t c, const PairCounts& n) {
        t_row[c] += n.fl;
        tu_row[c] += n.flu;
      });
    }
  }
}

}  // namespace fd
