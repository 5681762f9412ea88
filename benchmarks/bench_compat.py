"""fastdissect.compat.netdissect_lite.tally vs NetDissect-Lite's tally loop, on the same Broden-layout data.

Workload: 96 images of the built-in concept set (Broden layout, 64 x 64 labels, 4 planes), 512
ReLU units with 7 x 7 maps at the top 0.5% threshold. The baseline is Lite's algorithm as Lite runs
it: per image, per unit above threshold, Pillow's resize of the map, then bincounts over the planes;
Lite decodes the labels on every call. Both read the labels with the same decoder. Groups:
- first layer: fastdissect decodes the labels and packs them into an empty mask cache;
- second layer: fastdissect reads the packed labels from the cache (what every later layer and run does),
  on 96 and on 256 images;
- labels decoded beforehand: both sides read labels from memory (the tally alone).
Run: pytest benchmarks/bench_compat.py (ratios printed).
"""

import numpy as np
import pytest
from PIL import Image

import fastdissect as fd
from fastdissect.compat import netdissect_lite as lite
from workloads import layer_activations

N_IMAGES, UNITS = 96, 512
GROUP = "compat: NetDissect-Lite tally, 96 images, 512 units"


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    root = fd.datasets.builtin(tmp_path_factory.mktemp("compat") / "set", n_images=N_IMAGES)
    features = layer_activations(N_IMAGES, UNITS, 7, seed=3).double().numpy()
    return root, features, lite.quantile_threshold(features)


def lite_loop(features, thresholds, root):
    data = lite.LiteData(root)
    K, L, G = features.shape[1], data.num_labels, len(data.categories)
    both, units_cat, truth = np.zeros((K, L)), np.zeros((K, G)), np.zeros(L)
    for n in range(features.shape[0]):
        planes, scalars, (sh, sw) = data.labels(n)
        for s in scalars:
            truth[s] += sh * sw
        if len(planes):
            t = np.bincount(planes.ravel())
            t[0] = 0
            truth[:len(t)] += t
        for k in range(K):
            fmap = features[n, k]
            if fmap.max() > thresholds[k]:
                up = np.asarray(Image.fromarray(fmap.astype(np.float32), "F").resize((sw, sh), Image.BILINEAR))
                idx = np.argwhere(up > thresholds[k])
                tally_cat = np.zeros(G)
                if len(planes):
                    bt = np.bincount(planes[:, idx[:, 0], idx[:, 1]].ravel())
                    if len(bt):  # a map above T whose resize stays below it selects no pixel
                        bt[0] = 0
                    tally_cat = (bt[None, :] @ data.labelcat[:len(bt)])[0]
                    both[k, :len(bt)] += bt
                for s in scalars:
                    tally_cat = tally_cat + data.labelcat[s]
                    both[k, s] += len(idx)
                units_cat[k] += len(idx) * (tally_cat > 0)
    return lite._rows(data, both, units_cat, truth, None)


FIRST = "compat: NetDissect-Lite tally, first layer (labels decoded and packed), 96 images, 512 units"
SECOND = "compat: NetDissect-Lite tally, second layer (labels from the mask cache), 96 images, 512 units"


def test_compat_tally_first_layer(benchmark, workload, tmp_path):
    root, features, t = workload
    benchmark.group = FIRST
    benchmark.extra_info.update(role="fastdissect")
    caches = iter(range(100))

    def empty_cache():
        return (features, t, root), {"progress": False, "mask_cache": tmp_path / f"cache{next(caches)}"}
    rows = benchmark.pedantic(lite.tally, setup=empty_cache, rounds=3, iterations=1)
    assert rows == lite_loop(features, t, root)


def test_lite_loop_first_layer(benchmark, workload):
    root, features, t = workload
    benchmark.group = FIRST
    benchmark.extra_info.update(role="baseline")
    benchmark.pedantic(lite_loop, args=(features, t, root), rounds=3, iterations=1)


SECOND_LARGE = "compat: NetDissect-Lite tally, second layer (labels from the mask cache), 256 images, 512 units"


@pytest.fixture(scope="module")
def workload_large(tmp_path_factory):
    """More images: the fixed costs (reading the CSVs, the rows, opening the store) weigh less."""
    root = fd.datasets.builtin(tmp_path_factory.mktemp("compat256") / "set", n_images=256)
    features = layer_activations(256, UNITS, 7, seed=4).double().numpy()
    return root, features, lite.quantile_threshold(features)


@pytest.fixture(params=["96", "256"])
def second_layer(request):
    name, group = ("workload", SECOND) if request.param == "96" else ("workload_large", SECOND_LARGE)
    return request.getfixturevalue(name), group


def test_compat_tally_second_layer(benchmark, second_layer, tmp_path):
    (root, features, t), group = second_layer
    benchmark.group = group
    benchmark.extra_info.update(role="fastdissect")
    kwargs = {"progress": False, "mask_cache": tmp_path / "cache"}
    lite.tally(features[:, ::-1].copy(), t[::-1].copy(), root, **kwargs)  # the first layer fills the cache
    rows = benchmark.pedantic(lite.tally, args=(features, t, root), kwargs=kwargs, rounds=5, iterations=1)
    assert rows == lite_loop(features, t, root)


def test_lite_loop_second_layer(benchmark, second_layer):
    (root, features, t), group = second_layer
    benchmark.group = group
    benchmark.extra_info.update(role="baseline")
    benchmark.pedantic(lite_loop, args=(features, t, root), rounds=2, iterations=1)


CACHED = "compat: NetDissect-Lite tally, labels decoded beforehand, 96 images, 512 units"


@pytest.fixture(scope="module")
def decoded(workload, monkeypatch_module):
    """Both sides read labels from memory: what remains is the tally itself."""
    root, features, t = workload
    data = lite.LiteData(root)
    labels = [data.labels(n) for n in range(len(data.rows))]
    monkeypatch_module.setattr(lite.LiteData, "labels", lambda self, n: labels[n])
    return root, features, t


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_compat_tally_decoded(benchmark, decoded):
    root, features, t = decoded
    benchmark.group = CACHED
    benchmark.extra_info.update(role="fastdissect")
    rows = benchmark.pedantic(lite.tally, args=(features, t, root), kwargs={"progress": False, "mask_cache": False},
                              rounds=3, iterations=1)
    assert rows == lite_loop(features, t, root)


def test_lite_loop_decoded(benchmark, decoded):
    root, features, t = decoded
    benchmark.group = CACHED
    benchmark.extra_info.update(role="baseline")
    benchmark.pedantic(lite_loop, args=(features, t, root), rounds=3, iterations=1)
