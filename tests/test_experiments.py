"""The paper's experiments: the random-init control, the rotation curve, label metrics, comparisons."""

import csv
import re
import statistics

import numpy as np
import pytest
import torch
from PIL import Image

import fastdissect as fd
from fastdissect.cli import main as cli
from fastdissect.engine.controls import random_weights
from test_pipeline import PLAIN, ColorDetectors
from test_report import assert_renders

SETTINGS = dict(quantile=0.05, verbose=False, **PLAIN)


@pytest.fixture(scope="module")
def concepts(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments") / "concepts"
    return fd.datasets.Broden(fd.datasets.builtin(root, n_images=40, seed=1, max_photo_share=0.1))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- random-init control

def test_random_weights_reinitialise_every_parameter_without_touching_the_global_rng():
    model = ColorDetectors()
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    a, b = random_weights(model, seed=3), random_weights(model, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a.conv.weight, b.conv.weight) and torch.equal(a.conv.bias, b.conv.bias)
    assert not torch.equal(a.conv.weight, model.conv.weight)
    assert not torch.equal(random_weights(model, seed=4).conv.weight, a.conv.weight)
    assert torch.equal(model.conv.weight[0, :, 0, 0], torch.tensor([1.0, -1, -1]))  # the original is untouched

    class RawParameter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3))

    with pytest.raises(ValueError, match=r"\['<root>'\].*control_model"):
        random_weights(RawParameter())


@pytest.mark.filterwarnings("ignore:.*with random weights")
def test_random_init_control_loses_the_built_detectors(concepts, tmp_path):
    """The built red and blue units detect their colors far better than the same units with random
    weights, over 10 seeds (a random 1x1 conv of RGB is itself a color detector now and then: the
    median, not every seed)."""
    red, blue = concepts.concept_names.index("red"), concepts.concept_names.index("blue")
    trained, random = [], []
    for seed in range(10):
        d = fd.dissect(ColorDetectors(), ["pool"], concepts, controls=("random_init",), control_seed=seed, **SETTINGS)
        t, r = d["pool"].scores.iou, d.random_init["pool"].scores.iou
        trained.append((float(t[0, red]), float(t[1, blue])))
        random.append((float(r[0, red]), float(r[1, blue])))
    assert len(set(trained)) == 1  # the control never changes the trained model's numbers
    for unit in (0, 1):
        assert statistics.median(x[unit] for x in random) < trained[0][unit] / 4
    # the control is an ordinary dissection of random_weights(model, seed)
    alone = fd.dissect(random_weights(ColorDetectors(), 9), ["pool"], concepts, **SETTINGS)
    assert torch.equal(alone["pool"].scores.intersection, d.random_init["pool"].scores.intersection)


def test_random_init_control_is_saved_written_and_reported(concepts, tmp_path):
    d = fd.dissect(ColorDetectors(), ["pool"], concepts, controls=("random_init", "permuted"), control_seed=2,
                   **SETTINGS)
    control = d.random_init["pool"]
    assert control.control is not None  # the other controls run on the random copy too
    loaded = fd.load(d.save(tmp_path / "out"))
    assert torch.equal(loaded.random_init["pool"].scores.iou, control.scores.iou)
    assert loaded.random_init.identity["model"] != loaded.identity["model"]
    summary = (tmp_path / "out" / "summary.json").read_text()
    assert '"random_init"' in summary
    d.to_csv(tmp_path / "csv")
    assert [r["label"] for r in read_csv(tmp_path / "csv" / "random_init" / "pool.csv")] == \
        [u["label"] for u in control.units]
    index = fd.write_report(loaded, tmp_path / "report", verbose=False).read_text()
    assert f"random weights: {control.summary['interpretable']}" in index
    assert "random weights" in d.summary_text()


@pytest.mark.filterwarnings("ignore:.*with random weights")
def test_control_model_replaces_the_reinitialised_copy(concepts):
    given = ColorDetectors()
    with torch.no_grad():
        given.conv.weight.neg_()
    d = fd.dissect(ColorDetectors(), ["pool"], concepts, controls=("random_init",), control_model=given, **SETTINGS)
    alone = fd.dissect(given, ["pool"], concepts, **SETTINGS)
    assert torch.equal(d.random_init["pool"].scores.iou, alone["pool"].scores.iou)


