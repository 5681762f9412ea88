"""Checks the kernels of one backend against the in-package torch reference, in seconds.

    python -m fastdissect.engine.selftest [--backend cuda|cuda_emu|cpu]

Prints a PASS/FAIL line per check with its time and exits non-zero on any failure. A GPU owner runs
it with --backend cuda to trust a build; CI runs it with cuda_emu (the same kernels on the CPU).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ..core.masks import ConceptMasks, pack_masks
from ..core.quantile import interpolate, order_statistics
from ..core.version import __version__
from ..kernels import dispatch, torch_backend
from ..kernels.ext import build_info
from .scoring import score
from .top_quantile import TopQuantile, thresholds


def reference_scores(acts, masks: ConceptMasks, thresholds, union, categories):
    """The torch backend's formulas on the CPU in float64: the reference every backend must equal."""
    G = int(categories.max()) + 1 if categories is not None else 0
    K, C = acts.shape[1], masks.num_concepts
    inter = torch.zeros(K, C, dtype=torch.int64)
    area = torch.zeros(K, dtype=torch.int64)
    cat_area = torch.zeros(K, G, dtype=torch.int64) if union != "global" else None
    hits = torch.zeros(K, C, dtype=torch.int64)
    torch_backend.tally_batch(acts.cpu().double(), masks.to("cpu"), thresholds.cpu(), union,
                              None if categories is None else categories.cpu(), G, inter, area, cat_area, hits)
    return inter, area, cat_area, hits


def reference_thresholds(acts, quantile, method):
    values = acts.detach().cpu().double().transpose(0, 1).reshape(acts.shape[1], -1).sort(dim=1).values
    i, j, gamma = order_statistics(values.shape[1], 1 - quantile, method)
    return interpolate(values[:, i], values[:, j], gamma)


def launched_as_planned(backend: str) -> bool:
    """With the emulated kernels: whether the last op call ran every kernel with its launch plan's
    grid and block (the GPU's), as csrc/emu records them; true on other backends."""
    if backend != "cuda_emu":
        return True
    log = dispatch.emu_last_launches()
    return bool(log["launched"]) and log["launched"] == log["planned"]


def score_cases(gen):
    """(name, activations, labels, image_labels, union) on random and adversarial data."""
    def labels(n, h, w, c=12):
        lab = torch.randint(0, c, (n, 2, h, w), generator=gen)
        return lab, [[int(torch.randint(c, c + 3, (1,), generator=gen))] for _ in range(n)]

    relu = torch.relu(torch.randn(6, 9, 7, 7, generator=gen))
    yield "random 7x7 -> 56x56, global", relu, *labels(6, 56, 56), "global"
    yield "random 7x7 -> 56x56, netdissect", relu, *labels(6, 56, 56), "netdissect"
    yield "random 7x7 -> 56x56, lite", relu, *labels(6, 56, 56), "lite"
    ints = torch.randint(-3, 6, (4, 5, 5, 3), generator=gen).float()
    yield "integer maps, ties at T, odd 5x3 -> 37x29", ints, *labels(4, 37, 29), "lite"
    yield "all-zero ReLU maps", torch.zeros(3, 4, 7, 7), *labels(3, 28, 28), "global"
    yield "one image, 1x1 map", torch.rand(1, 3, 1, 1, generator=gen), *labels(1, 9, 13), "netdissect"
    yield "non-contiguous float16", relu.half().permute(0, 1, 3, 2), *labels(6, 56, 56), "global"
    yield "bfloat16", relu.bfloat16(), *labels(6, 56, 56), "lite"
    yield "downsampling 9x9 -> 5x5", torch.randn(3, 4, 9, 9, generator=gen), *labels(3, 5, 5), "global"


def control_check(acts, lab, img, union: str, backend: str, device: str):
    """One tally call carrying the permuted control (Tally.add's control): both tallies equal the
    reference's, the control's against the deranged images' masks."""
    from .controls import derangement
    from .scoring import Tally

    C = int(lab.max()) + 4
    masks = pack_masks(labels=lab, image_labels=img, num_concepts=C)
    deranged = masks.take(derangement(acts.shape[0], 1))
    cats = torch.arange(C) % 3 if union != "global" else None
    t = thresholds(acts, quantile=0.2)
    tally, control = (Tally(acts.shape[1], C, t, union=union, categories=cats, backend=backend) for _ in range(2))
    tally.add(acts.to(device), masks.to(device), control=(control, deranged.to(device)))
    same = launched_as_planned(backend)
    for got, m in ((tally.scores(), masks), (control.scores(), deranged)):
        inter, area, cat_area, hits = reference_scores(acts, m, t, union, cats)
        same &= torch.equal(got.intersection.cpu(), inter) and torch.equal(got.unit_area.cpu(), area)
        same &= torch.equal(got.image_hits.cpu(), hits)
        if cat_area is not None:
            same &= torch.equal(got.union.cpu(), cat_area[:, cats] + m.concept_area()[None, :] - inter)
    return same, f"{int(control.scores().intersection.sum())} control pixels"


