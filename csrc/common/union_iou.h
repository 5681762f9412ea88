// The union_iou op's parameters (cpu/union_iou_cpu.cpp).
#pragma once

#include <cstdint>

namespace fd {

// The union and IoU tables from the tallies (README, "What the numbers mean"):
// union[k, c] = unit term + concept_area[c] - intersection[k, c], with the unit term unit_term[k]
// (categories null: the global union) or unit_term[k, categories[c]]; iou = intersection / union,
// 0 where the union is empty.
struct UnionIouParams {
  int64_t K, C, G;
  const int64_t* intersection;  // [K, C]
  const int64_t* unit_term;     // [K] or [K, G]
  const int64_t* categories;    // [C] or null
  const int64_t* concept_area;  // [C]
  int64_t* union_out;           // [K, C]
  double* iou_out;              // [K, C]
};

}  // namespace fd
