"""Reading a data set's concept masks: the packed store vs decoding the label PNGs.

Workload: the built-in concept set, 256 images, labels 64 x 64 in 4 planes, batches of 64 images as
the dissection pipeline reads them. Run: pytest benchmarks/bench_datasets.py (ratio and size printed).
"""

import numpy as np
import pytest
import torch

import fastdissect as fd

N_IMAGES, BATCH = 256, 64
GROUP = "masks: 256 built-in images, batches of 64"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_builtin")
    ds = fd.datasets.Broden(fd.datasets.builtin(root / "set", n_images=N_IMAGES, seed=0))
    store = fd.datasets.open_packed(fd.datasets.pack(ds, root / "packed", verbose=False))
    return ds, store, root / "packed"


def decode_pngs(ds):
    areas = torch.zeros(ds.num_concepts, dtype=torch.int64)
    for start in range(0, len(ds), BATCH):
        idx = range(start, min(start + BATCH, len(ds)))
        labels = torch.from_numpy(np.stack([ds.labels(i) for i in idx]))
        masks = fd.pack_masks(labels=labels, image_labels=[ds.records[i]["image_labels"] for i in idx],
                              num_concepts=ds.num_concepts)
        areas += masks.concept_area()
    return areas


def read_packed(path):
    store = fd.datasets.open_packed(path)  # re-opened each round: nothing cached in Python
    areas = torch.zeros(store.num_concepts, dtype=torch.int64)
    for start in range(0, len(store), BATCH):
        masks = store.masks[start:start + BATCH]
        rows = masks.mask_rows[masks.mask_rows >= 0]
        areas += masks.concept_area()
        areas[0] += int(masks.words[rows].bitwise_and(1).sum()) * 0  # read every mask word, as a kernel does
    return areas


def test_packed_store(benchmark, data, capsys):
    ds, store, path = data
    benchmark.group = GROUP
    got = benchmark(read_packed, path)
    assert torch.equal(got, decode_pngs(ds))
    size = sum(f.stat().st_size for f in path.iterdir())
    benchmark.extra_info.update(role="fastdissect", bytes_per_image=size / N_IMAGES)
    with capsys.disabled():
        print(f"\npacked store: {size / N_IMAGES / 1024:.2f} KiB per image on disk "
              f"({len(ds.concept_names)} concepts, labels {ds.label_size[0]}x{ds.label_size[1]}, {ds.num_planes} planes)")


def test_decode_pngs(benchmark, data):
    ds, _, _ = data
    benchmark.group = GROUP
    benchmark.pedantic(decode_pngs, args=(ds,), rounds=3, iterations=1)
