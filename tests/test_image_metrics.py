"""Image-level metrics against independent references: AUROC by counting pairs, the Mann-Whitney
p-value against scipy, soft-WPMI / WPMI / cos^3 against a per-unit transcription of CLIP-Dissect's
definitions."""

import math

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.engine import wpmi as wpmi_module

scipy_stats = pytest.importorskip("scipy.stats")


def pairs_auroc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y][:, None], s[~y][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


@pytest.mark.parametrize("case", ["ties", "continuous", "all_equal", "one_positive", "half"])
def test_auroc_counts_pairs(case):
    rng = np.random.default_rng(0)
    n = 37
    s = {"ties": rng.integers(0, 4, (n, 3)).astype(np.float32), "continuous": rng.normal(size=(n, 3)),
         "all_equal": np.zeros((n, 3)), "one_positive": rng.normal(size=(n, 3)),
         "half": rng.normal(size=(n, 3)).astype(np.float16)}[case]
    y = rng.random((n, 5)) < 0.4
    if case == "one_positive":
        y[:] = False
        y[3] = True
    got = fd.auroc(torch.from_numpy(s), torch.from_numpy(y))
    for k in range(3):
        for c in range(5):
            assert got[k, c].item() == pytest.approx(pairs_auroc(s[:, k].astype(np.float64), y[:, c]), abs=1e-15)


def test_auroc_is_nan_without_positives_or_negatives_and_accepts_strided_input():
    s = torch.randn(10, 4).t().contiguous().t()  # non-contiguous view
    y = torch.zeros(10, 2, dtype=torch.bool)
    y[:, 1] = True
    assert torch.isnan(fd.auroc(s, y)).all()
    assert not s.is_contiguous()


def test_mann_whitney_matches_scipy():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 6, (50, 4)).astype(np.float64)
    y = rng.random((50, 3)) < 0.3
    got = fd.mann_whitney_p(torch.from_numpy(s), torch.from_numpy(y))
    for k in range(4):
        for c in range(3):
            want = scipy_stats.mannwhitneyu(s[y[:, c], k], s[~y[:, c], k], alternative="greater",
                                            method="asymptotic", use_continuity=False).pvalue
            assert got[k, c].item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("scores, labels, match", [
    (torch.zeros(3), torch.zeros(3, 1, dtype=torch.bool), r"\(N images, K units\)"),
    (torch.zeros(3, 2), torch.zeros(3, 1), "bool tensor"),
    (torch.zeros(3, 2), torch.zeros(4, 1, dtype=torch.bool), "3 images but labels has 4"),
    (torch.tensor([[0.0], [float("nan")]]), torch.zeros(2, 1, dtype=torch.bool), "NaN"),
])
def test_auroc_names_bad_input(scores, labels, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fd.auroc(scores, labels)


def reference_soft_wpmi(sim, act, top_k, a, lam, p_start, p_end, soft=True):
    """CLIP-Dissect's soft-WPMI written out unit by unit, word by word, in float64 numpy."""
    sim, act = sim.double().numpy(), act.double().numpy()
    e = np.exp(a * sim - (a * sim).max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    n_units, n_words = act.shape[1], sim.shape[1]
    s = np.zeros((n_units, n_words))
    for k in range(n_units):
        top = sorted(range(act.shape[0]), key=lambda i: (-act[i, k], i))[:top_k]
        for c in range(n_words):
            for i, image in enumerate(top):
                if soft:
                    p = p_start - i / top_k * (p_start - p_end)
                    s[k, c] += math.log(1 + p * (prob[image, c] - 1) + 1e-7)
                else:
                    s[k, c] += math.log(prob[image, c] + 1e-7)
    log_mean = np.log(np.exp(s - s.max(axis=0)).mean(axis=0)) + s.max(axis=0)
    return s - lam * log_mean


@pytest.mark.parametrize("chunk", [1 << 28, 1])  # one block, and one unit at a time
def test_soft_wpmi_and_wpmi_match_the_definition(chunk, monkeypatch):
    monkeypatch.setattr(wpmi_module, "CHUNK_BYTES", chunk)
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(30, 7, generator=g) * 0.3
    act = torch.randint(0, 5, (30, 4), generator=g).float()  # ties among the top images
    got = fd.soft_wpmi(sim, act, top_k=6, a=10, lam=1)
    np.testing.assert_allclose(got.numpy(), reference_soft_wpmi(sim, act, 6, 10, 1, 0.998, 0.97), rtol=1e-12, atol=1e-12)
    got = fd.wpmi(sim, act, top_k=5, a=2, lam=0.6)
    np.testing.assert_allclose(got.numpy(), reference_soft_wpmi(sim, act, 5, 2, 0.6, 0, 0, soft=False),
                               rtol=1e-12, atol=1e-12)


def test_cos_cubed_matches_the_definition():
    g = torch.Generator().manual_seed(2)
    sim, act = torch.randn(20, 3, generator=g), torch.randn(20, 5, generator=g)
    x = act.double().numpy()
    y = sim.double().numpy()
    xc, yc = (x - x.mean(0)) ** 3, (y - y.mean(0)) ** 3
    want = (xc / np.linalg.norm(xc, axis=0)).T @ (yc / np.linalg.norm(yc, axis=0))
    np.testing.assert_allclose(fd.cos_cubed(sim, act).numpy(), want, rtol=1e-12)


def test_soft_wpmi_names_bad_input():
    with pytest.raises(ValueError, match="top_k"):
        fd.soft_wpmi(torch.zeros(3, 2), torch.zeros(3, 1), top_k=4)
    with pytest.raises(ValueError, match="2 images but activations has 3"):
        fd.soft_wpmi(torch.zeros(2, 2), torch.zeros(3, 1), top_k=1)
