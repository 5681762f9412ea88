"""How shards of one stream combine into TopQuantile's answer: `QuantileShards`, the merge and
all-reduce half of the accumulator protocol (engine/accumulator.py), kept apart from the streaming.

First passes merge as states (the histograms add, the kept values join, the floor is raised again over
both); a further pass adds each shard's contribution. Either way the result equals one process that saw
every shard's data in rank order.
"""

from __future__ import annotations


class QuantileShards:
    """Mixed into TopQuantile: merge, all_reduce and the further-pass exchange."""

    def pass_state(self) -> dict:
        """What this shard contributed to the current further pass (for `merge_pass`)."""
        if self._refine is None:
            raise RuntimeError("pass_state is for further passes; use state_dict() during the first pass")
        return self._refine.contribution()

    def merge_pass(self, state: dict) -> None:
        """Adds another shard's contribution to the current further pass (the shards' first passes
        must have been merged into identical states before `new_pass()`)."""
        if self._refine is None:
            raise RuntimeError("merge_pass is for further passes; use merge() during the first pass")
        self._refine.absorb(state)
        self._answer = None

    def merge(self, other: "TopQuantile") -> "TopQuantile":
        """Adds another shard's first pass into this one; the result equals one pass over both shards.
        Shards that declared a total must have declared the same (global) one."""
        if not isinstance(other, type(self)):
            raise TypeError(f"merge takes a {type(self).__name__}, got {type(other).__name__}")
        if self.in_further_pass or other.in_further_pass:
            raise RuntimeError("merge shards after their first pass, before new_pass()")
        theirs = other.state_dict()
        if theirs["counts"] is None:
            return self
        if self._hist is None:
            self.load_state_dict(theirs)
            return self
        if theirs["total_values"] != self.total_values:
            raise ValueError(f"merge: the shards declared total_values={self.total_values} and "
                             f"{theirs['total_values']}; every shard declares the global total (or none)")
        self._check_total(self.num_values + theirs["num_values"], "the merged shards hold")
        self._hist.merge(theirs, self._keep_top(self.num_values + theirs["num_values"]))
        self._answer = None
        return self

    def all_reduce(self, comm) -> None:
        """Combines every rank's shard in place (a `fastdissect.pipeline.distributed.Comm`): afterwards each rank
        holds the same state, exactly as one process that saw every rank's data in rank order. In the
        first pass the states are merged; in a further pass each rank's contribution is added."""
        if comm.world == 1:
            return
        if self._refine is not None:
            for rank, contribution in enumerate(comm.gather(self.pass_state())):
                if rank != comm.rank:
                    self.merge_pass(contribution)
            return
        merged = type(self)(self.num_units, self.quantile, self.method, backend=self.backend,
                            refine_budget=self.refine_budget)
        for shard in comm.gather(self.state_dict()):
            merged.merge(type(self).from_state_dict(shard, refine_budget=self.refine_budget))
        self.load_state_dict(merged.state_dict())
