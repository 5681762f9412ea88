// The only pybind11 file. Tensors arrive as (pointer, sizes, strides) in plain integers: the
// Python side (fastdissect/_dispatch.py) has validated them; this file only fills Params.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>

#include "common/bitpack.h"
#include "common/histogram_key.h"
#include "cpu/cpu_ops.h"
#include "cuda/cuda_ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// The (N, K, h, w) activation view every Params struct starts with.
template <typename Params>
void set_activations(Params& p, uintptr_t act, int dtype, const std::array<int64_t, 4>& sizes,
                     const std::array<int64_t, 4>& strides) {
  p.act = ptr<const void>(act);
  p.act_dtype = static_cast<fd::DType>(dtype);
  p.N = sizes[0];
  p.K = sizes[1];
  p.h = sizes[2];
  p.w = sizes[3];
  for (int i = 0; i < 4; ++i) p.act_stride[i] = strides[i];
}

fd::ScoreParams make_score_params(uintptr_t act, int dtype, std::array<int64_t, 4> sizes,
                                  std::array<int64_t, 4> strides, uintptr_t thresholds, int64_t H, int64_t W,
                                  int64_t C, int64_t words_per_mask, uintptr_t offsets, uintptr_t concept_ids,
                                  uintptr_t mask_rows, uintptr_t words, int union_mode, uintptr_t categories,
                                  int64_t G, uintptr_t intersection, uintptr_t unit_area,
                                  uintptr_t unit_category_area) {
  fd::ScoreParams p{};
  set_activations(p, act, dtype, sizes, strides);
  p.thresholds = ptr<const double>(thresholds);
  p.H = H;
  p.W = W;
  p.C = C;
  p.words_per_mask = words_per_mask;
  p.offsets = ptr<const int64_t>(offsets);
  p.concept_ids = ptr<const int64_t>(concept_ids);
  p.mask_rows = ptr<const int64_t>(mask_rows);
  p.words = ptr<const uint64_t>(words);
  p.union_mode = static_cast<fd::UnionMode>(union_mode);
  p.categories = ptr<const int64_t>(categories);
  p.G = G;
  p.intersection = ptr<int64_t>(intersection);
  p.unit_area = ptr<int64_t>(unit_area);
  p.unit_category_area = ptr<int64_t>(unit_category_area);
  FD_ASSERT(p.union_mode == fd::UnionMode::kGlobal || (p.categories && p.unit_category_area && p.G > 0),
            "categories and unit_category_area are required for this union");
  FD_ASSERT(p.words_per_mask == fd::words_for_pixels(p.H * p.W), "words_per_mask does not match H * W");
  return p;
}

// The CUDA kernels run on the GPU ("cuda", asynchronous on its stream) or emulated on the CPU
// ("cuda_emu"); a build without CUDA has only the emulation (Python never asks it for "cuda").
#ifdef FD_WITH_CUDA
#define FD_CUDA_CALL(call) call
#else
#define FD_CUDA_CALL(call) FD_ASSERT(false, "built without CUDA")
#endif

template <typename Emulated, typename Cuda>
void run_gpu(bool emulate, Emulated emulated, Cuda cuda) {
  if (emulate) {
    emulated();
  } else {
    cuda();
  }
}

py::dict build_info() {
  py::dict info;
#ifdef _OPENMP
  info["openmp"] = true;
  info["openmp_version"] = _OPENMP;
#else
  info["openmp"] = false;
  info["openmp_version"] = 0;
#endif
#ifdef FD_WITH_CUDA
  info["cuda"] = true;
  info["cuda_architectures"] = FD_CUDA_ARCHITECTURES;
#else
  info["cuda"] = false;
  info["cuda_architectures"] = "";
#endif
  info["compiler"] = FD_COMPILER;
  info["build_type"] = FD_BUILD_TYPE;
  return info;
}

fd::HistogramParams make_histogram_params(uintptr_t act, int dtype, std::array<int64_t, 4> sizes,
                                          std::array<int64_t, 4> strides, uintptr_t floor_bin, int64_t keep_top,
                                          uintptr_t counts, uintptr_t min_max) {
  fd::HistogramParams p{};
  set_activations(p, act, dtype, sizes, strides);
  p.floor_bin = ptr<int32_t>(floor_bin);
  p.keep_top = keep_top;
  p.counts = ptr<int64_t>(counts);
  p.min_max = ptr<double>(min_max);
  return p;
}

fd::HistogramScratch make_histogram_scratch(uintptr_t min_max_key, uintptr_t non_finite, uintptr_t floor_value,
                                            uintptr_t kept_values, uintptr_t kept_units, uintptr_t kept_count,
                                            int64_t capacity, uintptr_t overflow) {
  return fd::HistogramScratch{ptr<int64_t>(min_max_key), ptr<int64_t>(non_finite), ptr<double>(floor_value),
                              ptr<double>(kept_values), ptr<int64_t>(kept_units), ptr<int64_t>(kept_count),
                              capacity, ptr<int>(overflow)};
}

