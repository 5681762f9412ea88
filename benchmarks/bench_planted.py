"""Planted answers: how often each labeler recovers the explanation planted in a synthetic unit, as
noise grows (fd.synthetic_units on 64 built-in images; 8 single-concept units, 4 A OR B, 4 A AND NOT B).

Labelers, all given the same units (pixel threshold 0.5 where one is needed: the units are 0/1 masks
plus N(0, noise^2)):
- netdissect: fd.score's best concept (single-concept units only; a tie with the planted concept counts);
- beam, optimal: fd.compositional's formula of at most 2 concepts (all units; recovered when the
  formula's masks equal the planted formula's on every image);
- auroc: the best image-level tag by fd.auroc of the unit's per-image max (single-concept units);
- clip: fd.soft_wpmi with a stand-in CLIP whose image-word similarity is the image's tags plus noise.
Run: pytest benchmarks/bench_planted.py -s  (prints the recovery table; docs/labels.md shows it).
"""

import numpy as np
import pytest
import torch

import fastdissect as fd
from fastdissect.analyses.synthetic import formula_mask

NOISE = (0.0, 0.25, 0.5, 1.0)
GROUP = "planted answers: recovery per labeler"


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    data = fd.datasets.Broden(fd.datasets.builtin(tmp_path_factory.mktemp("planted") / "d", n_images=64))
    tags = fd.datasets.tags_of(data, verbose=False).tags
    counts = tags.sum(0)
    common = [c for c in torch.argsort(counts, descending=True).tolist() if 8 <= counts[c] <= 56][:16]
    singles = [fd.Leaf(c) for c in common[:8]]
    pairs = [(common[i], common[i + 1]) for i in range(8, 16, 2)]
    formulas = singles + [fd.Or(fd.Leaf(a), fd.Leaf(b)) for a, b in pairs] + \
        [fd.And(fd.Leaf(a), fd.Not(fd.Leaf(b))) for a, b in pairs]
    labels = torch.from_numpy(np.stack([data[i].labels for i in range(len(data))]))
    masks = fd.pack_masks(labels=labels, image_labels=[data[i].image_labels for i in range(len(data))],
                          num_concepts=data.num_concepts)
    return data, tags, formulas, masks


def same_masks(found, planted, data) -> bool:
    if found is None:
        return False
    for i in range(len(data)):
        s = data[i]
        if not np.array_equal(formula_mask(found, s, {}), formula_mask(planted, s, {})):
            return False
    return True


def best_share(values: torch.Tensor, truth: list[int]) -> float:
    """Share of units whose planted concept scores the best value (a tie with a concept of the same
    pattern on this data set counts: the two explanations cannot be told apart here)."""
    return float(np.mean([bool(values[j, c] >= values[j].max()) for j, c in enumerate(truth)]))


def recoveries(setting, noise):
    data, tags, formulas, masks = setting
    acts = fd.synthetic_units(data, formulas, noise=noise, seed=1)
    half = torch.full((len(formulas),), 0.5)
    single = [k for k, f in enumerate(formulas) if isinstance(f, fd.Leaf)]
    truth = [f.concept for f in formulas if isinstance(f, fd.Leaf)]
    s = fd.score(acts, masks, thresholds=half)
    iou = s.iou.clone()
    iou[:, 0] = -1
    rows = {"netdissect": best_share(iou[single], truth)}
    for search in ("beam", "optimal"):
        f = fd.compositional(acts, masks, thresholds=half, formula_length=2, search=search)
        rows[search] = float(np.mean([same_masks(f.formulas[k], formulas[k], data) for k in range(len(formulas))]))
    peak = acts.flatten(2).amax(dim=2)[:, single]
    a = torch.nan_to_num(fd.auroc(peak, tags), nan=-1.0)
    a[:, 0] = -1
    rows["auroc"] = best_share(a, truth)
    g = torch.Generator().manual_seed(2)
    sim = tags.double() + noise * torch.randn(tags.shape, generator=g, dtype=torch.float64)
    w = fd.soft_wpmi(sim, acts.flatten(2).mean(dim=2)[:, single], top_k=10)
    w[:, 0] = -torch.inf
    rows["clip"] = best_share(w, truth)
    return rows


def test_planted_recovery(benchmark, setting, capsys):
    benchmark.group = GROUP
    table = benchmark.pedantic(lambda: {n: recoveries(setting, n) for n in NOISE}, rounds=1, iterations=1)
    benchmark.extra_info.update(role="fastdissect", table=table)
    assert table[0.0]["beam"] == table[0.0]["optimal"] == 1.0   # without noise every formula is found
    with capsys.disabled():
        names = list(table[NOISE[0]])
        print("\n| noise | " + " | ".join(names) + " |\n|" + " --- |" * (len(names) + 1))
        for n, row in table.items():
            print(f"| {n:g} | " + " | ".join(f"{100 * row[k]:.0f}%" for k in names) + " |")
