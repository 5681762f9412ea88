// Union and IoU of every (unit, concept) from the tallies, in one pass over the (K, C) tables.
#include "cpu_ops.h"

namespace fd {

void union_iou_cpu(const UnionIouParams& p, int n_threads) {
#pragma omp parallel for num_threads(threads_for(n_threads, p.K)) schedule(static)
  for (int64_t k = 0; k < p.K; ++k) {
    const int64_t* inter = p.intersection + k * p.C;
    int64_t* uni = p.union_out + k * p.C;
    double* iou = p.iou_out + k * p.C;
    for (int64_t c = 0; c < p.C; ++c) {
      const int64_t unit_term = p.categories ? p.unit_term[k * p.G + p.categories[c]] : p.unit_term[k];
      uni[c] = unit_term + p.concept_area[c] - inter[c];
      // An empty union has an empty intersection: 0 / 0 means IoU 0.
      iou[c] = uni[c] == 0 ? 0.0 : static_cast<double>(inter[c]) / static_cast<double>(uni[c]);
    }
  }
}

}  // namespace fd
