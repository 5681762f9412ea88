"""Pixel attribution: fd.attribute against Captum, the same method on the same model, images and
targets in the same run (the tests prove the maps equal; this measures the time).

Workload: a small CNN (4 conv + inplace ReLU + max-pool blocks of 32 channels, a linear head of
10 classes) on 8 random 64 x 64 images, one target each; integrated gradients with
Captum's default 50 steps.
Run: pytest benchmarks/bench_attribution.py  (ratios are printed).
"""

import warnings

import pytest
import torch

import fastdissect as fd

N, SIZE, CLASSES, LAYER = 8, 64, 10, "features.9"
METHODS = ["guided_backprop", "guided_gradcam", "integrated_gradients"]


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        blocks = []
        for c_in in (3, 32, 32, 32):
            blocks += [torch.nn.Conv2d(c_in, 32, 3, padding=1), torch.nn.ReLU(inplace=True), torch.nn.MaxPool2d(2)]
        self.features = torch.nn.Sequential(*blocks)
        self.head = torch.nn.Linear(32 * (SIZE // 16) ** 2, CLASSES)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


@pytest.fixture(scope="module")
def work():
    x = torch.randn(N, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    return SmallCNN().eval(), x, torch.arange(N) % CLASSES


def captum_call(model, method):
    from captum.attr import GuidedBackprop, GuidedGradCam, IntegratedGradients

    if method == "guided_backprop":
        return lambda x, t: GuidedBackprop(model).attribute(x, target=t)
    if method == "guided_gradcam":
        layer = dict(model.named_modules())[LAYER]
        return lambda x, t: GuidedGradCam(model, layer).attribute(x, target=t, interpolate_mode="bilinear")
    return lambda x, t: IntegratedGradients(model).attribute(x, target=t, n_steps=50)


@pytest.mark.parametrize("method", METHODS)
def test_fastdissect_attribute(benchmark, work, method):
    model, x, t = work
    benchmark.group = f"attribution {method}: {N} images {SIZE}x{SIZE}, 4-conv ReLU CNN"
    layer = LAYER if "gradcam" in method else None
    benchmark.pedantic(lambda: fd.attribute(model, x, t, method=method, layer=layer), rounds=5, iterations=1)
    benchmark.extra_info.update(role="fastdissect")


@pytest.mark.parametrize("method", METHODS)
def test_captum(benchmark, work, method):
    pytest.importorskip("captum")
    model, x, t = work
    benchmark.group = f"attribution {method}: {N} images {SIZE}x{SIZE}, 4-conv ReLU CNN"
    call = captum_call(model, method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns at every call that it sets ReLU hooks
        benchmark.pedantic(lambda: call(x, t), rounds=5, iterations=1)
