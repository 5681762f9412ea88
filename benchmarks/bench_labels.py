"""Labels beyond masks at the cost of a forward pass: fd.dissect_images (image-level tags, AUROC) and
fd.clip_dissect (soft-WPMI over a word list, the CLIP image embeddings cached) against one plain
forward pass of the same model over the same images, in the same run (goal: at most 1.2x).

Workload: the demo model (EfficientNet-Lite0, 224 px, its five dissected layers) and a small
random conv (64 px, two layers) on 64 built-in images, batches of 16; the forward pass reads the
images through the same loader. The CLIP stand-in embeds an image by its mean colour (tests use it
too): with its embeddings cached, what is timed is fastdissect's own work beside the target model.
Run: cd benchmarks && python -m pytest -q -p no:cacheprovider bench_labels.py -s
(the table of cost / one forward pass is printed at the end).
"""

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.datasets.sample import IMAGENET_MEAN, IMAGENET_STD, model_input
from fastdissect.pipeline.forward import image_batches

IMAGES, BATCH = 64, 16
WORDS = ["red", "green", "blue", "white", "black", "grey", "sky", "grass"]
RESULTS: dict = {}


class MeanColour:
    """A stand-in CLIP: an image's embedding is its centred mean colour, a word's a fixed colour."""

    def encode_images(self, images):
        return torch.tensor(np.stack([im.reshape(-1, 3).mean(0) / 255 - 0.45 for im in images]))

    def encode_texts(self, words):
        g = torch.Generator().manual_seed(0)
        return torch.randn(len(words), 3, generator=g, dtype=torch.float64)

    def fingerprint(self):
        return "mean-colour-bench"


def small_conv():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 32, 3, stride=2), torch.nn.ReLU())
    return model.eval(), ["1", "3"], 64, IMAGENET_MEAN, IMAGENET_STD


def demo():
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs the demo extra")
    from fastdissect.pipeline import models

    _, layers, mean, std = models.BUILTIN["efficientnet-lite0"]
    return models.efficientnet_lite0().eval(), layers, 224, mean, std


MODELS = {"demo": demo, "small_conv": small_conv}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fd.datasets.Broden(fd.datasets.builtin(tmp_path_factory.mktemp("labels") / "set", n_images=IMAGES))


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request, data, tmp_path_factory):
    model, layers, size, mean, std = MODELS[request.param]()
    options = dict(batch_size=BATCH, image_size=(size, size), mean=mean, std=std, verbose=False)
    cache = tmp_path_factory.mktemp("clip-cache")
    fd.clip_dissect(model, layers, data, WORDS, clip=MeanColour(), top_k=10, cache=cache, **options)  # warm
    return request.param, model, layers, options, cache


def forward_pass(model, data, options):
    with torch.no_grad():
        for _, images in image_batches(data, options["batch_size"]):
            model(model_input(images, options["mean"], options["std"], options["image_size"], torch.device("cpu")))


def median(benchmark):
    return benchmark.stats.stats.median if benchmark.stats else None  # None under --benchmark-disable


def test_one_forward_pass(benchmark, setup, data):
    name, model, _, options, _ = setup
    benchmark.group = f"labels beyond masks vs one forward pass: {name}, {IMAGES} images"
    benchmark.extra_info.update(role="baseline")
    benchmark.pedantic(forward_pass, args=(model, data, options), rounds=3, iterations=1)
    RESULTS[(name, "forward")] = median(benchmark)


def test_dissect_images(benchmark, setup, data):
    name, model, layers, options, _ = setup
    benchmark.group = f"labels beyond masks vs one forward pass: {name}, {IMAGES} images"
    benchmark.extra_info.update(role="fastdissect")
    result = benchmark.pedantic(lambda: fd.dissect_images(model, layers, data, **options), rounds=3, iterations=1)
    assert set(result) == set(layers)
    RESULTS[(name, "dissect_images")] = median(benchmark)


def test_clip_dissect_with_cached_embeddings(benchmark, setup, data):
    name, model, layers, options, cache = setup
    benchmark.group = f"labels beyond masks vs one forward pass: {name}, {IMAGES} images"
    benchmark.extra_info.update(role="fastdissect")
    clip = MeanColour()
    result = benchmark.pedantic(lambda: fd.clip_dissect(model, layers, data, WORDS, clip=clip, top_k=10, cache=cache,
                                                        **options), rounds=3, iterations=1)
    assert set(result) == set(layers)
    RESULTS[(name, "clip_dissect")] = median(benchmark)


def test_print_the_table(capsys):
    with capsys.disabled():
        print("\nmodel        call              time / one forward pass")
        for (name, call), seconds in RESULTS.items():
            forward = RESULTS.get((name, "forward"))
            if call != "forward" and seconds and forward:
                print(f"{name:<12} {call:<17} {seconds / forward:.2f}x ({1000 * seconds:.0f} ms vs {1000 * forward:.0f} ms)")
