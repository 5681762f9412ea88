"""Bad input raises a clear error naming the argument, the expectation and the value."""

import numpy as np
import pytest
import torch

import fastdissect as fd


def acts(n=2, k=3, h=4, w=4):
    return torch.rand(n, k, h, w)


def masks(n=2, c=4, h=8, w=8):
    return torch.rand(n, c, h, w) > 0.5


@pytest.mark.parametrize("bad, match", [
    (torch.rand(2, 3, 4), r"activations must have shape \[N, K, h, w\], got \(2, 3, 4\)"),
    (torch.zeros(0, 3, 4, 4), r"activations must be non-empty"),
    (torch.ones(2, 3, 4, 4, dtype=torch.int64), r"activations must be float32.*got torch.int64"),
    ([1, 2, 3], r"activations must be a torch.Tensor or numpy.ndarray, got list"),
])
def test_bad_activations(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fd.score(bad, masks())


def test_image_count_mismatch():
    with pytest.raises(ValueError, match=r"activations have N=3, masks have N=2"):
        fd.score(acts(n=3), masks(n=2))


@pytest.mark.parametrize("value, kind", [(float("nan"), "NaN"), (float("inf"), "inf"), (-float("inf"), "inf")])
def test_non_finite_activations_name_units(value, kind):
    a = acts(k=5)
    a[1, 3, 2, 2] = value
    a[0, 1, 0, 0] = value
    with pytest.raises(ValueError, match=rf"contains {kind} in unit\(s\) 1, 3"):
        fd.score(a, masks())


def test_thresholds_wrong_length_and_non_finite():
    with pytest.raises(ValueError, match=r"thresholds must have shape \(3,\).*got \(2,\)"):
        fd.score(acts(), masks(), thresholds=torch.zeros(2))
    with pytest.raises(ValueError, match=r"thresholds must be finite.*unit\(s\) \[1\]"):
        fd.score(acts(), masks(), thresholds=torch.tensor([0.0, float("nan"), 0.0]))


def test_uint8_masks_must_be_binary():
    m = masks().to(torch.uint8)
    m[1, 2, 3, 3] = 7
    with pytest.raises(ValueError, match=r"uint8 must hold only 0 and 1, got 7 at image 1, concept 2"):
        fd.score(acts(), m)


def test_float_masks_rejected():
    with pytest.raises(TypeError, match=r"masks must be bool or uint8.*got torch.float32"):
        fd.score(acts(), masks().float())


def test_masks_wrong_rank():
    with pytest.raises(ValueError, match=r"masks must have shape \[N, C, H, W\], got \(2, 8, 8\)"):
        fd.score(acts(), masks()[:, 0])


def test_label_ids_out_of_range():
    labels = torch.zeros(2, 1, 4, 4, dtype=torch.int64)
    labels[1, 0, 2, 2] = 9
    with pytest.raises(ValueError, match=r"label id 9 in labels of image 1 is out of range.*\[0, 5\)"):
        fd.pack_masks(labels=labels, num_concepts=5)
    with pytest.raises(ValueError, match=r"label id -2 in image_labels of image 0"):
        fd.pack_masks(labels=labels.clamp(max=4), image_labels=[[-2], []], num_concepts=5)


def test_categories_required_and_checked():
    with pytest.raises(ValueError, match=r'union="lite" needs categories'):
        fd.score(acts(), masks(), union="lite")
    with pytest.raises(ValueError, match=r"categories must have shape \(4,\).*got \(3,\)"):
        fd.score(acts(), masks(), union="netdissect", categories=[0, 1, 2])
    with pytest.raises(ValueError, match=r"union must be one of"):
        fd.score(acts(), masks(), union="iou")


def test_unknown_and_unavailable_backends():
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'cuda9'"):
        fd.score(acts(), masks(), backend="cuda9")
    if torch.cuda.is_available():  # pragma: no cover - no GPU here
        with pytest.raises(ValueError, match=r'backend="cpu" needs CPU tensors'):
            fd.score(acts().cuda(), masks().cuda(), backend="cpu")


def test_tally_shape_checks():
    t = fd.Tally(3, 4, torch.zeros(3))
    with pytest.raises(ValueError, match=r"activations must have 3 units"):
        t.add(acts(k=5), masks())
    with pytest.raises(ValueError, match=r"masks have 5 concepts, expected 4"):
        t.add(acts(), fd.pack_masks(masks(c=5)))
    other = fd.Tally(3, 4, torch.ones(3))
    with pytest.raises(ValueError, match=r"different thresholds"):
        t.merge(other)


def test_quantile_level_checked():
    with pytest.raises(ValueError, match=r"quantile must be a float in \(0, 1\)"):
        fd.score(acts(), masks(), quantile=1.5)


def test_numpy_inputs_accepted():
    a = np.random.default_rng(0).random((2, 3, 4, 4)).astype(np.float32)
    m = np.random.default_rng(1).random((2, 4, 8, 8)) > 0.5
    assert fd.score(a, m).iou.shape == (3, 4)


def test_large_finite_values_whose_sum_overflows_are_accepted():
    big = torch.full((2, 3, 4, 4), 3e38)  # finite float32; their float32 sum is inf
    t = fd.thresholds(big, quantile=0.5)
    assert torch.isfinite(t).all()
    s = fd.score(big, torch.ones(2, 1, 8, 8, dtype=torch.bool), thresholds=torch.zeros(3))
    assert s.unit_area.tolist() == [128, 128, 128]


class _NaNOnSecondImage(torch.nn.Module):
    """A layer whose output is NaN on the second image of every batch (unit 1 only)."""

    def forward(self, x):
        x = x.clone()
        x[1:2, 1] = float("nan")
        return x


@pytest.mark.parametrize("run", [
    lambda model, data: fd.train_sae(model, "1", data, num_features=4, k=1, batch_size=4, verbose=False),
    lambda model, data: fd.dissect_images(model, ["1"], data, batch_size=4, verbose=False),
    lambda model, data: fd.concept_vectors(model, "1", data, batch_size=4, verbose=False),
], ids=["train_sae", "dissect_images", "concept_vectors"])
def test_analyses_name_the_layer_images_and_units_of_non_finite_activations(tmp_path, run):
    data = fd.datasets.Broden(fd.datasets.builtin(tmp_path, n_images=8, image_size=32, label_size=16))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), _NaNOnSecondImage())
    # the first bad batch stops the run; train_sae reads its images in a shuffled order
    with pytest.raises(ValueError, match=r"layer '1' gives NaN or inf activations on images \[\d\] \(units \[1\]\)"):
        run(model, data)


def test_finite_activations_whose_sum_overflows_are_not_called_non_finite():
    from fastdissect.pipeline.forward import check_finite

    huge = torch.full((2, 3, 4, 4), 3e38)                       # finite; the sum overflows to inf
    half = torch.full((2, 3, 4, 4), 6e4, dtype=torch.float16)   # finite; a float16 sum would overflow
    check_finite({"a": huge, "b": half}, torch.arange(2))
    huge[1, 2, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"layer 'a' gives NaN or inf activations on images \[1\] \(units \[2\]\)"):
        check_finite({"a": huge, "b": half}, torch.arange(2))
