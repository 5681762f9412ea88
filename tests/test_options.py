"""`DissectOptions` (pipeline/options.py): fd.dissect's arguments checked once into a frozen record,
the identity fields a checkpoint must match, and the pipeline stages kept small."""

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

import fastdissect as fd
from fastdissect.files.identity import dissection_identity
from fastdissect.pipeline.options import DEFAULT_UNION, DissectOptions
from test_pipeline import PLAIN, ColorDetectors

PIPELINE = Path(fd.__file__).parent / "pipeline"
DEFAULTS = dict(quantile=0.005, method="linear", iou_threshold=0.04, union=None, batch_size=32, num_workers=0,
                device=None, cache=None, cache_limit=4 << 30, image_size=None, mean=(0.0, 0.0, 0.0),
                std=(1.0, 1.0, 1.0), transform=None, views=None, top_k=8, checkpoint=None, checkpoint_every=50,
                restart=False, backend="auto", distributed=None, formula_length=None, beam_size=5, search="beam",
                penalty=1.0, metric="iou", formula_layers=None, controls=(), control_layers=None, control_seed=0, stop_early=True, passes=None,
                memory_limit=2 << 30, spill_dir=None, mask_cache=True, verbose=False)


def build(**changes):
    return DissectOptions.build(ColorDetectors(), ["pool"], **{**DEFAULTS, **changes})


def test_options_are_frozen_and_typed():
    o = build(batch_size=torch.tensor(4).numpy()[()])  # a numpy int becomes an int, as DataLoader needs
    assert type(o.batch_size) is int and o.batch_size == 4
    assert o.device == torch.device("cpu") and o.device_from_model
    assert o.passes == 1 and o.views == {"pool": ("pool", None)} and o.layers == ["pool"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.quantile = 0.1
    assert build(cache="memory").passes == 2


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return fd.datasets.Broden(fd.datasets.builtin(tmp_path_factory.mktemp("options") / "c", n_images=8, seed=2))


def test_union_none_is_netdissect_where_categories_are_known(small):
    assert build().union == DEFAULT_UNION == "netdissect"
    assert build(union="lite").union == "lite"
    ds = small
    unset = fd.dissect(ColorDetectors(), ["pool"], ds, quantile=0.05, verbose=False, **PLAIN)
    named = fd.dissect(ColorDetectors(), ["pool"], ds, quantile=0.05, union="netdissect", verbose=False, **PLAIN)
    assert unset.identity["union"] == "netdissect"
    assert torch.equal(unset["pool"].scores.union, named["pool"].scores.union)


@pytest.mark.parametrize("change,named", [
    (dict(checkpoint_every=-1), "checkpoint_every"), (dict(checkpoint_every=True), "checkpoint_every"),
    (dict(passes=3), "passes"), (dict(passes=1, cache="memory"), "cache="), (dict(cache=3), "cache"),
    (dict(memory_limit=-1), "memory_limit"), (dict(controls="permuted"), "controls"),
    (dict(controls=("other",)), "controls"), (dict(union="sum"), "union"), (dict(mask_cache=3), "mask_cache"),
    (dict(views={"pool": ("pool", abs)}), "view 'pool'"), (dict(transform={"conv": abs}), "transform"),
    (dict(search="greedy"), "search"), (dict(quantile=2.0), "quantile")])
def test_every_bad_option_is_refused_by_name_before_any_data(change, named):
    with pytest.raises((ValueError, TypeError, LookupError), match=named):
        build(**change)


def test_identity_options_are_what_the_identity_reads(small):
    o = build(controls=("permuted",), control_seed=4, formula_length=2, quantile=0.05)
    fields = o.identity_options()
    assert fields["control_seed"] == 4 and fields["formulas"]["length"] == 2 and fields["union"] == "netdissect"
    assert build(control_seed=4).identity_options()["control_seed"] is None  # no control: the seed changes nothing
    d = fd.dissect(ColorDetectors(), ["pool"], small, quantile=0.05, controls=("permuted",), control_seed=4,
                   formula_length=2, verbose=False, **PLAIN)
    want = dissection_identity(ColorDetectors(), o.layers, small, fields)
    assert {k: v for k, v in d.identity.items() if k not in ("iou_threshold", "metric")} == want
    assert o.resume_identity() == {"passes": 1}


def test_the_random_init_control_gets_its_own_checkpoint_and_no_control_of_itself(tmp_path):
    o = build(controls=("permuted", "random_init"), checkpoint=tmp_path)
    c = o.for_control(ColorDetectors())
    assert c.checkpoint == tmp_path / "random_init" and c.controls == ("permuted",) and c.quantile == o.quantile
    assert build().for_control(ColorDetectors()).checkpoint is None


def _sizes(path: Path):
    """(kind, name, lines without the docstring) of every class and function of a module."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            first = node.body[0]
            doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
                isinstance(first.value.value, str)
            lines = node.end_lineno - node.lineno + 1 - ((first.end_lineno - first.lineno + 1) if doc else 0)
            yield type(node).__name__, node.name, lines


STAGES = ["dissect", "options", "source", "forward", "passes", "checkpoint", "merge", "bundle"]


@pytest.mark.parametrize("stage", STAGES)
def test_pipeline_stages_stay_small_and_read_options_as_attributes(stage):
    path = PIPELINE / f"{stage}.py"
    too_long = [(kind, name, n) for kind, name, n in _sizes(path)
                if n > (200 if kind == "ClassDef" else 60)]
    assert not too_long
    text = path.read_text(encoding="utf-8")
    assert 'o["' not in text and "opts[" not in text  # options are attributes of DissectOptions
