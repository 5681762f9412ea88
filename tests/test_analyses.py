"""Reading decisions through labeled units: explain_prediction, segment, ablate (and their page)."""

import numpy as np
import pytest
import torch
from PIL import Image

import fastdissect as fd
from fastdissect.cli import main as cli
from test_pipeline import PLAIN, ColorDetectors
from test_report import assert_renders

SETTINGS = dict(quantile=0.05, verbose=False, **PLAIN)


class PooledHead(torch.nn.Module):
    """ColorDetectors' maps, global average pooled, then a linear head of known weights (3 classes)."""

    def __init__(self):
        super().__init__()
        self.body = ColorDetectors()
        self.gap = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(3, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.5, 0.5], [-1.0, 0.25, 1.0]]))
            self.fc.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, x):
        return self.fc(self.gap(self.body(x)).flatten(1))


@pytest.fixture(scope="module")
def concepts(tmp_path_factory):
    return fd.datasets.Broden(fd.datasets.builtin(tmp_path_factory.mktemp("an") / "c", n_images=40, seed=1, max_photo_share=0.1))


@pytest.fixture(scope="module")
def dissected(concepts):
    model = PooledHead()
    return model, fd.dissect(model, ["body.pool"], concepts, **SETTINGS)


def images_of(concepts, n=3):
    return [concepts.image(i) for i in range(n)]


def model_input(images):
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def test_cam_contributions_are_the_heads_weights_times_mean_activations(concepts, dissected):
    model, d = dissected
    images = images_of(concepts)
    ex = fd.explain_prediction(model, "body.pool", images, d, attribution="cam", detectors_only=False, top_k=3)
    with torch.no_grad():
        maps = model.body(model_input(images))
        logits = model(model_input(images))
    for i, e in enumerate(ex):
        t = int(logits[i].argmax())
        assert e.target == e.predicted == t and e.score == float(logits[i, t])
        want = model.fc.weight.double()[t] * maps[i].double().mean(dim=(1, 2))  # by hand
        got = {u["unit"]: (u["weight"], u["contribution"]) for u in e.units}
        for k in range(3):
            assert got[k] == (float(model.fc.weight[t, k].detach()), float(want[k].detach()))
        assert sum(c for _, c in got.values()) + float(model.fc.bias[t].detach()) == pytest.approx(e.score, abs=1e-5)
        assert [u["contribution"] for u in e.units] == sorted((c for _, c in got.values()), reverse=True)
        assert e.heatmap.shape == images[i].shape[:2] and 0 <= e.heatmap.min() and e.heatmap.max() <= 1


@pytest.mark.parametrize("attribution", ["gradcam", "gradient x activation"])
def test_gradient_weights_equal_an_independent_autograd_computation(concepts, dissected, attribution):
    model, d = dissected
    images = images_of(concepts)
    ex = fd.explain_prediction(model, "body.pool", images, d, attribution=attribution, detectors_only=False, top_k=3,
                              target=2)
    x = model_input(images)
    maps = model.body(x)  # the layer's output, computed apart from fastdissect's hooks
    logits = model.fc(model.gap(maps).flatten(1))
    grads = torch.autograd.grad(logits[:, 2].sum(), maps)[0].double()
    for i, e in enumerate(ex):
        got = {u["unit"]: (u["weight"], u["contribution"]) for u in e.units}
        for k in range(3):
            a = float(grads[i, k].mean())
            c = a * float(maps[i, k].detach().double().mean()) if attribution == "gradcam" else \
                float((grads[i, k] * maps[i, k].detach().double()).sum())
            assert got[k][0] == a and got[k][1] == pytest.approx(c, rel=1e-12, abs=1e-15)
    # the gradient of a linear head through an average pool is its weight over the positions
    assert float(grads[0, 0].mean()) == pytest.approx(float(model.fc.weight[2, 0].detach()) / maps[0, 0].numel(), rel=1e-6)


def test_labeled_share_and_detector_ranking(concepts, dissected):
    model, d = dissected
    e = fd.explain_prediction(model, "body.pool", images_of(concepts, 1), d, attribution="cam")[0]
    assert all(u["detector"] for u in e.units) and 0 <= e.labeled_share <= 1
    labels = {u["unit"]: u["label"] for u in d["body.pool"].units}
    assert e.units and all(u["label"] == labels[u["unit"]] for u in e.units)  # the dissection's labels


