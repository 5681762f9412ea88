"""What every concept data set yields, and how a batch of it becomes model input and concept masks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.masks import ConceptMasks, pack_masks

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Sample:
    """One image of a concept data set.

    image: (ih, iw, 3) uint8 RGB as stored. labels: (P, sh, sw) int64 concept ids per pixel, one plane
    per label layer (0 = unlabeled). image_labels: ids of the image-level concepts.
    """

    image: np.ndarray
    labels: np.ndarray
    image_labels: list[int] = field(default_factory=list)
    index: int = -1
    plane_categories: list[str] = field(default_factory=list)        # category of each label plane
    image_label_categories: list[str] = field(default_factory=list)  # category of each image label


@dataclass
class Batch:
    images: torch.Tensor | list  # (B, ih, iw, 3) uint8; a list of (ih, iw, 3) when sizes differ
    masks: ConceptMasks         # B images at the label resolution
    indices: torch.Tensor       # (B,) int64 positions in the data set


def collate(samples: list[Sample], num_concepts: int) -> Batch:
    """Stacks samples and packs their labels (use as a DataLoader collate_fn via functools.partial).
    Images of different sizes stay a list, which `model_input` resizes one by one."""
    planes = max(s.labels.shape[0] for s in samples)
    sizes = {s.labels.shape[1:] for s in samples}
    if len(sizes) != 1:
        raise ValueError(f"label planes of one batch must share a size, got {sorted(sizes)}")
    labels = np.zeros((len(samples), planes) + next(iter(sizes)), dtype=np.int64)
    for i, s in enumerate(samples):
        labels[i, :s.labels.shape[0]] = s.labels
    masks = pack_masks(labels=torch.from_numpy(labels), image_labels=[list(s.image_labels) for s in samples],
                       num_concepts=num_concepts)
    return Batch(stack_images([s.image for s in samples]), masks, torch.tensor([s.index for s in samples], dtype=torch.int64))


def stack_images(images: list[np.ndarray]) -> torch.Tensor | list:
    if len({im.shape for im in images}) == 1:
        return torch.from_numpy(np.stack(images))
    return [torch.from_numpy(np.array(im)) for im in images]  # a copy: decoded arrays may be read-only


def model_input(images, mean, std, size, device) -> torch.Tensor:
    """`to_model_input` of a batch; a list of images of different sizes is resized image by image
    (each exactly as it would be alone), which needs `size`."""
    if isinstance(images, torch.Tensor):
        return to_model_input(images.to(device), mean, std, size)
    if size is None:
        shapes = sorted({tuple(im.shape[:2]) for im in images})
        raise ValueError(f"the images of a batch have different sizes {shapes}: pass image_size=(h, w) "
                         "(CLI --image-size) to resize them for the model")
    return torch.cat([to_model_input(im[None].to(device), mean, std, size) for im in images])


def to_model_input(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD, size=None) -> torch.Tensor:
    """(B, ih, iw, 3) uint8 -> (B, 3, ih, iw) float32 normalised (ImageNet statistics by default),
    optionally resized (bilinear) to `size` = (height, width)."""
    x = images.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - m) / s
