"""Compositional explanations: fd.compositional against the PyPI package `compositional-explanations`
on the same unit masks, and at compexp's scale (ResNet-18 layer4 on Broden's ADE20K images).

    cd benchmarks && python -m pytest -q -p no:cacheprovider bench_compositional.py -s

The scale benchmark (22,000 images at 112 x 112, 1,200 concepts, 512 units) times a share of the
units and extrapolates: it prints exactly what ran. It needs about 4 GB of memory and a few minutes.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import threading
import time

import pytest

import fastdissect as fd
import workloads
from fastdissect.kernels import torch_backend

PEER = dict(n=2000, size=56, concepts=300, units=4)
# The optimal search against the beam, per unit, on the same unit masks.
BEAM_VS_OPTIMAL = dict(n=4000, size=56, concepts=400, units=8)
SMOKE_BEAM_VS_OPTIMAL = dict(n=100, size=28, concepts=40, units=2)
# The package's optimal search builds and scores a mask per visited node: a case it finishes in minutes.
OPTIMAL_PEER = dict(n=200, size=28, concepts=30, units=4)
# FASTDISSECT_BENCH_WHOLE_LAYER=1 times the optimal search on all 512 units instead of 32 (about 10 min).
SCALE = dict(n=22000, size=112, concepts=1200, units=512, timed_units=32,
             optimal_units=512 if os.environ.get("FASTDISSECT_BENCH_WHOLE_LAYER") == "1" else 32)
# With --benchmark-disable (CI executes every benchmark once so that none rots): small cases.
SMOKE_PEER = dict(n=100, size=28, concepts=40, units=2)
SMOKE_OPTIMAL_PEER = dict(n=30, size=14, concepts=20, units=1)
SMOKE_SCALE = dict(n=300, size=28, concepts=100, units=16, timed_units=4, optimal_units=1)
_iou = {}
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the peer package's scipy imports


def _sizes(request, full: dict, smoke: dict) -> dict:
    return smoke if request.config.getoption("benchmark_disable") else full


def _unit_masks(acts, size, quantile=0.005):
    thresholds = fd.thresholds(acts, quantile=quantile)
    return torch_backend.upsample(acts, size, size) > thresholds[None, :, None, None]


@pytest.fixture(scope="module")
def peer_case(request):
    size = _sizes(request, PEER, SMOKE_PEER)
    masks, pooled, ids = workloads.broden_like_masks(size["n"], size["size"], size["concepts"], seed=0)
    acts = workloads.units_from_masks(pooled, ids, size["units"], size["concepts"], seed=0)
    units = _unit_masks(acts, size["size"])
    return masks, units


def test_fastdissect_beam(benchmark, peer_case):
    masks, units = peer_case
    benchmark.group = "compositional: 2,000 images 56x56, 300 concepts, 4 units, length 3, beam 5"
    benchmark.extra_info["role"] = "fastdissect"
    ex = benchmark(lambda: fd.compositional(units, masks, formula_length=3, beam_size=5))
    _iou["fastdissect"] = ex.iou.tolist()
    _iou["fastdissect formulas"] = [str(f) for f in ex.formulas]


def test_compositional_explanations_beam(benchmark, peer_case):
    """The package's own beam search, one call per unit, with the true disjointness matrix it asks for."""
    pytest.importorskip("compositional_explanations")
    from compositional_explanations import beam, metrics

    masks, units = peer_case
    dense = masks.to_dense()
    concept_masks = [dense[:, c] for c in range(dense.shape[1])]
    flat = dense.transpose(0, 1).reshape(dense.shape[1], -1).float()
    disjoint = (flat @ flat.T) == 0
    benchmark.group = "compositional: 2,000 images 56x56, 300 concepts, 4 units, length 3, beam 5"

    def run():
        return [beam.compute_beam_explanations(bitmaps=units[:, k], masks=concept_masks, disjoint_info=disjoint,
                                               length=3, beam_size=5, device="cpu", cache_dir=None)
                for k in range(units.shape[1])]

    formulas = benchmark.pedantic(run, rounds=1, iterations=1)
    _iou["compositional-explanations"] = [metrics.compute_iou_from_masks(formula=f, masks=concept_masks,
                                                                         bitmaps=units[:, k])
                                          for k, f in enumerate(formulas)]
    _iou["compositional-explanations formulas"] = [str(f) for f in formulas]


