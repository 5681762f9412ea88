"""The permuted control's cost: one tally batch alone, and with its control (the deranged images'
masks gathered, then a second tally) in the same call, on ResNet-18 layer4 shapes.

    cd benchmarks && python -m pytest -q -p no:cacheprovider bench_controls.py   (goal: under 2x)
"""

import pytest

import fastdissect as fd
from fastdissect.controls import derangement
from workloads import layer4_workload

N_IMAGES, UNITS, MAP, LABEL, CONCEPTS = 64, 512, 7, 112, 150
GROUP = "tally with the permuted control: resnet18-layer4, 64 images, netdissect union"


@pytest.fixture(scope="module")
def workload():
    acts, _, _, masks, thresholds, categories = layer4_workload(N_IMAGES, UNITS, MAP, LABEL, CONCEPTS)
    return acts, masks, thresholds, categories, derangement(N_IMAGES, 0)


def _tally(thresholds, categories):
    return fd.Tally(UNITS, CONCEPTS, thresholds, union="netdissect", categories=categories)


def test_tally_alone(benchmark, workload):
    acts, masks, thresholds, categories, _ = workload
    benchmark.group = GROUP
    benchmark(lambda: _tally(thresholds, categories).add(acts, masks))


def test_tally_with_permuted_control(benchmark, workload):
    acts, masks, thresholds, categories, perm = workload
    benchmark.group = GROUP  # the table's relative column is the control's cost (the goal: under 2x)

    def both():
        _tally(thresholds, categories).add(acts, masks)
        _tally(thresholds, categories).add(acts, masks.take(perm))
    benchmark(both)
