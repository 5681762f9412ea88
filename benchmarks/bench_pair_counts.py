"""The pair_counts op (|A & B & L| and |A & B & U & L| for concept pairs, no mask of A AND B built)
against what the optimal search did before it: build the masks A AND B (`combine`), then count them
with the formula-count kernel. Same pairs, same counts (checked), one unit's images or the whole set.
The conftest prints the ratios.

    cd benchmarks && python -m pytest -q -p no:cacheprovider bench_pair_counts.py
"""

import pytest
import torch

from fastdissect.core.formula_masks import AND, combine, concept_set
from fastdissect.kernels import dispatch
import workloads

FULL = dict(n=4000, size=56, concepts=400, pairs=256)
SMOKE = dict(n=200, size=28, concepts=60, pairs=32)


@pytest.fixture(scope="module")
def case(request):
    size = SMOKE if request.config.getoption("benchmark_disable") else FULL
    masks, _, _ = workloads.broden_like_masks(size["n"], size["size"], size["concepts"], seed=0)
    leaves = concept_set(masks)
    # The pairs the search reaches first are of frequent concepts: pairs among the 40 most common.
    common = torch.argsort(leaves.offsets.diff(), descending=True)[:40]
    g = torch.Generator().manual_seed(0)
    a = common[torch.randint(0, common.shape[0], (size["pairs"],), generator=g)]
    b = common[torch.randint(0, common.shape[0], (size["pairs"],), generator=g)]
    no_unit = torch.full((masks.num_images,), -1, dtype=torch.int64)
    no_words = torch.zeros(0, masks.words_per_mask, dtype=torch.int64)
    return masks, leaves, a, b, no_unit, no_words, size


def _group(size):
    return (f"triple counts of {size['pairs']} concept pairs, {size['n']} images {size['size']}x{size['size']}, "
            f"{size['concepts']} concepts")


def test_pair_counts(benchmark, case):
    masks, leaves, a, b, no_unit, no_words, size = case
    benchmark.group, benchmark.extra_info["role"] = _group(size), "fastdissect"
    t, _ = benchmark(lambda: dispatch.pair_counts("cpu", leaves, a, b, no_unit, no_words, masks))
    want, _ = _materialised(masks, leaves, a, b, no_unit, no_words)
    assert torch.equal(t, want)


def test_masks_built_then_counted(benchmark, case):
    masks, leaves, a, b, no_unit, no_words, size = case
    benchmark.group = _group(size)
    benchmark(lambda: _materialised(masks, leaves, a, b, no_unit, no_words))


def _materialised(masks, leaves, a, b, unit_rows, unit_words):
    both = combine(leaves, a, leaves, b, AND)
    return dispatch.formula_counts("cpu", both, unit_rows[both.images], unit_words, masks)