def test_zz_iou_side_by_side():
    """Per unit, both searches' IoU (printed); fastdissect's is never lower."""
    if "compositional-explanations" not in _iou:
        pytest.skip("the peer did not run")
    for k, (ours, theirs) in enumerate(zip(_iou["fastdissect"], _iou["compositional-explanations"])):
        print(f"unit {k}: fastdissect {ours:.6f} {_iou['fastdissect formulas'][k]}  |  compositional-explanations "
              f"{theirs:.6f} {_iou['compositional-explanations formulas'][k]}")
        assert ours >= theirs - 1e-12


def test_optimal_against_the_beam(request):
    """The proven-optimal search's cost per unit against the beam's (length 3, beam 5), same masks,
    same run, each timed over all units (fixed costs included), and how often it finds better."""
    size = _sizes(request, BEAM_VS_OPTIMAL, SMOKE_BEAM_VS_OPTIMAL)
    masks, pooled, ids = workloads.broden_like_masks(size["n"], size["size"], size["concepts"], seed=0)
    units = _unit_masks(workloads.units_from_masks(pooled, ids, size["units"], size["concepts"], seed=0), size["size"])
    times, found = {}, {}
    for search in ("beam", "optimal", "beam", "optimal"):  # alternated: the machine's speed drifts
        start = time.perf_counter()
        found[search] = fd.compositional(units, masks, formula_length=3, beam_size=5, search=search)
        times.setdefault(search, []).append(time.perf_counter() - start)
    beam, opt = min(times["beam"]), min(times["optimal"])
    k = size["units"]
    better = int((found["optimal"].iou > found["beam"].iou + 1e-12).sum())
    print(f"\n{size['n']} images {size['size']}x{size['size']}, {size['concepts']} concepts, {k} units: beam "
          f"{beam / k * 1e3:.0f} ms per unit, optimal {opt / k * 1e3:.0f} ms per unit = {opt / beam:.1f}x the beam; "
          f"strictly better on {better} of {k} units")
    assert bool((found["optimal"].iou >= found["beam"].iou - 1e-12).all())


@pytest.fixture(scope="module")
def optimal_peer_case(request):
    size = _sizes(request, OPTIMAL_PEER, SMOKE_OPTIMAL_PEER)
    masks, pooled, ids = workloads.broden_like_masks(size["n"], size["size"], size["concepts"], seed=0)
    acts = workloads.units_from_masks(pooled, ids, size["units"], size["concepts"], seed=0)
    return masks, _unit_masks(acts, size["size"]), size


def test_optimal_side_by_side(benchmark, optimal_peer_case):
    """Both guaranteed-optimal searches on the same unit masks: time, formulas, IoU, and the work each
    does (the package: nodes visited, each a formula mask built and scored; fastdissect: formulas
    scored exactly from counts, no mask built). The IoUs must agree: both are proven optima."""
    pytest.importorskip("compositional_explanations")
    from compositional_explanations import optimal
    from package_utils import optimal_utils

    masks, units, size = optimal_peer_case
    dense = masks.to_dense()
    concept_masks = [dense[:, c].flatten(1) for c in range(dense.shape[1])]  # it asks for (N, H * W)
    flat = dense.transpose(0, 1).reshape(dense.shape[1], -1).float()
    disjoint = (flat @ flat.T) == 0
    scored = optimal_utils.compute_label_info_and_iou_from_mask
    visits = [0]

    def counted(*args, **kwargs):
        visits[0] += 1
        return scored(*args, **kwargs)

    def peer():
        out = []
        for k in range(units.shape[1]):
            visits[0] = 0
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # it reports its frontier on every step
                f = optimal.compute_optimal_explanations(masks=concept_masks, bitmaps=units[:, k].flatten(1),
                                                         disjoint_info=disjoint, length=3, device="cpu")
            out.append((f, visits[0], time.perf_counter() - start))
        return out

    benchmark.group = f"optimal search: {size['n']} images {size['size']}x{size['size']}, {size['concepts']} concepts"
    start = time.perf_counter()
    ours = fd.compositional(units, masks, formula_length=3, search="optimal")
    seconds = time.perf_counter() - start
    optimal.optimal_utils.compute_label_info_and_iou_from_mask = counted
    try:
        theirs = benchmark.pedantic(peer, rounds=1, iterations=1)
    finally:
        optimal.optimal_utils.compute_label_info_and_iou_from_mask = scored
    print(f"\nfastdissect optimal: {units.shape[1]} units in {seconds * 1e3:.0f} ms; "
          f"compositional-explanations optimal: {sum(t for _, _, t in theirs):.1f} s "
          f"({sum(t for _, _, t in theirs) / seconds:.0f}x)")
    for k, (f, visited, t) in enumerate(theirs):
        mask = fd.formula_mask(fd.Formula.parse(str(f)), masks).to_dense()[:, 0] if f is not None else None
        their_iou = 0.0 if mask is None else int((mask & units[:, k]).sum()) / int((mask | units[:, k]).sum())
        print(f"unit {k}: fastdissect {ours.iou[k]:.6f} {ours.formulas[k]} ({int(ours.evaluated[k])} formulas "
              f"scored from counts) | compositional-explanations {their_iou:.6f} {f} ({visited} nodes visited, "
              f"{t:.2f} s)")
        assert float(ours.iou[k]) == pytest.approx(their_iou, abs=1e-12)


