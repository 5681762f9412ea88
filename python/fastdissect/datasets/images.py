"""A data set's images alone, without their labels, in batches: what a pass that needs no masks
reads (thresholds, ablation)."""

from __future__ import annotations

import numpy as np
import torch

from .sample import stack_images


class ImagesOnly(torch.utils.data.Dataset):
    """The data set's images only (pass 1 needs no labels)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image = self.dataset.image(i) if hasattr(self.dataset, "image") else self.dataset[i].image
        return i, np.ascontiguousarray(image)


def collate_images(items):
    """(indices, images) of a batch of ImagesOnly items."""
    return torch.tensor([i for i, _ in items]), stack_images([im for _, im in items])
