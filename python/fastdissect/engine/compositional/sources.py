"""Where a search reads the units' masks from, a chunk of units at a time: activations or unit masks
given to `fd.compositional` (`ActivationSource`), or masks the pipeline collected (`SetSource`)."""

from __future__ import annotations

import torch

from ...core import validate
from ...core.formula_masks import MaskSet
from ...core.masks import ConceptMasks
from ...kernels import dispatch
from ...kernels.torch_backend import pack_bits
from ..top_quantile import thresholds as exact_thresholds
from ..unit_masks import fired_entries, fired_set

UNIT_MASK_BYTES = 256 << 20  # unit masks of one chunk of units, at most about this much
MAP_BLOCK_BYTES = 64 << 20   # the score kernel's mask output for one block of images


class UnitChunks:
    """Unit ids and chunking shared by the unit sources."""

    num_units: int
    masks: ConceptMasks

    def unit_ids(self, units) -> list[int]:
        if units is None:
            return list(range(self.num_units))
        ids = [int(u) for u in units]
        bad = [u for u in ids if not 0 <= u < self.num_units]
        if bad:
            raise ValueError(f"units {bad[:5]} are out of range for {self.num_units} units")
        return sorted(set(ids))

    def chunks(self, ids: list[int]):
        wpm = self.masks.words_per_mask
        # A chunk's unit masks can take at most N * chunk * wpm * 8 bytes (every map firing).
        per = max(1, min(256, UNIT_MASK_BYTES // max(1, self.masks.num_images * wpm * 8)))
        for i in range(0, len(ids), per):
            yield ids[i:i + per]


class SetSource(UnitChunks):
    """Units whose masks were collected already (`unit_masks.UnitMasks`, in the pipeline)."""

    def __init__(self, units: MaskSet, masks: ConceptMasks, thresholds, backend: str):
        self.units, self.masks, self.num_units, self.thresholds = units, masks, len(units), thresholds
        self.backend = dispatch.resolve_backend(backend, units.device)

    def unit_masks(self, chunk: list[int]) -> tuple[MaskSet, torch.Tensor]:
        ids = torch.tensor(chunk, dtype=torch.int64)
        return self.units.select(ids), ids


class ActivationSource(UnitChunks):
    """The units' masks from activations (thresholded as `fd.score` does) or from given unit masks.

    `backend` is the resolved one (`dispatch.resolve_backend`); the thresholds' quantile, when they
    are not given, is computed with it too.
    """

    def __init__(self, activations, masks: ConceptMasks, thresholds, quantile: float, backend: str):
        x = validate.as_tensor(activations, "activations")
        if x.dim() != 4:
            raise ValueError("activations must be (N, K, h, w) activations or (N, K, H, W) bool unit masks, got "
                             f"shape {tuple(x.shape)}")
        validate.same_images(x.shape[0], masks.num_images)
        self.is_mask = x.dtype == torch.bool
        if self.is_mask:
            _check_unit_masks(x, masks, thresholds)
        else:
            x = validate.activations(x)
        self.backend = dispatch.resolve_backend(backend, x.device)
        self.x, self.num_units = x, x.shape[1]
        self.masks = masks.to(x.device) if masks.device != x.device else masks
        self.thresholds = None
        if not self.is_mask:
            if thresholds is None:
                thresholds = exact_thresholds(x, quantile=quantile, backend=self.backend)
            self.thresholds = validate.thresholds(thresholds, self.num_units).to(torch.float64)

    def unit_masks(self, chunk: list[int]) -> tuple[MaskSet, torch.Tensor]:
        """The MaskSet of the chunk's units (mask j = unit chunk[j]), every entry its own row."""
        ids = torch.tensor(chunk, dtype=torch.int64, device=self.x.device)
        N, H, W = self.x.shape[0], self.masks.height, self.masks.width
        wpm = self.masks.words_per_mask
        per = max(1, MAP_BLOCK_BYTES // max(1, len(chunk) * wpm * 8))
        pairs, words = [], []
        for n0 in range(0, N, per):
            block = self.x[n0:n0 + per].index_select(1, ids)
            if self.is_mask:
                packed = pack_bits(block.reshape(block.shape[0], len(chunk), H * W))
            else:
                packed = dispatch.unit_masks(self.backend, block, H, W, self.thresholds[ids])
            p, w = fired_entries(packed, n0)
            pairs.append(p)
            words.append(w)
        return fired_set(pairs, words, len(chunk), N, H * W, self.x.device), ids


def _check_unit_masks(x: torch.Tensor, masks: ConceptMasks, thresholds) -> None:
    if tuple(x.shape[2:]) != (masks.height, masks.width):
        raise ValueError(f"unit masks (activations of dtype bool) must have the masks' size H x W = {masks.height} x "
                         f"{masks.width}, got shape {tuple(x.shape)}")
    if thresholds is not None:
        raise ValueError("thresholds apply to activations; activations holds unit masks (bool) already")