@pytest.fixture(scope="module")
def scale_case(request):
    size = _sizes(request, SCALE, SMOKE_SCALE)
    start = time.perf_counter()
    masks, pooled, ids = workloads.broden_like_masks(size["n"], size["size"], size["concepts"], seed=0)
    acts = workloads.units_from_masks(pooled, ids, size["units"], size["concepts"], seed=0)
    thresholds = fd.thresholds(acts, quantile=0.005)
    per_image = masks.offsets.diff().double().mean().item()
    print(f"\nscale case: {size['n']} images {size['size']}x{size['size']}, {size['concepts']} concepts "
          f"({per_image:.1f} present per image, {masks.words.numel() * 8 / 2**20:.0f} MiB packed), "
          f"{size['units']} units 7x7; generated in {time.perf_counter() - start:.0f} s")
    return masks, acts, thresholds, size


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _with_peak(fn):
    """fn() and the peak resident memory it added above what was resident before (sampled every 5 ms)."""
    base, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib() - base)
            time.sleep(0.005)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        done.set()
        t.join()
    return out, peak[0]


def _timed_once(benchmark, group: str, fn):
    """fn() run once as the group's benchmark: (result, seconds, memory it added in MiB)."""
    benchmark.group = group
    benchmark.extra_info["role"] = "fastdissect"
    start = time.perf_counter()
    out, peak = benchmark.pedantic(lambda: _with_peak(fn), rounds=1, iterations=1)
    return out, time.perf_counter() - start, peak


def test_scale_beam(benchmark, scale_case):
    masks, acts, thresholds, size = scale_case
    n = size["timed_units"]
    ex, seconds, peak = _timed_once(benchmark, "compositional at compexp's scale (beam)", lambda: fd.compositional(
        acts[:, :n], masks, thresholds=thresholds[:n], formula_length=3, beam_size=5))
    print(f"\nbeam, length 3, beam 5: {n} of {size['units']} units in {seconds:.1f} s (unit masks from the "
          f"activations included) -> {seconds * size['units'] / n / 60:.1f} min for the layer, extrapolated; "
          f"memory added by the search {peak:.0f} MiB (inputs: activations {acts.numel() * 4 / 2**20:.0f} MiB, "
          f"packed masks {masks.words.numel() * 8 / 2**20:.0f} MiB); mean IoU {ex.iou.mean():.3f}")


def test_scale_optimal(benchmark, scale_case):
    masks, acts, thresholds, size = scale_case
    n = size["optimal_units"]
    ex, seconds, peak = _timed_once(benchmark, "compositional at compexp's scale (optimal)", lambda: fd.compositional(
        acts[:, :n], masks, thresholds=thresholds[:n], formula_length=3, search="optimal"))
    print(f"\noptimal, length 3: {n} units in {seconds:.1f} s = {seconds / n:.2f} s per unit (with the once-per-"
          f"call pair table) -> {seconds * size['units'] / n / 60:.1f} min for the layer, extrapolated; formulas "
          f"scored exactly per unit: median {int(ex.evaluated[:n].median())}; memory added {peak:.0f} MiB")
