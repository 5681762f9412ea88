"""Labels from image-level tags: metrics against their definitions, tag formulas against brute force,
a planted red detector labelled "red" on the built-in set, the tag data sets' errors, files."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

import fastdissect as fd
from fastdissect.datasets.sample import IMAGENET_MEAN, IMAGENET_STD
from fastdissect.engine import image_metrics as im
from fastdissect.engine.tag_formulas import search_unit
from fastdissect.files.tensorfile import as_stored


def average_precision(s: np.ndarray, y: np.ndarray) -> float:
    """AP by its definition: thresholds at each distinct score, highest first."""
    total, prev_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp = float((pred & y).sum())
        recall = tp / y.sum()
        total += (recall - prev_recall) * tp / pred.sum()
        prev_recall = recall
    return total


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, (60, 4)).astype(np.float64)   # ties
    y = rng.random((60, 6)) < 0.3
    return s, y


def test_auprc_is_average_precision(table):
    s, y = table
    got = im.auprc(torch.from_numpy(s), torch.from_numpy(y))
    for k, c in itertools.product(range(4), range(6)):
        assert got[k, c].item() == pytest.approx(average_precision(s[:, k], y[:, c]), abs=1e-12)


def test_correlation_and_f1_follow_their_definitions(table):
    s, y = table
    r = im.correlation(torch.from_numpy(s), torch.from_numpy(y))
    f = im.f1(torch.from_numpy(s), torch.from_numpy(y), quantile=0.2)
    for k, c in itertools.product(range(4), range(6)):
        assert r[k, c].item() == pytest.approx(np.corrcoef(s[:, k], y[:, c])[0, 1], abs=1e-12)
        fire = s[:, k] > np.quantile(s[:, k], 0.8)
        tp = (fire & y[:, c]).sum()
        assert f[k, c].item() == pytest.approx(2 * tp / (fire.sum() + y[:, c].sum()), abs=1e-12)


def evaluate(formula, tags: np.ndarray) -> np.ndarray:
    text = str(formula)
    for op, py in (("AND", "&"), ("OR", "|"), ("NOT", "~")):
        text = text.replace(op, py)
    import re
    return eval(re.sub(r"\d+", lambda m: f"tags[:, {m.group()}]", text))


@pytest.mark.parametrize("metric", ["auroc", "auprc", "correlation", "f1"])
def test_length_two_formulas_match_brute_force(metric):
    rng = np.random.default_rng(1)
    tags = rng.random((50, 5)) < 0.4
    score = torch.from_numpy(rng.normal(size=50) + 2 * (tags[:, 1] & ~tags[:, 3]))
    t = torch.from_numpy(tags)
    formula, value = search_unit(score, t, metric, 2, beam_size=5, quantile=0.1)
    best = -np.inf
    for a, b in itertools.permutations(range(5), 2):
        for y in (tags[:, a] & tags[:, b], tags[:, a] | tags[:, b], tags[:, a] & ~tags[:, b]):
            v = im.metric_table(metric, score[:, None], torch.from_numpy(y[:, None]), quantile=0.1)[0, 0].item()
            best = max(best, v if v == v else -np.inf)
    for c in range(5):
        best = max(best, im.metric_table(metric, score[:, None], t[:, c:c + 1], quantile=0.1)[0, 0].item())
    assert value == pytest.approx(best, abs=1e-12)
    got = im.metric_table(metric, score[:, None], torch.from_numpy(evaluate(formula, tags)[:, None]), quantile=0.1)
    assert got[0, 0].item() == pytest.approx(value, abs=1e-12)


def red_detector():
    """A 1x1 convolution firing where a pixel is redder than its green and blue: p_R - (p_G + p_B)/2 - 0.3."""
    conv = torch.nn.Conv2d(3, 2, 1)
    m, s = IMAGENET_MEAN, IMAGENET_STD
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 0, 0] = torch.tensor([s[0], -0.5 * s[1], -0.5 * s[2]])
        conv.bias[:] = torch.tensor([m[0] - 0.5 * (m[1] + m[2]) - 0.3, 0.0])
        conv.weight[1, :, 0, 0] = torch.tensor([-s[0], s[1], -s[2]]) / 2    # and a green-ish one
    return torch.nn.Sequential(conv, torch.nn.ReLU())


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    return fd.datasets.Broden(fd.datasets.builtin(tmp_path_factory.mktemp("tags") / "d", n_images=48))


def test_a_red_detector_is_labelled_red_in_one_forward_pass(builtin, tmp_path):
    model = red_detector()
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    d = fd.dissect_images(model, ["1"], builtin, formula_length=2, batch_size=16, verbose=False)
    assert sum(calls) == len(builtin)
    unit = d["1"].units[0]
    assert unit["label"] == "red" and unit["auroc"] > 0.8 and unit["p_value"] < 1e-3, unit
    assert "red" in unit["formula"]
    path = d.save(tmp_path / "images.safetensors")
    back = fd.ImageDissection.load(path)
    assert back["1"].units == d["1"].units
    assert back.identity == as_stored(d.identity)
    assert d.to_csv(tmp_path / "csv")[0].read_text().startswith("unit,label,auroc,p_value,formula")


class SamplesOnly:
    """The data set seen through __getitem__ alone (tags_of's path for data sets without concept_ids_of)."""

    def __init__(self, ds):
        self.ds, self.num_concepts, self.concept_names = ds, ds.num_concepts, ds.concept_names

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


def test_tags_of_a_concept_data_set(builtin, tmp_path):
    tags = fd.datasets.tags_of(builtin, verbose=False)
    for i in range(len(builtin)):
        s = builtin[i]
        present = set(np.unique(s.labels).tolist()) | set(s.image_labels)
        present.discard(0)
        assert set(torch.nonzero(tags.tags[i]).flatten().tolist()) == present, i
    packed = fd.datasets.open_packed(fd.datasets.pack(builtin, tmp_path / "packed", verbose=False))
    assert torch.equal(fd.datasets.tags_of(packed, verbose=False).tags, tags.tags)
    assert torch.equal(fd.datasets.tags_of(SamplesOnly(builtin), verbose=False).tags, tags.tags)


def write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(np.full((6, 6, 3), 40, np.uint8)).save(folder / n)


def test_image_folder(tmp_path):
    write_images(tmp_path / "cat", ["a.png", "b.png"])
    write_images(tmp_path / "dog", ["c.png"])
    t = fd.datasets.from_image_folder(tmp_path)
    assert t.tag_names == ["cat", "dog"] and t.tags.int().tolist() == [[1, 0], [1, 0], [0, 1]]
    assert t.image(2).shape == (6, 6, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(fd.datasets.DatasetError, match="class 'empty' holds no image files"):
        fd.datasets.from_image_folder(tmp_path)
    with pytest.raises(fd.datasets.DatasetError, match="no class sub-directories"):
        fd.datasets.from_image_folder(tmp_path / "cat")


@pytest.mark.parametrize("text, match", [
    ("file,labels\na.png,x\n", "expected the header 'image,tags'"),
    ("image,tags\na.png,x\na.png,y\n", "line 3: image 'a.png' is listed twice .first on line 2"),
    ("image,tags\nnone.png,x\n", "line 2: image file .* not found"),
    ("image,tags\n../a.png,x\n", "line 2: '../a.png' is outside"),
    ("image,tags\na.png,x;;y\n", "line 2: an empty tag"),
    ("image,tags\na.png,x,y\n", "line 2: expected 2 cells"),
    ("image,tags\n", "no images listed"),
])
def test_tags_csv_refuses_bad_rows(tmp_path, text, match):
    write_images(tmp_path / "images", ["a.png"])
    (tmp_path / "tags.csv").write_text(text)
    with pytest.raises(fd.datasets.DatasetError, match=match):
        fd.datasets.from_tags_csv(tmp_path / "tags.csv", tmp_path / "images")


def test_tags_csv(tmp_path):
    write_images(tmp_path / "images", ["a.png", "b.png"])
    (tmp_path / "tags.csv").write_text("image,tags\na.png,dog;grass\nb.png,\n")
    t = fd.datasets.from_tags_csv(tmp_path / "tags.csv", tmp_path / "images")
    assert t.tag_names == ["dog", "grass"] and t.tags.int().tolist() == [[1, 1], [0, 0]]
    with pytest.raises(fd.datasets.DatasetError, match="tag 'grass' is not in tag_names"):
        fd.datasets.from_tags_csv(tmp_path / "tags.csv", tmp_path / "images", tag_names=["dog"])


@pytest.mark.parametrize("bad, match", [(dict(reduce="median"), "reduce"), (dict(metric="accuracy"), "metric"),
                                        (dict(formula_length=0), "formula_length"), (dict(quantile=1.0), "quantile")])
def test_dissect_images_names_bad_arguments(bad, match):
    t = fd.datasets.ImageTags([np.zeros((8, 8, 3), np.uint8)] * 2, [["a"], []])
    with pytest.raises((ValueError, TypeError), match=match):
        fd.dissect_images(red_detector(), ["1"], t, verbose=False, **bad)


def left_deep_formulas(num_tags: int, length: int):
    """Every formula of compexp's space by brute force: t, then (f op t) with t not in f."""
    level = [fd.Leaf(t) for t in range(num_tags)]
    yield from level
    for _ in range(length - 1):
        level = [op(f, fd.Leaf(t)) for f in level for t in range(num_tags) if t not in f.concepts()
                 for op in (fd.And, fd.Or, lambda a, b: fd.And(a, fd.Not(b)))]
        yield from level


@pytest.mark.parametrize("metric", ["auroc", "f1", "correlation"])
def test_optimal_tag_formulas_are_the_best_of_every_formula(metric):
    from fastdissect.engine.tag_formulas import formula_count, optimal_unit

    rng = np.random.default_rng(4)
    tags = rng.random((40, 5)) < 0.45
    score = torch.from_numpy(rng.normal(size=40) + 2 * ((tags[:, 0] | tags[:, 2]) & ~tags[:, 4]))
    t = torch.from_numpy(tags)
    formula, value = optimal_unit(score, t, metric, 3, quantile=0.1)
    every = list(left_deep_formulas(5, 3))
    assert len(every) == formula_count(5, 3)
    values = im.metric_table(metric, score[:, None], torch.from_numpy(np.stack([evaluate(f, tags) for f in every], 1)),
                             quantile=0.1)[0]
    assert value == pytest.approx(float(torch.nan_to_num(values, nan=-np.inf).max()), abs=1e-12)
    got = im.metric_table(metric, score[:, None], torch.from_numpy(evaluate(formula, tags)[:, None]), quantile=0.1)
    assert got[0, 0].item() == pytest.approx(value, abs=1e-12)
    _, beam = search_unit(score, t, metric, 3, beam_size=2, quantile=0.1)
    assert value >= beam - 1e-12  # the beam searches the same space


def test_optimal_search_refuses_a_space_past_its_budget_before_the_forward_pass(builtin):
    calls = []
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1))
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match=r"search='optimal' would score .* formulas per unit"):
        fd.dissect_images(model, ["0"], builtin, formula_length=6, search="optimal", verbose=False)
    assert not calls
