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
