"""passes=1 (the default): one forward per image, results identical bit for bit to passes=2."""

import dataclasses

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.pipeline.retained import DENSE_MAX_PIXELS, RetainedStore, _dilated, hot_floor, rebuild, retain
from fastdissect.engine.scoring import Tally
from test_pipeline import PLAIN, ColorDetectors, reference_maxima


@pytest.fixture(scope="module")
def concepts(tmp_path_factory):
    root = tmp_path_factory.mktemp("single") / "concepts"
    return fd.datasets.Broden(fd.datasets.builtin(root, n_images=40, seed=1, max_photo_share=0.1))


def assert_same(a, b, layers):
    for name in layers:
        for key in ("intersection", "union", "thresholds", "unit_area"):
            assert torch.equal(getattr(a[name].scores, key), getattr(b[name].scores, key)), (name, key)
        assert torch.equal(a[name].top_images, b[name].top_images)
        assert torch.equal(a[name].top_maps, b[name].top_maps)


class Reordered:
    """The data set with its images in another order (an adversarial stream for the floor)."""

    def __init__(self, ds, order):
        self.ds, self.order = ds, [int(i) for i in order]
        for key in ("num_concepts", "concept_names", "category_names", "primary_category"):
            setattr(self, key, getattr(ds, key))

    def __len__(self):
        return len(self.order)

    def __getitem__(self, i):
        return dataclasses.replace(self.ds[self.order[i]], index=i)


def test_one_forward_per_batch_and_identical_results(concepts, backend):
    layers = ["conv", "pool"]  # 128x128 maps (kept as cells) and 32x32 maps
    one, two = ColorDetectors(), ColorDetectors()
    a = fd.dissect(one, layers, concepts, batch_size=8, verbose=False, backend=backend, **PLAIN)
    b = fd.dissect(two, layers, concepts, batch_size=8, verbose=False, backend=backend, passes=2, **PLAIN)
    assert two.forwards - one.forwards == 5  # one pass fewer (the GPU kernels' thresholds may take a further pass)
    assert one.forwards == 5 or backend == "cuda_emu"
    assert_same(a, b, layers)
    assert a["pool"].summary["interpretable"] > 0


def test_brightest_images_first_take_one_forward_per_batch(concepts, capsys):
    """Brightest images first: a floor trailing the values seen so far would rise above the final
    thresholds; fd.dissect declares the number of values, which keeps every floor under them."""
    order = np.argsort(-reference_maxima(ColorDetectors(), concepts).max(axis=1), kind="stable")
    ds = Reordered(concepts, order)
    two = fd.dissect(ColorDetectors(), ["pool"], ds, batch_size=4, passes=2, verbose=False, quantile=0.02, **PLAIN)
    model = ColorDetectors()
    one = fd.dissect(model, ["pool"], ds, batch_size=4, verbose=True, quantile=0.02, **PLAIN)
    assert "running them through the model again" not in capsys.readouterr().out
    assert model.forwards == 10  # 40 images in batches of 4: no further pass, no image run again
    assert_same(one, two, ["pool"])


def test_spilled_kept_maps_give_identical_results(concepts, tmp_path):
    plain = fd.dissect(ColorDetectors(), ["conv", "pool"], concepts, batch_size=8, verbose=False, **PLAIN)
    spilled = fd.dissect(ColorDetectors(), ["conv", "pool"], concepts, batch_size=8, verbose=False, memory_limit=0,
                         spill_dir=tmp_path / "spill", **PLAIN)
    assert_same(plain, spilled, ["conv", "pool"])
    assert not list((tmp_path / "spill").glob("*.safetensors"))  # removed when the run ends




@pytest.mark.parametrize("h, w", [(9, 9), (1, 70), (70, 1), (13, 6)])
def test_seed_neighbourhoods_are_a_3x3_max_pool(h, w):
    seed = torch.rand(5, h, w, generator=torch.Generator().manual_seed(h * w)) > 0.9
    pooled = torch.nn.functional.max_pool2d(seed[:, None].float(), 3, 1, 1)[:, 0] > 0
    assert torch.equal(_dilated(seed), pooled)

def test_the_store_counts_its_peak_and_its_spilled_bytes(tmp_path):
    layers = {"a": retain(torch.ones(2, 3, 4, 4), torch.zeros(3, dtype=torch.float64))}  # 2 x 3 maps kept
    size = RetainedStore._bytes({"layers": layers, "masks": None})
    store = RetainedStore(memory_limit=size, spill_dir=tmp_path)
    store.add(0, 2, None, layers)
    store.add(2, 2, None, layers)  # past the limit: spilled
    store.close()
    assert (store.peak_bytes, store.spilled_bytes, store.in_memory) == (size, size, 0)

