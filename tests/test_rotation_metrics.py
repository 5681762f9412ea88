"""fd.random_rotation (the axis-alignment test) and the precision / recall / F1 of Scores."""

import numpy as np
import pytest
import torch

import fastdissect as fd
from test_pipeline import PLAIN, ColorDetectors


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_rotation_is_orthogonal_and_its_powers_compose(n):
    q = fd.random_rotation(n, seed=3).matrix
    assert torch.allclose(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.linalg.det(q) > 0
    half = fd.random_rotation(n, seed=3, power=0.5).matrix
    assert torch.allclose(half @ half, q, atol=1e-10, rtol=0)
    assert torch.allclose(half @ half.T, torch.eye(n, dtype=torch.float64), atol=1e-10, rtol=0)
    assert not torch.equal(fd.random_rotation(n, seed=4).matrix, q) or n == 1


def test_power_zero_is_the_identity_and_power_one_is_q():
    x = torch.rand(3, 6, 4, 5)
    r0 = fd.random_rotation(6, power=0)
    assert r0(x) is x
    r1 = fd.random_rotation(6, seed=1, power=1.0)
    assert torch.equal(r1.matrix, fd.analyses.rotation.haar_orthogonal(6, 1))
    want = np.einsum("kj,njhw->nkhw", r1.matrix.numpy(), x.double().numpy()).astype(np.float32)
    np.testing.assert_array_equal(r1(x).numpy(), want)
    assert r1(x.half()).dtype == torch.half and r1(torch.rand(3, 6)).shape == (3, 6)


def test_rotation_errors_and_identity():
    for kwargs, needle in [(dict(power=1.5), "power"), (dict(power=-0.1), "power"), (dict(seed=1.5), "seed")]:
        with pytest.raises(ValueError, match=needle):
            fd.random_rotation(4, **kwargs)
    with pytest.raises(ValueError, match="num_units"):
        fd.random_rotation(0)
    with pytest.raises(ValueError, match="4 units"):
        fd.random_rotation(4)(torch.rand(2, 5, 3, 3))
    assert fd.identity.transform_identity(fd.random_rotation(4, seed=2, power=0.5)) != \
        fd.identity.transform_identity(fd.random_rotation(4, seed=2, power=0.6))


def test_rotating_the_color_detectors_destroys_them(tmp_path):
    ds = fd.datasets.Broden(fd.datasets.builtin(tmp_path / "c", n_images=40, seed=1, max_photo_share=0.1))
    plain = fd.dissect(ColorDetectors(), ["pool"], ds, quantile=0.05, verbose=False, **PLAIN)["pool"]
    rotated = fd.dissect(ColorDetectors(), ["pool"], ds, quantile=0.05, verbose=False,
                         transform={"pool": fd.random_rotation(3, seed=0)}, **PLAIN)["pool"]
    assert plain.summary["interpretable"] == 3
    assert rotated.scores.iou.max(dim=1).values.sum() < plain.scores.iou.max(dim=1).values.sum()


def test_precision_recall_f1_are_the_counts_ratios():
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(5, 4, 3, 3, generator=g)
    acts[:, 3] = 0  # a silent unit
    masks = torch.rand(5, 6, 9, 9, generator=g) < 0.3
    masks[:, 5] = False  # an absent concept
    s = fd.score(acts, masks, thresholds=torch.tensor([0.5, 0.7, 0.9, 0.5]))
    i = s.intersection.double()
    m = s.unit_area.double()[:, None]
    c = s.concept_area.double()[None, :]
    want_p = torch.where(m > 0, i / m.clamp_min(1), torch.zeros_like(i))
    want_r = torch.where(c > 0, i / c.clamp_min(1), torch.zeros_like(i))
    assert torch.equal(s.precision, want_p) and torch.equal(s.recall, want_r)
    denom = m + c
    assert torch.equal(s.f1, torch.where(denom > 0, 2 * i / denom.clamp_min(1), torch.zeros_like(i)))
    assert (s.precision[3] == 0).all() and (s.recall[:, 5] == 0).all()
    assert torch.allclose(s.f1[s.f1 > 0], (2 * s.precision * s.recall / (s.precision + s.recall))[s.f1 > 0])


def test_derangement_has_no_fixed_point():
    from fastdissect.engine.controls import derangement

    for n in (2, 3, 10, 257):
        for seed in range(5):
            p = derangement(n, seed)
            assert sorted(p.tolist()) == list(range(n)) and bool((p != torch.arange(n)).all())
    assert torch.equal(derangement(50, 1), derangement(50, 1))
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1)


def test_take_gathers_images_in_any_order():
    masks = torch.rand(5, 3, 4, 4) > 0.5
    packed = fd.pack_masks(masks)
    order = torch.tensor([4, 0, 0, 2])
    assert torch.equal(packed.take(order).to_dense(), masks[order])


