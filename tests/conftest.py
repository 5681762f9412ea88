import numpy as np
import pytest
import torch

import fastdissect as fd

BACKENDS = ["cpu", "torch", "cuda_emu"]  # cuda_emu: the CUDA kernels themselves, run on the CPU


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param in ("cpu", "cuda_emu") and not fd.build_info()["extension"]:
        pytest.fail("the compiled extension is missing: the cpu backend cannot be tested")
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def exact_acts(rng, shape, lo=-4, hi=9):
    """Integer-valued activations: with power-of-two scale factors every bilinear sample is exact."""
    return torch.from_numpy(rng.integers(lo, hi, size=shape).astype(np.float32))


def random_labels(rng, n, planes, h, w, num_concepts, density=0.6):
    lab = rng.integers(1, num_concepts, size=(n, planes, h, w))
    lab[rng.random(lab.shape) > density] = 0
    return torch.from_numpy(lab)


def pytest_configure(config):
    # Packed label caches (fd.datasets.mask_cache) go to a directory of this run, never the user's.
    import os
    import tempfile

    os.environ["FASTDISSECT_CACHE"] = tempfile.mkdtemp(prefix="fastdissect-test-cache-")


def pytest_unconfigure(config):
    import os
    import shutil

    shutil.rmtree(os.environ.pop("FASTDISSECT_CACHE", ""), ignore_errors=True)
