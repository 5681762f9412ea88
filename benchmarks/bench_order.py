"""Does the order of the data set cost passes? The thresholds stage (every layer's TopQuantile) over
the built-in concept set in five orders, with the number of values declared (fd.dissect's way) and
without (a stream of unknown length, the only way before), against one plain forward pass.

Orders: natural; sorted by brightness (brightest first: large activations early, the hard case for
a floor that trails the values seen so far); sources in blocks (the real photographs, every 9th and
10th image of the built-in set, first, then the procedural images); reversed; shuffled.
Models: the demo (EfficientNet-Lite0, 224 px, five layers) and a small random conv (64 px, two layers).
Counted: forward calls of the model (a forward hook), and the wall time; both printed as ratios to
one forward pass over the same images in the same run. Run:
pytest benchmarks/bench_order.py -p no:cacheprovider -s  (the table is printed at the end).
"""

import pytest
import torch

import fastdissect as fd

IMAGES, BATCH = 32, 8
ORDERS = ("natural", "brightness", "blocks", "reversed", "shuffled")
RESULTS: dict = {}


def small_conv():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 32, 3, stride=2), torch.nn.ReLU()).eval(), ["1", "3"], 64


def demo():
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs the demo extra")
    from fastdissect.pipeline import models

    _, layers, _, _ = models.BUILTIN["efficientnet-lite0"]
    return models.efficientnet_lite0(), layers, 224


MODELS = {"demo": demo, "small_conv": small_conv}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    ds = fd.datasets.Broden(fd.datasets.builtin(tmp_path_factory.mktemp("order") / "set", n_images=IMAGES))
    return fd.datasets.collate([ds[i] for i in range(IMAGES)], ds.num_concepts).images


def ordering(order: str, images: torch.Tensor) -> torch.Tensor:
    n = images.shape[0]
    if order == "brightness":
        return torch.argsort(images.float().mean(dim=(1, 2, 3)), descending=True)
    if order == "blocks":
        photo = torch.arange(n) % 10 >= 8  # datasets/builtin.py: 8 procedural images, then 2 photographs
        return torch.cat([torch.nonzero(photo).flatten(), torch.nonzero(~photo).flatten()])
    if order == "reversed":
        return torch.arange(n - 1, -1, -1)
    if order == "shuffled":
        return torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return torch.arange(n)


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request, images):
    model, layers, size = MODELS[request.param]()
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    x = fd.datasets.to_model_input(images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), size=(size, size))
    return request.param, model, layers, x, calls


def forward_pass(model, layers, x):
    for batch in x.split(BATCH):
        with torch.no_grad(), fd.trace(model, layers) as acts:
            model(batch)
        yield dict(acts)


def thresholds_stage(model, layers, x, declared: bool):
    """Every layer's exact thresholds: one pass, plus the further passes the stream needs."""
    quantiles = {}
    for acts in forward_pass(model, layers, x):
        for name, a in acts.items():
            if name not in quantiles:
                total = x.shape[0] * a.shape[2] * a.shape[3] if declared else None
                quantiles[name] = fd.TopQuantile(a.shape[1], total_values=total)
            quantiles[name].add(a)
    while any(q.needs_pass for q in quantiles.values()):
        pending = {name: q for name, q in quantiles.items() if q.needs_pass}
        for q in pending.values():
            q.new_pass()
        for acts in forward_pass(model, layers, x):
            for name, q in pending.items():
                q.add(acts[name])
    layers_again = sum(int(q.passes > 1) for q in quantiles.values())
    return {name: q.thresholds() for name, q in quantiles.items()}, layers_again


def median(benchmark):
    return benchmark.stats.stats.median if benchmark.stats else None  # None under --benchmark-disable


def reference(model, layers, x):
    """Each layer's thresholds of all images at once (fd.thresholds), computed once per model."""
    acts = list(forward_pass(model, layers, x))
    return {layer: fd.thresholds(torch.cat([a[layer] for a in acts])) for layer in acts[0]}


def test_one_forward_pass(benchmark, setup):
    name, model, layers, x, calls = setup
    benchmark.group = f"thresholds stage vs one forward pass: {name}, {IMAGES} images"
    benchmark.extra_info.update(role="baseline", images=IMAGES)
    calls[0] = 0
    benchmark.pedantic(lambda: list(forward_pass(model, layers, x)), rounds=1, iterations=1)
    RESULTS[(name, "forward")] = (median(benchmark), calls[0])
    RESULTS[(name, "reference")] = reference(model, layers, x)


@pytest.mark.parametrize("declared", [False, True], ids=["unknown_total", "declared_total"])
@pytest.mark.parametrize("order", ORDERS)
def test_thresholds_stage(benchmark, setup, order, declared):
    name, model, layers, x, calls = setup
    benchmark.group = f"thresholds stage vs one forward pass: {name}, {IMAGES} images"
    benchmark.extra_info.update(role="fastdissect", images=IMAGES, order=order, declared=declared)
    xo = x[ordering(order, x)]
    calls[0] = 0  # one round: the forward calls of one thresholds stage
    thresholds, layers_again = benchmark.pedantic(thresholds_stage, args=(model, layers, xo, declared), rounds=1,
                                                  iterations=1)
    want = RESULTS.get((name, "reference")) or reference(model, layers, x)
    for layer, t in thresholds.items():  # the order changes the passes, never a number
        assert torch.equal(t, want[layer])
    if declared:
        assert layers_again == 0
    RESULTS[(name, order, declared)] = (median(benchmark), calls[0], layers_again)


def test_print_the_table(capsys):
    with capsys.disabled():
        print("\nmodel       order       total     forward calls (x one pass)   time (x one pass)   layers re-read")
        for (name, *rest), measured in RESULTS.items():
            if rest in (["forward"], ["reference"]):
                continue
            time, calls, again = measured
            base_time, base_calls = RESULTS[(name, "forward")]
            order, declared = rest
            ratio = f"{time / base_time:.2f}" if time and base_time else "-"
            print(f"{name:<11} {order:<11} {'declared' if declared else 'unknown':<9} "
                  f"{calls:>5.0f} ({calls / base_calls:.2f}x){'':<17} {ratio:>8}x {again:>12}")