def test_warning_when_random_weights_are_as_interpretable(concepts):
    """A model whose units ignore their weights (white = min(R, G, B) - 0.85 has none) stays a
    detector with random weights: the layer is flagged."""

    class White(ColorDetectors):
        def forward(self, x):
            return self.pool(self.relu(x.min(dim=1, keepdim=True).values - 0.85 + 0 * self.conv(x)[:, :1]))

    with pytest.warns(RuntimeWarning, match="do with random weights"):
        fd.dissect(White(), ["pool"], concepts, controls=("random_init",), **SETTINGS)


# ---- the rotation curve

def test_rotation_experiment_shares_one_forward_pass_and_equals_separate_dissections(concepts, tmp_path):
    model = ColorDetectors()
    powers = [0.0, 0.5, 1.0]
    e = fd.rotation_experiment(model, "pool", concepts, powers=powers, seed=4, batch_size=20, **SETTINGS)
    assert model.forwards == 1 + 2  # one probe for the width, then the 2 batches of the single pass
    plain = fd.dissect(ColorDetectors(), ["pool"], concepts, batch_size=20, **SETTINGS)["pool"]
    for key in ("intersection", "union", "thresholds"):
        assert torch.equal(getattr(e[0.0].scores, key), getattr(plain.scores, key))  # power 0: bit for bit
    for p in (0.5, 1.0):
        alone = fd.dissect(ColorDetectors(), ["pool"], concepts, batch_size=20,
                           transform={"pool": fd.random_rotation(3, seed=4, power=p)}, **SETTINGS)["pool"]
        assert torch.equal(e[p].scores.intersection, alone.scores.intersection)
    rows = e.table()
    assert [r["power"] for r in rows] == powers
    assert [r["interpretable"] for r in rows] == [e[p].summary["interpretable"] for p in powers]
    assert rows[0]["unique_color"] == 3 and rows[-1]["unique_detectors"] < 3
    assert [float(r["power"]) for r in read_csv(e.to_csv(tmp_path / "rotation.csv"))] == powers
    with Image.open(e.figure(tmp_path / "rotation.png")) as im:
        assert im.width > 500 and len(np.unique(np.asarray(im.convert("L")))) > 10
    with pytest.raises(ValueError, match="powers"):
        fd.rotation_experiment(model, "pool", concepts, powers=[0.5, 1.5], **SETTINGS)


def test_views_are_checked(concepts):
    rot = fd.random_rotation(3)
    for views, needle in [({"pool": ("pool", rot)}, "name of a layer"), ({"v": ("pool",)}, r"\(layer, callable\)"),
                          ({"v": ("pool", 3)}, r"\(layer, callable\)")]:
        with pytest.raises(ValueError, match=needle):
            fd.dissect(ColorDetectors(), ["pool"], concepts, views=views, **SETTINGS)
    with pytest.raises(LookupError, match="nopool"):
        fd.dissect(ColorDetectors(), [], concepts, views={"v": ("nopool", rot)}, **SETTINGS)
    with pytest.raises(ValueError, match="at least one"):
        fd.dissect(ColorDetectors(), [], concepts, **SETTINGS)


def test_rotate_command(concepts, tmp_path, capsys):
    model_file = tmp_path / "color.py"
    model_file.write_text("from test_pipeline import ColorDetectors\n\ndef make():\n    return ColorDetectors()\n")
    out = tmp_path / "rot"
    assert cli.main(["rotate", "--model", f"{model_file}:make", "--layer", "pool", "--dataset", str(concepts.root),
                     "--powers", "0,1", "--quantile", "0.05", "--mean", "0", "0", "0", "--std", "1", "1", "1",
                     "--out", str(out), "--quiet"]) == 0
    assert "power 0: 3/3 interpretable" in capsys.readouterr().out
    assert (out / "rotation.png").is_file() and len(read_csv(out / "rotation.csv")) == 2
    assert set(fd.load(out)) == {"pool@rotation0", "pool@rotation1"}
    assert cli.main(["rotate", "--model", f"{model_file}:make", "--layer", "pool", "--dataset", str(concepts.root),
                     "--powers", "0,a", "--out", str(tmp_path / "rot2"), "--quiet"]) == 1
    assert "--powers" in capsys.readouterr().err


# ---- metrics