class NoiseUnits(torch.nn.Module):
    """Three units of smooth seeded noise, unrelated to the image: what chance alone labels."""

    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AvgPool2d(4)
        self.g = torch.Generator().manual_seed(0)

    def forward(self, x):
        noise = torch.rand(x.shape[0], 3, x.shape[2], x.shape[3], generator=self.g)
        return self.pool(torch.nn.functional.avg_pool2d(noise, 9, stride=1, padding=4))


def test_permuted_control_separates_detectors_from_chance(tmp_path):
    ds = fd.datasets.Broden(fd.datasets.builtin(tmp_path / "c", n_images=40, seed=1, max_photo_share=0.1))
    d = fd.dissect(ColorDetectors(), ["pool"], ds, quantile=0.05, verbose=False, controls=("permuted",), **PLAIN)
    layer = d["pool"]
    # the control is the plain tally of each image's activations against its deranged image's masks
    from fastdissect.engine.controls import derangement

    perm = derangement(len(ds), 0)
    masks = fd.pack_masks(labels=torch.from_numpy(np.stack([ds[i].labels for i in range(len(ds))])),
                          image_labels=[ds[i].image_labels for i in range(len(ds))], num_concepts=ds.num_concepts)
    images = torch.from_numpy(np.stack([ds[i].image for i in range(len(ds))]))
    model = ColorDetectors()
    with torch.no_grad(), fd.trace(model, ["pool"]) as acts:
        model(images.permute(0, 3, 1, 2).float() / 255)
    want = fd.score(acts["pool"], masks.take(perm), thresholds=layer.scores.thresholds, union="netdissect",
                    categories=torch.as_tensor(ds.primary_category))
    assert torch.equal(layer.control.intersection, want.intersection) and torch.equal(layer.control.iou, want.iou)
    for u in layer.units:  # the built detectors beat their control by a wide margin
        assert u["beyond_chance"] and u["iou"] > 1.5 * u["control_best_iou"]
    assert layer.summary["beyond_chance"] == 3
    # saved and loaded, in the CSV
    d.save(tmp_path / "out")
    assert torch.equal(fd.load(tmp_path / "out")["pool"].control.iou, layer.control.iou)
    d.to_csv(tmp_path / "csv")
    assert "control_best_iou" in (tmp_path / "csv" / "pool.csv").read_text().splitlines()[0]
    index = fd.write_report(d, tmp_path / "report", verbose=False)
    assert "beyond chance" in index.read_text() and "control IoU" in (index.parent / "layer_pool.html").read_text()
    # units of noise: their labels score no better than their control
    noise = fd.dissect(NoiseUnits(), ["pool"], ds, quantile=0.05, verbose=False, controls=("permuted",),
                       **PLAIN)["pool"]
    margin = lambda lr: min(u["iou"] / max(u["control_best_iou"], 1e-12) for u in lr.units)  # noqa: E731
    assert margin(layer) > 1.5 and max(u["iou"] / u["control_best_iou"] for u in noise.units) < 1.5
    with pytest.raises(ValueError, match="controls"):
        fd.dissect(ColorDetectors(), ["pool"], ds, controls=("shuffled",), verbose=False)


def _scores(iou_rows):
    iou = torch.tensor(iou_rows, dtype=torch.float64)
    k, c = iou.shape
    inter = (iou * 100).long()
    return fd.Scores(inter, torch.full((k, c), 100, dtype=torch.int64), iou, torch.full((k,), 50, dtype=torch.int64),
                     torch.full((c,), 50, dtype=torch.int64), torch.zeros(k, dtype=torch.float64), "global", 10)


def test_warning_when_chance_explains_the_labels():
    from fastdissect.pipeline.dissect import _warn_if_chance_explains

    plain = _scores([[0.0, 0.10, 0.02]] * 4)          # every unit passes 0.04 ...
    control = _scores([[0.0, 0.02, 0.30]] * 4)        # ... but chance scores higher still
    layer = fd.LayerResult("avgpool", plain, ["-", "a", "b"], ["object"], torch.zeros(3, dtype=torch.int64), 0.04,
                           control=control)
    assert layer.summary["interpretable"] == 4 and layer.summary["beyond_chance"] == 0
    assert layer.summary["chance_detectors"] == 4
    logged = []
    with pytest.warns(RuntimeWarning, match="only 0 beat the permuted control"):
        _warn_if_chance_explains(layer, logged.append)
    assert logged
    fine = fd.LayerResult("layer4", plain, ["-", "a", "b"], ["object"], torch.zeros(3, dtype=torch.int64), 0.04,
                          control=_scores([[0.0, 0.01, 0.01]] * 4))
    assert fine.summary["beyond_chance"] == 4
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_chance_explains(fine, logged.append)
