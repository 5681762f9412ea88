// The only pybind11 file. Tensors arrive as (pointer, sizes, strides) in plain integers: the
// Python side (fastdissect/_dispatch.py) has validated them; this file only fills Params.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>

#include "common/bitpack.h"
#include "common/histogram_key.h"
#include "cpu/cpu_ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

fd::ScoreParams make_score_params(uintptr_t act, int dtype, std::array<int64_t, 4> sizes,
                                  std::array<int64_t, 4> strides, uintptr_t thresholds, int64_t H, int64_t W,
                                  int64_t C, int64_t words_per_mask, uintptr_t offsets, uintptr_t concept_ids,
                                  uintptr_t mask_rows, uintptr_t words, int union_mode, uintptr_t categories,
                                  int64_t G, uintptr_t intersection, uintptr_t unit_area,
                                  uintptr_t unit_category_area) {
  fd::ScoreParams p{};
  p.act = ptr<const void>(act);
  p.act_dtype = static_cast<fd::DType>(dtype);
  p.N = sizes[0];
  p.K = sizes[1];
  p.h = sizes[2];
  p.w = sizes[3];
  for (int i = 0; i < 4; ++i) p.act_stride[i] = strides[i];
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

// Returns (kept values of all units, unit by unit, as float64; number kept per unit), or None and
// the units holding NaN/inf (as a uint8 flag per unit) when the batch is not finite.
py::tuple histogram_add(uintptr_t act, int dtype, std::array<int64_t, 4> sizes, std::array<int64_t, 4> strides,
                        uintptr_t floor_bin, int64_t keep_top, uintptr_t counts, uintptr_t min_max, int n_threads) {
  fd::HistogramParams p{};
  p.act = ptr<const void>(act);
  p.act_dtype = static_cast<fd::DType>(dtype);
  p.N = sizes[0];
  p.K = sizes[1];
  p.h = sizes[2];
  p.w = sizes[3];
  for (int i = 0; i < 4; ++i) p.act_stride[i] = strides[i];
  p.floor_bin = ptr<int32_t>(floor_bin);
  p.keep_top = keep_top;
  p.counts = ptr<int64_t>(counts);
  p.min_max = ptr<double>(min_max);
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
         uintptr_t intersection, uintptr_t unit_area, uintptr_t unit_category_area, int n_threads) {
        const fd::ScoreParams p = make_score_params(act, dtype, sizes, strides, thresholds, H, W, C, words_per_mask,
                                                    offsets, concept_ids, mask_rows, words, union_mode, categories, G,
                                                    intersection, unit_area, unit_category_area);
        fd::score_cpu(p, n_threads);
      },
      py::arg("act"), py::arg("dtype"), py::arg("sizes"), py::arg("strides"), py::arg("thresholds"), py::arg("H"),
      py::arg("W"), py::arg("C"), py::arg("words_per_mask"), py::arg("offsets"), py::arg("concept_ids"),
      py::arg("mask_rows"), py::arg("words"), py::arg("union_mode"), py::arg("categories"), py::arg("G"),
      py::arg("intersection"), py::arg("unit_area"), py::arg("unit_category_area"), py::arg("n_threads"),
      py::call_guard<py::gil_scoped_release>());
  m.def("histogram_add", &histogram_add, py::arg("act"), py::arg("dtype"), py::arg("sizes"), py::arg("strides"),
        py::arg("floor_bin"), py::arg("keep_top"), py::arg("counts"), py::arg("min_max"), py::arg("n_threads"));
  m.attr("HIST_BINS") = fd::kHistBins;
  m.attr("ZERO_BIN") = fd::kZeroBin;
}
