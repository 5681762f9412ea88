"""Writing the report.

Strips: fastdissect's sheets (masks from the scoring kernel at tile size, tiles drawn from packed
masks in C++, a JPEG per 64 units, chunks in threads) against a transcription of the map-by-map loop
it replaced (each of a unit's top maps upsampled at image size, with its taps recomputed, overlaid
by a masked scatter and resized, a JPEG per unit), on one demo-sized layer: 1,280 units, their top 8
images of the built-in set, 7x7 maps.

Whole report: `write_report` for a dissection shaped as the demo's (EfficientNet-Lite0's _blocks.1,
_blocks.4, _blocks.10, _blocks.15 and _bn1: 24, 40, 112, 320 and 1,280 units, maps 56 to 7 px; top 8
of 512 built-in images), its time per layer printed, and for its largest layer alone.

    cd benchmarks && python -m pytest -q -p no:cacheprovider bench_report.py   (ratios and ms per layer printed)
"""

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

import fastdissect as fd
from fastdissect.report.pages import THUMB, _strips, write_report
from fastdissect.kernels.torch_backend import _taps

UNITS, TOP, MAP = 1280, 8, 7
GROUP = f"report strips: {UNITS} units, top {TOP} images, {MAP}x{MAP} maps"
DEMO = {"_blocks.1": (24, 56), "_blocks.4": (40, 28), "_blocks.10": (112, 14), "_blocks.15": (320, 7),
        "_bn1": (1280, 7)}


def layer_result(name, units, side, ds, g) -> fd.LayerResult:
    """A layer shaped as a real one: top maps are smooth blobs (7x7 noise upsampled), each unit's
    threshold at 0.8; most units detect one of 30 concepts, the popular ones more often (the demo's
    _bn1: 567 detectors of 26 concepts)."""
    noise = torch.rand(units * TOP, 1, 7, 7, generator=g)
    maps = torch.nn.functional.interpolate(noise, size=(side, side), mode="bilinear").reshape(units, TOP, side, side)
    tops = torch.randint(0, len(ds), (units, TOP), generator=g)
    concepts = len(ds.concept_names)
    iou = torch.rand(units, concepts, generator=g, dtype=torch.float64) * 0.02
    popular = torch.randperm(concepts - 1, generator=g)[:30] + 1
    best = popular[(torch.rand(units, generator=g) ** 2 * 30).long()]
    iou[torch.arange(units), best] = 0.02 + 0.1 * torch.rand(units, generator=g, dtype=torch.float64)
    scores = fd.Scores(torch.zeros(units, concepts, dtype=torch.int64), torch.zeros(units, concepts, dtype=torch.int64),
                       iou, torch.zeros(units, dtype=torch.int64), torch.zeros(concepts, dtype=torch.int64),
                       torch.full((units,), 0.8, dtype=torch.float64), "global", len(ds))
    return fd.LayerResult(name, scores, list(ds.concept_names), list(ds.category_names),
                          torch.from_numpy(ds.primary_category).clamp(min=0), 0.04, tops, maps.amax(dim=(2, 3)), maps)


@pytest.fixture(scope="module")
def builtin_set(tmp_path_factory):
    return fd.datasets.Broden(fd.datasets.builtin(tmp_path_factory.mktemp("rep") / "set", n_images=512))


@pytest.fixture(scope="module")
def layer(builtin_set):
    g = torch.Generator().manual_seed(0)
    return layer_result("layer", UNITS, MAP, builtin_set, g), builtin_set


@pytest.fixture(scope="module")
def demo(builtin_set):
    g = torch.Generator().manual_seed(1)
    return fd.Dissection({name: layer_result(name, k, side, builtin_set, g) for name, (k, side) in DEMO.items()})


def old_upsample(a, height, width):
    a = a.to(torch.float64)
    x0, x1, wl0, wl1 = _taps.__wrapped__(a.shape[-1], width, "cpu")  # recomputed on every call, as it was
    y0, y1, hl0, hl1 = _taps.__wrapped__(a.shape[-2], height, "cpu")
    rows = wl0 * a[..., x0] + wl1 * a[..., x1]
    return hl0[:, None] * rows[..., y0, :] + hl1[:, None] * rows[..., y1, :]


def old_overlay(image, mask):
    out = image.astype(np.float32)
    out[~mask] *= 0.3
    edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    out[edge] = (255, 212, 59)
    return out.astype(np.uint8)


def map_by_map(layer, images, directory):
    for k in range(layer.num_units):
        tiles = []
        for j, index in enumerate(layer.top_images[k].tolist()):
            image = images[index]
            mask = (old_upsample(layer.top_maps[k, j], *image.shape[:2]) > float(layer.scores.thresholds[k])).numpy()
            tiles.append(Image.fromarray(old_overlay(image, mask)).resize((THUMB, THUMB), Image.BILINEAR))
        strip = Image.new("RGB", (len(tiles) * (THUMB + 2) - 2, THUMB), (255, 255, 255))
        for j, t in enumerate(tiles):
            strip.paste(t, (j * (THUMB + 2), 0))
        strip.save(directory / f"unit_{k:04d}.jpg", quality=85)


def test_strips_map_by_map(benchmark, layer, tmp_path):
    result, ds = layer
    images = {i: np.asarray(ds.image(i)) for i in set(result.top_images.flatten().tolist())}
    benchmark.group = GROUP
    benchmark.pedantic(map_by_map, args=(result, images, tmp_path), rounds=1, iterations=1)


def test_strips_sheets(benchmark, layer, tmp_path):
    result, ds = layer
    benchmark.group = GROUP
    benchmark.extra_info.update(role="fastdissect")
    directories = iter(range(1 << 20))

    def run():  # images decoded and resized inside, as the report does once per report
        directory = tmp_path / f"units{next(directories)}"
        directory.mkdir()
        _strips(result, ds, directory, {})
    benchmark.pedantic(run, rounds=3, iterations=1)


def test_report_demo_layers(benchmark, demo, builtin_set, tmp_path):
    """The whole report (pages, figures, strips) of the demo-shaped dissection."""
    importlib.import_module("matplotlib.pyplot")  # imported once per process, not per report
    benchmark.group = "report of the demo's 5 layers"
    benchmark.extra_info.update(per="layer", count=len(demo))
    benchmark.pedantic(lambda: write_report(demo, tmp_path / "report", builtin_set, verbose=False),
                       rounds=3, iterations=1)


def test_report_largest_demo_layer(benchmark, demo, builtin_set, tmp_path):
    """The report of _bn1 alone (1,280 units, 7x7 maps): the demo's slowest layer."""
    importlib.import_module("matplotlib.pyplot")
    largest = fd.Dissection({"_bn1": demo["_bn1"]})
    benchmark.group = "report of the demo's largest layer"
    benchmark.extra_info.update(per="layer", count=1)
    benchmark.pedantic(lambda: write_report(largest, tmp_path / "report", builtin_set, verbose=False),
                       rounds=3, iterations=1)