def test_formulas_and_permuted_control_match_two_passes(concepts):
    opts = dict(batch_size=8, verbose=False, formula_length=2, controls=("permuted",), **PLAIN)
    a = fd.dissect(ColorDetectors(), ["pool"], concepts, **opts)
    b = fd.dissect(ColorDetectors(), ["pool"], concepts, passes=2, **opts)
    assert_same(a, b, ["pool"])
    assert torch.equal(a["pool"].control.intersection, b["pool"].control.intersection)
    assert [str(f) for f in a["pool"].formulas.formulas] == [str(f) for f in b["pool"].formulas.formulas]


def test_formulas_and_controls_at_some_layers_only(concepts):
    """formula_layers / control_layers: those layers get exactly what a dissection of every layer gives
    them, the others none, and the random-weights copy is dissected at control_layers only."""
    opts = dict(batch_size=8, verbose=False, formula_length=2, controls=("permuted", "random_init"), **PLAIN)
    every = fd.dissect(ColorDetectors(), ["conv", "pool"], concepts, **opts)
    some = fd.dissect(ColorDetectors(), ["conv", "pool"], concepts, formula_layers=["pool"], control_layers=["conv"],
                      **opts)
    assert_same(some, every, ["conv", "pool"])
    assert some["conv"].formulas is None and some["pool"].control is None
    assert [str(f) for f in some["pool"].formulas.formulas] == [str(f) for f in every["pool"].formulas.formulas]
    assert torch.equal(some["conv"].control.intersection, every["conv"].control.intersection)
    assert list(some.random_init) == ["conv"] and some.random_init["conv"].formulas is None
    assert torch.equal(some.random_init["conv"].scores.intersection, every.random_init["conv"].scores.intersection)
    lines = {line.split(":")[0]: line for line in some.summary_text().splitlines() if line.startswith(("conv:", "pool:"))}
    assert "random weights" in lines["conv"] and "random weights" not in lines["pool"]
    assert some.identity["formula_layers"] == ["pool"] and "formula_layers" not in every.identity


@pytest.mark.parametrize("option,value,message", [
    ("formula_layers", ["fc"], r"formula_layers names \['fc'\], which are not among the dissected layers"),
    ("control_layers", "pool", r"control_layers must be a list of layer names, not a str"),
    ("control_layers", ["pool", "pool"], r"control_layers names \['pool'\] more than once"),
])
def test_bad_layer_restrictions_are_named(concepts, option, value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        fd.dissect(ColorDetectors(), ["conv", "pool"], concepts, verbose=False, formula_length=2,
                   controls=("permuted",), **{option: value})


@pytest.mark.parametrize("option,needs", [("formula_layers", "formula_length"), ("control_layers", "controls")])
def test_a_restriction_of_nothing_is_refused(concepts, option, needs):
    with pytest.raises(ValueError, match=f"{option} restricts {needs}, which is not set"):
        fd.dissect(ColorDetectors(), ["pool"], concepts, verbose=False, **{option: ["pool"]})


def test_half_precision_maps(concepts):
    class Half(ColorDetectors):
        def forward(self, x):
            return super().forward(x).half()

    a = fd.dissect(Half(), ["pool"], concepts, batch_size=8, verbose=False, **PLAIN)
    b = fd.dissect(Half(), ["pool"], concepts, batch_size=8, verbose=False, passes=2, **PLAIN)
    assert_same(a, b, ["pool"])


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (8, 8), (9, 7), (17, 33)])
def test_rebuilt_maps_tally_like_the_originals(rng, h, w, backend):
    """Any floor at or below hot_floor(T) keeps what the tally reads: ties, zeros, negatives, one image."""
    for trial in range(4):
        n = 1 if trial == 0 else 6
        act = torch.from_numpy(rng.integers(-3, 6, size=(n, 5, h, w)).astype(np.float32) / 2)
        act[:, 1] = 0.0  # an all-zero ReLU map
        act = act[:, :, :, :] if trial != 2 else act.transpose(2, 3).contiguous().transpose(2, 3)
        t = torch.from_numpy(np.quantile(act.double().transpose(0, 1).reshape(5, -1).numpy(), 0.8, axis=1))
        floor = torch.minimum(hot_floor(t), t - torch.from_numpy(rng.integers(0, 3, 5) / 2.0))
        masks = fd.pack_masks(torch.from_numpy(rng.random((n, 3, 2 * h + 1, 3 * w)) < 0.4))
        want, got = (Tally(5, 3, t, backend=backend) for _ in range(2))
        want.add(act, masks)
        record = retain(act, floor)
        assert ("maps" in record) == (h * w <= DENSE_MAX_PIXELS)
        got.add(rebuild(record, t), masks)
        for key in ("intersection", "union", "unit_area"):
            assert torch.equal(getattr(want.scores(), key), getattr(got.scores(), key))


def test_bad_pass_options_are_named(concepts):
    with pytest.raises(ValueError, match="passes must be 1 or 2"):
        fd.dissect(ColorDetectors(), ["pool"], concepts, passes=3, verbose=False)
    with pytest.raises(ValueError, match="cache= keeps activations"):
        fd.dissect(ColorDetectors(), ["pool"], concepts, passes=1, cache="memory", verbose=False)
    with pytest.raises(ValueError, match="memory_limit"):
        fd.dissect(ColorDetectors(), ["pool"], concepts, memory_limit=-1, verbose=False)


