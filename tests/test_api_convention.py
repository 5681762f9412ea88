"""The public API follows docs/api.md: positional orders and names as its tables say, every returned
type exported, and every old spelling of its "Old names" table still working, warned, with the
result of the new spelling. The tables are read from the page, the one statement of the convention."""

import dataclasses
import inspect
import re
import typing
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import fastdissect as fd
from test_analyses import SETTINGS, PooledHead
from test_pipeline import PLAIN

PAGE = Path(__file__).resolve().parent.parent / "docs" / "api.md"

# Rows of the page's tables that functions outside the analyses do not follow yet: each is an
# expected failure that fails once it passes, so that the entry is removed then.
NOT_YET: dict = {}
NAMES_NOT_YET: dict = {}


def table(heading: str) -> list[list[str]]:
    """The cells of the first table under `## heading`, header and rule dropped."""
    section = PAGE.read_text(encoding="utf-8").split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


ORDERS = {ticked(name)[0].removeprefix("fd."): [a.strip() for a in ticked(args)[0].split(",")]
          for name, args in table("Positional order: the model, its layer(s), the data, then what is specific")}


def public_callables():
    """The exported functions and classes, those with a signature (a dict subclass built from files
    by fd.load, such as Dissection, has none a user calls)."""
    for name in fd.__all__:
        obj = getattr(fd, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            try:
                inspect.signature(obj)
            except ValueError:
                continue
            yield name, obj


def mark_pending(name, pending):
    return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=pending[name])) if name in pending else name


@pytest.mark.parametrize("name", [mark_pending(n, NOT_YET) for n in ORDERS])
def test_positional_order_is_the_tables_and_the_rest_is_keyword_only(name):
    params = inspect.signature(getattr(fd, name)).parameters.values()
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    order = [a.split("=")[0] for a in ORDERS[name]]
    assert positional == order
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params if p.name not in order)


def test_the_order_table_names_every_analysis():
    analyses = {n for n, obj in public_callables() if inspect.isfunction(obj)
                and obj.__module__.startswith("fastdissect.analyses.")} - {"random_rotation"}
    assert analyses <= set(ORDERS)


NAMES = table("One name per thing, one meaning per name")
NEVER = {n for row in NAMES for n in ticked(row[2])} - {n for row in NAMES for n in ticked(row[0])}


def test_the_names_table_forbids_the_old_names():
    assert {"x", "acts", "features", "data", "ds", "top", "length", "progress", "quiet"} <= NEVER
    assert "method" not in NEVER  # the quantile method keeps its name


@pytest.mark.parametrize("name", [mark_pending(n, {k: "uses " + ", ".join(sorted(v)) for k, v in NAMES_NOT_YET.items()})
                                  for n, _ in public_callables()])
def test_no_public_signature_uses_a_name_the_table_forbids(name):
    params = set(inspect.signature(getattr(fd, name)).parameters)
    assert params & NEVER == set()


def test_attribution_is_not_called_method():
    params = inspect.signature(fd.explain_prediction).parameters
    assert "attribution" in params and "method" not in params and "top_k" in params


def _fastdissect_types(hint):
    if isinstance(hint, type) and hint.__module__.startswith("fastdissect"):
        yield hint
    for arg in typing.get_args(hint):
        yield from _fastdissect_types(arg)


def _returned_types(namespace, names):
    for name in names:
        obj = getattr(namespace, name)
        members = [obj] if inspect.isfunction(obj) else \
            [m for k, m in vars(obj).items() if not k.startswith("_") and inspect.isfunction(m)] \
            if inspect.isclass(obj) else []
        for fn in members:
            yield from ((fn.__qualname__, t) for t in _fastdissect_types(typing.get_type_hints(fn).get("return")))


def test_every_type_a_public_function_returns_is_exported():
    exported = {getattr(fd, n) for n in fd.__all__} | {getattr(fd.datasets, n) for n in fd.datasets.__all__}
    found = list(_returned_types(fd, fd.__all__)) + list(_returned_types(fd.datasets, fd.datasets.__all__))
    assert any(t is fd.PredictionExplanations for _, t in found)  # the walk sees the analyses' results
    assert [(fn, t.__name__) for fn, t in found if t not in exported] == []


def test_all_is_grouped_by_layer_in_the_layers_order():
    source = (Path(fd.__file__)).read_text(encoding="utf-8").split("__all__ = [", 1)[1]
    groups = re.findall(r"^    # (\w+)$", source, flags=re.M)
    assert groups == ["core", "kernels", "engine", "files", "datasets", "bases", "pipeline", "report", "analyses"]
    assert len(fd.__all__) == len(set(fd.__all__)) and all(hasattr(fd, n) for n in fd.__all__)


