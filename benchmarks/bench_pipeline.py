"""Where a dissection's time goes: the model's forward pass vs fastdissect's work per batch.

Workload: the demo (EfficientNet-Lite0, 224 px, five layers from _blocks.1 to _bn1, 1,776 units) on
32 images of the built-in concept set. fastdissect's work per batch = TopQuantile.add (pass 1) +
Tally.add (pass 2) for every layer. Target: at most 10% of the forward time on CPU.
Also: the whole fd.dissect (one pass, the default, and passes=2) against one forward pass over the
same 96 images with the same loading (target <= 1.15x; FASTDISSECT_BENCH_IMAGES=512 for the demo's
512 images, 3 rounds), and the saving of stopping the forward pass at an early layer,
fd.dissect(stop_early=True).
Run: pytest benchmarks/bench_pipeline.py -s  (the shares, ratios and forward calls are printed).
"""

import os

import pytest
import torch

import fastdissect as fd

pytest.importorskip("efficientnet_lite_pytorch", reason="needs the demo extra")
from fastdissect.pipeline import models  # noqa: E402

BATCH = 32
GROUP = "pipeline: EfficientNet-Lite0 demo, 32 images, 5 layers"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ds = fd.datasets.Broden(fd.datasets.builtin(tmp_path_factory.mktemp("pipe") / "set", n_images=BATCH))
    batch = fd.datasets.collate([ds[i] for i in range(BATCH)], ds.num_concepts)
    model = models.efficientnet_lite0()
    _, layers, mean, std = models.BUILTIN["efficientnet-lite0"]
    x = fd.datasets.to_model_input(batch.images, mean, std, size=(224, 224))
    with torch.no_grad(), fd.trace(model, layers) as acts:
        model(x)
    acts = dict(acts)
    thresholds = {k: fd.thresholds(a) for k, a in acts.items()}
    return model, layers, x, acts, thresholds, batch, ds


def forward(model, layers, x):
    with torch.no_grad(), fd.trace(model, layers):
        model(x)


def fastdissect_work(acts, thresholds, batch, ds):
    cats = torch.as_tensor(ds.primary_category)
    for name, a in acts.items():
        q = fd.TopQuantile(a.shape[1])
        q.add(a)
        t = fd.Tally(a.shape[1], ds.num_concepts, thresholds[name], union="netdissect", categories=cats)
        t.add(a, batch.masks)


def test_forward(benchmark, setup):
    model, layers, x, *_ = setup
    benchmark.group = GROUP
    benchmark.extra_info.update(role="baseline", images=BATCH)
    benchmark.pedantic(forward, args=(model, layers, x), rounds=5, iterations=1, warmup_rounds=1)


def test_fastdissect_work(benchmark, setup, capsys):
    _, _, _, acts, thresholds, batch, ds = setup
    benchmark.group = GROUP
    benchmark.extra_info.update(role="fastdissect", images=BATCH)
    benchmark.pedantic(fastdissect_work, args=(acts, thresholds, batch, ds), rounds=5, iterations=1,
                       warmup_rounds=1)


EARLY_GROUP = "forward for an early layer (_blocks.1) of EfficientNet-Lite0, 32 images"


def early_forward(model, x, stop):
    with torch.no_grad(), fd.trace(model, ["_blocks.1"], stop=stop):
        fd.pipeline.hooks.run_until_traced(model, x)


def test_forward_to_the_end(benchmark, setup):
    model, _, x, *_ = setup
    benchmark.group = EARLY_GROUP
    benchmark.pedantic(early_forward, args=(model, x, False), rounds=5, iterations=1, warmup_rounds=1)


def test_forward_stopped_at_the_layer(benchmark, setup):
    model, _, x, *_ = setup
    benchmark.group = EARLY_GROUP
    benchmark.extra_info.update(role="fastdissect")  # the saving of fd.dissect(stop_early=True)
    benchmark.pedantic(early_forward, args=(model, x, True), rounds=5, iterations=1, warmup_rounds=1)


WHOLE = int(os.environ.get("FASTDISSECT_BENCH_IMAGES", 96))
ROUNDS = 5 if WHOLE <= 128 else 3
WHOLE_GROUP = f"fd.dissect vs one forward pass: EfficientNet-Lite0 demo, {WHOLE} images, 5 layers"


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    ds = fd.datasets.Broden(fd.datasets.builtin(tmp_path_factory.mktemp("whole") / "set", n_images=WHOLE))
    model = models.efficientnet_lite0()
    _, layers, mean, std = models.BUILTIN["efficientnet-lite0"]
    return model, layers, mean, std, ds


def forward_over_the_data(model, layers, mean, std, ds):
    """The floor: every image decoded (with its labels) and run through the model once."""
    from functools import partial

    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, collate_fn=partial(fd.datasets.collate,
                                                                                   num_concepts=ds.num_concepts))
    for batch in loader:
        forward(model, layers, fd.datasets.to_model_input(batch.images, mean, std, size=(224, 224)))


def dissection(model, layers, mean, std, ds, passes):
    return fd.dissect(model, layers, ds, mean=mean, std=std, image_size=(224, 224), batch_size=BATCH,
                      passes=passes, verbose=False)


def test_one_forward_over_the_data(benchmark, whole):
    benchmark.group = WHOLE_GROUP
    benchmark.extra_info.update(role="baseline", images=WHOLE)
    benchmark.pedantic(forward_over_the_data, args=whole, rounds=ROUNDS, iterations=1, warmup_rounds=1)


def test_dissect_two_passes(benchmark, whole):
    benchmark.group = WHOLE_GROUP
    benchmark.extra_info.update(role="baseline", images=WHOLE)
    benchmark.pedantic(dissection, args=(*whole, 2), rounds=ROUNDS, iterations=1, warmup_rounds=1)


def test_dissect_one_pass(benchmark, whole):
    """fd.dissect's default; printed as a share of one forward pass (target <= 115%)."""
    benchmark.group = WHOLE_GROUP
    benchmark.extra_info.update(role="fastdissect", images=WHOLE)
    calls = []
    hook = whole[0].register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    result = benchmark.pedantic(dissection, args=(*whole, 1), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    hook.remove()
    batches = -(-WHOLE // BATCH)
    print(f"\nfd.dissect, one pass, {WHOLE} images: {len(calls) / (ROUNDS + 1):g} forward calls a run "
          f"({sum(calls) / (ROUNDS + 1):g} images) where one forward pass is {batches} calls")
    two = dissection(*whole, 2)
    for name in whole[1]:  # the speed is worth nothing unless the numbers are the two-pass numbers
        assert torch.equal(result[name].scores.intersection, two[name].scores.intersection)
        assert torch.equal(result[name].scores.unit_area, two[name].scores.unit_area)
