"""Writing the report's unit strips: fastdissect's batched path against a transcription of the
map-by-map loop it replaced (each of a unit's top maps upsampled, with its taps recomputed, and
overlaid on its own by a masked scatter, at torch's default threads), on one demo-sized layer:
1,280 units, their top 8 images of the built-in set, 7x7 maps. Both write the same JPEGs.

    cd benchmarks && python -m pytest -q -p no:cacheprovider bench_report.py   (the ratio is printed)
"""

import numpy as np
import pytest
import torch
from PIL import Image

import fastdissect as fd
from fastdissect.report import THUMB, _edge, _strips
from fastdissect.torch_backend import _taps

UNITS, TOP, MAP = 1280, 8, 7
GROUP = f"report strips: {UNITS} units, top {TOP} images, {MAP}x{MAP} maps"


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    ds = fd.datasets.Broden(fd.datasets.builtin(tmp_path_factory.mktemp("rep") / "set", n_images=64))
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(UNITS, TOP, MAP, MAP, generator=g)
    tops = torch.randint(0, len(ds), (UNITS, TOP), generator=g)
    scores = fd.Scores(*(torch.zeros(UNITS, 2, dtype=torch.int64),) * 2, torch.zeros(UNITS, 2, dtype=torch.float64),
                       torch.zeros(UNITS, dtype=torch.int64), torch.zeros(2, dtype=torch.int64),
                       torch.full((UNITS,), 0.8, dtype=torch.float64), "global", len(ds))
    result = fd.LayerResult("layer", scores, ["-", "a"], ["object"], torch.zeros(2, dtype=torch.int64), 0.04,
                            tops, maps.amax(dim=(2, 3)), maps)
    images = {i: np.asarray(ds.image(i)) for i in range(len(ds))}
    return result, ds, images


def old_upsample(a, height, width):
    a = a.to(torch.float64)
    x0, x1, wl0, wl1 = _taps.__wrapped__(a.shape[-1], width, "cpu")  # recomputed on every call, as it was
    y0, y1, hl0, hl1 = _taps.__wrapped__(a.shape[-2], height, "cpu")
    rows = wl0 * a[..., x0] + wl1 * a[..., x1]
    return hl0[:, None] * rows[..., y0, :] + hl1[:, None] * rows[..., y1, :]


def old_overlay(image, mask):
    out = image.astype(np.float32)
    out[~mask] *= 0.3
    out[_edge(mask)] = (255, 212, 59)
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
    result, _, images = layer
    benchmark.group = GROUP
    benchmark.pedantic(map_by_map, args=(result, images, tmp_path), rounds=1, iterations=1)


def test_strips_batched(benchmark, layer, tmp_path):
    result, ds, images = layer
    benchmark.group = GROUP
    benchmark.extra_info.update(role="fastdissect")
    benchmark.pedantic(lambda: _strips(result, ds, tmp_path / "units", dict(images)), rounds=2, iterations=1)
