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