def test_resume_from_kept_maps_spilled_into_the_checkpoint(concepts, tmp_path):
    from test_pipeline import Interrupting

    whole = fd.dissect(ColorDetectors(), ["conv", "pool"], concepts, batch_size=8, verbose=False, passes=2, **PLAIN)
    opts = dict(batch_size=8, verbose=False, checkpoint=tmp_path, checkpoint_every=1, memory_limit=0, **PLAIN)
    with pytest.raises(KeyboardInterrupt):
        fd.dissect(Interrupting(3), ["conv", "pool"], concepts, **opts)
    assert len(list(tmp_path.glob("kept-rank0-*.safetensors"))) == 3  # one file per batch done, named by the checkpoint
    model = ColorDetectors()
    resumed = fd.dissect(model, ["conv", "pool"], concepts, **opts)
    assert model.forwards == 2
    assert_same(whole, resumed, ["conv", "pool"])
    assert not list(tmp_path.glob("kept-*.safetensors"))


def test_the_demo_model_gives_the_two_pass_numbers(tmp_path):
    """EfficientNet-Lite0 at 224 px, its five demo layers (56x56 down to 7x7 maps)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from fastdissect.pipeline import models

    model = models.efficientnet_lite0()
    _, layers, mean, std = models.BUILTIN["efficientnet-lite0"]
    ds = fd.datasets.Broden(fd.datasets.builtin(tmp_path / "set", n_images=24))
    options = dict(mean=mean, std=std, image_size=(224, 224), batch_size=8, verbose=False)
    assert_same(fd.dissect(model, layers, ds, **options), fd.dissect(model, layers, ds, passes=2, **options), layers)


def test_images_run_again_trace_only_the_layers_that_need_them(concepts, monkeypatch, capsys):
    """Images whose kept maps of one layer may miss a hot value are run again traced at that layer
    alone (the forward stops there), each (image, layer) tallied once: results as with two passes."""
    from fastdissect.pipeline import passes

    seen = {"conv": 0}

    def conv_misses_images_9_and_10(record, thresholds):
        redo = torch.zeros(record["shape"][0], dtype=torch.bool)
        if record["shape"][2] == 128:  # the conv layer's 128x128 maps; pool's are 32x32
            seen["conv"] += 1
            redo[[1, 2]] = seen["conv"] == 2  # the second batch of 8: images 9 and 10
        return redo

    monkeypatch.setattr(passes, "needs_forward", conv_misses_images_9_and_10)
    model = ColorDetectors()
    calls = {"conv": 0, "pool": 0}
    for name in calls:
        getattr(model, name).register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    one = fd.dissect(model, ["conv", "pool"], concepts, batch_size=8, verbose=True, **PLAIN)
    assert "2 images may hold values above a floor the data fell below (conv: 2)" in capsys.readouterr().out
    assert calls == {"conv": 6, "pool": 5}  # five batches, then images 9 and 10 stopped after conv
    two = fd.dissect(ColorDetectors(), ["conv", "pool"], concepts, batch_size=8, passes=2, verbose=False, **PLAIN)
    assert_same(one, two, ["conv", "pool"])


def test_a_further_pass_reads_only_the_pending_layers():
    """refine_thresholds: the layers with pending units (and only they) are read again, and the
    progress output says why and for how many units."""
    from types import SimpleNamespace

    from fastdissect.pipeline.passes import Passes

    class Pending:  # a TopQuantile whose units 0 and 2 need one further pass
        def __init__(self, pending):
            self.pending_units, self.reads = pending, 0

        needs_pass = property(lambda self: bool(self.pending_units))

        def new_pass(self):
            pass

        def add(self, a):
            self.reads += 1

        def all_reduce(self, comm):
            self.pending_units = []

        device = None

    quantiles = {"conv": Pending([0, 2]), "pool": Pending([])}
    traced, logged = [], []
    forward = SimpleNamespace(cached=lambda: False,
                              activations=lambda idx, images, names: traced.append(names) or
                              {n: torch.zeros(len(idx), 1) for n in names})
    source = SimpleNamespace(lo=0, hi=4, loader=lambda masks, start: [(torch.arange(2), None), (torch.arange(2, 4), None)])
    bundles = {name: SimpleNamespace(quantile=lambda q=q: q) for name, q in quantiles.items()}
    comm = SimpleNamespace(rank=0, run=lambda fn, arg: fn(arg))
    opts = SimpleNamespace(verbose=False)
    Passes(opts, source, forward, bundles, None, None, comm, None, logged.append).refine_thresholds()
    assert traced == [["conv"], ["conv"]] and quantiles["conv"].reads == 2 and quantiles["pool"].reads == 0
    assert logged == ["a further pass for 2 unit(s) whose order statistic lies below a floor raised earlier in "
                      "the data (conv: 2); it runs only these layers"]
