"""The exact values `TopQuantile` keeps above its floors: merging the kept chunks and reading the
needed order statistics from them and the histograms."""

from __future__ import annotations

import torch

from ..core.histogram_keys import ZERO_BIN, bins
from .device_chunks import DeviceChunk


def compact(chunks: list, floor: torch.Tensor, num_units: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One (values, count per unit) chunk from `chunks`, unit by unit, without the values under the
    (raised) floors."""
    K, dev = num_units, floor.device
    chunks = [c.materialize(K) if isinstance(c, DeviceChunk) else c for c in chunks]
    per_chunk = torch.stack([c.to(dev) for _, c in chunks])             # (chunks, K)
    merged = per_chunk.sum(dim=0)
    unit_start = merged.cumsum(0) - merged
    chunk_offset = per_chunk.cumsum(0) - per_chunk                      # within each unit's run
    out = torch.empty(int(merged.sum()), dtype=torch.float64, device=dev)
    for c, (values, per_unit) in enumerate(chunks):
        unit_of = torch.repeat_interleave(torch.arange(K, device=dev), per_unit.to(dev))
        run_start = (per_unit.cumsum(0) - per_unit).to(dev)
        pos = torch.arange(values.numel(), device=dev) - run_start[unit_of]
        out[unit_start[unit_of] + chunk_offset[c, unit_of] + pos] = values.to(dev)
    unit_of = torch.repeat_interleave(torch.arange(K, device=dev), merged)
    keep = bins(out) >= floor.to(torch.int64)[unit_of]
    return out[keep], torch.bincount(unit_of[keep], minlength=K)


def sort_within_units(values: torch.Tensor, per_unit: torch.Tensor):
    """Sorts each unit's run of `values` (runs in unit order); returns (sorted values, run starts)."""
    K, dev = per_unit.numel(), values.device
    start = per_unit.cumsum(0) - per_unit
    unit_of = torch.repeat_interleave(torch.arange(K, device=dev), per_unit)
    width = int(per_unit.max()) if K else 0
    if K * width <= 4 * values.numel() + 4096:  # rows of similar length: one batched row sort
        padded = torch.full((K, width), float("inf"), dtype=torch.float64, device=dev)
        padded[unit_of, torch.arange(values.numel(), device=dev) - start[unit_of]] = values
        rows = padded.sort(dim=1).values
        return rows[unit_of, torch.arange(values.numel(), device=dev) - start[unit_of]], start
    by_value = torch.argsort(values, stable=True)
    return values[by_value][torch.argsort(unit_of[by_value], stable=True)], start


def read_order_statistics(kept, counts, floor, min_max, incomplete, ranks):
    """(values (K, 2), resolved (K, 2), pending [(unit, slot)]) of the order statistics at `ranks`.

    A rank is read from the kept values when its bin is at or above the floor (and the unit's kept
    values are complete), as 0 in the zero bin, as the unit's value when the unit is constant; any
    other is pending: it needs a further pass."""
    values, per_unit = kept
    K, dev = counts.shape[0], counts.device
    sorted_vals, start = sort_within_units(values, per_unit)
    cum = counts.cumsum(dim=1)
    floor = floor.to(torch.int64)
    below_floor = torch.where(floor > 0, cum.gather(1, (floor - 1).clamp(min=0)[:, None]).squeeze(1), 0)
    zeros = counts[:, ZERO_BIN]
    constant = min_max[:, 0] == min_max[:, 1]
    out = torch.zeros(K, 2, dtype=torch.float64, device=dev)
    done = torch.zeros(K, 2, dtype=torch.bool, device=dev)
    for slot, rank in enumerate(ranks):
        b = torch.searchsorted(cum, torch.full((K, 1), rank, dtype=torch.int64, device=dev), right=True).squeeze(1)
        skipped_zeros = torch.where((floor <= ZERO_BIN) & (b > ZERO_BIN), zeros, 0)
        index = rank - below_floor - skipped_zeros
        kept_ok = (b >= floor) & (b != ZERO_BIN) & (index >= 0) & (index < per_unit) & (incomplete == 0)
        picked = sorted_vals[(start + index.clamp(min=0)).clamp(max=max(values.numel() - 1, 0))] \
            if values.numel() else torch.zeros(K, dtype=torch.float64, device=dev)
        out[:, slot] = torch.where(kept_ok, picked, out[:, slot])
        out[:, slot] = torch.where(b == ZERO_BIN, 0.0, out[:, slot])
        out[:, slot] = torch.where(constant, min_max[:, 0], out[:, slot])
        done[:, slot] = kept_ok | (b == ZERO_BIN) | constant
    pending = [(int(u), int(s)) for u, s in torch.nonzero(~done).tolist()]
    return out, done, pending
