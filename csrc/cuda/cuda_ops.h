// Entry points of the CUDA kernels and of their host emulation (same kernels, emu/cuda_emu.h).
#pragma once

#include <string>
#include <vector>

#include "../common/formula_counts.h"
#include "../common/histogram.h"
#include "../common/pair_counts.h"
#include "../common/score.h"

namespace fd {

// On `stream` (a cudaStream_t as an integer), asynchronous: no host synchronisation.
void score_cuda(const ScoreParams& p, const ScoreScratch& s, uintptr_t stream);
void histogram_cuda(const HistogramParams& p, const HistogramScratch& s, uintptr_t stream);
// `entries` = p.f_offsets[p.B], read by the caller (the offsets live on the device).
void formula_counts_cuda(const FormulaCountsParams& p, int64_t entries, uintptr_t stream);
// item_offsets (on the device): [B + 1] running sums of each pair's leaf-a images; total = its last.
void pair_counts_cuda(const PairCountsParams& p, const int64_t* item_offsets, int64_t total, uintptr_t stream);

// The same kernels on the CPU with the same launch plans: blocks in parallel over n_threads.
void score_cuda_emu(const ScoreParams& p, const ScoreScratch& s, int n_threads);
void histogram_cuda_emu(const HistogramParams& p, const HistogramScratch& s, int n_threads);
void formula_counts_cuda_emu(const FormulaCountsParams& p, int64_t entries, int n_threads);
void pair_counts_cuda_emu(const PairCountsParams& p, const int64_t* item_offsets, int64_t total, int n_threads);

// One kernel launch of an emulated op call: the kernel, its grid and block sizes (threads), its
// dynamic shared memory.
struct EmuLaunchRecord {
  std::string kernel;
  unsigned grid, block;
  size_t shared_bytes;
};
// The last emulated op call's launches as its plan gives them and as the emulation ran them
// (emu/cuda_emu.cpp): equal unless an emulated launcher strays from the plan.
void emu_last_launches(std::vector<EmuLaunchRecord>* planned, std::vector<EmuLaunchRecord>* launched);

// Runs a kernel that uses every emulated built-in (emu/emu_selftest.cpp), for the shims' own tests.
void emu_shim_selftest(int64_t items, unsigned blocks, unsigned threads, int n_threads, int64_t* visits,
                       int64_t* sum, int* bits, long long* lo_hi, int64_t* last_index);
// Checks launch_blocks' barriers (emu/emu_selftest.cpp); barriers=false launches the kernel with
// emu::launch instead, whose __syncthreads throws.
void emu_barrier_selftest(unsigned blocks, unsigned threads, int n_threads, int64_t* out, bool barriers);

}  // namespace fd
