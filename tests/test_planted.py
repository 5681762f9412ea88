"""Planted answers and sanity checks: synthetic units against their definition (and fd.score finding
them exactly), Neuron_Eval's tests separating the metrics that see both kinds of label error."""

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.analyses.sanity import corrupted


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fd.datasets.Broden(fd.datasets.builtin(tmp_path_factory.mktemp("planted") / "d", n_images=24))


def reference_mask(sample, concept):
    whole = concept in sample.image_labels
    return np.ones(sample.labels.shape[1:], bool) if whole else (sample.labels == concept).any(axis=0)


def test_synthetic_units_follow_their_formulas(data):
    a, b = 9, 4   # two concept ids of the built-in set
    formulas = [a, fd.Or(fd.Leaf(a), fd.Leaf(b)), fd.And(fd.Leaf(a), fd.Not(fd.Leaf(b))), data.concept_names[b]]
    acts = fd.synthetic_units(data, formulas)
    assert acts.shape == (len(data), 4) + data[0].labels.shape[1:]
    for i in range(len(data)):
        s = data[i]
        ma, mb = reference_mask(s, a), reference_mask(s, b)
        for k, want in enumerate([ma, ma | mb, ma & ~mb, mb]):
            assert np.array_equal(acts[i, k].numpy() == 1, want), (i, k)


def test_fd_score_finds_planted_concepts_exactly(data):
    concepts = [c for c in range(1, data.num_concepts) if fd.synthetic_units(data, [c]).sum() > 0][:5]
    acts = fd.synthetic_units(data, concepts)
    masks = fd.pack_masks(labels=torch.from_numpy(np.stack([data[i].labels for i in range(len(data))])),
                          image_labels=[data[i].image_labels for i in range(len(data))], num_concepts=data.num_concepts)
    s = fd.score(acts, masks, thresholds=torch.full((len(concepts),), 0.5))
    for k, c in enumerate(concepts):
        assert s.iou[k, c].item() == 1.0


def test_image_level_units_fire_on_whole_images(data):
    acts = fd.synthetic_units(data, [9], level="image")
    for i in range(len(data)):
        present = reference_mask(data[i], 9).any()
        assert bool((acts[i, 0] == 1).all()) == bool(present) and bool((acts[i, 0] == 0).all()) != bool(present)


def test_noise_is_seeded(data):
    a = fd.synthetic_units(data, [9, 4], noise=0.3, seed=1)
    assert torch.equal(a, fd.synthetic_units(data, [9, 4], noise=0.3, seed=1))
    assert not torch.equal(a, fd.synthetic_units(data, [9, 4], noise=0.3, seed=2))
    assert abs(float((a - fd.synthetic_units(data, [9, 4])).std()) - 0.3) < 0.02


@pytest.mark.parametrize("formulas, match", [([], "non-empty list"), (["no such concept"], "neither a concept name"),
                                              ([10 ** 6], "does not have")])
def test_synthetic_units_name_bad_formulas(data, formulas, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fd.synthetic_units(data, formulas)


def test_corruptions_change_what_they_say():
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(200, 3, generator=g) < 0.2
    missing, extra = corrupted(labels, 0.5, "missing", g), corrupted(labels, 0.5, "extra", g)
    pos = labels.sum(0)
    assert ((missing & ~labels).sum() == 0) and torch.equal(missing.sum(0), pos - (pos * 0.5).round().long())
    assert ((labels & ~extra).sum() == 0) and torch.equal(extra.sum(0), pos + (pos * 0.5).round().long())


@pytest.mark.parametrize("metric, passes", [("iou", True), ("f1", True), ("correlation", True), ("auprc", True),
                                            ("cosine", True), ("precision", False), ("recall", False)])
def test_sanity_checks_separate_the_metrics(metric, passes):
    result = fd.sanity_check(metric)
    assert result.passed is passes, str(result)
    if metric == "precision":
        assert result.extra_labels < 0.5 <= result.missing_labels  # blind to labels added at random
    if metric == "recall":
        assert result.missing_labels < 0.9 <= result.extra_labels  # blind to labels removed at random


def test_sanity_check_on_given_units():
    g = torch.Generator().manual_seed(3)
    labels = torch.rand(500, 4, generator=g) < 0.1
    acts = labels.double() + 0.3 * torch.randn(500, 4, generator=g, dtype=torch.float64)
    assert fd.sanity_check("iou", acts, labels).passed
    with pytest.raises(ValueError, match="both activations and labels"):
        fd.sanity_check("iou", acts)
