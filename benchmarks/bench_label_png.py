"""Decoding Broden label PNGs: fastdissect's reader (chunks parsed in Python, zlib, filters undone in
C++) vs Pillow (open, load, convert to RGB, R + 256 * G in numpy), on the same files.

Workload: the label files of 96 built-in images (64 x 64, RGB, written by Pillow: adaptive filters),
and 32 label files at Broden's 112 x 112. Run: pytest benchmarks/bench_label_png.py (ratios printed).
"""

import io

import numpy as np
import pytest
from PIL import Image

import fastdissect as fd
from fastdissect.datasets import label_png

GROUP = "label PNGs: the label files of 96 built-in images (64x64)"
GROUP_112 = "label PNGs: 32 files of 112x112"


def pillow_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        rgb = np.asarray(im.convert("RGB"))
    return rgb[..., 0].astype(np.int64) + 256 * rgb[..., 1].astype(np.int64)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = fd.datasets.builtin(tmp_path_factory.mktemp("png") / "set", n_images=96)
    ds = fd.datasets.Broden(root)
    return [(root / "images" / name).read_bytes() for r in ds.records for name in r["files"]]


@pytest.fixture(scope="module")
def files_112(tmp_path_factory):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(32):  # Broden-like: a few hundred regions, labels < 1200 (R and G bytes)
        regions = rng.integers(1, 1200, size=(14, 14))
        labels = np.kron(regions, np.ones((8, 8), np.int64))
        rgb = np.stack([labels % 256, labels // 256, np.zeros_like(labels)], axis=-1).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def decode_all(decoder, files):
    return [decoder(d) for d in files]


@pytest.mark.parametrize("which", ["64", "112"])
def test_fastdissect_reader(benchmark, files, files_112, which):
    data = files if which == "64" else files_112
    benchmark.group = GROUP if which == "64" else GROUP_112
    benchmark.extra_info.update(role="fastdissect")
    got = benchmark(decode_all, label_png.decode, data)
    assert all(np.array_equal(a, pillow_decode(d)) for a, d in zip(got, data))


@pytest.mark.parametrize("which", ["64", "112"])
def test_pillow(benchmark, files, files_112, which):
    data = files if which == "64" else files_112
    benchmark.group = GROUP if which == "64" else GROUP_112
    benchmark.extra_info.update(role="baseline")
    benchmark(decode_all, pillow_decode, data)
