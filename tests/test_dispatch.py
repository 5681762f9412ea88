"""The structure the issue tracker asked for, checked: one kernel-call layer, enumerations that
agree with the compiled kernels, and accumulators that follow one protocol."""

import re
from pathlib import Path

import pytest
import torch

import fastdissect as fd
from fastdissect.core import codes
from fastdissect.kernels import dispatch, ext
from fastdissect.engine.accumulator import Accumulator

PACKAGE = Path(fd.__file__).resolve().parent


def test_enumerations_agree_with_the_kernels():
    c = dispatch.codes()
    assert dict(c["union"]) == codes.UNION_CODES
    assert {getattr(torch, name): code for name, code in c["dtype"].items()} == codes.DTYPE_CODES
    assert c["score_branches"] == len(codes.SCORE_BRANCHES)


def test_only_the_dispatch_layer_calls_the_extension():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("dispatch.py", "ext.py"):
            continue
        text = path.read_text()
        if re.search(r"\bext\.extension\b|\.extension\(\)|\b_C\b", text):
            offenders.append(path.name)
    assert offenders == []


def test_no_module_reads_another_modules_private_attributes():
    """x._name is fine only where the same file defines _name (its own class or helper)."""
    access = re.compile(r"\b(?!self\b|cls\b)([A-Za-z_]\w*)\.(_[a-z]\w*)")
    found = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        own = set(re.findall(r"self\.(_[a-z]\w*)\s*[:=]", text)) | set(re.findall(r"def (_[a-z]\w*)", text))
        for line in text.splitlines():
            for m in access.finditer(line.split("#")[0]):
                if m.group(2) not in own:
                    found.append(f"{path.name}: {m.group(0)}")
    assert found == []


def test_accumulators_follow_one_protocol():
    for acc in (fd.TopQuantile(2), fd.Tally(2, 3, [0.5, 0.5]), fd.TopImages(2)):
        assert isinstance(acc, Accumulator)


def test_backend_is_resolved_once_per_accumulator(monkeypatch):
    calls = []
    original = dispatch.resolve_backend
    monkeypatch.setattr(dispatch, "resolve_backend", lambda b, d: calls.append(b) or original(b, d))
    t = fd.Tally(2, 3, [0.5, 0.5])
    q = fd.TopQuantile(2)
    masks = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    for _ in range(3):
        t.add(torch.rand(2, 2, 2, 2), masks)
        q.add(torch.rand(2, 2, 2, 2))
    assert len(calls) == 2


def test_top_images_merge_equals_one_stream():
    acts = torch.rand(10, 3, 2, 2)
    acts[4] = acts[7]  # a tie: the earlier image wins
    whole = fd.TopImages(4)
    whole.add(acts, torch.arange(10))
    a, b = fd.TopImages(4), fd.TopImages(4)
    a.add(acts[:6], torch.arange(6))
    b.add(acts[6:], torch.arange(6, 10))
    a.merge(b)
    assert torch.equal(a.images, whole.images) and torch.equal(a.values, whole.values)
    assert torch.equal(a.maps, whole.maps)
    restored = fd.TopImages(4)
    restored.load_state_dict(whole.state_dict())
    assert torch.equal(restored.images, whole.images)
    want = torch.argsort(-acts.amax(dim=(2, 3)).T.double(), dim=1, stable=True)[:, :4]
    assert torch.equal(whole.images, want)


def test_concept_masks_moved_between_devices_are_not_verified_again(monkeypatch):
    m = fd.pack_masks(torch.rand(3, 2, 5, 5) > 0.5)
    monkeypatch.setattr(fd.ConceptMasks, "_verify_values", lambda self, nnz: (_ for _ in ()).throw(AssertionError))
    m.to("cpu")
    m[1:2]


# ---- the extension's entry points: <op>_cpu / <op>_gpu, each behind its check_<op>
OPS = {"score": ("cpu", "gpu"), "histogram": ("cpu", "gpu"), "formula_counts": ("cpu", "gpu"),
       "pair_counts": ("cpu", "gpu"),
       "union_iou": ("cpu",), "png_labels": ("cpu",), "tiles": ("cpu",)}


def test_every_op_has_a_check_and_one_name_per_backend():
    C = ext.extension()
    for op, backends in OPS.items():
        assert callable(getattr(C, f"check_{op}")), op
        for backend in backends:
            assert callable(getattr(C, f"{op}_{backend}")), f"{op}_{backend}"
    assert not hasattr(C, "histogram_add")


