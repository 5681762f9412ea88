"""What the single pass keeps (fastdissect/retained.py), against the bound and the full activations.

Run: python benchmarks/kept_memory.py  (a 7x7 and a 56x56 layer of smooth ReLU maps, then the
demo's five layers on 96 built-in images; quantile 0.005). Prints, per layer, the values kept per
unit, the seed estimate 1.5 * q * N * h * w + 64, the share of all values kept and the bytes.
"""

import tempfile

import torch

import fastdissect as fd
from fastdissect.pipeline.retained import kept_values, record_bytes, retain


def measure(batches, q=0.005):
    tq, kept, kept_bytes, total = None, 0, 0, 0
    for a in batches:
        if tq is None:
            tq = fd.TopQuantile(a.shape[1], q)
        tq.add(a)
        record = retain(a, tq.floor_values())
        kept, kept_bytes, total = kept + kept_values(record), kept_bytes + record_bytes(record), total + a.numel()
    K, h, w = a.shape[1:]
    n = total // (K * h * w)
    return (f"N={n} K={K} {h}x{w}: {kept / K:,.0f} values kept per unit (seed estimate "
            f"{1.5 * q * n * h * w + 64:,.0f}), {100 * kept / total:.1f}% of the values, "
            f"{kept_bytes / 1e6:.1f} MB against {total * a.element_size() / 1e6:.1f} MB")


def relu_maps(n, k, size):
    """Spatially smooth ReLU maps with a per-unit offset."""
    x = torch.nn.functional.avg_pool2d(torch.randn(n, k, size, size), 3, 1, 1)
    return torch.relu(x + 0.1 * torch.randn(1, k, 1, 1))


def main():
    torch.manual_seed(0)
    print("7x7:  ", measure([relu_maps(128, 512, 7) for _ in range(16)]))
    print("56x56:", measure([relu_maps(64, 64, 56) for _ in range(16)]))
    from fastdissect.pipeline import models

    ds = fd.datasets.Broden(fd.datasets.builtin(tempfile.mkdtemp() + "/set", n_images=96))
    model = models.efficientnet_lite0()
    _, layers, mean, std = models.BUILTIN["efficientnet-lite0"]
    acts = {name: [] for name in layers}
    for i in range(0, len(ds), 32):
        batch = fd.datasets.collate([ds[j] for j in range(i, i + 32)], ds.num_concepts)
        with torch.no_grad(), fd.trace(model, layers) as out:
            model(fd.datasets.to_model_input(batch.images, mean, std, size=(224, 224)))
        for name in layers:
            acts[name].append(out[name].clone())
    for name in layers:
        print(f"demo {name}:", measure(acts[name]))


if __name__ == "__main__":
    main()
