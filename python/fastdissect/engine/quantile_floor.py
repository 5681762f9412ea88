"""The floor of a streamed quantile: how many top values it keeps, and the histogram update in torch.

`TopQuantile` keeps, per unit, the exact values of the histogram bins from a *floor bin* up; the
floor is raised after every batch to the bin holding the unit's `keep_top`-th largest value so far
(csrc/common/histogram_key.h raised_floor; `raise_floor` below is its torch mirror), and never
lowered. Two rules choose `keep_top`:

- the total is unknown (a generator of batches): `margin_keep_top`, m + m/2 + 64 with m the values
  at or above the needed rank *so far*. The floor then trails the needed rank of the prefix, and a
  stream whose large values come first can leave the final order statistic under it (a further pass).
- the total N is declared: `final_keep_top`, r = N - i with i the lowest needed rank of the final
  N values (0-based, ascending), i.e. the count of values at or above it. Every needed order
  statistic x is among the top r values of the whole stream, so at most r - 1 values of the stream,
  and hence of any prefix, are greater than x; the prefix's r-th largest value is therefore at most
  x, and so is the bin the floor is raised to. The floor never passes x's bin whatever the order,
  and every value in the bins from the final floor up was kept when seen (the floor was at most as
  high then): the order statistics are read from the kept values after one pass. The higher slot
  of an interpolation (rank i + 1) is above x, and ties are whole bins, so r covers both.
  r grows with N (each extra value raises i by at most one), so a stream shorter than declared
  keeps more than it needs and stays exact; a longer one would not, and is refused.
"""

from __future__ import annotations

import torch

from ..core.histogram_keys import HIST_BINS, ZERO_BIN, bin_floor_values, bins
from ..core.quantile import order_statistics

_FLOOR_TABLES: dict = {}  # device -> bin_floor_values, built once


def margin_keep_top(n: int, quantile: float, method: str) -> int:
    """Values the floor keeps after n values of a stream of unknown length: m + m/2 + 64."""
    i, _, _ = order_statistics(n, 1.0 - quantile, method)
    m = n - i
    return m + m // 2 + 64  # the margin absorbs batch-to-batch drift (measured on the demo)


def final_keep_top(total: int, quantile: float, method: str) -> int:
    """Values the floor keeps, at any point, of a stream of `total` values: those at or above the
    final needed rank. Never fewer than 1."""
    i, _, _ = order_statistics(total, 1.0 - quantile, method)
    return total - i


def floor_values(floor: torch.Tensor) -> torch.Tensor:
    """(K,) float64 on floor's device: the least value of each unit's floor bin."""
    table = _FLOOR_TABLES.get(floor.device)
    if table is None:
        table = _FLOOR_TABLES[floor.device] = bin_floor_values(floor.device)
    return table[floor.to(torch.int64)]


def histogram_add_torch(values, floor, keep_top, counts, min_max):
    """The same update as csrc/cpu/histogram_cpu.cpp in torch ops; values (K, M) float64."""
    K = values.shape[0]
    b = bins(values)
    flat = (torch.arange(K, device=values.device)[:, None] * HIST_BINS + b).flatten()
    counts.view(-1).add_(torch.bincount(flat, minlength=K * HIST_BINS))
    min_max[:, 0] = torch.minimum(min_max[:, 0], values.amin(dim=1))
    min_max[:, 1] = torch.maximum(min_max[:, 1], values.amax(dim=1))
    raise_floor(floor, counts, keep_top)
    keep = (b >= floor.to(torch.int64)[:, None]) & (b != ZERO_BIN)
    return values[keep], keep.sum(dim=1)


def raise_floor(floor, counts, keep_top: int) -> None:
    """Raises each unit's floor (in place) to the bin holding its keep_top-th largest value."""
    above = counts.flip(1).cumsum(dim=1)  # above[:, r] = values in bins >= HIST_BINS - 1 - r
    reached = torch.searchsorted(above, torch.full((counts.shape[0], 1), keep_top, dtype=torch.int64,
                                                   device=counts.device)).squeeze(1)
    bin_ = torch.where(reached < HIST_BINS, HIST_BINS - 1 - reached, 0)
    torch.maximum(floor, bin_.to(torch.int32), out=floor)