def run(backend: str, device: str) -> bool:
    gen = torch.Generator().manual_seed(0)
    ok = True

    def check(name, fn):
        nonlocal ok
        start = time.perf_counter()
        try:
            passed, detail = fn()
        except Exception as exc:  # a crash is a failure of the check, reported like one
            passed, detail = False, f"{type(exc).__name__}: {exc}"
        if device == "cuda":
            torch.cuda.synchronize()
        ms = 1000 * (time.perf_counter() - start)
        print(f"{'PASS' if passed else 'FAIL'}  {name:<48} {ms:8.1f} ms  {detail}")
        ok &= passed

    for name, acts, lab, img, union in score_cases(gen):
        def score_check(acts=acts, lab=lab, img=img, union=union):
            C = int(lab.max()) + 4
            masks = pack_masks(labels=lab, image_labels=img, num_concepts=C)
            cats = torch.arange(C) % 3
            t = thresholds(acts, quantile=0.2)
            s = score(acts.to(device), masks.to(device), thresholds=t, union=union,
                         categories=None if union == "global" else cats, backend=backend)
            inter, area, cat_area, hits = reference_scores(acts, masks, t, union, None if union == "global" else cats)
            same = torch.equal(s.intersection.cpu(), inter) and torch.equal(s.unit_area.cpu(), area)
            same &= torch.equal(s.image_hits.cpu(), hits) and launched_as_planned(backend)
            if cat_area is not None:
                unit_term = cat_area[:, cats]
                same &= torch.equal(s.union.cpu(), unit_term + masks.concept_area()[None, :] - inter)
            return same, f"{int(area.sum())} mask pixels, {acts.dtype}"
        check(f"score: {name}", score_check)
        if acts.shape[0] > 1:
            check(f"score + permuted control: {name}",
                  lambda acts=acts, lab=lab, img=img, union=union: control_check(acts, lab, img, union, backend, device))

    threshold_cases = [
        ("normal values", torch.randn(300, 6, 3, 3, generator=gen)),
        ("ReLU, 99.7% zeros", torch.relu(torch.randn(2000, 4, generator=gen) - 2.75)),
        ("heavy ties", torch.round(torch.randn(5000, 3, generator=gen) * 2) / 2),
        ("constant unit", torch.full((500, 2), 3.25)),
        ("float16", torch.randn(700, 5, generator=gen).half()),
        ("fewer values than 1/quantile", torch.randn(17, 3, generator=gen)),
    ]
    for name, acts in threshold_cases:
        for method in ("linear", "hazen"):
            def quantile_check(acts=acts, method=method):
                q = TopQuantile(acts.shape[1], 0.005, method, backend=backend)
                for b in acts.to(device).split(max(1, acts.shape[0] // 3)):
                    q.add(b)
                got = q.finish(lambda: [acts.to(device)])
                want = reference_thresholds(acts, 0.005, method)
                return torch.equal(got, want) and launched_as_planned(backend), f"{q.passes} pass(es)"
            check(f"thresholds ({method}): {name}", quantile_check)
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastdissect.engine.selftest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["cuda", "cuda_emu", "cpu"], default=None,
                        help="kernels to check (default: cuda with a GPU, else cuda_emu)")
    args = parser.parse_args(argv)
    backend = args.backend or ("cuda" if torch.cuda.is_available() else "cuda_emu")
    info = build_info()
    print(f"fastdissect {__version__} selftest, backend={backend}, build: {info}")
    if backend == "cuda":
        if not torch.cuda.is_available():
            print("FAIL  no CUDA device is visible to torch")
            return 1
        if not info.get("cuda"):
            print("FAIL  this build has no CUDA kernels: rebuild with FASTDISSECT_CUDA=ON")
            return 1
    device = "cuda" if backend == "cuda" else "cpu"
    ok = run(backend, device)
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