def test_metric_ranks_labels_and_meets_the_threshold(concepts, tmp_path):
    d = fd.dissect(ColorDetectors(), ["pool"], concepts, metric="f1", **SETTINGS)
    layer = d["pool"]
    f1 = layer.scores.f1.clone()
    f1[:, 0] = -1
    for u in layer.units:
        members = [c for c in range(1, len(concepts.concept_names))
                   if concepts.category_names[int(layer.categories[c])] == u["category"]]
        best = max(members, key=lambda c: (float(f1[u["unit"], c]), -c))
        assert u["label"] == concepts.concept_names[best]
        assert u["score"] == pytest.approx(float(f1[u["unit"], best]), abs=0) and u["f1"] == u["score"]
        assert u["detector"] == (u["score"] > 0.04)
        assert u["iou"] == float(layer.scores.iou[u["unit"], best])
    d.to_csv(tmp_path / "csv")
    header = (tmp_path / "csv" / "pool.csv").read_text().splitlines()[0]
    assert "color-f1" in header and "score" in header
    iou = fd.dissect(ColorDetectors(), ["pool"], concepts, **SETTINGS)
    iou.to_csv(tmp_path / "csv_iou")
    # Lite's tally.csv is by IoU whatever the metric
    assert (tmp_path / "csv" / "pool-tally.csv").read_text() == (tmp_path / "csv_iou" / "pool-tally.csv").read_text()
    assert fd.load(d.save(tmp_path / "out"))["pool"].metric == "f1"
    with pytest.raises(ValueError, match="metric"):
        fd.dissect(ColorDetectors(), ["pool"], concepts, metric="dice", **SETTINGS)


# ---- comparisons

