"""Ablation: what each class loses when units of a layer are switched off ("Understanding the role of
individual units", Bau et al. 2020). Every batch runs twice, as is and with the units' maps replaced
by zero ("zero") or by the unit's mean activation over the data set ("mean", one more pass first);
per class: the mean logit over the data set in both runs, and the share of the images the intact
model assigns to the class that the ablated model still does.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core import validate
from ..core.deprecation import reordered
from . import inputs
from ..datasets.sample import IMAGENET_MEAN, IMAGENET_STD
from ..pipeline.hooks import find_modules
from ..pipeline.results import Dissection


@dataclass
class Ablation:
    layer: str
    units: list[int]
    mode: str
    baseline: torch.Tensor    # (classes,) float64 mean logit of the intact model
    ablated: torch.Tensor     # (classes,) float64 mean logit with the units ablated
    predicted: torch.Tensor   # (classes,) int64 images the intact model assigns to each class
    kept: torch.Tensor        # (classes,) int64 of those, still assigned to it when ablated
    num_images: int

    @property
    def change(self) -> torch.Tensor:
        return self.ablated - self.baseline

    @property
    def agreement(self) -> float:
        """Share of all images whose top-1 class the ablation leaves unchanged."""
        return float(self.kept.sum()) / self.num_images

    def rows(self, class_names=None) -> list[dict]:
        """One row per class, the classes that lose most first."""
        name = (lambda c: class_names[c] if class_names else c)  # noqa: E731
        order = torch.argsort(self.change, stable=True).tolist()
        return [{"class": name(c), "baseline": float(self.baseline[c]), "ablated": float(self.ablated[c]),
                 "change": float(self.change[c]), "images": int(self.predicted[c]),
                 "top1_kept": float(self.kept[c]) / int(self.predicted[c]) if int(self.predicted[c]) else None}
                for c in order]

    def to_csv(self, path, class_names=None) -> Path:
        """`rows()` as a CSV."""
        from ..files.atomic import write_csv

        return write_csv(path, self.rows(class_names), float_format=None)


@contextlib.contextmanager
def replaced(model: torch.nn.Module, layer: str, units: list[int], values: torch.Tensor | None):
    """Inside the block the layer's output has the units' maps set to `values` (K,) or to zero."""
    module = find_modules(model, [layer])[layer]
    index = torch.as_tensor(units, dtype=torch.int64)

    def hook(mod, args, output):
        first = output[0] if isinstance(output, (tuple, list)) else output
        if int(index.max()) >= first.shape[1]:
            raise ValueError(f"units {units} are outside layer {layer!r}'s {first.shape[1]} units")
        changed = first.clone()
        fill = values[index].to(changed) if values is not None else 0.0
        changed[:, index.to(changed.device)] = fill[..., None, None] if values is not None else fill
        return (changed, *output[1:]) if isinstance(output, (tuple, list)) else changed
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _batches(dataset, batch_size):
    from ..datasets.images import ImagesOnly, collate_images

    return torch.utils.data.DataLoader(ImagesOnly(dataset), batch_size=batch_size, shuffle=False,
                                       collate_fn=collate_images)


def _logits(model, x):
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError("the model must return (N, classes) logits to ablate against")
    return out.double()


def _unit_means(model, layer, dataset, settings, batch_size, device, verbose) -> torch.Tensor:
    from tqdm.auto import tqdm

    total, count = None, 0
    with tqdm(total=len(dataset), desc="unit means", unit="img", disable=not verbose) as bar:
        for _, images in _batches(dataset, batch_size):
            a = inputs.layer_output(model, layer, inputs.feed(images, settings, device)).double()
            s = a.sum(dim=(0, 2, 3))
            total = s if total is None else total + s
            count += a.shape[0] * a.shape[2] * a.shape[3]
            bar.update(a.shape[0])
    return total / count


def _unit_ids(v) -> bool:
    """Whether v is a list of unit ids (where the old order of ablate had them), not a data set."""
    return not hasattr(v, "image") and not isinstance(v, (str, bytes)) and (
        isinstance(v, (Sequence, set, frozenset, range, torch.Tensor, np.ndarray))
        or (isinstance(v, numbers.Integral) and not isinstance(v, bool)))


@reordered("model, layer, units, dataset", {2: _unit_ids})
def ablate(model: torch.nn.Module, layer: str, dataset, units, *, mode: str = "zero", batch_size: int = 32,
           mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=None, verbose: bool = True) -> Ablation:
    """Runs the model over `dataset` with and without `units` of `layer`; see the module docstring."""
    validate.module(model, "model")
    validate.layer_name(layer)
    validate.image_dataset(dataset)
    units = sorted(set(validate.int_list(units, "units")))
    validate.choice(mode, "mode", ("zero", "mean"))
    batch_size = validate.positive_int(batch_size, "batch_size")
    settings = {"mean": validate.channel_stats(mean, "mean"),
                "std": validate.channel_stats(std, "std", positive=True), "image_size": validate.image_size(image_size)}
    validate.boolean(verbose, "verbose")
    find_modules(model, [layer])
    device = inputs.model_device(model)
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            values = _unit_means(model, layer, dataset, settings, batch_size, device, verbose) if mode == "mean" \
                else None
            sums = base_sum = kept = predicted = None
            with tqdm(total=len(dataset), desc=f"ablating {len(units)} units of {layer}", unit="img",
                      disable=not verbose) as bar:
                for _, images in _batches(dataset, batch_size):
                    x = inputs.feed(images, settings, device)
                    base = _logits(model, x)
                    with replaced(model, layer, units, values):
                        cut = _logits(model, x)
                    if sums is None:
                        classes = base.shape[1]
                        sums, base_sum = torch.zeros(classes, dtype=torch.float64), torch.zeros(classes,
                                                                                               dtype=torch.float64)
                        kept, predicted = (torch.zeros(classes, dtype=torch.int64) for _ in range(2))
                    top, top_cut = base.argmax(dim=1).cpu(), cut.argmax(dim=1).cpu()
                    base_sum += base.sum(dim=0).cpu()
                    sums += cut.sum(dim=0).cpu()
                    predicted += torch.bincount(top, minlength=classes)
                    kept += torch.bincount(top[top == top_cut], minlength=classes)
                    bar.update(x.shape[0])
    finally:
        model.train(was_training)
    n = len(dataset)
    return Ablation(layer, units, mode, base_sum / n, sums / n, predicted, kept, n)


@reordered("model, dissection, layer, concept, dataset=None", {1: Dissection})
def concept_ablation(model: torch.nn.Module, layer: str, dataset, dissection, concept: str, **options) -> Ablation:
    """Ablates every detector of `concept` in `layer` (fed as the dissection fed its data) over
    `dataset` (None: the data set of the dissection); `rows()` ranks the classes that lose most.
    Other options go to `fd.ablate`."""
    validate.module(model, "model")
    validate.layer_name(layer)
    inputs.dissection(dissection)
    validate.name_string(concept, "concept", "a concept name")
    result = inputs.layer_of(dissection, layer, model)
    units = [u["unit"] for u in result.units if u["detector"] and u["label"] == concept]
    if not units:
        found = sorted({u["label"] for u in result.units if u["detector"]})
        raise ValueError(f"layer {layer} has no detector of {concept!r}; its detectors are of {found}")
    if dataset is None:
        dataset = dissection.dataset
        if dataset is None and dissection.dataset_root:
            from ..datasets.broden import Broden

            dataset = Broden(dissection.dataset_root)
        if dataset is None:
            raise ValueError("concept_ablation needs the data set (dataset=...): the dissection records none")
    settings = inputs.input_settings(dissection)
    return ablate(model, layer, dataset, units, **{**settings, **options})


__all__ = ["Ablation", "ablate", "concept_ablation", "replaced"]
