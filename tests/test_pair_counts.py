"""The pair_counts op (csrc/common/pair_counts.h) against a dense torch reference: |A & B & L| and
|A & B & U & L| for concept pairs, over the data set or the unit's images only, on every backend."""

import pytest
import torch

import fastdissect as fd
from fastdissect.core.formula_masks import concept_set
from fastdissect.engine.compositional.sources import ActivationSource
from fastdissect.kernels import dispatch

BACKENDS = ["cpu", "cuda_emu", "torch"]


def dense_reference(masks, unit, a, b, unit_only):
    """(B, C) counts from the dense (N, C, H, W) masks and one unit's (N, H, W) mask."""
    ab = (masks[:, a] & masks[:, b]).flatten(2).long()  # (N, B, P)
    if unit_only:
        ab = ab * unit.flatten(1).any(1).long()[:, None, None]
    lab = masks.flatten(2).long()
    t = torch.einsum("nbp,ncp->bc", ab, lab)
    tu = torch.einsum("nbp,ncp->bc", ab * unit.flatten(1).long()[:, None, :], lab)
    return t, tu


def unit_rows_of(units, cm, j):
    """The unit set's words and, per image, the row of unit j's mask (-1: off)."""
    unit_set, _ = ActivationSource(units, cm, None, 0.005, "cpu").unit_masks(list(range(units.shape[1])))
    rows = torch.full((cm.num_images,), -1, dtype=torch.int64)
    lo, hi = int(unit_set.offsets[j]), int(unit_set.offsets[j + 1])
    rows[unit_set.images[lo:hi]] = unit_set.rows[lo:hi]
    return rows, unit_set.words


def check(masks, units, a, b):
    cm = fd.pack_masks(masks)
    leaves = concept_set(cm)
    for j in range(units.shape[1]):
        rows, words = unit_rows_of(units, cm, j)
        for unit_only in (False, True):
            want = dense_reference(masks, units[:, j], a, b, unit_only)
            for backend in BACKENDS:
                got = dispatch.pair_counts(backend, leaves, a, b, rows, words, cm, unit_only=unit_only)
                assert torch.equal(got[0], want[0]), (backend, j, unit_only)
                assert torch.equal(got[1], want[1]), (backend, j, unit_only)


@pytest.mark.parametrize("seed", range(4))
def test_random_pairs_against_dense(seed):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = 9, 8, 7, 11
    masks = torch.rand(n, c, h, w, generator=g) < 0.3
    masks[:, 1] = False
    masks[::2, 1] = True      # image-level labels: whole-image rows
    masks[:, c - 1] = False   # a concept absent everywhere
    masks[3] = False          # an image with no labels at all
    units = torch.rand(n, 3, h, w, generator=g) < 0.35
    units[:, 2] = False
    units[1, 2] = True        # a unit firing on one image only
    a = torch.randint(0, c, (20,), generator=g)
    b = torch.randint(0, c, (20,), generator=g)
    a[:3], b[:3] = torch.tensor([2, 1, 0]), torch.tensor([2, 1, c - 1])  # a == b, whole with whole, empty leaf
    check(masks, units, a, b)


def test_one_image_odd_width_and_disjoint_pairs():
    masks = torch.zeros(1, 4, 1, 67, dtype=torch.bool)  # 67 pixels: a partial second word
    masks[0, 0, 0, :40] = True
    masks[0, 1, 0, 30:] = True
    masks[0, 2] = True
    masks[0, 3, 0, 60:] = True  # disjoint from concept 0
    units = torch.zeros(1, 2, 1, 67, dtype=torch.bool)
    units[0, 0, 0, 35:66] = True
    units[0, 1] = True
    check(masks, units, torch.tensor([0, 0, 1, 2, 3, 2]), torch.tensor([1, 3, 2, 2, 0, 0]))


def test_no_pairs_and_bad_shapes():
    masks = torch.rand(2, 3, 4, 4) < 0.5
    cm = fd.pack_masks(masks)
    leaves = concept_set(cm)
    rows, words = unit_rows_of(torch.rand(2, 1, 4, 4) < 0.5, cm, 0)
    none = torch.zeros(0, dtype=torch.int64)
    for backend in BACKENDS:
        t, tu = dispatch.pair_counts(backend, leaves, none, none, rows, words, cm)
        assert t.shape == tu.shape == (0, 3)
    with pytest.raises(ValueError, match="unit_rows"):
        dispatch.pair_counts("cpu", leaves, torch.tensor([0]), torch.tensor([1]), rows[:1], words, cm)
    with pytest.raises(ValueError, match="leaf"):
        dispatch.pair_counts("cpu", leaves, torch.tensor([0]), torch.tensor([3]), rows, words, cm)