@pytest.fixture(scope="module")
def two_checkpoints(concepts, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    early = ColorDetectors()
    with torch.no_grad():  # an "earlier checkpoint": the blue unit does not exist yet
        early.conv.weight[1] = torch.tensor([1.0, 1.0, -1.0])[:, None, None]
    a = fd.dissect(early, ["conv", "pool"], concepts, **SETTINGS)
    b = fd.dissect(ColorDetectors(), ["conv", "pool"], concepts, **SETTINGS)
    return a.save(root / "iter_100"), b.save(root / "iter_2000"), root


def test_compare_finds_new_concepts_and_changed_labels(two_checkpoints):
    a_dir, b_dir, _ = two_checkpoints
    c = fd.compare({"iter_100": a_dir, "iter_2000": b_dir}, series=True)
    a, b = fd.load(a_dir), fd.load(b_dir)
    rows = c.table()
    assert [(r["model"], r["layer"]) for r in rows] == [("iter_100", "conv"), ("iter_100", "pool"),
                                                       ("iter_2000", "conv"), ("iter_2000", "pool")]
    assert rows[3]["interpretable"] == b["pool"].summary["interpretable"]
    found = lambda d: {u["label"] for layer in d.values() for u in layer.units if u["detector"]}  # noqa: E731
    assert {(r["model"], r["concept"]) for r in c.only_in()} == \
        {("iter_100", x) for x in found(a) - found(b)} | {("iter_2000", x) for x in found(b) - found(a)}
    changes = c.label_changes()
    want = [(name, k) for name in ("conv", "pool") for k in range(3)
            if (a[name].units[k]["label"], a[name].units[k]["detector"]) !=
            (b[name].units[k]["label"], b[name].units[k]["detector"])
            and (a[name].units[k]["detector"] or b[name].units[k]["detector"])]
    assert [(r["layer"], r["unit"]) for r in changes] == want and ("pool", 1) in want
    assert c.iterations() == [100.0, 2000.0]
    with pytest.raises(ValueError, match="at least two"):
        fd.compare({"a": a_dir})


def test_compare_page_renders_in_a_real_browser(two_checkpoints, tmp_path):
    a_dir, b_dir, root = two_checkpoints
    page = fd.compare({"iter_100": a_dir, "iter_2000": b_dir}, series=True).write(root / "page", verbose=False)
    for name in ("comparison.csv", "only_in.csv", "label_changes.csv", "models_detectors.png", "series.png"):
        assert (page.parent / name).is_file()
    html = page.read_text()
    assert html.count("<tr data-model=") == 4
    for src in re.findall(r'<img[^>]*src="([^"]+)"', html):
        with Image.open(page.parent / src) as im:
            im.load()
    assert_renders(page, tmp_path, "compare_index")


def test_compare_command_and_a_checkpoint_series(concepts, two_checkpoints, tmp_path, capsys):
    a_dir, b_dir, _ = two_checkpoints
    assert cli.main(["compare", str(a_dir), str(b_dir), "--names", "early,late", "--out", str(tmp_path / "c")]) == 0
    assert {r["model"] for r in read_csv(tmp_path / "c" / "comparison.csv")} == {"early", "late"}
    assert cli.main(["compare", str(a_dir), str(b_dir), "--names", "one", "--out", str(tmp_path / "c")]) == 1
    assert "--names gives 1 names for 2" in capsys.readouterr().err
    # --weights with a pattern: every checkpoint, the masks packed once, then the series page
    model_file = tmp_path / "color.py"
    model_file.write_text("from test_pipeline import ColorDetectors\n\ndef make():\n    return ColorDetectors()\n")
    for step, scale in [(10, 0.5), (2, 1.0)]:
        m = ColorDetectors()
        with torch.no_grad():
            m.conv.weight.mul_(scale)
        torch.save(m.state_dict(), tmp_path / f"ckpt_{step}.pth")
    out = tmp_path / "series"
    assert cli.main(["dissect", "--model", f"{model_file}:make", "--weights", str(tmp_path / "ckpt_*.pth"),
                     "--layers", "pool", "--dataset", str(concepts.root), "--quantile", "0.05", "--mean", "0", "0",
                     "0", "--std", "1", "1", "1", "--out", str(out), "--quiet"]) == 0
    assert (out / "masks" / "fastdissect-masks.json").is_file()
    assert [r["model"] for r in read_csv(out / "compare" / "comparison.csv")] == ["ckpt_2", "ckpt_10"]
    assert (out / "compare" / "series.png").is_file()
    single = fd.dissect(ColorDetectors(), ["pool"], concepts, **SETTINGS)["pool"]
    assert torch.equal(fd.load(out / "ckpt_2")["pool"].scores.iou, single.scores.iou)
    assert cli.main(["dissect", "--model", f"{model_file}:make", "--weights", str(tmp_path / "none_*.pth"),
                     "--layers", "pool", "--dataset", str(concepts.root), "--out", str(tmp_path / "s2"), "--quiet"]) == 1
    assert "no file matches" in capsys.readouterr().err


def test_warning_for_whole_image_maps(concepts):
    class Pooled(ColorDetectors):
        def __init__(self):
            super().__init__()
            self.gap = torch.nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return self.gap(super().forward(x))

    with pytest.warns(RuntimeWarning, match="gap has 1x1 maps"):
        d = fd.dissect(Pooled(), ["gap"], concepts, quantile=0.1, **PLAIN, verbose=False)
    assert d["gap"].summary["interpretable"] > 0


def test_coverage_counts_the_concepts_images_the_unit_meets(concepts):
    layer = fd.dissect(ColorDetectors(), ["pool"], concepts, metric="coverage", **SETTINGS)["pool"]
    s = layer.scores
    want = np.where(s.concept_images.numpy() > 0, s.image_hits.numpy() / np.maximum(s.concept_images.numpy(), 1), 0)
    np.testing.assert_array_equal(s.coverage.numpy(), want)
    # by the definition, image by image: the unit's mask on image x meets the concept's there
    red = concepts.concept_names.index("red")
    images = torch.from_numpy(np.stack([concepts[i].image for i in range(len(concepts))]))
    model = ColorDetectors()
    with torch.no_grad(), fd.trace(model, ["pool"]) as acts:
        model(images.permute(0, 3, 1, 2).float() / 255)
    per_image = [fd.score(acts["pool"][i:i + 1], fd.pack_masks(labels=torch.from_numpy(concepts[i].labels[None]),
                                                               image_labels=[concepts[i].image_labels],
                                                               num_concepts=concepts.num_concepts),
                          thresholds=s.thresholds) for i in range(len(concepts))]
    hits = sum(int(p.intersection[0, red] > 0) for p in per_image)
    present = sum(int(p.concept_area[red] > 0) for p in per_image)
    assert (int(s.image_hits[0, red]), int(s.concept_images[red])) == (hits, present) and present > 0
    for u in layer.units:
        assert u["score"] == u["coverage"] and u["detector"] == (u["coverage"] > 0.04)
    # results without image counts (an older save) say so instead of a zero coverage
    old = fd.Scores(s.intersection, s.union, s.iou, s.unit_area, s.concept_area, s.thresholds, "netdissect", 40)
    with pytest.raises(ValueError, match="no image counts"):
        old.coverage
    state = fd.Tally(3, concepts.num_concepts, s.thresholds).state_dict()
    del state["image_hits"]
    with pytest.raises(ValueError, match="image_hits"):
        fd.Tally(3, concepts.num_concepts, s.thresholds).load_state_dict(state)
