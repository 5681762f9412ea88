"""Pillow's BILINEAR resize of float ('F') images, bit for bit, vectorised over many maps.

Pillow resamples separably, horizontal pass first: each output pixel is a weighted sum over a window
of source pixels, weights from the triangle filter scaled by max(1, in / out) (so downsampling
averages, "antialiasing"), normalised to sum to 1, accumulated in double in source order and stored
as float32; then the vertical pass does the same on that float32 result. A pass whose size does not
change is skipped. This is what NetDissect-Lite's `imresize(map, (sh, sw), mode='F')` computes
(tests compare it with Pillow itself on upsampling, downsampling and mixed shapes).
"""

from __future__ import annotations

import functools
import math

import numpy as np


@functools.lru_cache(maxsize=64)
def coefficients(in_size: int, out_size: int):
    """(first source index (out,), weights (out, taps)) of one axis, as Pillow computes them
    (computed once per pair of sizes, in a Python loop; read-only arrays, shared by every call)."""
    first, weights = _coefficients(in_size, out_size)
    first.flags.writeable = weights.flags.writeable = False
    return first, weights


def kernel_tables(h: int, w: int, H: int, W: int) -> list:
    """The `pillow=` tables of the CPU kernel (x_first, x_weights, y_first, y_weights) for h x w
    maps resampled to H x W, as torch tensors (copies: the cached arrays stay read-only)."""
    import torch

    return [torch.tensor(a) for a in (*coefficients(w, W), *coefficients(h, H))]


def _coefficients(in_size: int, out_size: int):
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear (triangle) filter has support 1
    taps = int(math.ceil(support)) * 2 + 1
    first = np.zeros(out_size, dtype=np.int64)
    weights = np.zeros((out_size, taps), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        lo = int(center - support + 0.5)  # C truncation toward zero, then clamp
        lo = max(lo, 0)
        hi = min(int(center + support + 0.5), in_size)
        total = 0.0
        inverse = 1.0 / filterscale  # Pillow multiplies by the reciprocal: not the same rounding as dividing
        for x in range(hi - lo):
            w = abs((x + lo - center + 0.5) * inverse)
            w = 1.0 - w if w < 1.0 else 0.0
            weights[xx, x] = w
            total += w
        if total != 0.0:
            weights[xx, :hi - lo] /= total
        first[xx] = lo
    return first, weights


def _pass(values: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One resampling pass along `axis` (-1 or -2) of float32 values; returns float32."""
    in_size = values.shape[axis]
    first, weights = coefficients(in_size, out_size)
    moved = np.moveaxis(values, axis, -1).astype(np.float64)
    acc = np.zeros(moved.shape[:-1] + (out_size,), dtype=np.float64)
    for t in range(weights.shape[1]):
        index = np.minimum(first + t, in_size - 1)  # weights beyond the window are 0
        acc += moved[..., index] * weights[:, t]
    return np.moveaxis(acc.astype(np.float32), -1, axis)


def resize_bilinear(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """(..., h, w) float32 maps -> (..., height, width) float32, exactly as Pillow's
    Image.fromarray(map, "F").resize((width, height), Image.BILINEAR).

    Upsampling (no axis shrinks: the case of feature maps against Broden's labels) runs vectorised
    here, horizontal pass first. When an axis shrinks, recent Pillow versions choose the order of the
    two passes themselves, so those maps go through Pillow one by one: slower, but the same numbers
    as the Pillow that is installed.
    """
    out = np.asarray(maps, dtype=np.float32)
    h, w = out.shape[-2:]
    if h > height or w > width:
        from PIL import Image

        flat = out.reshape(-1, h, w)
        resized = [np.asarray(Image.fromarray(np.ascontiguousarray(m), "F").resize((width, height), Image.BILINEAR))
                   for m in flat]
        return np.stack(resized).reshape(out.shape[:-2] + (height, width))
    if w != width:
        out = _pass(out, width, -1)
    if h != height:
        out = _pass(out, height, -2)
    return out
