#pragma once

#include "../common/params.h"

namespace fd {

// Adds one batch of activations scored against its concept masks into p's accumulators.
// Deterministic: every output row (unit) is owned by one thread.
void score_cpu(const ScoreParams& p, int n_threads);

}  // namespace fd
