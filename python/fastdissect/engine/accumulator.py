"""The protocol every streaming accumulator follows (`TopQuantile`, `Tally`, `TopImages`,
`UnitMasks`, `MaskLog`, the permuted control `PermutedControl`).

An accumulator folds batches into exact state, so batching and sharding never change a result:

- ``add(...)``: folds one batch in;
- ``state_dict()`` / ``load_state_dict(state)``: plain CPU tensors and numbers (checkpoints,
  ``torch.distributed`` gathers), restoring an identical state;
- ``from_state_dict(state, device=None)`` (a classmethod): a new accumulator in that state, on
  ``device`` (default the CPU); what the state cannot say (the kernel backend, the permuted
  control's derangement) is passed by keyword;
- ``merge(other)``: folds another shard in; equal to one accumulator that saw both shards, the
  other's data after this one's;
- ``to(device)``: moves the state, returns self; ``device``: where it lives (None while empty);
- ``all_reduce(comm)``: combines every rank's shard in place (a `fastdissect.pipeline.distributed.Comm`), so
  that every rank holds the state of one process that saw all ranks' data in rank order.

The pipeline only orchestrates these calls; it never reads an accumulator's internals.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Accumulator(Protocol):
    @property
    def device(self) -> torch.device | None: ...

    def add(self, *batch) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    @classmethod
    def from_state_dict(cls, state: dict, device=None): ...

    def merge(self, other): ...

    def to(self, device): ...

    def all_reduce(self, comm) -> None: ...
