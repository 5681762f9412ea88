"""Many layers at once, large models: every block of a ViT-B/16-shaped model (12 blocks x 768 units on
a 14x14 token grid: 9,216 units) and layer1-layer4 of a ResNet-50-shaped model (256 units 56x56, 512
28x28, 1,024 14x14, 2,048 7x7: 3,840 units), each dissected in one run on the built-in concept set at
224 px (images in batches of 16).

Both models are written below in plain torch, random weights under a fixed seed; nothing is
downloaded. Per model: one forward pass over the same images with the same layers traced, decoding
images and labels (the baseline, as in bench_pipeline.py), against `fd.dissect` (one pass, the
default; its ratio to the forward is printed at the end); the model's forward calls of one round (a
forward pre-hook); the bytes the single pass keeps at its peak (`RetainedStore.peak_bytes`) against
`memory_limit` (2 GiB by default) and the process's peak resident memory above its level at the start
of the round (sampled); then one run with memory_limit = min(64 MiB, half of that peak), which must
keep at most that in memory, spill the rest, and give the same counts as the unbounded run.
Images: 32 (FASTDISSECT_BENCH_LARGE_IMAGES=N for another number).
Run: pytest benchmarks/bench_large_models.py -p no:cacheprovider -s  (the table is printed at the end);
python benchmarks/bench_large_models.py prints each layer's share of maps that are not cold (the f of
docs/performance.md's GPU roofline).
"""

import importlib
import math
import os
import resource
import threading
import time
from functools import partial

import pytest
import torch
from torch import nn

import fastdissect as fd
from fastdissect.pipeline.retained import RetainedStore

IMAGES = int(os.environ.get("FASTDISSECT_BENCH_LARGE_IMAGES", "32"))
BATCH = 16
ROUNDS, WARMUP = 3, 1
SMALL_LIMIT = 64 << 20  # the bounded run's memory_limit, or half the unbounded run's peak when less
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESULTS: dict = {}


class Bottleneck(nn.Module):
    """ResNet-50's block: 1x1 down to `width`, 3x3 (strided), 1x1 up to 4 * width, plus the shortcut."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """Bottleneck stages of 3, 4, 6 and 3 blocks, 256 / 512 / 1,024 / 2,048 channels out."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1, self.relu, self.maxpool = nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (blocks, width, stride) in enumerate([(3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)]):
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(cin, width, stride if b == 0 else 1))
                cin = 4 * width
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class ViTB16(nn.Module):
    """16x16 patches to 768 channels, a class token and position embeddings, 12 pre-norm blocks."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 768, 16, 16)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, 768))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 197, 768))
        self.blocks = nn.Sequential(*[nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0, activation="gelu",
                                                                 batch_first=True, norm_first=True)
                                      for _ in range(12)])
        self.norm, self.head = nn.LayerNorm(768), nn.Linear(768, 1000)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit_b16():
    torch.manual_seed(0)
    layers = [f"blocks.{i}" for i in range(12)]
    return ViTB16().eval(), layers, {name: fd.token_grid() for name in layers}  # the class token dropped


def resnet50():
    torch.manual_seed(0)
    return ResNet50().eval(), ["layer1", "layer2", "layer3", "layer4"], None


MODELS = {"ViT-B/16": vit_b16, "ResNet-50": resnet50}
UNITS = {"ViT-B/16": 12 * 768, "ResNet-50": 256 + 512 + 1024 + 2048}


def rss() -> int:
    """The process's resident bytes now (ru_maxrss, its peak so far, where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """The resident memory's peak above its level at the start of the block, sampled every 10 ms:
    ru_maxrss is the peak of the whole process, which the second model of this file cannot raise."""

    def __enter__(self):
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())
        self.growth = self.peak - self.start


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return fd.datasets.Broden(fd.datasets.builtin(tmp_path_factory.mktemp("large") / "set", n_images=IMAGES))


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request):
    model, layers, transform = MODELS[request.param]()
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return request.param, model, layers, transform, calls


@pytest.fixture
def stores(monkeypatch):
    """Every RetainedStore fd.dissect makes (one per run), to read its counts after the run."""
    made = []

    class Recorded(RetainedStore):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(importlib.import_module("fastdissect.pipeline.dissect"), "RetainedStore", Recorded)
    return made


def group(name, layers, units):
    return f"fd.dissect vs one forward pass: {name}, {IMAGES} images, {len(layers)} layers, {units:,} units"


def measured(fn, record: dict):
    """fn, timed and memory-sampled per round, its model's forward calls counted from zero."""
    def round_(*args, calls, **kwargs):
        calls[0] = 0
        with PeakRSS() as mem:
            started = time.perf_counter()
            out = fn(*args, **kwargs)
            record.setdefault("times", []).append(time.perf_counter() - started)
        record.update(calls=calls[0], rss_growth=mem.growth)
        return out
    return round_


def forward_over_the_data(model, layers, transform, ds):
    """The floor: every image decoded (with its labels) and run through the model once, layers traced."""
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, collate_fn=partial(fd.datasets.collate,
                                                                                   num_concepts=ds.num_concepts))
    for batch in loader:
        x = fd.datasets.to_model_input(batch.images, MEAN, STD, size=(224, 224))
        with torch.no_grad(), fd.trace(model, layers, transform):
            model(x)


def dissection(model, layers, transform, ds, memory_limit=2 << 30):
    return fd.dissect(model, layers, ds, transform=transform, mean=MEAN, std=STD, image_size=(224, 224),
                      batch_size=BATCH, memory_limit=memory_limit, verbose=False)


def units_of(result, layers):
    return sum(result[name].num_units for name in layers)


