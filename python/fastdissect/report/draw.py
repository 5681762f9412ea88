"""Drawing shared by the report and the analyses: the category palette, images dimmed outside a
mask with its outline drawn over, and the masks of formulas on images."""

from __future__ import annotations

import numpy as np
import torch

from ..core.formula import And, Leaf, Not
from ..kernels import dispatch
from ..kernels.torch_backend import pack_bits

PALETTE = ["#4263eb", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#1098ad", "#5c940d", "#862e9c", "#d9480f"]
YELLOW, CYAN = (255, 212, 59), (0, 220, 255)  # the outlines of the unit's mask and of its formula's
DIM = np.float32(0.3)  # brightness left outside the unit's mask


def category_colors(categories) -> dict:
    """{category: colour}: the same colour for a category on every page and figure."""
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(categories)}


class FormulaOutlines:
    """Formula masks on images ({image: (label planes, image-level concept ids)}), nearest-resized to
    a tile's size, each (concept, image, size) computed once. A nearest resize picks source pixels,
    so it commutes with the AND, OR and NOT that join a formula's concepts: each leaf is resized by
    indexing with Pillow's own nearest indices, and the strips' thousands of formulas share leaves."""

    def __init__(self, labels: dict):
        self.labels, self.leaves, self.indices = labels, {}, {}

    def mask(self, formula, image: int, height: int, width: int) -> np.ndarray:
        if isinstance(formula, Leaf):
            return self._leaf(formula.concept, image, height, width)
        if isinstance(formula, Not):
            return ~self.mask(formula.operand, image, height, width)
        left, right = self.mask(formula.left, image, height, width), self.mask(formula.right, image, height, width)
        return left & right if isinstance(formula, And) else left | right

    def _leaf(self, concept: int, image: int, height: int, width: int) -> np.ndarray:
        key = (concept, image, height, width)
        if key not in self.leaves:  # threads may both compute one: the same value either way
            labels, tags = self.labels[image]
            whole = concept in tags
            m = (labels == concept).any(axis=0) | whole if len(labels) else np.full(labels.shape[1:], whole)
            rows, cols = self._indices(m.shape, height, width)
            self.leaves[key] = m.take(rows, axis=0).take(cols, axis=1)
        return self.leaves[key]

    def _indices(self, shape: tuple, height: int, width: int) -> tuple:
        key = (*shape, height, width)
        if key not in self.indices:
            self.indices[key] = nearest_indices(shape[0], height), nearest_indices(shape[1], width)
        return self.indices[key]


def nearest_indices(source: int, size: int) -> np.ndarray:
    """The source index Pillow's NEAREST resize reads for each of `size` outputs along one axis (read
    off Pillow by resizing an image of indices, so the outlines match its resize pixel for pixel)."""
    from PIL import Image

    ramp = Image.fromarray(np.arange(source, dtype=np.int32)[None, :])  # mode "I"
    return np.asarray(ramp.resize((size, 1), Image.NEAREST), dtype=np.int64)[0]


def tile_size(shape, height: int) -> tuple[int, int]:
    """(height, width) of an image's tile in a strip: `height` high, the image's aspect kept."""
    return height, max(1, round(height * shape[1] / shape[0]))


def drawing_backend() -> str:
    """Where masks and tiles are drawn: the extension's CPU kernels, else the torch backend."""
    return dispatch.resolve_backend("auto", torch.device("cpu"))


def bright_and_dim(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An (H, W, 3) uint8 image as it shows inside and outside a mask: (H, W) int32 RGBX pixels,
    draw_tiles' layout."""
    bright = np.empty((*rgb.shape[:2], 4), dtype=np.uint8)
    bright[..., :3], bright[..., 3] = rgb, 255
    dim = bright.copy()
    dim[..., :3] = (rgb * DIM).astype(np.uint8)
    return bright.view(np.int32)[..., 0], dim.view(np.int32)[..., 0]


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the image dimmed outside the (H, W) mask, the mask outlined in yellow, drawn
    as the report's strips are (for pictures at image resolution, e.g. explained predictions)."""
    image, mask = np.ascontiguousarray(image, dtype=np.uint8), np.asarray(mask, dtype=bool)
    if image.ndim != 3 or image.shape[2] != 3 or mask.shape != image.shape[:2]:
        raise ValueError(f"mask_overlay needs an (H, W, 3) image and an (H, W) mask, got {image.shape} and "
                         f"{mask.shape}")
    bright, dim = (torch.from_numpy(t)[None] for t in bright_and_dim(image))
    out = torch.empty_like(bright)
    backend = drawing_backend()
    dispatch.draw_tiles(backend, pack_bits(torch.from_numpy(mask.reshape(1, -1))), None, bright, dim,
                         torch.zeros(1, dtype=torch.int64), out, torch.zeros(1, 3, dtype=torch.int64), YELLOW, CYAN)
    return np.ascontiguousarray(out[0].numpy().view(np.uint8).reshape(*mask.shape, 4)[..., :3])


def pyplot():
    """matplotlib.pyplot on the Agg backend: figures are written to files, never shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def unique_detector_bars(ax, rows, categories, colors, labels, width: float) -> np.ndarray:
    """Each row's unique detectors per category (`unique_<category>` keys), stacked in the categories'
    colours, one bar per row (the paper's architecture figure); returns the bars' heights."""
    bottom = np.zeros(len(rows))
    for cat in categories:
        counts = np.array([r[f"unique_{cat}"] for r in rows], dtype=float)
        ax.bar(np.arange(len(rows)), counts, width, bottom=bottom, color=colors[cat], label=cat)
        bottom += counts
    ax.set_xticks(np.arange(len(rows)), labels, fontsize=8)
    ax.set_ylabel("unique detectors")
    ax.set_ylim(0, max(bottom.max(), 1) * 1.35)  # room for the legend above the bars
    return bottom
