"""Data-parallel dissection over torch.distributed: shards, and exact combination of accumulators.

Each rank reads a contiguous shard of the data set (rank r: images [r * n // W, (r + 1) * n // W),
so none is read twice or skipped whatever n and W). What crosses the network per pass, for K units,
C concepts, G categories, B = 4096 bins and the top-k maps of h x w:
  pass 1: every rank's TopQuantile state (8 * K * (B + 3) bytes + 8 bytes per kept value, about
          1.5 * q * n / W + 64 values per unit), gathered once; a rare further pass gathers at most
          8 * max(refine_budget, 4096) bytes per unfinished unit;
  pass 2: one all-reduce of the int64 tallies, 8 * K * (C + G + 2) + 8 * C bytes, and a gather of
          each rank's top-k (K * k * (16 + 4 * h * w) bytes).
None of it grows with the number of images beyond the kept top values, and all of it is exact, so
results are identical bit for bit to one process.
"""

from __future__ import annotations

import torch


class Comm:
    """The process group as fd.dissect uses it (a single process when not distributed)."""

    def __init__(self, enabled: bool):
        import torch.distributed as dist

        self.dist = dist if enabled else None
        self.rank = dist.get_rank() if enabled else 0
        self.world = dist.get_world_size() if enabled else 1

    @staticmethod
    def detect(distributed: bool | None) -> "Comm":
        import torch.distributed as dist

        initialized = dist.is_available() and dist.is_initialized()
        if distributed and not initialized:
            raise RuntimeError("distributed=True but no torch.distributed process group is initialized: call "
                               "torch.distributed.init_process_group first (torchrun sets up the environment)")
        return Comm(initialized if distributed is None else bool(distributed))

    def shard(self, n: int) -> tuple[int, int]:
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    def check(self, error: BaseException | None) -> None:
        """Every rank reports whether its part of a pass failed; any failure stops every rank, with the
        failing rank's error, instead of leaving the others waiting in a collective."""
        if self.dist is None:
            if error is not None:
                raise error
            return
        statuses = [None] * self.world
        self.dist.all_gather_object(statuses, None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(r, s) for r, s in enumerate(statuses) if s is not None]
        if failed:
            raise RuntimeError("; ".join(f"rank {r} failed: {s}" for r, s in failed))

    def run(self, step, *args) -> None:
        """Runs this rank's part of a pass, then `check`s every rank's outcome."""
        error = None
        try:
            step(*args)
        except Exception as exc:
            error = exc
        self.check(error)

    def gather(self, obj) -> list:
        out = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def all_reduce_(self, tensor: torch.Tensor) -> None:
        self.dist.all_reduce(tensor)
