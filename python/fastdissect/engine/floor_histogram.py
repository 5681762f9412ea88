"""The first-pass state of `TopQuantile`: per unit a histogram over HIST_BINS order-preserving bins,
the least and largest value, the floor bin, and the exact values kept from the floor up.

How far the floor is raised (`keep_top`) is the caller's choice (quantile_floor.py); this class
applies it through the kernels (csrc/cpu/histogram_cpu.cpp, csrc/cuda/histogram_kernels.cuh, or
their torch mirror), merges the kept chunks, and reads order statistics from it all.
"""

from __future__ import annotations

import torch

from ..core import validate
from ..core.histogram_keys import HIST_BINS
from ..kernels import dispatch
from .device_chunks import DeviceChunk, chunk_size
from .kept_values import compact, read_order_statistics
from .quantile_floor import floor_values, histogram_add_torch, raise_floor

COMPACT_MIN_VALUES = 1 << 20  # kept chunks are merged once they hold twice the last merge, and this many
TENSORS = ("counts", "floor", "min_max")


class FloorHistogram:
    """Histograms, min/max, floors and kept values of `num_units` units on `device`."""

    def __init__(self, num_units: int, device: torch.device):
        K = self.num_units = num_units
        self.device = device
        self.num_values = 0
        self.counts = torch.zeros(K, HIST_BINS, dtype=torch.int64, device=device)
        self.floor = torch.zeros(K, dtype=torch.int32, device=device)
        self.min_max = torch.tensor([[float("inf"), float("-inf")]], dtype=torch.float64, device=device).repeat(K, 1)
        self.incomplete = torch.zeros(K, dtype=torch.int32, device=device)  # set by the GPU kernels only
        self.non_finite = torch.zeros(K, dtype=torch.int64, device=device)  # likewise
        self.kept: list = []  # (values, count per unit) chunks, or DeviceChunk from the GPU kernels
        self.compacted = 0

    def add(self, act: torch.Tensor, backend: str, keep_top: int, whole_batch: bool = False) -> None:
        """Adds a batch (N, K, h, w) or (M, K) on this device; the cpu and GPU kernels check it is finite.
        whole_batch: a GPU kernel gets room for every value of the batch, so that none overflows."""
        per_unit = act.shape[0] * (act.shape[2] * act.shape[3] if act.dim() == 4 else 1)
        if backend == "cpu":
            chunk = dispatch.histogram_add_cpu(act, self.floor, keep_top, self.counts, self.min_max)
            if chunk is None:  # the batch holds NaN or inf; the state is unchanged
                validate.finite(act, "activations")
                raise AssertionError("the kernel rejected a finite batch")  # pragma: no cover
        elif backend in dispatch.GPU_BACKENDS:
            # Kept values of one batch rarely exceed the top 2 * keep_top of each unit; a unit that overflows
            # is marked incomplete and finished by a further pass, so the bound costs speed, never exactness.
            # A batch whose values crowd the floor bin (data sorted ascending) overflows any such bound: a
            # caller that promises one pass asks for the whole batch, which a long stream's bound reaches
            # anyway once 2 * keep_top exceeds the batch (q * images > batch / 3 with the margin rule).
            capacity = self.num_units * (per_unit if whole_batch else min(per_unit, 2 * keep_top + 256))
            values, units, count = dispatch.histogram_add_gpu(backend, act, self.floor, keep_top, self.counts,
                                                               self.min_max, self.non_finite, self.incomplete,
                                                               capacity)
            chunk = DeviceChunk(values, units, count, capacity)
        else:
            chunk = histogram_add_torch(unit_major(act), self.floor, keep_top, self.counts, self.min_max)
        self.num_values += per_unit
        self.kept.append(chunk)
        if sum(chunk_size(c) for c in self.kept) > max(2 * self.compacted, COMPACT_MIN_VALUES):
            self.compact()

    def floor_values(self) -> torch.Tensor:
        return floor_values(self.floor)

    def compact(self) -> None:
        """Merges the kept chunks into one, dropping values below the (raised) floors."""
        if self.kept:
            self.kept = [compact(self.kept, self.floor, self.num_units)]
            self.compacted = self.kept[0][0].numel()

    def read(self, ranks):
        """(values (K, 2), resolved (K, 2), pending [(unit, slot)]) of the order statistics at `ranks`."""
        validate.report_non_finite(self.non_finite)
        self.compact()
        return read_order_statistics(self.kept[0], self.counts, self.floor, self.min_max, self.incomplete, ranks)

    def state_bytes(self) -> int:
        total = sum(getattr(self, name).numel() * getattr(self, name).element_size() for name in TENSORS)
        return total + sum(chunk_size(c) * 8 + self.num_units * 8 for c in self.kept)

    def state_dict(self) -> dict:
        """The tensors on the CPU, the kept values as one chunk."""
        validate.report_non_finite(self.non_finite)
        self.compact()
        values, per_unit = self.kept[0]
        cpu = lambda t: t.detach().cpu().clone()  # noqa: E731
        return {"num_values": self.num_values, **{name: cpu(getattr(self, name)) for name in TENSORS},
                "kept_values": cpu(values), "kept_per_unit": cpu(per_unit), "incomplete": cpu(self.incomplete)}

    @classmethod
    def from_state_dict(cls, state: dict, num_units: int, device: torch.device) -> "FloorHistogram":
        h = cls(num_units, device)
        for name in TENSORS:
            getattr(h, name).copy_(state[name])
        h.kept = [(state["kept_values"].to(device, copy=True), state["kept_per_unit"].to(device, copy=True))]
        h.compacted = state["kept_values"].numel()
        h.num_values = int(state["num_values"])
        if state.get("incomplete") is not None:
            h.incomplete.copy_(state["incomplete"])
        return h

    def merge(self, state: dict, keep_top: int) -> None:
        """Adds another shard's `state_dict()`, then raises the floors by `keep_top` of the merged counts."""
        dev = self.device
        self.counts += state["counts"].to(dev)
        self.floor = torch.maximum(self.floor, state["floor"].to(dev))
        self.min_max[:, 0] = torch.minimum(self.min_max[:, 0], state["min_max"][:, 0].to(dev))
        self.min_max[:, 1] = torch.maximum(self.min_max[:, 1], state["min_max"][:, 1].to(dev))
        self.kept.append((state["kept_values"].to(dev), state["kept_per_unit"].to(dev)))
        if state.get("incomplete") is not None:
            self.incomplete |= state["incomplete"].to(dev)
        self.num_values += state["num_values"]
        raise_floor(self.floor, self.counts, keep_top)
        self.compact()


def unit_major(act: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) or (M, K) -> (K, values) float64."""
    if act.dim() == 4:
        act = act.transpose(0, 1).reshape(act.shape[1], -1)
    else:
        act = act.T
    return act.to(torch.float64)
