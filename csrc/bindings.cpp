// The only pybind11 file. Each Params struct is declared to Python once, as a field table below:
// pointers travel as plain integers (data_ptr()), sizes as ints. python/fastdissect/kernels/dispatch.py
// fills them from validated tensors. Every op is bound as `<op>_cpu` and, with CUDA kernels,
// `<op>_gpu`, each running the op's `check_<op>` (checks.h, also bound) before any kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>

#include "checks.h"
#include "common/bitpack.h"
#include "cpu/cpu_ops.h"
#include "cuda/cuda_ops.h"

namespace py = pybind11;

namespace {

// Registers the fields of one Params struct: pointers as integer addresses, enums as their codes.
template <typename P>
struct FieldTable {
  py::class_<P> cls;

  FieldTable(py::module_& m, const char* name) : cls(m, name) { cls.def(py::init<>()); }

  template <typename T>
  FieldTable& pointer(const char* name, T* P::*member) {
    cls.def_property(
        name, [member](const P& p) { return reinterpret_cast<uintptr_t>(p.*member); },
        [member](P& p, uintptr_t address) { p.*member = reinterpret_cast<T*>(address); });
    return *this;
  }

  template <typename T>
  FieldTable& value(const char* name, T P::*member) {
    cls.def_readwrite(name, member);
    return *this;
  }

  template <typename E>
  FieldTable& code(const char* name, E P::*member) {
    cls.def_property(
        name, [member](const P& p) { return static_cast<int>(p.*member); },
        [member](P& p, int v) { p.*member = static_cast<E>(v); });
    return *this;
  }

  // The (N, K, h, w) activation view every kernel's Params starts with.
  FieldTable& activations() {
    cls.def("set_activations", [](P& p, uintptr_t act, int dtype, const std::array<int64_t, 4>& sizes,
                                  const std::array<int64_t, 4>& strides) {
      p.act = reinterpret_cast<const void*>(act);
      p.act_dtype = static_cast<fd::DType>(dtype);
      p.N = sizes[0];
      p.K = sizes[1];
      p.h = sizes[2];
      p.w = sizes[3];
      for (int i = 0; i < 4; ++i) p.act_stride[i] = strides[i];
    });
    return *this;
  }
};

// The CUDA kernels run on the GPU ("cuda", asynchronous on its stream) or emulated on the CPU
// ("cuda_emu"); a build without CUDA has only the emulation (Python never asks it for "cuda").
#ifdef FD_WITH_CUDA
#define FD_CUDA_CALL(call) call
#else
#define FD_CUDA_CALL(call) \
  do {                      \
    (void)stream;           \
    FD_ASSERT(false, "built without CUDA"); \
  } while (0)
#endif

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
#ifdef FD_EXHAUSTIVE
  info["exhaustive"] = true;
#else
  info["exhaustive"] = false;
#endif
  info["compiler"] = FD_COMPILER;
  info["build_type"] = FD_BUILD_TYPE;
  return info;
}

// The C++ side of the enumerations that python/fastdissect/_codes.py defines.
py::dict codes() {
  py::dict unions, dtypes, branches;
  unions["global"] = static_cast<int>(fd::UnionMode::kGlobal);
  unions["netdissect"] = static_cast<int>(fd::UnionMode::kNetDissect);
  unions["lite"] = static_cast<int>(fd::UnionMode::kLite);
  dtypes["float32"] = static_cast<int>(fd::DType::kFloat32);
  dtypes["float64"] = static_cast<int>(fd::DType::kFloat64);
  dtypes["float16"] = static_cast<int>(fd::DType::kFloat16);
  dtypes["bfloat16"] = static_cast<int>(fd::DType::kBFloat16);
  py::dict out;
  out["union"] = unions;
  out["dtype"] = dtypes;
  out["score_branches"] = static_cast<int>(fd::kNumScoreBranches);
  return out;
}