def test_explain_bad_input_is_named(concepts, dissected):
    model, d = dissected
    image = concepts.image(0)
    cases = [
        (dict(images=image[:, :, :2]), ValueError, r"image 0: expected \(height, width, 3\)"),
        (dict(images=image[::2, ::2]), ValueError, "16x16 maps at body.pool, the dissection's are 32x32"),
        (dict(layer="body.conv"), KeyError, "holds no layer 'body.conv'"),
        (dict(target=7), ValueError, "target 7 is outside the model's 3 classes"),
        (dict(attribution="lime"), ValueError, "attribution must be one of"),
    ]
    for kwargs, error, needle in cases:
        args = {"images": image, "layer": "body.pool", **kwargs}
        with pytest.raises(error, match=needle):
            fd.explain_prediction(model, args.pop("layer"), args.pop("images"), d, **args)

    class NoGrad(PooledHead):
        def forward(self, x):
            with torch.no_grad():
                return super().forward(x)
    with pytest.raises(ValueError, match='needs gradients through layer .* use attribution="cam"'):
        fd.explain_prediction(NoGrad(), "body.pool", image, d)
    assert fd.explain_prediction(NoGrad(), "body.pool", image, d, attribution="cam")[0].units


def test_hooks_are_removed_even_when_the_model_raises(concepts, dissected):
    model, d = dissected
    model.body.interrupt_after = 0  # the next forward raises
    try:
        with pytest.raises(KeyboardInterrupt):
            fd.explain_prediction(model, "body.pool", concepts.image(0), d)
        with pytest.raises(KeyboardInterrupt):
            fd.segment(model, "body.pool", concepts.image(0), d)
        with pytest.raises(KeyboardInterrupt):
            fd.ablate(model, "body.pool", concepts, [0], verbose=False, **PLAIN)
    finally:
        model.body.interrupt_after = None
    assert all(not m._forward_hooks for m in model.modules())


# ---- segmentation

COLORS = {"red": (255, 0, 0), "blue": (0, 0, 255), "white": (255, 255, 255), "black": (0, 0, 0),
          "green": (0, 160, 0)}


def color_blocks(n=24, seed=0):
    """The color model's own data: 128 px images of four flat colored blocks of random brightness
    (flat blocks of one brightness would tie at each unit's threshold), labels at 64 x 64."""
    rng = np.random.default_rng(seed)
    names = list(COLORS)
    samples = []
    for _ in range(n):
        image = np.zeros((128, 128, 3), np.uint8)
        labels = np.zeros((64, 64), np.int64)
        for by in range(2):
            for bx in range(2):
                c = int(rng.integers(len(names)))
                ys, xs = slice(64 * by, 64 * by + 64), slice(64 * bx, 64 * bx + 64)
                image[ys, xs] = (np.array(COLORS[names[c]]) * rng.uniform(0.9, 1.0)).astype(np.uint8)
                labels[32 * by:32 * by + 32, 32 * bx:32 * bx + 32] = c + 1
        samples.append((image, labels))
    return fd.datasets.SegmentationDataset(samples, ["-"] + names, [""] + ["color"] * len(names))


def test_segmentation_labels_the_red_region_red_and_scores_itself():
    ds = color_blocks()
    model = ColorDetectors()
    d = fd.dissect(model, ["pool"], ds, **SETTINGS)
    assert [u["label"] for u in d["pool"].units] == ["red", "blue", "white"]
    scored = fd.segment(model, "pool", ds, d, verbose=False)
    assert scored.pixel_accuracy >= 0.9 and set(scored.concept_iou) == {"red", "blue", "white"}
    assert scored.mean_iou == pytest.approx(np.mean(list(scored.concept_iou.values())))
    image = np.zeros((128, 128, 3), np.uint8)
    image[:, :64] = COLORS["red"]
    image[:, 64:] = COLORS["green"]
    seg = fd.segment(model, "pool", image, d)
    red = ds.concept_names.index("red")
    left, right = seg.labels[0, :, :56], seg.labels[0, :, 72:]
    assert bool((left == red).all()) and bool((right == 0).all())
    overlay = seg.overlay(0, image)
    assert overlay.shape == image.shape and not np.array_equal(overlay[:, :56], image[:, :56])
    assert np.array_equal(overlay[:, 72:], image[:, 72:])
    # by the definition: the unit exceeding its threshold by the largest factor, where > 1
    with torch.no_grad(), fd.trace(model, ["pool"]) as acts:
        model(torch.from_numpy(image)[None].permute(0, 3, 1, 2).float() / 255)
    ratio = fd.kernels.torch_backend.upsample(acts["pool"][0], 128, 128) / d["pool"].scores.thresholds[:, None, None]
    ids = torch.tensor([ds.concept_names.index(n) for n in ("red", "blue", "white")])
    want = torch.where(ratio.max(0).values > 1, ids[ratio.argmax(0)], 0)
    assert torch.equal(seg.labels[0], want)


