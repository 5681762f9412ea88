"""Synthetic data shaped like real dissection workloads (generated, never downloaded)."""

from __future__ import annotations

import numpy as np
import torch


def layer_activations(n: int, units: int, size: int, seed: int = 0) -> torch.Tensor:
    """ReLU maps with spatial structure: each unit responds to a random direction of a smooth field."""
    g = torch.Generator().manual_seed(seed)
    field = torch.randn(n, 16, size + 2, size + 2, generator=g)
    field = torch.nn.functional.avg_pool2d(field, 3, stride=1)  # (n, 16, size, size), smooth
    mix = torch.randn(units, 16, generator=g)
    acts = torch.einsum("kc,nchw->nkhw", mix, field) + 0.3 * torch.randn(n, units, size, size, generator=g)
    return torch.relu(acts - 0.5).contiguous()


def broden_like_labels(n: int, size: int, num_concepts: int = 150, seed: int = 0):
    """(labels (n, 2, size, size), image_labels): ~15 concepts per image.

    Plane 0: a Voronoi partition into 10 regions (objects/materials); plane 1: 3 rectangles (parts);
    one image-level concept (a scene) per image.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    labels = np.zeros((n, 2, size, size), dtype=np.int64)
    image_labels = []
    for i in range(n):
        centers = rng.integers(0, size, size=(10, 2))
        d = (yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2
        ids = rng.choice(np.arange(1, num_concepts - 10), size=10, replace=False)
        labels[i, 0] = ids[d.argmin(axis=0)]
        for _ in range(3):
            y0, x0 = rng.integers(0, size - 8, size=2)
            h, w = rng.integers(4, size // 3, size=2)
            labels[i, 1, y0:y0 + h, x0:x0 + w] = rng.integers(1, num_concepts - 10)
        image_labels.append([int(rng.integers(num_concepts - 10, num_concepts))])
    return torch.from_numpy(labels), image_labels


def layer4_workload(n: int, units: int = 512, size: int = 7, label: int = 112, concepts: int = 150):
    """ResNet-18 layer4 on Broden-224: activations, label planes, image labels, their packed masks,
    exact thresholds (0.005) and a random primary category per concept (6 categories)."""
    import fastdissect as fd

    acts = layer_activations(n, units, size)
    labels, image_labels = broden_like_labels(n, label, concepts)
    masks = fd.pack_masks(labels=labels, image_labels=image_labels, num_concepts=concepts)
    thresholds = fd.thresholds(acts, quantile=0.005)
    categories = torch.from_numpy(np.random.default_rng(0).integers(0, 6, concepts))
    return acts, labels, image_labels, masks, thresholds, categories


def broden_like_masks(n: int, size: int, num_concepts: int, per_image: int = 17, seed: int = 0,
                      block: int = 256):
    """A ConceptMasks with Broden's shape, built a block of images at a time (no dense N x C array).

    Per image `per_image` distinct concepts, drawn with a Zipf-like long tail (a few are common,
    most rare): 10 regions of a Voronoi partition (objects, materials), per_image - 12 rectangles
    (parts) and 2 image-level labels (scenes). Returns (masks, pooled) where pooled[i, e] is the
    7 x 7 average of entry e's mask (for `units_from_masks`), with the entry ids (n, per_image).
    """
    from fastdissect.core.masks import MaskBuilder

    rng = np.random.default_rng(seed)
    weight = 1.0 / np.arange(1, num_concepts) ** 0.8  # concept 0 stays unlabeled, as in Broden
    log_w = np.log(weight / weight.sum())
    yy, xx = np.mgrid[0:size, 0:size]
    hw = size * size
    builder = MaskBuilder(num_concepts, size, size)
    all_ids, pooled = [], []
    regions, scenes = 10, 2
    parts = per_image - regions - scenes
    for i0 in range(0, n, block):
        b = min(block, n - i0)
        gumbel = log_w[None, :] - np.log(-np.log(rng.random((b, num_concepts - 1))))
        ids = np.argpartition(-gumbel, per_image, axis=1)[:, :per_image] + 1  # distinct ids per image
        centers = rng.integers(0, size, size=(b, regions, 2))
        d = (yy[None, None] - centers[..., 0, None, None]) ** 2 + (xx[None, None] - centers[..., 1, None, None]) ** 2
        nearest = d.argmin(axis=1).reshape(b, hw)
        masks = np.zeros((b, per_image, hw), dtype=bool)
        masks[:, :regions] = nearest[:, None, :] == np.arange(regions)[None, :, None]
        y0 = rng.integers(0, size - 4, size=(b, parts))
        x0 = rng.integers(0, size - 4, size=(b, parts))
        hh = rng.integers(3, max(4, size // 3), size=(b, parts))
        ww = rng.integers(3, max(4, size // 3), size=(b, parts))
        inside = ((yy.reshape(-1)[None, None] >= y0[..., None]) & (yy.reshape(-1)[None, None] < (y0 + hh)[..., None]) &
                  (xx.reshape(-1)[None, None] >= x0[..., None]) & (xx.reshape(-1)[None, None] < (x0 + ww)[..., None]))
        masks[:, regions:regions + parts] = inside
        whole = np.zeros((b, per_image), dtype=bool)
        whole[:, regions + parts:] = True
        masks[whole] = False
        order = np.argsort(ids, axis=1, kind="stable")
        ids, masks, whole = (np.take_along_axis(a, order if a.ndim == 2 else order[..., None], axis=1)
                             for a in (ids, masks, whole))
        image = np.repeat(np.arange(b), per_image)
        builder.add_images(b, image, ids.reshape(-1), masks.reshape(-1, hw), whole.reshape(-1))
        cell = size // 7
        dense = masks.reshape(b, per_image, size, size).astype(np.float32)
        dense[whole] = 1.0
        pooled.append(dense[:, :, :cell * 7, :cell * 7].reshape(b, per_image, 7, cell, 7, cell).mean(axis=(3, 5)))
        all_ids.append(ids)
    return builder.build(), np.concatenate(pooled), np.concatenate(all_ids)


def units_from_masks(pooled: np.ndarray, ids: np.ndarray, units: int, num_concepts: int, seed: int = 0) -> torch.Tensor:
    """(n, units, 7, 7) activations: unit k responds to the union of two concepts (common ones
    more often) plus a smooth random field, so that its best formula is a real composition."""
    rng = np.random.default_rng(seed)
    n = pooled.shape[0]
    common = np.bincount(ids.reshape(-1), minlength=num_concepts).argsort()[::-1][:max(8, num_concepts // 10)]
    pick = rng.choice(common, size=(units, 2))
    acts = np.zeros((n, units, 7, 7), dtype=np.float32)
    for j in range(2):
        match = ids[:, None, :] == pick[None, :, j, None]          # (n, units, entries)
        acts += np.einsum("nke,nexy->nkxy", match.astype(np.float32), pooled)
    noise = layer_activations(n, units, 7, seed=seed).numpy()
    return torch.from_numpy(np.maximum(acts + 0.3 * noise, 0.0))
