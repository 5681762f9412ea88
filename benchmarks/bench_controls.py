"""The controls' cost: one tally batch alone, and with its permuted control (the deranged images'
masks gathered, then a second tally) in the same call, on ResNet-18 layer4 shapes.

    cd benchmarks && python -m pytest -q -p no:cacheprovider bench_controls.py   (goal: under 2x)
"""

import pytest

import fastdissect as fd
from fastdissect.engine.controls import derangement
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


ROTATION_GROUP = "axis-alignment test: EfficientNet-Lite0 last block, 16 images, 6 rotation powers"
POWERS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@pytest.fixture(scope="module")
def rotation_setup(tmp_path_factory):
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs the demo extra")
    from fastdissect.pipeline import models

    ds = fd.datasets.Broden(fd.datasets.builtin(tmp_path_factory.mktemp("rot") / "set", n_images=16))
    _, layers, mean, std = models.BUILTIN["efficientnet-lite0"]
    options = dict(image_size=(224, 224), mean=mean, std=std, batch_size=16, verbose=False)
    return models.efficientnet_lite0(), layers[-1], ds, options


def test_rotation_powers_dissected_one_by_one(benchmark, rotation_setup):
    model, layer, ds, options = rotation_setup
    benchmark.group = ROTATION_GROUP
    width = fd.analyses.rotation.layer_width(model, layer, ds, image_size=options["image_size"], mean=options["mean"],
                                    std=options["std"])

    def one_by_one():
        for p in POWERS:
            fd.dissect(model, [layer], ds, transform={layer: fd.random_rotation(width, power=p)}, **options)
    benchmark.pedantic(one_by_one, rounds=1, iterations=1)


def test_rotation_experiment_one_pass(benchmark, rotation_setup):
    model, layer, ds, options = rotation_setup
    benchmark.group = ROTATION_GROUP
    benchmark.extra_info.update(role="fastdissect")
    benchmark.pedantic(lambda: fd.rotation_experiment(model, layer, ds, powers=POWERS, **options), rounds=2,
                       iterations=1)