# ---- ablation

def test_ablating_the_unit_that_drives_a_class_removes_its_score(concepts):
    model = PooledHead()
    with torch.no_grad():  # class 0 reads unit 0 alone; unit 2 feeds classes 1 and 2 only
        model.fc.weight.copy_(torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.5, 0.5], [0.0, 0.25, 1.0]]))
        model.fc.bias.zero_()
    drive = fd.ablate(model, "body.pool", concepts, [0], verbose=False, **PLAIN)
    assert float(drive.baseline[0]) > 0.01 and float(drive.ablated[0]) == 0.0  # class 0's score is gone
    assert torch.equal(drive.ablated[1:], drive.baseline[1:])
    unrelated = fd.ablate(model, "body.pool", concepts, [2], verbose=False, **PLAIN)
    assert float(unrelated.ablated[0]) == float(unrelated.baseline[0])
    assert unrelated.rows()[0]["change"] < 0 and unrelated.rows()[0]["class"] in (1, 2)
    # against a hand computation over the data set
    x = model_input([concepts.image(i) for i in range(len(concepts))])
    with torch.no_grad():
        maps = model.body(x).double().mean(dim=(2, 3))
    assert float(drive.baseline[0]) == pytest.approx(float(2 * maps[:, 0].mean()), rel=1e-6)
    mean_mode = fd.ablate(model, "body.pool", concepts, [0], mode="mean", verbose=False, **PLAIN)
    assert float(mean_mode.ablated[0]) == pytest.approx(float(2 * maps[:, 0].mean()), rel=1e-5)  # the mean: no loss
    assert drive.agreement <= 1 and sum(r["images"] for r in drive.rows()) == len(concepts)
    with pytest.raises(ValueError, match="outside layer 'body.pool'"):
        fd.ablate(model, "body.pool", concepts, [5], verbose=False, **PLAIN)
    with pytest.raises(ValueError, match="mode"):
        fd.ablate(model, "body.pool", concepts, [0], mode="noise", verbose=False)


def test_concept_ablation_ablates_every_detector_of_the_concept(concepts, dissected):
    model, d = dissected
    a = fd.concept_ablation(model, "body.pool", None, d, "red", verbose=False)
    assert a.units == [u["unit"] for u in d["body.pool"].units if u["detector"] and u["label"] == "red"] == [0]
    assert a.rows()[0]["class"] == 0  # the class that reads the red unit loses most
    with pytest.raises(ValueError, match="no detector of 'zebra'"):
        fd.concept_ablation(model, "body.pool", None, d, "zebra", verbose=False)


# ---- the page and the command

def test_explain_command_writes_a_page_linked_from_the_report(concepts, dissected, tmp_path, capsys):
    model, d = dissected
    results = d.save(tmp_path / "results")
    fd.write_report(d, results / "report", verbose=False)
    model_file = tmp_path / "head.py"
    model_file.write_text("from test_analyses import PooledHead\n\ndef make():\n    return PooledHead()\n")
    photo = tmp_path / "photo.png"
    Image.fromarray(concepts.image(3)).save(photo)
    classes = tmp_path / "classes.txt"
    classes.write_text("reddish\nbluish\nwhitish\n")
    assert cli.main(["explain", "--results", str(results), "--model", f"{model_file}:make", "--image", str(photo),
                     "--image", str(photo), "--classes", str(classes), "--method", "cam"]) == 0
    printed = capsys.readouterr().out
    assert "image 0:" in printed and "labeled units carry" in printed
    page = results / "report" / "explain" / "index.html"
    html = page.read_text()
    assert html.count('<section class="explained"') == 2 and any(n in html for n in ("reddish", "bluish", "whitish"))
    index = (results / "report" / "index.html").read_text()
    assert 'href="explain/index.html"' in index and "Explained predictions (2 images)" in index
    assert cli.main(["explain", "--results", str(results), "--model", f"{model_file}:make", "--image",
                     str(tmp_path / "missing.png")]) == 1
    assert "missing.png: cannot read it" in capsys.readouterr().err
    assert_renders(page, tmp_path, "explain_index")
