"""davidbau/dissect's unit-concept IoU: thresholds on *upsampled* activations, global union.

    from fastdissect.compat import dissect as dc
    up = dc.upsampler((56, 56), data_shape=(7, 7))              # dissect's grid_sample geometry
    levels = dc.quantile_levels(lambda: act_batches(), up, quantile=0.01)   # exact, not a sketch
    iou = dc.iou(lambda: zip(act_batches(), seg_batches()), up, levels, num_concepts=C)

What dissect computes (its dissect experiment on a classifier): each layer's maps are upsampled to
56 x 56 with `torch.nn.functional.grid_sample` (bilinear, zero padding: border samples are pulled
toward 0) on a grid that puts source pixel centres at the centres of their target blocks; the
level of each unit is the 0.99 quantile of those upsampled values over the data set; the indicator
is upsampled > level; and `iou_from_conditional_indicator_mean` gives, per unit and concept,
isect / (act + gt - isect) from the mean indicator overall (act), the fraction of pixels with the
concept (gt, a pixel counts once whatever the number of label channels holding it) and the mean
indicator on them (isect / gt): the global union, as fractions of pixels.

Differences, documented: the levels are exact quantiles of the upsampled values (numpy's "linear"
method) where dissect reads an approximate, unseeded GPU sketch (so two dissect runs differ), and the
IoU is computed from exact integer counts in float64 where dissect divides float32 running means.
grid_sample runs with the current torch's default `align_corners=False` (dissect passes none).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from ..core.masks import pack_masks
from ..engine.scoring import Tally
from ..engine.top_quantile import TopQuantile


def upsampler(target_shape, data_shape) -> Callable[[torch.Tensor], torch.Tensor]:
    """dissect's upsampler for a model without explicit receptive-field offsets: target pixel i
    reads source coordinate (i - offset) / scale with scale = target / data, offset = scale / 2 - 1/2,
    expressed in grid_sample's [-1, 1] coordinates."""
    (th, tw), (dh, dw) = target_shape, data_shape
    if dh < 2 or dw < 2:
        raise ValueError(f"data_shape must be at least 2 x 2 for dissect's grid, got {data_shape}")

    def axis(target: int, data: int) -> torch.Tensor:
        scale = float(target) / data
        offset = 0.5 * scale - 0.5
        return (torch.arange(target, dtype=torch.float32) - offset) * (2 / (scale * (data - 1))) - 1

    ty, tx = axis(th, dh), axis(tw, dw)
    grid = torch.stack((tx[None, :].expand(th, tw), ty[:, None].expand(th, tw)), 2)[None]

    def upsample(data: torch.Tensor) -> torch.Tensor:
        g = grid.to(data.device).expand((data.shape[0],) + grid.shape[1:])
        return torch.nn.functional.grid_sample(data.float(), g, mode="bilinear", padding_mode="zeros",
                                               align_corners=False)
    return upsample


def quantile_levels(batches: Callable[[], Iterable[torch.Tensor]], upsample, quantile: float = 0.01) -> torch.Tensor:
    """(K,) the exact (1 - quantile) quantile of each unit's upsampled values. `batches()` yields
    (B, K, h, w) activations and may be called again (a rare further pass)."""
    q = None
    for acts in batches():
        up = upsample(acts)
        q = q or TopQuantile(up.shape[1], quantile)
        q.add(up)
    if q is None:
        raise ValueError("batches() yielded nothing")
    return q.finish(lambda: (upsample(acts) for acts in batches()))


def iou(batches: Callable[[], Iterable], upsample, levels, num_concepts: int) -> torch.Tensor:
    """(K, C) dissect's IoU: `batches()` yields (activations (B, K, h, w), seg (B, channels, H, W) concept
    ids, 0 = none) with H x W the upsampler's target shape."""
    tally = None
    for acts, seg in batches():
        up = upsample(acts)
        if tally is None:
            tally = Tally(up.shape[1], num_concepts, levels)
        if tuple(seg.shape[-2:]) != tuple(up.shape[-2:]):
            raise ValueError(f"seg must be at the upsampled size {tuple(up.shape[-2:])}, got {tuple(seg.shape[-2:])}")
        # At equal sizes fastdissect's bilinear is the identity, so its masks are up > level exactly.
        tally.add(up, pack_masks(labels=seg, num_concepts=num_concepts))
    if tally is None:
        raise ValueError("batches() yielded nothing")
    s = tally.scores()
    iou = s.iou.clone()
    iou[:, 0] = 0.0  # condition 0 is "all pixels" in dissect, never a concept
    return iou
