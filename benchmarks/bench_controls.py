"""The controls' cost: one tally batch alone, and with its permuted control, on ResNet-18 layer4
shapes: in the tally's kernel call (each unit mask made once, counted against the image's masks and
the deranged image's: Tally.add(control=...), what fd.dissect does), and the two-call way it
replaced (the deranged images' masks gathered, then a second tally). The ratios to the tally alone
are printed at the end of the run (goal: the one call <= 1.25x).

    cd benchmarks && python -m pytest -q -p no:cacheprovider bench_controls.py -k "not rotation"
    OMP_NUM_THREADS=1 python -m pytest -q -p no:cacheprovider bench_controls.py -k "not rotation" \
        --benchmark-timer=time.process_time     (CPU time: steadier on a shared machine)
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


MEDIANS = {}  # name -> median seconds of this run's control benchmarks (none with --benchmark-disable)


@pytest.fixture(scope="module", autouse=True)
def print_ratios(request):
    """After the module: each control variant's median against the tally alone's, same run."""
    yield
    alone = MEDIANS.get("alone")
    plugins = request.config.pluginmanager
    writer, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if not alone or writer is None or capture is None:
        return
    with capture.global_and_fixture_disabled():  # a teardown's output is captured otherwise
        writer.write_line("")
        for name, label in (("one_call", "in the tally's kernel call"), ("two_calls", "as a second tally")):
            if name in MEDIANS:
                writer.write_line(f"the permuted control {label} costs {MEDIANS[name] / alone:.2f}x the tally alone "
                                  f"({1000 * MEDIANS[name]:.2f} ms vs {1000 * alone:.2f} ms, medians)")


def _record(benchmark, name):
    if benchmark.stats is not None:
        MEDIANS[name] = benchmark.stats.stats.median


def test_tally_alone(benchmark, workload):
    acts, masks, thresholds, categories, _ = workload
    benchmark.group = GROUP
    benchmark(lambda: _tally(thresholds, categories).add(acts, masks))
    _record(benchmark, "alone")


def test_tally_with_permuted_control_in_one_call(benchmark, workload):
    acts, masks, thresholds, categories, perm = workload
    benchmark.group = GROUP
    benchmark.extra_info.update(role="fastdissect")

    def one_call():
        _tally(thresholds, categories).add(acts, masks, control=(_tally(thresholds, categories), masks.take(perm)))
    benchmark(one_call)
    _record(benchmark, "one_call")


def test_tally_with_permuted_control_as_two_calls(benchmark, workload):
    acts, masks, thresholds, categories, perm = workload
    benchmark.group = GROUP

    def both():
        _tally(thresholds, categories).add(acts, masks)
        _tally(thresholds, categories).add(acts, masks.take(perm))
    benchmark(both)
    _record(benchmark, "two_calls")


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
