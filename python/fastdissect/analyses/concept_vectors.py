"""Concept vectors (Net2Vec, Fong & Vedaldi 2018): is a concept carried by one unit or by many?

For each concept c, a direction w_c over the layer's C channels (and a bias) is fitted so that the
logistic map sigmoid(w_c . a(x) + b_c) of the *upsampled* activations a(x) segments c: a per-concept
logistic regression on pixels, each concept's positive and negative pixels weighted to equal total
weight (concepts cover a few percent of the pixels; unweighted, "never" would win). Each direction is
then dissected like a unit, by the same exact rule and kernels (top-quantile threshold, IoU over the
data set), next to the layer's own units in the same pass. The answer to the question is the figure
of single best unit IoU against the concept vector's IoU, per concept: points far above the diagonal
are concepts the layer spreads over many units.

Fitting reads a seeded uniform sample of label pixels (`pixels_per_image` from each image, at most
`max_samples` in all: memory max_samples x (C + concepts) x 4 bytes, kept by priority sampling so the
sample is uniform over the whole data set whatever its length).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..core import validate
from ..datasets.sample import IMAGENET_MEAN, IMAGENET_STD, stack_images
from ..files import atomic
from ..files.atomic import digest
from ..files.identity import tensor_bytes
from ..pipeline.dissect import dissect
from ..pipeline.forward import layer_outputs
from ..pipeline.hooks import find_modules
from ..pipeline.results import Dissection
from ..report.draw import pyplot


def view_name(layer: str) -> str:
    return f"{layer}@concept_vectors"


class Projection:
    """The layer transform (N, C, h, w) -> (N, K, h, w): feature k = w_k . a + b_k, in float64."""

    def __init__(self, weights: torch.Tensor, bias: torch.Tensor):
        self.weights, self.bias = weights.double(), bias.double()

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("kc,nc...->nk...", self.weights.to(output.device), output.double())
        shape = (1, -1) + (1,) * (output.dim() - 2)
        return (out + self.bias.to(output.device).reshape(shape)).to(output.dtype)

    def fingerprint(self) -> str:
        return f"concept_vectors:{digest(tensor_bytes(self.weights) + tensor_bytes(self.bias))}"


@dataclasses.dataclass
class Samples:
    """Label pixels drawn uniformly from the data set: their upsampled activations and concepts."""
    features: torch.Tensor  # (S, C) float32
    targets: torch.Tensor   # (S, num_concepts) bool
    keys: torch.Tensor      # (S,) float64 priority keys: the S smallest of the stream are kept


def _pixel_features(act: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, size) -> torch.Tensor:
    """(P, C) bilinear samples of one (C, h, w) map at label pixels (ys, xs) of a (sh, sw) label grid,
    pixel centres to pixel centres (align_corners=False, edges clamped)."""
    sh, sw = size
    grid = torch.stack([(2 * xs.double() + 1) / sw - 1, (2 * ys.double() + 1) / sh - 1], dim=1)
    out = torch.nn.functional.grid_sample(act[None].double(), grid[None, None].to(act.device), mode="bilinear",
                                          padding_mode="border", align_corners=False)
    return out[0, :, 0].t().float().cpu()


def _pixel_targets(sample, ys: np.ndarray, xs: np.ndarray, num_concepts: int) -> torch.Tensor:
    t = torch.zeros(len(ys), num_concepts, dtype=torch.bool)
    for plane in sample.labels:
        ids = torch.from_numpy(np.asarray(plane[ys, xs], dtype=np.int64))
        t[torch.arange(len(ys)), ids] = True
    for c in sample.image_labels:
        t[:, int(c)] = True
    t[:, 0] = False
    return t


def sample_pixels(model, layer, dataset, *, pixels_per_image, max_samples, batch_size, image_size, mean, std,
                  seed, verbose) -> Samples:
    """One forward pass over the data set (stopped at the layer), keeping a uniform pixel sample."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    kept = Samples(torch.empty(0, 0), torch.empty(0, dataset.num_concepts, dtype=torch.bool),
                   torch.empty(0, dtype=torch.float64))
    loader = torch.utils.data.DataLoader(range(len(dataset)), batch_size=batch_size,
                                         collate_fn=lambda ids: (ids, [dataset[i] for i in ids]))
    with tqdm(total=len(dataset), desc="concept vectors: sample", unit="img", disable=not verbose) as bar:
        for ids, samples in loader:
            acts = layer_outputs(model, [layer], stack_images([s.image for s in samples]), ids, image_size=image_size,
                                 mean=mean, std=std)
            feats, targets = [], []
            for s, act in zip(samples, acts[layer]):
                size = s.labels.shape[1:]
                ys = torch.randint(size[0], (pixels_per_image,), generator=g)
                xs = torch.randint(size[1], (pixels_per_image,), generator=g)
                feats.append(_pixel_features(act, ys, xs, size))
                targets.append(_pixel_targets(s, ys.numpy(), xs.numpy(), dataset.num_concepts))
            keys = torch.rand(len(samples) * pixels_per_image, generator=g, dtype=torch.float64)
            kept = _keep_smallest(kept, torch.cat(feats), torch.cat(targets), keys, max_samples)
            bar.update(len(samples))
    return kept