// Returns (kept values of all units, unit by unit, as float64; number kept per unit), or None and
// the units holding NaN/inf (as a uint8 flag per unit) when the batch is not finite.
py::tuple histogram_add(uintptr_t act, int dtype, std::array<int64_t, 4> sizes, std::array<int64_t, 4> strides,
                        uintptr_t floor_bin, int64_t keep_top, uintptr_t counts, uintptr_t min_max, int n_threads) {
  const fd::HistogramParams p = make_histogram_params(act, dtype, sizes, strides, floor_bin, keep_top, counts, min_max);
  std::vector<std::vector<double>> kept;
  py::array_t<uint8_t> bad(static_cast<py::ssize_t>(p.K));
  bool finite;
  {
    uint8_t* bad_units = bad.mutable_data();
    py::gil_scoped_release release;
    finite = fd::histogram_cpu(p, n_threads, kept, bad_units);
  }
  if (!finite) return py::make_tuple(py::none(), bad);
  size_t total = 0;
  for (const auto& v : kept) total += v.size();
  py::array_t<double> values(static_cast<py::ssize_t>(total));
  py::array_t<int64_t> per_unit(static_cast<py::ssize_t>(p.K));
  double* out = values.mutable_data();
  int64_t* n_out = per_unit.mutable_data();
  for (int64_t k = 0; k < p.K; ++k) {
    std::copy(kept[k].begin(), kept[k].end(), out);
    out += kept[k].size();
    n_out[k] = static_cast<int64_t>(kept[k].size());
  }
  return py::make_tuple(values, per_unit);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastdissect kernels (internal; use the fastdissect package)";
  m.def("build_info", &build_info);
  m.def(
      "score_cpu",
      [](uintptr_t act, int dtype, std::array<int64_t, 4> sizes, std::array<int64_t, 4> strides, uintptr_t thresholds,
         int64_t H, int64_t W, int64_t C, int64_t words_per_mask, uintptr_t offsets, uintptr_t concept_ids,
         uintptr_t mask_rows, uintptr_t words, int union_mode, uintptr_t categories, int64_t G,
         uintptr_t intersection, uintptr_t unit_area, uintptr_t unit_category_area, int n_threads,
         uintptr_t pil_x_first, uintptr_t pil_x_weights, int64_t pil_x_taps, uintptr_t pil_y_first,
         uintptr_t pil_y_weights, int64_t pil_y_taps) {
        fd::ScoreParams p = make_score_params(act, dtype, sizes, strides, thresholds, H, W, C, words_per_mask,
                                              offsets, concept_ids, mask_rows, words, union_mode, categories, G,
                                              intersection, unit_area, unit_category_area);
        p.pil_x_first = ptr<const int64_t>(pil_x_first);
        p.pil_x_weights = ptr<const double>(pil_x_weights);
        p.pil_x_taps = pil_x_taps;
        p.pil_y_first = ptr<const int64_t>(pil_y_first);
        p.pil_y_weights = ptr<const double>(pil_y_weights);
        p.pil_y_taps = pil_y_taps;
        FD_ASSERT(!p.pil_x_first || (p.pil_x_weights && p.pil_y_first && p.pil_y_weights && p.pil_x_taps > 0 &&
                                     p.pil_y_taps > 0),
                  "incomplete Pillow resampling tables");
        fd::score_cpu(p, n_threads);
      },
      py::arg("act"), py::arg("dtype"), py::arg("sizes"), py::arg("strides"), py::arg("thresholds"), py::arg("H"),
      py::arg("W"), py::arg("C"), py::arg("words_per_mask"), py::arg("offsets"), py::arg("concept_ids"),
      py::arg("mask_rows"), py::arg("words"), py::arg("union_mode"), py::arg("categories"), py::arg("G"),
      py::arg("intersection"), py::arg("unit_area"), py::arg("unit_category_area"), py::arg("n_threads"),
      py::arg("pil_x_first") = 0, py::arg("pil_x_weights") = 0, py::arg("pil_x_taps") = 0,
      py::arg("pil_y_first") = 0, py::arg("pil_y_weights") = 0, py::arg("pil_y_taps") = 0,
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "union_iou_cpu",
      [](int64_t K, int64_t C, int64_t G, uintptr_t intersection, uintptr_t unit_term, uintptr_t categories,
         uintptr_t concept_area, uintptr_t union_out, uintptr_t iou_out, int n_threads) {
        const fd::UnionIouParams p{K, C, G, ptr<const int64_t>(intersection), ptr<const int64_t>(unit_term),
                                   ptr<const int64_t>(categories), ptr<const int64_t>(concept_area),
                                   ptr<int64_t>(union_out), ptr<double>(iou_out)};
        fd::union_iou_cpu(p, n_threads);
      },
      py::arg("K"), py::arg("C"), py::arg("G"), py::arg("intersection"), py::arg("unit_term"), py::arg("categories"),
      py::arg("concept_area"), py::arg("union_out"), py::arg("iou_out"), py::arg("n_threads"),
      py::call_guard<py::gil_scoped_release>());
  m.def("histogram_add", &histogram_add, py::arg("act"), py::arg("dtype"), py::arg("sizes"), py::arg("strides"),
        py::arg("floor_bin"), py::arg("keep_top"), py::arg("counts"), py::arg("min_max"), py::arg("n_threads"));
  m.attr("HIST_BINS") = fd::kHistBins;
  m.attr("ZERO_BIN") = fd::kZeroBin;

  // The CUDA kernels: on the GPU ("cuda", asynchronous on `stream`) or on the CPU ("cuda_emu").
  auto score_gpu = [](bool emulate, uintptr_t act, int dtype, std::array<int64_t, 4> sizes,
                      std::array<int64_t, 4> strides, uintptr_t thresholds, int64_t H, int64_t W, int64_t C,
                      int64_t words_per_mask, uintptr_t offsets, uintptr_t concept_ids, uintptr_t mask_rows,
                      uintptr_t words, int union_mode, uintptr_t categories, int64_t G, uintptr_t intersection,
                      uintptr_t unit_area, uintptr_t unit_category_area, uintptr_t map_area, uintptr_t hit,
                      uintptr_t non_finite, uintptr_t stream, int n_threads) {
    const fd::ScoreParams p = make_score_params(act, dtype, sizes, strides, thresholds, H, W, C, words_per_mask,
                                                offsets, concept_ids, mask_rows, words, union_mode, categories, G,
                                                intersection, unit_area, unit_category_area);
    const fd::ScoreScratch s{ptr<int64_t>(map_area), ptr<int>(hit), ptr<int64_t>(non_finite)};
    FD_ASSERT(p.union_mode == fd::UnionMode::kGlobal || s.map_area, "map_area is required for this union");
    FD_ASSERT(p.union_mode != fd::UnionMode::kLite || s.hit, "hit is required for the lite union");
    run_gpu(emulate, [&] { fd::score_cuda_emu(p, s, n_threads); }, [&] { FD_CUDA_CALL(fd::score_cuda(p, s, stream)); });
  };
  m.def("score_gpu", score_gpu, py::arg("emulate"), py::arg("act"), py::arg("dtype"), py::arg("sizes"),
        py::arg("strides"), py::arg("thresholds"), py::arg("H"), py::arg("W"), py::arg("C"),
        py::arg("words_per_mask"), py::arg("offsets"), py::arg("concept_ids"), py::arg("mask_rows"),
        py::arg("words"), py::arg("union_mode"), py::arg("categories"), py::arg("G"), py::arg("intersection"),
        py::arg("unit_area"), py::arg("unit_category_area"), py::arg("map_area"), py::arg("hit"),
        py::arg("non_finite"), py::arg("stream"), py::arg("n_threads"), py::call_guard<py::gil_scoped_release>());
  auto histogram_gpu = [](bool emulate, uintptr_t act, int dtype, std::array<int64_t, 4> sizes,
                          std::array<int64_t, 4> strides, uintptr_t floor_bin, int64_t keep_top, uintptr_t counts,
                          uintptr_t min_max, uintptr_t min_max_key, uintptr_t non_finite, uintptr_t floor_value,
                          uintptr_t kept_values, uintptr_t kept_units, uintptr_t kept_count, int64_t capacity,
                          uintptr_t overflow, uintptr_t stream, int n_threads) {
    const fd::HistogramParams p = make_histogram_params(act, dtype, sizes, strides, floor_bin, keep_top, counts,
                                                        min_max);
    const fd::HistogramScratch s = make_histogram_scratch(min_max_key, non_finite, floor_value, kept_values,
                                                          kept_units, kept_count, capacity, overflow);
    run_gpu(emulate, [&] { fd::histogram_cuda_emu(p, s, n_threads); },
            [&] { FD_CUDA_CALL(fd::histogram_cuda(p, s, stream)); });
  };
  m.def("histogram_gpu", histogram_gpu, py::arg("emulate"), py::arg("act"), py::arg("dtype"), py::arg("sizes"),
        py::arg("strides"), py::arg("floor_bin"), py::arg("keep_top"), py::arg("counts"), py::arg("min_max"),
        py::arg("min_max_key"), py::arg("non_finite"), py::arg("floor_value"), py::arg("kept_values"),
        py::arg("kept_units"), py::arg("kept_count"), py::arg("capacity"), py::arg("overflow"), py::arg("stream"),
        py::arg("n_threads"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "emu_shim_selftest",
      [](int64_t items, unsigned blocks, unsigned threads, int n_threads, uintptr_t visits, uintptr_t sum,
         uintptr_t bits, uintptr_t lo_hi, uintptr_t last_index) {
        fd::emu_shim_selftest(items, blocks, threads, n_threads, ptr<int64_t>(visits), ptr<int64_t>(sum),
                              ptr<int>(bits), ptr<long long>(lo_hi), ptr<int64_t>(last_index));
      },
      py::arg("items"), py::arg("blocks"), py::arg("threads"), py::arg("n_threads"), py::arg("visits"),
      py::arg("sum"), py::arg("bits"), py::arg("lo_hi"), py::arg("last_index"),
      py::call_guard<py::gil_scoped_release>());
}