def test_one_forward_over_the_data(benchmark, setup, dataset):
    name, model, layers, transform, calls = setup
    benchmark.group = group(name, layers, UNITS[name])
    benchmark.extra_info.update(role="baseline", images=IMAGES)
    record = RESULTS.setdefault((name, "forward"), {})
    benchmark.pedantic(measured(forward_over_the_data, record), args=(model, layers, transform, dataset),
                       kwargs={"calls": calls}, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    assert record["calls"] == math.ceil(IMAGES / BATCH)


def test_dissect_one_pass(benchmark, setup, dataset, stores):
    """fd.dissect's default: every layer of the model in one run; what it keeps, bounded by memory_limit."""
    name, model, layers, transform, calls = setup
    benchmark.group = group(name, layers, UNITS[name])
    benchmark.extra_info.update(role="fastdissect", images=IMAGES)
    record = RESULTS.setdefault((name, "dissect"), {})
    result = benchmark.pedantic(measured(dissection, record), args=(model, layers, transform, dataset),
                                kwargs={"calls": calls}, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    assert units_of(result, layers) == UNITS[name]
    record.update(layers=len(layers), units=UNITS[name], kept=stores[-1].peak_bytes, limit=stores[-1].memory_limit,
                  spilled=stores[-1].spilled_bytes, result=result)


def test_dissect_with_a_small_memory_limit(setup, dataset, stores):
    """The kept maps past the limit go to files: memory stays under it, every count stays the same."""
    name, model, layers, transform, calls = setup
    full = RESULTS.get((name, "dissect"), {})
    if "result" not in full:  # run alone (-k): the unbounded run first
        full = {"result": dissection(model, layers, transform, dataset), "kept": stores[-1].peak_bytes}
    limit = min(SMALL_LIMIT, full["kept"] // 2)  # at most half of what the run keeps: some records spill
    record = RESULTS.setdefault((name, "bounded"), {})
    bounded = measured(dissection, record)(model, layers, transform, dataset, limit, calls=calls)
    store = stores[-1]
    assert store.peak_bytes <= limit < store.peak_bytes + store.spilled_bytes == full["kept"]
    record.update(kept=store.peak_bytes, limit=limit, spilled=store.spilled_bytes)
    unbounded = full.pop("result")
    for layer in layers:
        assert torch.equal(bounded[layer].scores.intersection, unbounded[layer].scores.intersection)
        assert torch.equal(bounded[layer].scores.unit_area, unbounded[layer].scores.unit_area)


def seconds(times: list) -> str:
    times = times[WARMUP:] or times  # the warm-up round packed the labels into the mask cache
    lo, hi = min(times), max(times)
    return f"{lo:.1f}" if round(lo, 1) == round(hi, 1) else f"{lo:.1f}-{hi:.1f}"


def median(times: list) -> float:
    times = sorted(times[WARMUP:] or times)
    return times[len(times) // 2]


def test_print_the_table(capsys):
    mb = lambda b: f"{b / 2**20:,.1f}"  # noqa: E731
    with capsys.disabled():
        print(f"\nmodel      layers  units  images  forward s  dissect s  ratio  forward calls (fwd/dissect)  "
              f"kept peak MiB  memory_limit MiB  spilled MiB  RSS growth MiB (fwd/dissect)   [batches of {BATCH}]")
        for name in MODELS:
            fwd, dis = RESULTS.get((name, "forward")), RESULTS.get((name, "dissect"))
            if not fwd or not dis or "times" not in fwd or "units" not in dis:
                continue
            rows = [(dis, seconds(dis["times"]), f"{median(dis['times']) / median(fwd['times']):.2f}x")]
            if (name, "bounded") in RESULTS and "kept" in RESULTS[(name, "bounded")]:
                b = RESULTS[(name, "bounded")]
                rows.append((b, seconds(b["times"]), f"{b['times'][-1] / median(fwd['times']):.2f}x"))
            for r, time_s, ratio in rows:
                print(f"{name:<10} {dis['layers']:>6} {dis['units']:>6,} {IMAGES:>7} {seconds(fwd['times']):>10} "
                      f"{time_s:>10} {ratio:>6} {fwd['calls']:>14} / {r['calls']:<13} {mb(r['kept']):>13} "
                      f"{mb(r['limit']):>17} {mb(r['spilled']):>12} {mb(fwd['rss_growth']):>14} / "
                      f"{mb(r['rss_growth'])}")
        print(f"process peak RSS (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


def hot_shares(images: int = 32) -> None:
    """Per layer, f = the share of (image, unit) maps that are not cold (their maximum above
    hot_floor(T_k)), the f of docs/performance.md's GPU roofline rows for these two models."""
    import tempfile

    from fastdissect.pipeline.retained import hot_floor

    ds = fd.datasets.Broden(fd.datasets.builtin(tempfile.mkdtemp() + "/set", n_images=images))
    x = fd.datasets.to_model_input(fd.datasets.collate([ds[i] for i in range(images)], ds.num_concepts).images,
                                   MEAN, STD, size=(224, 224))
    for name, build in MODELS.items():
        model, layers, transform = build()
        acts = {layer: [] for layer in layers}
        for batch in x.split(BATCH):
            with torch.no_grad(), fd.trace(model, layers, transform) as out:
                model(batch)
            for layer in layers:
                acts[layer].append(out[layer].clone())
        for layer, parts in acts.items():
            a = torch.cat(parts)
            hot = a.amax(dim=(2, 3)).to(torch.float64) > hot_floor(fd.thresholds(a))
            print(f"{name} {layer} {tuple(a.shape[1:])}: f = {hot.double().mean():.3f}")


if __name__ == "__main__":  # python benchmarks/bench_large_models.py: the f of each layer
    hot_shares()
