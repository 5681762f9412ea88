"""fd.thresholds equals numpy.quantile (float64) for every supported method."""

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.core.quantile import METHODS


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n_values", [1, 2, 7, 199, 200, 201, 4000])
def test_equals_numpy_quantile(rng, method, n_values):
    values = rng.standard_normal((n_values, 3))
    values[:, 1] = np.round(values[:, 1])            # heavy ties
    values[:, 2] = np.maximum(values[:, 2], 0) * 0   # a constant (all-zero ReLU) unit
    for q in (0.005, 0.5, fd.NETDISSECT_QUANTILE, 0.3):
        got = fd.thresholds(torch.from_numpy(values), quantile=q, method=method)
        want = np.quantile(values, 1 - q, axis=0, method=method)
        np.testing.assert_array_equal(got.numpy(), want)


def test_four_dimensional_and_half_input(rng):
    a = torch.from_numpy(rng.standard_normal((6, 4, 5, 5))).to(torch.float16)
    want = np.quantile(a.double().numpy().transpose(1, 0, 2, 3).reshape(4, -1), 0.995, axis=1)
    np.testing.assert_array_equal(fd.thresholds(a).numpy(), want)


def test_bad_method_and_nan():
    with pytest.raises(ValueError, match=r"method must be one of"):
        fd.thresholds(torch.rand(10, 2), method="kll")
    a = torch.rand(10, 3)
    a[4, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN in unit\(s\) 2"):
        fd.thresholds(a)


@pytest.mark.parametrize("method", METHODS)
def test_one_pass_over_data_in_any_order(backend, rng, monkeypatch, method):
    """fd.thresholds declares the number of values: even values crowding one histogram bin (which
    overflow a GPU kernel's default buffer) need no further pass."""
    def no_further_pass(self):
        raise AssertionError("fd.thresholds started a further pass")
    monkeypatch.setattr(fd.TopQuantile, "new_pass", no_further_pass)
    values = rng.standard_normal((20000, 3))
    for data in (-np.sort(-values, axis=0), np.round(values), values * 1e-9 + 1.0):
        for q in (0.005, 0.1):
            acts = torch.from_numpy(data).reshape(200, 100, 3).permute(0, 2, 1)[..., None]
            got = fd.thresholds(acts, quantile=q, method=method, backend=backend)
            np.testing.assert_array_equal(got.numpy(), np.quantile(data, 1 - q, axis=0, method=method))


def test_the_old_positional_order_warns_and_gives_the_same_thresholds():
    acts = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    want = fd.thresholds(acts, quantile=0.1, method="hazen")
    with pytest.warns(DeprecationWarning, match=r"thresholds\(activations, quantile=None, method=None\)"):
        old = fd.thresholds(acts, 0.1, "hazen")
    with pytest.warns(DeprecationWarning):
        only_level = fd.thresholds(acts, 0.1)
    torch.testing.assert_close(old, want, rtol=0, atol=0)
    torch.testing.assert_close(only_level, fd.thresholds(acts, quantile=0.1), rtol=0, atol=0)