def _default_calls(C):
    """Each entry point called with default (all-zero) Params: refused, never run."""
    score, hist, fc, pc = C.ScoreParams(), C.HistogramParams(), C.FormulaCountsParams(), C.PairCountsParams()
    return {
        "score_cpu": lambda: C.score_cpu(score, 1),
        "score_gpu": lambda: C.score_gpu(score, C.ScoreScratch(), True, 0, 1),
        "histogram_cpu": lambda: C.histogram_cpu(hist, 1),
        "histogram_gpu": lambda: C.histogram_gpu(hist, C.HistogramScratch(), True, 0, 1),
        "formula_counts_cpu": lambda: C.formula_counts_cpu(fc, 1),
        "formula_counts_gpu": lambda: C.formula_counts_gpu(fc, 0, True, 0, 1),
        "pair_counts_cpu": lambda: C.pair_counts_cpu(pc, 1),
        "pair_counts_gpu": lambda: C.pair_counts_gpu(pc, 0, 0, True, 0, 1),
        "union_iou_cpu": lambda: C.union_iou_cpu(_null_union_iou(C), 1),
        "png_labels_cpu": lambda: C.png_labels_cpu(C.PngLabelsParams()),
        "tiles_cpu": lambda: C.tiles_cpu(C.TilesParams(), 1),
    }


def _null_union_iou(C):
    p = C.UnionIouParams()
    p.K, p.C = 2, 3
    return p


def test_entry_points_refuse_default_params_with_a_value_error():
    C = ext.extension()
    calls = _default_calls(C)
    assert set(calls) == {f"{op}_{b}" for op, backends in OPS.items() for b in backends}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"params\.\w+"):
            call()


def score_params(C, keep):
    """A valid ScoreParams of one 2x2 map against three 4x4 masks (tensors kept alive in `keep`)."""
    act, thr = torch.rand(1, 1, 2, 2), torch.zeros(1, dtype=torch.float64)
    m = fd.pack_masks(torch.rand(1, 3, 4, 4) > 0.5)
    inter, area = torch.zeros(1, 3, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
    keep += [act, thr, m, inter, area]
    p = C.ScoreParams()
    p.set_activations(act.data_ptr(), codes.DTYPE_CODES[act.dtype], list(act.shape), list(act.stride()))
    p.thresholds, p.H, p.W, p.C, p.words_per_mask = thr.data_ptr(), 4, 4, 3, m.words_per_mask
    p.offsets, p.concept_ids, p.mask_rows = m.offsets.data_ptr(), m.concept_ids.data_ptr(), m.mask_rows.data_ptr()
    p.words, p.intersection, p.unit_area = m.words.data_ptr(), inter.data_ptr(), area.data_ptr()
    return p


@pytest.mark.parametrize("field, value, message", [
    ("words_per_mask", 2, r"score: params\.words_per_mask must be ceil\(pixels / 64\) = 1, got 2"),
    ("thresholds", 0, r"score: params\.thresholds is required"),
    ("union_mode", 2, r"score: params\.categories is required"),
    ("union_mode", 7, r"score: params\.union_mode is not a union code: 7"),
    ("H", 0, r"score: params\.H and params\.W"),
    ("pil_x_first", 8, r"score: params\.pil_x_weights is required"),
])
def test_score_check_names_the_bad_field(field, value, message):
    C, keep = ext.extension(), []
    p = score_params(C, keep)
    C.check_score(p)  # valid as built
    setattr(p, field, value)
    with pytest.raises(ValueError, match=message):
        C.check_score(p)


def test_checks_name_bad_dtypes_strides_and_channels():
    C = ext.extension()
    h = C.HistogramParams()
    h.set_activations(8, 9, [1, 1, 1, 1], [1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"histogram: params\.act_dtype is not a dtype code: 9"):
        C.check_histogram(h)
    h.set_activations(8, 0, [1, 1, 1, 1], [1, -1, 1, 1])
    with pytest.raises(ValueError, match=r"histogram: params\.act_stride must be >= 0 .* in dimension 1"):
        C.check_histogram(h)
    png = C.PngLabelsParams()
    png.raw, png.scratch, png.labels, png.height, png.width, png.channels = 8, 8, 8, 1, 1, 2
    with pytest.raises(ValueError, match=r"png_labels: params\.channels must be 3 \(RGB\) or 4 \(RGBA\), got 2"):
        C.check_png_labels(png)
    keep = []
    s = C.ScoreScratch()
    s.map_scale, s.taps = 8, 8
    p = score_params(C, keep)
    p.exhaustive = True
    with pytest.raises(ValueError, match=r"the CUDA kernels have no Pillow resampling"):
        C.score_gpu(p, s, True, 0, 1)