def _keep_smallest(kept: Samples, features, targets, keys, limit: int) -> Samples:
    if kept.features.numel():
        features, targets, keys = (torch.cat([kept.features, features]), torch.cat([kept.targets, targets]),
                                   torch.cat([kept.keys, keys]))
    if keys.shape[0] > limit:
        order = keys.argsort()[:limit]
        features, targets, keys = features[order], targets[order], keys[order]
    return Samples(features, targets, keys)


def fit(samples: Samples, concepts: torch.Tensor, *, steps: int, lr: float, batch: int, seed: int):
    """Balanced logistic regressions of every chosen concept at once (one linear layer, a weighted
    binary cross-entropy per concept), on standardised channels; returns (weights (K, C), bias (K,))
    in the layer's own units."""
    x = samples.features.double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-12)
    z = ((x - mu) / sd).float()
    y = samples.targets[:, concepts].float()
    positive = y.mean(0).clamp(1e-6, 1 - 1e-6)
    w_pos, w_neg = 0.5 / positive, 0.5 / (1 - positive)
    torch.manual_seed(seed)
    linear = torch.nn.Linear(z.shape[1], len(concepts))
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.Adam(linear.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(z.shape[0], (min(batch, z.shape[0]),), generator=g)
        logits, t = linear(z[i]), y[i]
        weight = t * w_pos + (1 - t) * w_neg
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, t, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = linear.weight.detach().double() / sd
    b = linear.bias.detach().double() - w @ mu
    return w, b


@dataclasses.dataclass
class ConceptVectors:
    """Per concept: its fitted direction, that direction's IoU with the concept (dissected like a
    unit), and the layer's single best unit for the concept with its IoU."""
    layer: str
    concepts: list[str]
    concept_ids: torch.Tensor   # (K,)
    vectors: torch.Tensor       # (K, C) float64, in the layer's units
    bias: torch.Tensor          # (K,)
    vector_iou: torch.Tensor    # (K,) IoU of vector k with concept k
    best_unit: torch.Tensor     # (K,) the unit with the highest IoU for concept k
    best_unit_iou: torch.Tensor
    dissection: Dissection

    def rows(self) -> list[dict]:
        return [{"concept": name, "concept_id": int(c), "vector_iou": float(v), "best_unit": int(u),
                 "best_unit_iou": float(b), "gain": float(v - b)}
                for name, c, v, u, b in zip(self.concepts, self.concept_ids, self.vector_iou, self.best_unit,
                                            self.best_unit_iou)]

    def to_csv(self, path) -> Path:
        return atomic.write_csv(path, self.rows())

    def figure(self, path) -> Path:
        """Best single unit IoU (x) against the concept vector's IoU (y), one point per concept."""
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(4.8, 4.8))
        x, y = self.best_unit_iou.numpy(), self.vector_iou.numpy()
        top = max(float(np.max(x, initial=0)), float(np.max(y, initial=0)), 0.05) * 1.05
        ax.plot([0, top], [0, top], color="0.6", lw=1, ls="--", label="vector = best unit")
        ax.scatter(x, y, s=14, color="#1f77b4")
        for i in np.argsort(y - x)[-5:]:  # the concepts most spread over units
            ax.annotate(self.concepts[i], (x[i], y[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(xlim=(0, top), ylim=(0, top), xlabel="best single unit IoU", ylabel="concept vector IoU",
               title=f"{self.layer}: one unit or many?")
        ax.legend(loc="lower right", fontsize=8)
        path = Path(path)
        atomic.save_figure(fig, path)
        plt.close(fig)
        return path

    def write(self, directory) -> Path:
        directory = atomic.make_dirs(directory)
        self.to_csv(directory / "concept_vectors.csv")
        self.figure(directory / "concept_vectors.png")
        return directory


def _chosen(concepts, dataset, samples: Samples, min_pixels: int) -> torch.Tensor:
    names = list(dataset.concept_names)
    if concepts is None:
        counts = samples.targets.sum(0)
        chosen = torch.nonzero(counts >= min_pixels).flatten()
        if chosen.numel() == 0:
            raise ValueError(f"no concept has {min_pixels} sampled pixels: raise pixels_per_image or lower min_pixels")
        return chosen
    ids = []
    for c in concepts:
        if isinstance(c, str):
            if c not in names:
                raise LookupError(f"concepts: the data set has no concept {c!r}")
            ids.append(names.index(c))
        else:
            ids.append(validate.integer(c, "concepts[]", low=1, high=len(names) - 1))
    if not ids:
        raise ValueError("concepts is empty: pass None for every concept the sample holds")
    return torch.tensor(ids, dtype=torch.int64)


def concept_vectors(model: torch.nn.Module, layer: str, dataset, concepts=None, *, pixels_per_image: int = 64,
                    max_samples: int = 1 << 17, min_pixels: int = 20, steps: int = 500, lr: float = 0.05,
                    fit_batch: int = 8192, batch_size: int = 32, image_size=None, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD, seed: int = 0, verbose: bool = True, **dissect_options) -> ConceptVectors:
    """Net2Vec concept vectors of `layer`, each scored by the same exact IoU as the layer's units.

    concepts: names or ids (default: every concept with at least `min_pixels` sampled pixels).
    Two passes over the data set: one samples pixels for the fits, one dissects the units and the
    vectors together (`fd.dissect(..., views=...)`, whose options pass through `dissect_options`).
    """
    validate.module(model)
    if not isinstance(layer, str):
        raise validate.ArgumentTypeError(f"layer must be one layer name (a str), got {type(layer).__name__}")
    find_modules(model, [layer])
    for value, name in ((pixels_per_image, "pixels_per_image"), (max_samples, "max_samples"), (steps, "steps"),
                        (fit_batch, "fit_batch"), (batch_size, "batch_size"), (min_pixels, "min_pixels")):
        validate.positive_int(value, name)
    validate.number(lr, "lr", 0.0, low_open=True)
    image_size = validate.image_size(image_size)
    samples = sample_pixels(model, layer, dataset, pixels_per_image=pixels_per_image, max_samples=max_samples,
                            batch_size=batch_size, image_size=image_size, mean=tuple(mean), std=tuple(std),
                            seed=seed, verbose=verbose)
    ids = _chosen(concepts, dataset, samples, min_pixels)
    w, b = fit(samples, ids, steps=steps, lr=lr, batch=fit_batch, seed=seed)
    name = view_name(layer)
    d = dissect(model, [layer], dataset, views={name: (layer, Projection(w, b))}, batch_size=batch_size,
                image_size=image_size, mean=mean, std=std, verbose=verbose, **dissect_options)
    vector_iou = d[name].scores.iou[torch.arange(len(ids)), ids].clone()
    best_iou, best_unit = d[layer].scores.iou[:, ids].max(dim=0)
    names = [dataset.concept_names[int(i)] for i in ids]
    return ConceptVectors(layer, names, ids, w, b, vector_iou, best_unit, best_iou, d)
