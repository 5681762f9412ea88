"""Segmentation by a layer's units: each pixel takes the concept of the detector unit that exceeds its
threshold by the largest factor there (A_k / T_k, upsampled bilinearly, where > 1; 0 where none
does). Units with T_k <= 0 have no such factor and take no part. Against a concept data set the
labels are scored: pixel accuracy (a labeled pixel is right when its concept is among the pixel's
ground-truth concepts, image-level ones included) and the IoU of each concept the units claim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..core import validate
from ..core.deprecation import reordered
from . import inputs
from ..kernels.torch_backend import upsample
from ..pipeline.results import Dissection


@dataclass
class Segmentation:
    labels: torch.Tensor | None       # (N, H, W) int64 concept ids, 0: no unit fires (None for a data set)
    concept_names: list[str]
    units: list[int]                  # the units that segment, and their concepts
    unit_concepts: list[int]
    pixel_accuracy: float | None = None
    concept_iou: dict = field(default_factory=dict)  # {concept name: IoU over the data set}

    @property
    def mean_iou(self) -> float | None:
        return float(np.mean(list(self.concept_iou.values()))) if self.concept_iou else None

    def overlay(self, i: int, image: np.ndarray) -> np.ndarray:
        """Image i with each concept's pixels tinted its own colour (the labels resized to the image)."""
        from PIL import Image

        from ..report.draw import PALETTE

        labels = np.asarray(Image.fromarray(self.labels[i].numpy().astype(np.int32)).resize(
            (image.shape[1], image.shape[0]), Image.NEAREST))
        out = image.astype(np.float32)
        for j, c in enumerate(sorted(set(self.unit_concepts))):
            rgb = np.array([int(PALETTE[j % len(PALETTE)][k:k + 2], 16) for k in (1, 3, 5)], dtype=np.float32)
            where = labels == c
            out[where] = 0.45 * out[where] + 0.55 * rgb
        return out.astype(np.uint8)


def _chosen_units(layer, top_k: int | None) -> tuple[list[int], list[int]]:
    rows = [u for u in layer.units if u["detector"] and u["threshold"] > 0]
    rows.sort(key=lambda u: -u["iou"])
    if top_k is not None:
        rows = rows[:top_k]
    if not rows:
        raise ValueError(f"layer {layer.layer} has no detector units with a positive threshold to segment with")
    return [u["unit"] for u in rows], [layer.concept_names.index(u["label"]) for u in rows]


def label_maps(act: torch.Tensor, thresholds: torch.Tensor, units: list[int], concepts: list[int], height: int,
               width: int) -> torch.Tensor:
    """(N, height, width) concept ids from (N, K, h, w) activations."""
    ratio = upsample(act[:, units], height, width) / thresholds[units].double()[None, :, None, None]
    best, which = ratio.max(dim=1)
    ids = torch.as_tensor(concepts, dtype=torch.int64, device=act.device)[which]
    return torch.where(best > 1, ids, torch.zeros_like(ids))


@reordered("model, images, dissection, layer", {2: Dissection}, top="top_k")
def segment(model: torch.nn.Module, layer: str, images, dissection, *, top_k: int | None = None,
            batch_size: int = 32, verbose: bool = True) -> Segmentation:
    """Label maps of `images` ((H, W, 3) uint8 arrays, at image resolution) or, given a concept data
    set, its scores against the data set's masks (at label resolution). top_k: only the top_k
    detectors by IoU (default: every detector)."""
    validate.module(model, "model")
    validate.layer_name(layer)
    inputs.dissection(dissection)
    top_k = validate.optional_positive_int(top_k, "top_k")
    batch_size = validate.positive_int(batch_size, "batch_size")
    validate.boolean(verbose, "verbose")
    result = inputs.layer_of(dissection, layer, model)
    units, concepts = _chosen_units(result, top_k)
    settings = inputs.input_settings(dissection)
    device = inputs.model_device(model)
    thresholds = result.scores.thresholds.to(device)
    if hasattr(images, "num_concepts") and hasattr(images, "__getitem__"):
        return _evaluate(model, images, result, layer, units, concepts, settings, thresholds, batch_size, verbose)
    pictures = inputs.as_images(images)
    maps = []
    for i in range(0, len(pictures), batch_size):
        chunk = pictures[i:i + batch_size]
        act = inputs.layer_output(model, layer, inputs.model_batch(chunk, settings, device))
        inputs.check_map_size(result, act, layer)
        h, w = chunk[0].shape[:2]
        maps.append(label_maps(act, thresholds, units, concepts, h, w).cpu())
    return Segmentation(torch.cat(maps), list(result.concept_names), units, concepts)


def _evaluate(model, dataset, result, layer, units, concepts, settings, thresholds, batch_size, verbose):
    from functools import partial

    from tqdm.auto import tqdm

    from ..datasets.sample import collate

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=partial(collate, num_concepts=dataset.num_concepts))
    claimed = sorted(set(concepts))
    inter = dict.fromkeys(claimed, 0)
    union = dict.fromkeys(claimed, 0)
    correct = labeled = 0
    device = thresholds.device
    with tqdm(total=len(dataset), desc=f"segmenting with {layer}", unit="img", disable=not verbose) as bar:
        for batch in loader:
            act = inputs.layer_output(model, layer, inputs.feed(batch.images, settings, device))
            m = batch.masks
            pred = label_maps(act, thresholds, units, concepts, m.height, m.width).cpu().flatten(1)
            for n in range(m.num_images):
                ids, rows = m.entries(n)
                truth = m.unpack_rows(rows)  # (E, H * W) bool, whole-image rows all set
                on = pred[n] > 0
                hit = torch.zeros_like(on)
                for c, t in zip(ids.tolist(), truth):
                    hit |= (pred[n] == c) & t
                correct += int(hit.sum())
                labeled += int(on.sum())
                for c in claimed:
                    mine = pred[n] == c
                    gt = truth[ids == c].any(dim=0) if bool((ids == c).any()) else torch.zeros_like(mine)
                    inter[c] += int((mine & gt).sum())
                    union[c] += int((mine | gt).sum())
            bar.update(m.num_images)
    iou = {result.concept_names[c]: inter[c] / union[c] if union[c] else 0.0 for c in claimed}
    return Segmentation(None, list(result.concept_names), units, concepts, correct / labeled if labeled else 0.0, iou)


__all__ = ["Segmentation", "segment", "label_maps"]
