"""fd.pixel_correlation against numpy: every map upsampled by the reference's bilinear taps, then
Pearson's r over every pixel of the data set (np.corrcoef), on random and adversarial inputs."""

import numpy as np
import pytest
import torch

import fastdissect as fd
import reference
from fastdissect.engine.pixel_correlation import PixelCorrelation
from fastdissect.files import tensorfile


def numpy_correlation(acts, dense) -> np.ndarray:
    """(K, C) r from the upsampled maps; NaN where either side is constant."""
    n, k, _, _ = acts.shape
    _, c, H, W = dense.shape
    up = np.stack([[reference.upsample(acts[i, j], H, W) for j in range(k)] for i in range(n)])
    u = up.transpose(1, 0, 2, 3).reshape(k, -1)
    m = dense.transpose(1, 0, 2, 3).reshape(c, -1).astype(np.float64)
    out = np.full((k, c), np.nan)
    for a in range(k):
        for b in range(c):
            if u[a].std() > 0 and m[b].std() > 0:
                out[a, b] = np.corrcoef(u[a], m[b])[0, 1]
    return out


def case(rng, n, k, h, w, c, H, W):
    acts = rng.standard_normal((n, k, h, w)).astype(np.float32)
    labels = rng.integers(0, c, size=(n, H, W))
    dense = np.stack([labels == j for j in range(c)], axis=1)
    return acts, dense


@pytest.mark.parametrize("n,k,h,w,c,H,W", [(5, 4, 4, 4, 6, 8, 8), (1, 3, 3, 5, 4, 7, 11), (3, 2, 7, 7, 5, 112, 112),
                                           (4, 3, 1, 1, 3, 6, 6), (2, 2, 9, 6, 3, 9, 6)])
def test_equals_numpy_on_upsampled_maps(rng, n, k, h, w, c, H, W):
    acts, dense = case(rng, n, k, h, w, c, H, W)
    got = fd.pixel_correlation(torch.from_numpy(acts), torch.from_numpy(dense)).numpy()
    np.testing.assert_allclose(got, numpy_correlation(acts, dense), rtol=1e-9, atol=1e-12, equal_nan=True)


def test_constant_units_and_absent_or_everywhere_concepts_have_no_correlation(rng):
    acts, dense = case(rng, 4, 3, 4, 4, 4, 8, 8)
    acts[:, 1] = 0.0                 # an all-zero ReLU map
    dense[:, 2] = False              # a concept never present
    dense[:, 3] = True               # a concept everywhere (an image-level label of every image)
    got = fd.pixel_correlation(torch.from_numpy(acts), torch.from_numpy(dense))
    assert got[1].isnan().all() and got[:, 2].isnan().all() and got[:, 3].isnan().all()
    assert not got[[0, 2]][:, [0, 1]].isnan().any()


def test_ties_half_precision_non_contiguous_and_image_level_labels(rng):
    acts, dense = case(rng, 3, 4, 4, 4, 5, 8, 8)
    acts = np.round(acts)                                   # ties
    half = torch.from_numpy(acts).half().transpose(2, 3)    # non-contiguous float16
    want = numpy_correlation(half.float().numpy(), dense.transpose(0, 1, 3, 2))
    got = fd.pixel_correlation(half, torch.from_numpy(dense.transpose(0, 1, 3, 2).copy()))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12, equal_nan=True)
    labels = torch.from_numpy(rng.integers(0, 3, size=(3, 1, 8, 8)))
    packed = fd.pack_masks(labels=labels, image_labels=[[3], [], [3, 4]], num_concepts=5)  # whole-image rows
    want = numpy_correlation(acts, packed.to_dense().numpy())
    np.testing.assert_allclose(fd.pixel_correlation(torch.from_numpy(acts), packed).numpy(), want, rtol=1e-9,
                               atol=1e-12, equal_nan=True)


def test_streaming_save_restore_and_merge_equal_one_batch(rng):
    acts, dense = case(rng, 9, 3, 4, 4, 4, 8, 8)
    a, m = torch.from_numpy(acts), torch.from_numpy(dense)
    whole = PixelCorrelation(3, 4)
    whole.add(a, m)
    first, second = PixelCorrelation(3, 4), PixelCorrelation(3, 4)
    for lo in range(0, 4, 2):
        first.add(a[lo:lo + 2], m[lo:lo + 2])
    second.add(a[4:], m[4:])
    state = tensorfile.loads(tensorfile.dumps({"s": first.state_dict()}, kind="checkpoint"), kind="checkpoint",
                             where="test")["s"]
    resumed = PixelCorrelation.from_state_dict(state).merge(second)
    torch.testing.assert_close(resumed.correlation(), whole.correlation(), rtol=1e-12, atol=1e-14, equal_nan=True)


@pytest.mark.parametrize("bad, match", [
    (torch.rand(2, 3, 4), r"activations must have shape \[N, K, h, w\]"),
    (torch.ones(2, 3, 4, 4, dtype=torch.int64), r"activations must be float32"),
    (torch.full((2, 3, 4, 4), float("nan")), r"NaN"),
])
def test_bad_activations_are_named(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fd.pixel_correlation(bad, torch.rand(2, 4, 8, 8) > 0.5)


def test_mismatched_images_and_merge_of_another_shape_are_refused():
    with pytest.raises(ValueError, match="activations have N=3, masks have N=2"):
        fd.pixel_correlation(torch.rand(3, 2, 4, 4), torch.rand(2, 4, 8, 8) > 0.5)
    with pytest.raises(ValueError, match="cannot merge 2 units x 4 concepts into 3 x 4"):
        PixelCorrelation(3, 4).merge(PixelCorrelation(2, 4))
    with pytest.raises(TypeError, match="merge takes a PixelCorrelation"):
        PixelCorrelation(3, 4).merge(object())
