"""Concept vectors (Net2Vec): a planted concept carried by two channels, the fit against a direct
full-batch fit, the pixel sample against its definition, and the figure."""

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.analyses import concept_vectors as cv
from fastdissect.datasets.sample import to_model_input

LEVEL = 0.02  # the planted concept covers the top 2% of r + g, dissected at the same level


def planted(n=150, size=16, seed=0):
    """Blocky random images; concept 1 = the pixels where the first two channels of the model's
    input (the layer below) sum to their top 2%; the model's layer is its input itself."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n, size // 4, size // 4, 3), dtype=np.uint8)
    images = blocks.repeat(4, axis=1).repeat(4, axis=2)
    x = to_model_input(torch.from_numpy(images))
    s = (x[:, 0] + x[:, 1]).double()
    cut = torch.quantile(s.flatten(), 1 - LEVEL)
    labels = (s > cut).long().numpy()
    samples = [(images[i], labels[i]) for i in range(n)]
    data = fd.datasets.SegmentationDataset(samples, ["-", "yellowish"], ["", "color"])
    return torch.nn.Sequential(torch.nn.Identity()), data


def test_a_concept_spread_over_two_channels_is_found_by_its_vector():
    model, data = planted()
    result = fd.concept_vectors(model, "0", data, pixels_per_image=256, steps=400, verbose=False,
                                quantile=LEVEL)
    direction = result.vectors[0] / result.vectors[0].norm()
    want = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64) / 2 ** 0.5
    assert float(direction @ want) > 0.98, direction
    assert float(result.vector_iou[0]) > 0.9 > float(result.best_unit_iou[0]) + 0.2, result.rows()
    assert int(result.best_unit[0]) in (0, 1)


def test_fit_reaches_the_full_batch_optimum():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 5, generator=g)
    truth = torch.tensor([[2.0, -1.0, 0.0, 0.5, 0.0], [0.0, 0.0, 3.0, 0.0, -2.0]])
    targets = torch.zeros(4000, 3, dtype=torch.bool)
    targets[:, 1:] = (x @ truth.t() + 0.5 * torch.randn(4000, 2, generator=g)) > 2.5
    samples = cv.Samples(x * 3 + 1, targets, torch.zeros(4000, dtype=torch.float64))
    w, b = cv.fit(samples, torch.tensor([1, 2]), steps=1500, lr=0.05, batch=4000, seed=0)

    def loss(w, b):  # the balanced cross-entropy, in the layer's units
        z = samples.features.double() @ w.t() + b
        t = targets[:, 1:].double()
        p = t.mean(0)
        weight = t * 0.5 / p + (1 - t) * 0.5 / (1 - p)
        return torch.nn.functional.binary_cross_entropy_with_logits(z, t, weight=weight)

    w_direct = w.clone().requires_grad_(True)  # an independent optimiser from our answer and from 0
    b_direct = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    w0 = torch.zeros_like(w, requires_grad=True)
    for params in ((w_direct, b_direct), (w0, b_direct)):
        opt = torch.optim.LBFGS(list(params), max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")
        opt.step(lambda: (opt.zero_grad(), (l := loss(*params)), l.backward(), l)[-1])
    with torch.no_grad():
        best = min(float(loss(w_direct, b_direct)), float(loss(w0, b_direct)))
    assert float(loss(w, b)) <= best * 1.01 + 1e-6


def test_pixel_features_are_the_bilinear_upsampling():
    act = torch.randn(4, 5, 7)
    up = torch.nn.functional.interpolate(act[None].double(), size=(20, 28), mode="bilinear", align_corners=False)[0]
    ys, xs = torch.tensor([0, 3, 19, 10]), torch.tensor([0, 27, 5, 13])
    got = cv._pixel_features(act, ys, xs, (20, 28))
    torch.testing.assert_close(got.double(), up[:, ys, xs].t(), rtol=1e-6, atol=1e-6)


def test_the_sample_is_capped_and_uniform():
    kept = cv.Samples(torch.empty(0, 0), torch.empty(0, 2, dtype=torch.bool), torch.empty(0, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    for start in range(0, 10_000, 1000):
        feats = torch.arange(start, start + 1000, dtype=torch.float32)[:, None]
        kept = cv._keep_smallest(kept, feats, torch.zeros(1000, 2, dtype=torch.bool),
                                 torch.rand(1000, generator=g, dtype=torch.float64), 500)
    assert kept.features.shape == (500, 1)
    assert 3500 < float(kept.features.mean()) < 6500  # late items as likely as early ones


def test_writes_its_table_and_figure(tmp_path):
    model, data = planted(n=40)
    result = fd.concept_vectors(model, "0", data, pixels_per_image=256, steps=50, verbose=False, quantile=LEVEL)
    out = result.write(tmp_path / "cv")
    assert (out / "concept_vectors.png").stat().st_size > 1000
    rows = (out / "concept_vectors.csv").read_text().splitlines()
    assert rows[0].startswith("concept,concept_id,vector_iou") and rows[1].startswith("yellowish,1,")


@pytest.mark.parametrize("bad, match", [(dict(concepts=["nothing"]), "no concept 'nothing'"),
                                        (dict(concepts=[]), "concepts is empty"),
                                        (dict(steps=0), "steps"), (dict(layer=1), "layer must be")])
def test_bad_arguments(bad, match):
    model, data = planted(n=8)
    args = {"layer": "0", **bad}
    with pytest.raises((ValueError, TypeError, LookupError), match=match):
        fd.concept_vectors(model, args.pop("layer"), data, verbose=False, **args)
