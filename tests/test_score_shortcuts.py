"""The CPU score kernel's shortcuts against its brute evaluation (every pixel by the definition),
over many seeds and geometries, with every branch of the proof (csrc/common/upsample.h) taken."""

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.core import codes
from fastdissect.kernels import dispatch

pytestmark = pytest.mark.skipif(not dispatch.has_extension(), reason="needs the compiled extension")

GEOMETRIES = [(7, 7, 112, 112), (1, 1, 5, 3), (2, 3, 17, 29), (5, 4, 5, 4), (3, 8, 64, 24), (13, 13, 56, 56),
              (4, 4, 3, 2), (6, 1, 33, 7)]


def _maps(rng, n, k, h, w):
    """Smooth ReLU maps, flat plateaus (ties at T), single spikes and all-zero maps."""
    kind = rng.integers(0, 4)
    if kind == 0:
        a = np.maximum(rng.standard_normal((n, k, h, w)), 0)
    elif kind == 1:
        a = np.round(rng.standard_normal((n, k, h, w)) * 2) / 2  # few distinct values: ties
    elif kind == 2:
        a = np.zeros((n, k, h, w))
        a[rng.random((n, k, h, w)) < 0.1] = rng.random() * 3
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        a = np.sin(yy / max(h, 1) * 3 + rng.random((n, k, 1, 1)) * 6) * np.cos(xx / max(w, 1) * 2)
    a[:, 0] = 0.0  # an all-zero unit
    return torch.from_numpy(a)


def _tally(act, masks, thresholds, exhaustive, counts=None):
    k, c = act.shape[1], masks.num_concepts
    inter = torch.zeros(k, c, dtype=torch.int64)
    area = torch.zeros(k, dtype=torch.int64)
    cats = torch.arange(c, dtype=torch.int64) % 2
    unit_cat = torch.zeros(k, 2, dtype=torch.int64)
    dispatch.tally_batch("cpu", act, masks, thresholds, "lite", cats, 2, inter, area, unit_cat,
                          exhaustive=exhaustive, branch_counts=counts)
    return inter, area, unit_cat


def test_shortcuts_equal_the_brute_evaluation_and_every_branch_is_taken():
    counts = torch.zeros(len(codes.SCORE_BRANCHES), dtype=torch.int64)
    brute_counts = torch.zeros_like(counts)
    rng = np.random.default_rng(0)
    for seed in range(48):
        h, w, H, W = GEOMETRIES[seed % len(GEOMETRIES)]
        act = _maps(rng, 3, 5, h, w)
        if seed % 3 == 1:
            act = act.float()
        if seed % 5 == 2:
            act = act.transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous maps
        thresholds = torch.from_numpy(np.r_[0.0, rng.uniform(-0.5, 1.5, 4)])
        if seed % 4 == 0:  # thresholds equal to source values: samples exactly at T
            thresholds[1:] = act[0, 1:].flatten(1)[:, 0].double()
        masks = fd.pack_masks(torch.from_numpy(rng.random((3, 4, H, W)) < 0.3))
        fast = _tally(act, masks, thresholds, False, counts)
        brute = _tally(act, masks, thresholds, True, brute_counts)
        for a, b in zip(fast, brute):
            assert torch.equal(a, b), f"seed {seed}, geometry {(h, w, H, W)}"
    taken = dict(zip(codes.SCORE_BRANCHES, counts.tolist()))
    assert all(n > 0 for name, n in taken.items() if name != "exhaustive_map"), taken
    assert taken["exhaustive_map"] == 0 and int(brute_counts[codes.SCORE_BRANCHES.index("exhaustive_map")]) > 0


def test_brute_evaluation_matches_the_torch_reference():
    rng = np.random.default_rng(1)
    act = _maps(rng, 2, 4, 6, 5)
    masks = fd.pack_masks(torch.from_numpy(rng.random((2, 3, 19, 23)) < 0.4))
    thresholds = torch.tensor([0.0, 0.2, 0.5, 1.0], dtype=torch.float64)
    inter, area, _ = _tally(act, masks, thresholds, True)
    ref = fd.score(act, masks, thresholds=thresholds, backend="torch")
    assert torch.equal(inter, ref.intersection) and torch.equal(area, ref.unit_area)


def test_testing_switches_are_refused_where_they_do_not_exist():
    act = torch.rand(1, 1, 2, 2)
    masks = fd.pack_masks(torch.ones(1, 1, 4, 4, dtype=torch.bool))
    z = torch.zeros(1, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="torch backend"):
        dispatch.tally_batch("torch", act, masks, torch.tensor([0.5], dtype=torch.float64), "global", None, 0,
                              z, torch.zeros(1, dtype=torch.int64), None, exhaustive=True)
    with pytest.raises(ValueError, match="branch_counts"):
        dispatch.tally_batch("cpu", act, masks, torch.tensor([0.5], dtype=torch.float64), "global", None, 0,
                              z, torch.zeros(1, dtype=torch.int64), None, branch_counts=torch.zeros(3))
