"""Values a GPU histogram kernel kept, left on the device until the kept chunks are merged."""

from __future__ import annotations

import torch


class DeviceChunk:
    """Values a GPU kernel kept: read (one host sync) only when the chunks are merged."""

    def __init__(self, values, units, count, capacity):
        self.values, self.units, self.count, self.capacity = values, units, count, capacity

    def materialize(self, num_units: int):
        """(values grouped by unit, count per unit), as the CPU kernel returns them."""
        n = min(int(self.count), self.capacity)
        order = torch.argsort(self.units[:n], stable=True)
        return self.values[:n][order], torch.bincount(self.units[:n], minlength=num_units)


def chunk_size(chunk) -> int:
    """Values a kept chunk holds (a device chunk: its capacity, read without a host sync)."""
    return chunk.capacity if isinstance(chunk, DeviceChunk) else chunk[0].numel()