// Returns (kept values of all units, unit by unit, as float64; number kept per unit), or None and
// the units holding NaN/inf (as a uint8 flag per unit) when the batch is not finite.
py::tuple histogram_cpu(const fd::HistogramParams& p, int n_threads) {
  fd::check_histogram(p);
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

// One field table per op's Params (and Scratch): Python fills them by name, C++ checks them (checks.h).
void declare_score_params(py::module_& m) {
  using fd::ScoreParams;
  FieldTable<ScoreParams>(m, "ScoreParams")
      .activations()
      .pointer("thresholds", &ScoreParams::thresholds)
      .value("H", &ScoreParams::H)
      .value("W", &ScoreParams::W)
      .value("C", &ScoreParams::C)
      .value("words_per_mask", &ScoreParams::words_per_mask)
      .pointer("offsets", &ScoreParams::offsets)
      .pointer("concept_ids", &ScoreParams::concept_ids)
      .pointer("mask_rows", &ScoreParams::mask_rows)
      .pointer("words", &ScoreParams::words)
      .code("union_mode", &ScoreParams::union_mode)
      .pointer("categories", &ScoreParams::categories)
      .value("G", &ScoreParams::G)
      .pointer("pil_x_first", &ScoreParams::pil_x_first)
      .pointer("pil_x_weights", &ScoreParams::pil_x_weights)
      .value("pil_x_taps", &ScoreParams::pil_x_taps)
      .pointer("pil_y_first", &ScoreParams::pil_y_first)
      .pointer("pil_y_weights", &ScoreParams::pil_y_weights)
      .value("pil_y_taps", &ScoreParams::pil_y_taps)
      .value("exhaustive", &ScoreParams::exhaustive)
      .pointer("branch_counts", &ScoreParams::branch_counts)
      .pointer("mask_out", &ScoreParams::mask_out)
      .pointer("intersection", &ScoreParams::intersection)
      .pointer("unit_area", &ScoreParams::unit_area)
      .pointer("unit_category_area", &ScoreParams::unit_category_area)
      .pointer("image_hits", &ScoreParams::image_hits)
      .pointer("ctl_offsets", &ScoreParams::ctl_offsets)
      .pointer("ctl_concept_ids", &ScoreParams::ctl_concept_ids)
      .pointer("ctl_mask_rows", &ScoreParams::ctl_mask_rows)
      .pointer("ctl_words", &ScoreParams::ctl_words)
      .pointer("ctl_intersection", &ScoreParams::ctl_intersection)
      .pointer("ctl_unit_area", &ScoreParams::ctl_unit_area)
      .pointer("ctl_unit_category_area", &ScoreParams::ctl_unit_category_area)
      .pointer("ctl_image_hits", &ScoreParams::ctl_image_hits);

  using fd::ScoreScratch;
  FieldTable<ScoreScratch>(m, "ScoreScratch")
      .pointer("map_area", &ScoreScratch::map_area)
      .pointer("hit", &ScoreScratch::hit)
      .pointer("non_finite", &ScoreScratch::non_finite)
      .pointer("map_scale", &ScoreScratch::map_scale)
      .pointer("taps", &ScoreScratch::taps)
      .pointer("entry_hit", &ScoreScratch::entry_hit)
      .value("num_entries", &ScoreScratch::num_entries)
      .pointer("ctl_hit", &ScoreScratch::ctl_hit)
      .pointer("ctl_entry_hit", &ScoreScratch::ctl_entry_hit)
      .value("ctl_num_entries", &ScoreScratch::ctl_num_entries);
}

void declare_histogram_params(py::module_& m) {
  using fd::HistogramParams;
  FieldTable<HistogramParams>(m, "HistogramParams")
      .activations()
      .pointer("floor_bin", &HistogramParams::floor_bin)
      .value("keep_top", &HistogramParams::keep_top)
      .pointer("counts", &HistogramParams::counts)
      .pointer("min_max", &HistogramParams::min_max);

  using fd::HistogramScratch;
  FieldTable<HistogramScratch>(m, "HistogramScratch")
      .pointer("min_max_key", &HistogramScratch::min_max_key)
      .pointer("non_finite", &HistogramScratch::non_finite)
      .pointer("floor_value", &HistogramScratch::floor_value)
      .pointer("kept_values", &HistogramScratch::kept_values)
      .pointer("kept_units", &HistogramScratch::kept_units)
      .pointer("kept_count", &HistogramScratch::kept_count)
      .value("capacity", &HistogramScratch::capacity)
      .pointer("overflow", &HistogramScratch::overflow);
}

void declare_union_iou_params(py::module_& m) {
  using fd::UnionIouParams;
  FieldTable<UnionIouParams>(m, "UnionIouParams")
      .value("K", &UnionIouParams::K)
      .value("C", &UnionIouParams::C)
      .value("G", &UnionIouParams::G)
      .pointer("intersection", &UnionIouParams::intersection)
      .pointer("unit_term", &UnionIouParams::unit_term)
      .pointer("categories", &UnionIouParams::categories)
      .pointer("concept_area", &UnionIouParams::concept_area)
      .pointer("union_out", &UnionIouParams::union_out)
      .pointer("iou_out", &UnionIouParams::iou_out);
}

void declare_png_labels_params(py::module_& m) {
  using fd::PngLabelsParams;
  FieldTable<PngLabelsParams>(m, "PngLabelsParams")
      .pointer("raw", &PngLabelsParams::raw)
      .value("height", &PngLabelsParams::height)
      .value("width", &PngLabelsParams::width)
      .value("channels", &PngLabelsParams::channels)
      .pointer("scratch", &PngLabelsParams::scratch)
      .pointer("labels", &PngLabelsParams::labels);
}

void declare_tiles_params(py::module_& m) {
  using fd::TilesParams;
  FieldTable<TilesParams>(m, "TilesParams")
      .value("M", &TilesParams::M)
      .value("height", &TilesParams::height)
      .value("width", &TilesParams::width)
      .value("words_per_mask", &TilesParams::words_per_mask)
      .pointer("masks", &TilesParams::masks)
      .pointer("second", &TilesParams::second)
      .pointer("bright", &TilesParams::bright)
      .pointer("dim", &TilesParams::dim)
      .pointer("thumbnail", &TilesParams::thumbnail)
      .pointer("out", &TilesParams::out)
      .value("out_row", &TilesParams::out_row)
      .pointer("offset", &TilesParams::offset)
      .value("outline", &TilesParams::outline)
      .value("second_outline", &TilesParams::second_outline);
}

void declare_formula_counts_params(py::module_& m) {
  using fd::FormulaCountsParams;
  FieldTable<FormulaCountsParams>(m, "FormulaCountsParams")
      .value("B", &FormulaCountsParams::B)
      .value("hw", &FormulaCountsParams::hw)
      .value("words_per_mask", &FormulaCountsParams::words_per_mask)
      .pointer("f_offsets", &FormulaCountsParams::f_offsets)
      .pointer("f_images", &FormulaCountsParams::f_images)
      .pointer("f_rows", &FormulaCountsParams::f_rows)
      .pointer("f_unit_rows", &FormulaCountsParams::f_unit_rows)
      .pointer("f_words", &FormulaCountsParams::f_words)
      .pointer("u_words", &FormulaCountsParams::u_words)
      .value("C", &FormulaCountsParams::C)
      .pointer("offsets", &FormulaCountsParams::offsets)
      .pointer("concept_ids", &FormulaCountsParams::concept_ids)
      .pointer("mask_rows", &FormulaCountsParams::mask_rows)
      .pointer("words", &FormulaCountsParams::words)
      .pointer("fl", &FormulaCountsParams::fl)
      .pointer("flu", &FormulaCountsParams::flu);
}

void declare_pair_counts_params(py::module_& m) {
  using fd::PairCountsParams;
  FieldTable<PairCountsParams>(m, "PairCountsParams")
      .value("B", &PairCountsParams::B)
      .value("hw", &PairCountsParams::hw)
      .value("words_per_mask", &PairCountsParams::words_per_mask)
      .pointer("pair_a", &PairCountsParams::pair_a)
      .pointer("pair_b", &PairCountsParams::pair_b)
      .value("P", &PairCountsParams::P)
      .pointer("leaf_offsets", &PairCountsParams::leaf_offsets)
      .pointer("leaf_images", &PairCountsParams::leaf_images)
      .pointer("leaf_rows", &PairCountsParams::leaf_rows)
      .pointer("leaf_words", &PairCountsParams::leaf_words)
      .value("N", &PairCountsParams::N)
      .pointer("unit_rows", &PairCountsParams::unit_rows)
      .pointer("u_words", &PairCountsParams::u_words)
      .value("unit_only", &PairCountsParams::unit_only)
      .value("C", &PairCountsParams::C)
      .pointer("offsets", &PairCountsParams::offsets)
      .pointer("concept_ids", &PairCountsParams::concept_ids)
      .pointer("mask_rows", &PairCountsParams::mask_rows)
      .pointer("words", &PairCountsParams::words)
      .pointer("t", &PairCountsParams::t)
      .pointer("tu", &PairCountsParams::tu);
}

void declare_params(py::module_& m) {
  declare_score_params(m);
  declare_histogram_params(m);
  declare_union_iou_params(m);
  declare_png_labels_params(m);
  declare_tiles_params(m);
  declare_formula_counts_params(m);
  declare_pair_counts_params(m);
}


void declare_checks(py::module_& m) {
  m.def("check_score", &fd::check_score, py::arg("params"));
  m.def("check_score_scratch", &fd::check_score_scratch, py::arg("params"), py::arg("scratch"));
  m.def("check_histogram", &fd::check_histogram, py::arg("params"));
  m.def("check_histogram_scratch", &fd::check_histogram_scratch, py::arg("params"), py::arg("scratch"));
  m.def("check_formula_counts", &fd::check_formula_counts, py::arg("params"));
  m.def("check_pair_counts", &fd::check_pair_counts, py::arg("params"));
  m.def("check_union_iou", &fd::check_union_iou, py::arg("params"));
  m.def("check_png_labels", &fd::check_png_labels, py::arg("params"));
  m.def("check_tiles", &fd::check_tiles, py::arg("params"));
}

template <typename Guard>
void declare_cpu_ops(py::module_& m, const Guard& no_gil) {
  m.def(
      "score_cpu",
      [](const fd::ScoreParams& p, int n_threads) {
        fd::check_score(p);
        fd::score_cpu(p, n_threads);
      },
      py::arg("params"), py::arg("n_threads"), no_gil);
  m.def("histogram_cpu", &histogram_cpu, py::arg("params"), py::arg("n_threads"));
  m.def(
      "formula_counts_cpu",
      [](const fd::FormulaCountsParams& p, int n_threads) {
        fd::check_formula_counts(p);
        fd::formula_counts_cpu(p, n_threads);
      },
      py::arg("params"), py::arg("n_threads"), no_gil);
  m.def(
      "pair_counts_cpu",
      [](const fd::PairCountsParams& p, int n_threads) {
        fd::check_pair_counts(p);
        fd::pair_counts_cpu(p, n_threads);
      },
      py::arg("params"), py::arg("n_threads"), no_gil);
  m.def(
      "union_iou_cpu",
      [](const fd::UnionIouParams& p, int n_threads) {
        fd::check_union_iou(p);
        fd::union_iou_cpu(p, n_threads);
      },
      py::arg("params"), py::arg("n_threads"), no_gil);
  m.def(
      "png_labels_cpu",
      [](const fd::PngLabelsParams& p) {
        fd::check_png_labels(p);
        return fd::png_labels_cpu(p);
      },
      py::arg("params"), no_gil);
  m.def(
      "tiles_cpu",
      [](const fd::TilesParams& p, int n_threads) {
        fd::check_tiles(p);
        fd::tiles_cpu(p, n_threads);
      },
      py::arg("params"), py::arg("n_threads"), no_gil);
}

// The CUDA kernels: on the GPU (emulate false: asynchronous on `stream`) or emulated on the CPU.
template <typename Guard>
void declare_gpu_ops(py::module_& m, const Guard& no_gil) {
  m.attr("SCREEN_TAP_BYTES") = sizeof(fd::ScreenTap);
  m.def(
      "score_gpu",
      [](const fd::ScoreParams& p, const fd::ScoreScratch& s, bool emulate, uintptr_t stream, int n_threads) {
        fd::check_score(p);
        fd::check_score_scratch(p, s);
        if (emulate) {
          fd::score_cuda_emu(p, s, n_threads);
        } else {
          FD_CUDA_CALL(fd::score_cuda(p, s, stream));
        }
      },
      py::arg("params"), py::arg("scratch"), py::arg("emulate"), py::arg("stream"), py::arg("n_threads"), no_gil);
  m.def(
      "histogram_gpu",
      [](const fd::HistogramParams& p, const fd::HistogramScratch& s, bool emulate, uintptr_t stream,
         int n_threads) {
        fd::check_histogram(p);
        fd::check_histogram_scratch(p, s);
        if (emulate) {
          fd::histogram_cuda_emu(p, s, n_threads);
        } else {
          FD_CUDA_CALL(fd::histogram_cuda(p, s, stream));
        }
      },
      py::arg("params"), py::arg("scratch"), py::arg("emulate"), py::arg("stream"), py::arg("n_threads"), no_gil);
  m.def(
      "formula_counts_gpu",
      [](const fd::FormulaCountsParams& p, int64_t entries, bool emulate, uintptr_t stream, int n_threads) {
        fd::check_formula_counts(p);
        if (entries < 0) throw std::invalid_argument("formula_counts: entries must be >= 0");
        if (emulate) {
          fd::formula_counts_cuda_emu(p, entries, n_threads);
        } else {
          FD_CUDA_CALL(fd::formula_counts_cuda(p, entries, stream));
        }
      },
      py::arg("params"), py::arg("entries"), py::arg("emulate"), py::arg("stream"), py::arg("n_threads"), no_gil);
  m.def(
      "pair_counts_gpu",
      [](const fd::PairCountsParams& p, uintptr_t item_offsets, int64_t total, bool emulate, uintptr_t stream,
         int n_threads) {
        fd::check_pair_counts(p);
        if (total < 0) throw std::invalid_argument("pair_counts: total must be >= 0");
        if (total > 0 && !item_offsets) throw std::invalid_argument("pair_counts: item_offsets is null");
        const auto* items = reinterpret_cast<const int64_t*>(item_offsets);
        if (emulate) {
          fd::pair_counts_cuda_emu(p, items, total, n_threads);
        } else {
          FD_CUDA_CALL(fd::pair_counts_cuda(p, items, total, stream));
        }
      },
      py::arg("params"), py::arg("item_offsets"), py::arg("total"), py::arg("emulate"), py::arg("stream"),
      py::arg("n_threads"), no_gil);
}

py::list launch_records(const std::vector<fd::EmuLaunchRecord>& records) {
  py::list out;
  for (const auto& r : records) {
    py::dict d;
    d["kernel"] = r.kernel;
    d["grid"] = r.grid;
    d["block"] = r.block;
    d["shared_bytes"] = r.shared_bytes;
    out.append(d);
  }
  return out;
}

// The emulation's own tests: its built-ins, its barriers, and the launches of its last op call.
template <typename Guard>
void declare_emu_tests(py::module_& m, const Guard& no_gil) {
  m.def("emu_last_launches", [] {
    std::vector<fd::EmuLaunchRecord> planned, launched;
    fd::emu_last_launches(&planned, &launched);
    py::dict out;
    out["planned"] = launch_records(planned);
    out["launched"] = launch_records(launched);
    return out;
  });
  m.def(
      "emu_shim_selftest",
      [](int64_t items, unsigned blocks, unsigned threads, int n_threads, uintptr_t visits, uintptr_t sum,
         uintptr_t bits, uintptr_t lo_hi, uintptr_t last_index) {
        fd::emu_shim_selftest(items, blocks, threads, n_threads, reinterpret_cast<int64_t*>(visits),
                              reinterpret_cast<int64_t*>(sum), reinterpret_cast<int*>(bits),
                              reinterpret_cast<long long*>(lo_hi), reinterpret_cast<int64_t*>(last_index));
      },
      py::arg("items"), py::arg("blocks"), py::arg("threads"), py::arg("n_threads"), py::arg("visits"),
      py::arg("sum"), py::arg("bits"), py::arg("lo_hi"), py::arg("last_index"), no_gil);
  m.def(
      "emu_barrier_selftest",
      [](unsigned blocks, unsigned threads, int n_threads, uintptr_t out, bool barriers) {
        FD_ASSERT(threads >= 1 && threads <= 1024 && blocks >= 1 && out, "bad barrier selftest arguments");
        fd::emu_barrier_selftest(blocks, threads, n_threads, reinterpret_cast<int64_t*>(out), barriers);
      },
      py::arg("blocks"), py::arg("threads"), py::arg("n_threads"), py::arg("out"), py::arg("barriers"), no_gil);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastdissect kernels (internal; use the fastdissect package)";
  m.def("build_info", &build_info);
  m.def("codes", &codes);
  declare_params(m);
  const auto no_gil = py::call_guard<py::gil_scoped_release>();
  declare_checks(m);
  declare_cpu_ops(m, no_gil);
  declare_gpu_ops(m, no_gil);
  declare_emu_tests(m, no_gil);
}
