"""fd.score (fused C++ kernel) vs the torch backend vs a NetDissect-Lite-style loop.

Workload: ResNet-18 layer4 on Broden-224: 512 units, 7x7 maps, 112x112 labels, ~15 of 150 concepts
per image. Run: pytest benchmarks/bench_score.py  (ratios are printed at the end).
"""

import numpy as np
import pytest
import torch

import fastdissect as fd
from workloads import layer4_workload

N_IMAGES, UNITS, MAP, LABEL, CONCEPTS = 32, 512, 7, 112, 150
GROUP = "score: resnet18-layer4, 32 images, lite union"


@pytest.fixture(scope="module")
def workload():
    return layer4_workload(N_IMAGES, UNITS, MAP, LABEL, CONCEPTS)


def lite_style_tally(features, labels, image_labels, thresholds, categories):
    """NetDissect-Lite's tally loop: per image, per unit whose max exceeds T, upsample the map, select
    the pixels above T, bincount the labels under them (every plane), and count the unit toward the
    union of each category it overlaps (Lite's union). Maps are upsampled with torch, as fast as or
    faster than Lite's Pillow call."""
    n, k = features.shape[:2]
    labelcat = np.eye(int(categories.max()) + 1, dtype=np.int64)[categories]
    tally_both = np.zeros((k, CONCEPTS), np.int64)
    tally_units = np.zeros(k, np.int64)
    tally_units_cat = np.zeros((k, labelcat.shape[1]), np.int64)
    for i in range(n):
        planes = labels[i]
        for u in range(k):
            fmap = features[i, u]
            if fmap.max() <= thresholds[u]:
                continue
            up = torch.nn.functional.interpolate(torch.from_numpy(fmap)[None, None].double(), size=(LABEL, LABEL),
                                                 mode="bilinear", align_corners=False)[0, 0].numpy()
            idx = np.argwhere(up > thresholds[u])
            tally_units[u] += len(idx)
            counts = np.bincount(planes[:, idx[:, 0], idx[:, 1]].ravel(), minlength=CONCEPTS)
            counts[0] = 0
            for c in image_labels[i]:
                counts[c] += len(idx)
            tally_both[u] += counts
            tally_units_cat[u] += len(idx) * (counts @ labelcat > 0)
    return tally_both, tally_units, tally_units_cat


def test_fastdissect_cpu(benchmark, workload):
    acts, _, _, masks, thr, cats = workload
    benchmark.group = GROUP
    benchmark.extra_info.update(role="fastdissect", images=N_IMAGES, threads=torch.get_num_threads())
    s = benchmark(fd.score, acts, masks, thresholds=thr, union="lite", categories=cats, backend="cpu")
    assert s.intersection.sum() > 0


def test_torch_backend(benchmark, workload):
    acts, _, _, masks, thr, cats = workload
    benchmark.group = GROUP
    benchmark.extra_info.update(role="baseline", images=N_IMAGES)
    s = benchmark.pedantic(fd.score, args=(acts, masks), rounds=3,
                           kwargs=dict(thresholds=thr, union="lite", categories=cats, backend="torch"))
    expected = fd.score(acts, masks, thresholds=thr, union="lite", categories=cats, backend="cpu")
    assert torch.equal(s.intersection, expected.intersection) and torch.equal(s.union, expected.union)


def test_lite_style_loop(benchmark, workload):
    acts, labels, image_labels, masks, thr, cats = workload
    benchmark.group = GROUP
    benchmark.extra_info.update(role="baseline", images=N_IMAGES)
    both, units, units_cat = benchmark.pedantic(
        lite_style_tally, args=(acts.numpy(), labels.numpy(), image_labels, thr.numpy(), cats.numpy()), rounds=3)
    expected = fd.score(acts, masks, thresholds=thr, union="lite", categories=cats, backend="cpu")
    assert np.array_equal(units, expected.unit_area.numpy())
    # Lite counts a pixel once per plane carrying the concept; where planes never repeat a concept at a
    # pixel, every count agrees.
    if not (labels[:, 0] == labels[:, 1]).any():
        assert np.array_equal(both, expected.intersection.numpy())


GPU_GROUP = "score on the GPU: resnet18-layer4, 32 images, lite union"
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available() or not fd.build_info().get("cuda"),
                               reason="needs a CUDA device and a build with FASTDISSECT_CUDA")


def _synchronized_score(acts, masks, thr, cats, backend):
    s = fd.score(acts, masks, thresholds=thr, union="lite", categories=cats, backend=backend)
    torch.cuda.synchronize()
    return s


@needs_gpu
def test_fastdissect_cuda(benchmark, workload):
    acts, _, _, masks, thr, cats = workload
    benchmark.group = GPU_GROUP
    benchmark.extra_info.update(role="fastdissect", images=N_IMAGES, device=torch.cuda.get_device_name())
    s = benchmark(_synchronized_score, acts.cuda(), masks.to("cuda"), thr, cats, "cuda")
    expected = fd.score(acts, masks, thresholds=thr, union="lite", categories=cats, backend="cpu")
    assert torch.equal(s.intersection.cpu(), expected.intersection)


@needs_gpu
def test_torch_backend_cuda(benchmark, workload):
    acts, _, _, masks, thr, cats = workload
    benchmark.group = GPU_GROUP
    benchmark.extra_info.update(role="baseline", images=N_IMAGES)
    benchmark(_synchronized_score, acts.cuda(), masks.to("cuda"), thr, cats, "torch")