# ---- the old spellings

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = fd.datasets.builtin(tmp_path_factory.mktemp("conv") / "c", n_images=20, seed=2, max_photo_share=0.1)
    data = fd.datasets.Broden(root)
    model = PooledHead()
    d = fd.dissect(model, ["body.pool"], data, **SETTINGS)
    return {"model": model, "data": data, "d": d, "images": [data.image(i) for i in range(3)],
            "tmp": tmp_path_factory.mktemp("reports")}


def same(a, b) -> bool:
    """Equal field by field, tensors and arrays exactly."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, fd.PredictionExplanations):
        return isinstance(b, fd.PredictionExplanations) and same(list(a), list(b))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def _report(e):
    return e["tmp"] / f"r{len(list(e['tmp'].iterdir()))}"


def _read(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")), (path / "index.html").read_text()


# old spelling in the page's table -> (old call, new call, replacement the warning must name)
SMALL = torch.rand(3, 4, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
SMALL_MASKS = torch.rand(3, 3, 10, 10, generator=torch.Generator().manual_seed(1)) > 0.6

OLD = {
    "fd.explain_prediction(model, images, dissection, layer)": (
        lambda e: fd.explain_prediction(e["model"], e["images"], e["d"], "body.pool", attribution="cam"),
        lambda e: fd.explain_prediction(e["model"], "body.pool", e["images"], e["d"], attribution="cam"),
        "explain_prediction(model, layer, images, dissection)"),
    "fd.explain_prediction(method=...)": (
        lambda e: fd.explain_prediction(e["model"], "body.pool", e["images"], e["d"], method="gradient x activation"),
        lambda e: fd.explain_prediction(e["model"], "body.pool", e["images"], e["d"],
                                        attribution="gradient x activation"),
        "explain_prediction(attribution=...)"),
    "fd.explain_prediction(top=...)": (
        lambda e: fd.explain_prediction(e["model"], "body.pool", e["images"], e["d"], top=1, detectors_only=False),
        lambda e: fd.explain_prediction(e["model"], "body.pool", e["images"], e["d"], top_k=1, detectors_only=False),
        "explain_prediction(top_k=...)"),
    'fd.explain_prediction(units="detectors")': (
        lambda e: fd.explain_prediction(e["model"], "body.pool", e["images"], e["d"], units="all"),
        lambda e: fd.explain_prediction(e["model"], "body.pool", e["images"], e["d"], detectors_only=False),
        "explain_prediction(detectors_only=False)"),
    "PredictionExplanation.method": (
        lambda e: fd.explain_prediction(e["model"], "body.pool", e["images"], e["d"], attribution="cam")[0].method,
        lambda e: fd.explain_prediction(e["model"], "body.pool", e["images"], e["d"], attribution="cam")[0].attribution,
        "PredictionExplanation.attribution"),
    "fd.segment(model, images, dissection, layer)": (
        lambda e: fd.segment(e["model"], e["images"], e["d"], "body.pool"),
        lambda e: fd.segment(e["model"], "body.pool", e["images"], e["d"]),
        "segment(model, layer, images, dissection)"),
    "fd.segment(top=...)": (
        lambda e: fd.segment(e["model"], "body.pool", e["data"], e["d"], top=1, verbose=False),
        lambda e: fd.segment(e["model"], "body.pool", e["data"], e["d"], top_k=1, verbose=False),
        "segment(top_k=...)"),
    "fd.ablate(model, layer, units, dataset)": (
        lambda e: fd.ablate(e["model"], "body.pool", [0, 2], e["data"], verbose=False, **PLAIN),
        lambda e: fd.ablate(e["model"], "body.pool", e["data"], [0, 2], verbose=False, **PLAIN),
        "ablate(model, layer, dataset, units)"),
    "fd.concept_ablation(model, dissection, layer, concept, dataset=None)": (
        lambda e: fd.concept_ablation(e["model"], e["d"], "body.pool", "red", verbose=False),
        lambda e: fd.concept_ablation(e["model"], "body.pool", None, e["d"], "red", verbose=False),
        "concept_ablation(model, layer, dataset, dissection, concept)"),
    "Dissection.report(directory, dataset=None)": (
        lambda e: _read(e["d"].report(_report(e), verbose=False).parent),
        lambda e: _read(fd.write_report(e["d"], _report(e), verbose=False).parent),
        "fd.write_report(dissection, directory, dataset=None)"),
    "Formula.mask(masks)": (
        lambda e: fd.Leaf(1).mask(fd.pack_masks(torch.arange(16).reshape(1, 2, 2, 4) % 3 == 0)).to_dense(),
        lambda e: fd.formula_mask(fd.Leaf(1), fd.pack_masks(torch.arange(16).reshape(1, 2, 2, 4) % 3 == 0)).to_dense(),
        "fd.formula_mask(formula, masks)"),
    "fd.thresholds(activations, quantile, method)": (
        lambda e: fd.thresholds(SMALL, 0.1, "hazen"),
        lambda e: fd.thresholds(SMALL, quantile=0.1, method="hazen"),
        "thresholds(activations)"),
    "fd.compositional(x=..., length=..., progress=...)": (
        lambda e: fd.compositional(x=SMALL, masks=SMALL_MASKS, length=2, progress=False).iou,
        lambda e: fd.compositional(activations=SMALL, masks=SMALL_MASKS, formula_length=2, verbose=False).iou,
        "compositional(activations=..., formula_length=..., verbose=...)"),
    "fd.Explanations": (lambda e: fd.Explanations, lambda e: fd.Formulas, "fd.Formulas"),
}


def test_the_old_names_table_is_what_is_tested():
    assert [ticked(row[0])[0] for row in table("Old names")] == list(OLD)


@pytest.mark.parametrize("spelling", list(OLD))
def test_an_old_spelling_warns_and_gives_the_new_spellings_result(env, spelling):
    old, new, replacement = OLD[spelling]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the new spelling warns of nothing
        want = new(env)
    with pytest.warns(DeprecationWarning) as caught:
        got = old(env)
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1 and f"use {replacement}" in str(deprecations[0].message), deprecations
    assert deprecations[0].filename == __file__  # the warning points at the caller's line
    assert same(got, want)


def test_old_orders_are_told_apart_by_type_and_bad_mixtures_still_fail(env):
    e = env
    with pytest.warns(DeprecationWarning, match="use explain_prediction"):  # keywords only the old order binds
        a = fd.explain_prediction(e["model"], e["images"], dissection=e["d"], layer="body.pool")
    assert same(a, fd.explain_prediction(e["model"], "body.pool", e["images"], e["d"]))
    with pytest.warns(DeprecationWarning, match="use concept_ablation"):  # no data set: the old default
        b = fd.concept_ablation(model=e["model"], dissection=e["d"], layer="body.pool", concept="red", verbose=False)
    assert b.units == [0]
    with pytest.raises(TypeError, match="got both top= .* and top_k="):
        fd.explain_prediction(e["model"], "body.pool", e["images"], e["d"], top=1, top_k=2)
    with pytest.raises(TypeError, match="layer must be a layer name"):  # a wrong type, not an old order
        fd.segment(e["model"], 3, e["images"], e["d"])


def test_prediction_explanations_are_a_sequence_written_as_a_page_and_a_table(env, tmp_path):
    e = env
    ex = fd.explain_prediction(e["model"], "body.pool", e["images"], e["d"], attribution="cam", detectors_only=False,
                               top_k=2)
    assert len(ex) == 3 and isinstance(ex[0], fd.PredictionExplanation) and [x.target for x in ex] == \
        [x.target for x in ex[0:3]] and len(ex[1:]) == 2
    page = ex.write(tmp_path / "page")
    assert page.name == "index.html" and page.read_text().count('<section class="explained"') == 3
    import csv

    with open(ex.to_csv(tmp_path / "ex.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["image"]), int(r["rank"]), int(r["unit"])) for r in rows] == \
        [(i, r, u["unit"]) for i, x in enumerate(ex) for r, u in enumerate(x.units)]
    assert [float(r["contribution"]) for r in rows] == [u["contribution"] for x in ex for u in x.units]


def test_units_restricts_the_ranked_units(env):
    e = env
    every = fd.explain_prediction(e["model"], "body.pool", e["images"], e["d"], attribution="cam",
                                  detectors_only=False, top_k=3)
    some = fd.explain_prediction(e["model"], "body.pool", e["images"], e["d"], attribution="cam",
                                 detectors_only=False, top_k=3, units=[2, 0])
    for a, b in zip(every, some):
        assert [u for u in a.units if u["unit"] in (0, 2)] == b.units
