"""`fastdissect demo` against one forward pass of its model over the same images.

The demo: EfficientNet-Lite0 (ImageNet weights) on the built-in concept set (512 images by default,
FASTDISSECT_BENCH_IMAGES to change), five layers in one pass, formulas of up to 3 concepts (beam 5)
and the permuted control on the last layer (_bn1), the CSVs, the saved results, the report and the
explained photograph; `--visualize 0` (feature visualisation is optimisation, not dissection: its
cost is in bench_visualize.py). The baseline: one forward pass over the same images, decoding images
and labels (bench_pipeline.forward_over_the_data). The data set is generated once for both; the
demo's first round packs its labels (the mask cache), as a user's first run does.
Run: pytest benchmarks/bench_demo.py -s -p no:cacheprovider  (the ratio and the demo's stages are printed).
Target: the whole demo <= 1.3x the forward pass.
"""

import os
import re
import time

import pytest

import fastdissect as fd

pytest.importorskip("efficientnet_lite_pytorch", reason="needs the demo extra")
from bench_pipeline import forward_over_the_data  # noqa: E402
from fastdissect.cli.main import main  # noqa: E402
from fastdissect.pipeline import models  # noqa: E402

IMAGES = int(os.environ.get("FASTDISSECT_BENCH_IMAGES", 512))
ROUNDS = 3
GROUP = f"fastdissect demo vs one forward pass: EfficientNet-Lite0, {IMAGES} built-in images"
RESULTS: dict = {}


@pytest.fixture(scope="module")
def concepts(tmp_path_factory):
    return fd.datasets.builtin(tmp_path_factory.mktemp("demo") / "concepts", n_images=IMAGES)


def test_one_forward_pass(benchmark, concepts):
    model = models.efficientnet_lite0()
    _, layers, mean, std = models.BUILTIN["efficientnet-lite0"]
    benchmark.group = GROUP
    benchmark.extra_info.update(role="baseline", images=IMAGES)
    benchmark.pedantic(forward_over_the_data, args=(model, layers, mean, std, fd.datasets.Broden(concepts)),
                       rounds=ROUNDS, iterations=1, warmup_rounds=1)
    RESULTS["forward"] = benchmark.stats.stats.median if benchmark.stats else None


def test_demo(benchmark, concepts, tmp_path, capsys):
    """The whole command, in this process; each round writes a new output directory."""
    rounds = iter(range(ROUNDS + 2))

    def demo():
        out = tmp_path / f"round{next(rounds)}"
        out.mkdir()
        (out / "concepts").symlink_to(concepts)  # the demo's own data set, generated once
        started = time.perf_counter()
        assert main(["demo", "--out", str(out), "--images", str(IMAGES), "--visualize", "0", "--quiet"]) == 0
        return out, time.perf_counter() - started

    benchmark.group = GROUP
    benchmark.extra_info.update(role="fastdissect", images=IMAGES)
    out, _ = benchmark.pedantic(demo, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    printed = capsys.readouterr().out
    result = fd.load(out)
    assert result["_bn1"].formulas is not None and result["_bn1"].control is not None  # the flagship ran
    assert all(result[name].formulas is None and result[name].control is None for name in list(result)[:-1])
    assert (out / "report" / "explain" / "index.html").is_file()
    took = re.findall(r"report: .* \((\d+) s\)", printed)  # each round's; the last one's is shown
    with capsys.disabled():
        print(f"\nfastdissect demo, {IMAGES} images: formulas on _bn1 "
              f"({sum(f is not None for f in result['_bn1'].formulas.formulas)} units), "
              f"{result['_bn1'].summary.get('beyond_chance')} detectors beyond chance; "
              f"dissection to report {took[-1] if took else '?'} s in the last round")
        forward = RESULTS.get("forward")
        if forward and benchmark.stats:
            print(f"fastdissect demo: {benchmark.stats.stats.median:.1f} s = "
                  f"{benchmark.stats.stats.median / forward:.2f}x one forward pass ({forward:.1f} s; target <= 1.3x)")
