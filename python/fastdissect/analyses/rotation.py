"""The axis-alignment test of Network Dissection: rotate a layer's unit axes at random and dissect
again. A rotation keeps everything a linear read-out can use, so the number of detectors that
survives says whether interpretable units are aligned with the axes by training or by chance.

>>> import torch, fastdissect as fd
>>> r = fd.random_rotation(4, seed=0, power=0.5)
>>> q = fd.random_rotation(4, seed=0).matrix
>>> torch.allclose(r.matrix @ r.matrix, q, atol=1e-12)          # two half rotations make Q
True
>>> x = torch.rand(2, 4, 3, 3)
>>> fd.random_rotation(4, power=0.0)(x) is x                      # power 0: the activations as they are
True
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..bases.rotation import RandomRotation, haar_orthogonal, random_rotation  # noqa: F401 (their old home)
from ..core import validate

DEFAULT_POWERS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def view_name(layer: str, power: float) -> str:
    return f"{layer}@rotation{power:g}"


class RotationExperiment:
    """The axis-alignment test's results: one dissection of the layer per rotation power, all from
    one pass over the data (`fd.dissect(views=...)`); `table()` gives the paper's curve as rows."""

    def __init__(self, dissection, layer: str, powers, seed: int):
        self.dissection, self.layer, self.powers, self.seed = dissection, layer, list(powers), seed

    def __getitem__(self, power: float):
        return self.dissection[view_name(self.layer, power)]

    def table(self) -> list[dict]:
        """Per power: interpretable units and unique detectors, in all and per category."""
        rows = []
        for p in self.powers:
            s = self[p].summary
            rows.append({"power": p, "units": s["units"], "interpretable": s["interpretable"],
                         "unique_detectors": s["unique_total"],
                         **{f"unique_{cat}": n for cat, n in s["unique_detectors"].items()}})
        return rows

    def to_csv(self, path) -> Path:
        from ..files.atomic import write_csv

        return write_csv(path, self.table(), float_format=None)

    def figure(self, path) -> Path:
        """The paper's curve: unique detectors per category and interpretable units against the power."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..files.atomic import save_figure
        from ..report.draw import category_colors

        rows = self.table()
        cats = list(self[self.powers[0]].category_names)
        colors = category_colors(cats)
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=110)
        for cat in [c for c in cats if any(r[f"unique_{c}"] for r in rows)] or cats[:1]:
            left.plot(self.powers, [r[f"unique_{cat}"] for r in rows], "o-", color=colors[cat], label=cat)
        left.set_ylabel("unique detectors")
        left.legend(fontsize=8, frameon=False, ncol=2)
        right.plot(self.powers, [r["interpretable"] for r in rows], "o-", color="#343a40")
        right.set_ylabel(f"interpretable units (of {rows[0]['units']})")
        for ax in (left, right):
            ax.set_xlabel("rotation power (0: the layer's own axes, 1: a random rotation)")
            ax.spines[["top", "right"]].set_visible(False)
            ax.set_ylim(bottom=0)
        fig.suptitle(f"{self.layer}: interpretability under a random rotation of its units (seed {self.seed})",
                     fontsize=11)
        fig.tight_layout()
        save_figure(fig, path)
        plt.close(fig)
        return Path(path)


def _check_powers(powers) -> list[float]:
    if isinstance(powers, (str, bytes)) or not isinstance(powers, (list, tuple, range)):
        raise validate.ArgumentTypeError(f"powers must be a list of distinct numbers in [0, 1], got "
                                          f"{type(powers).__name__} {powers!r}"
                                          + (f": did you mean powers=[{powers!r}]?" if isinstance(powers, (int, float))
                                             else ""))
    powers = [validate.number(p, f"powers[{i}]", 0.0, 1.0) for i, p in enumerate(powers)]
    if not powers or len(set(powers)) != len(powers):
        raise ValueError(f"powers must be distinct numbers in [0, 1], got {powers}")
    return powers


def layer_width(model, layer: str, dataset, *, image_size=None, mean=None, std=None, transform=None,
                device=None) -> int:
    """The number of units (dim 1) of a layer's output, from one forward pass on the first image."""
    from . import inputs
    from ..datasets.packed import PackedMasks
    from ..datasets.sample import IMAGENET_MEAN, IMAGENET_STD

    if isinstance(dataset, PackedMasks):  # a store holds masks only: the image is its source's
        from ..datasets.broden import Broden

        dataset = Broden(dataset.meta["source"])
    image = dataset.image(0) if hasattr(dataset, "image") else dataset[0].image
    settings = {"mean": mean or IMAGENET_MEAN, "std": std or IMAGENET_STD,
                "image_size": tuple(image_size) if image_size is not None else None}
    x = inputs.model_batch([image], settings, device or inputs.model_device(model))
    out = inputs.layer_output(model, layer, x, (transform or {}).get(layer))
    if out.dim() < 2:
        raise ValueError(f"layer {layer!r} gave no (N, K, ...) output on the first image")
    return int(out.shape[1])


def rotation_experiment(model, layer: str, dataset, *, powers=DEFAULT_POWERS, seed: int = 0,
                        **dissect_options) -> RotationExperiment:
    """Network Dissection's axis-alignment test: dissects `layer` rotated by Q ** p for every power p
    (one Haar-random Q, seeded), all in one run over the data: the forward pass is shared and each
    power adds a pair of accumulators. Other options go to `fd.dissect`."""
    from ..pipeline.dissect import dissect

    # What the width probe below reads is checked first; fd.dissect checks the other options.
    validate.module(model, "model")
    validate.layer_name(layer)
    validate.concept_dataset(dataset)
    powers = _check_powers(powers)
    validate.integer(seed, "seed")
    for key, check in (("image_size", validate.image_size), ("mean", lambda v: validate.channel_stats(v, "mean")),
                       ("std", lambda v: validate.channel_stats(v, "std", positive=True)),
                       ("transform", lambda v: validate.callable_map(v, "transform")),
                       ("device", validate.device)):
        if dissect_options.get(key) is not None:
            dissect_options[key] = check(dissect_options[key])
    opts = {k: dissect_options[k] for k in ("image_size", "mean", "std", "transform", "device")
            if dissect_options.get(k) is not None}
    width = layer_width(model, layer, dataset, **opts)
    views = {view_name(layer, p): (layer, random_rotation(width, seed, p)) for p in powers}
    d = dissect(model, [], dataset, views=views, **dissect_options)
    return RotationExperiment(d, layer, powers, seed)


__all__ = ["RandomRotation", "RotationExperiment", "random_rotation", "rotation_experiment", "haar_orthogonal"]
