"""Further passes of `TopQuantile` for the order statistics its first pass could not read.

Each target (unit, slot) has a key range [lo, hi] holding its order statistic, `below` = values
under lo, `expected` = values inside. A pass either collects the range's keys (when expected <=
budget) or histograms them into 2**SUB_BITS sub-ranges of (key - lo) >> shift, so a target ends
after at most six passes, usually one.
"""

from __future__ import annotations

import torch

from ..core.histogram_keys import bin_key_range, keys, values_of

SUB_BITS = 12  # a further pass splits a key range into 2**SUB_BITS sub-ranges


class Refinement:
    """One further pass: add() every value of the data again, then finish()."""

    def __init__(self, targets, answer, *, budget: int, num_values: int, device):
        self.targets = targets  # list of dicts: unit, slot, rank, lo, hi, below, expected
        self.answer = answer    # (values, done) carried from earlier passes
        self.budget, self.num_values = budget, num_values
        self.seen = 0
        dev = device
        self.units = torch.tensor([t["unit"] for t in targets], dtype=torch.int64, device=dev)
        self.lo = torch.tensor([t["lo"] for t in targets], dtype=torch.int64, device=dev)
        self.hi = torch.tensor([t["hi"] for t in targets], dtype=torch.int64, device=dev)
        self.collect = torch.tensor([t["expected"] <= budget for t in targets], device=dev)
        shifts = [max(0, (t["hi"] - t["lo"]).bit_length() - SUB_BITS) for t in targets]
        self.shift = torch.tensor(shifts, dtype=torch.int64, device=dev)
        self.sub_counts = torch.zeros(len(targets), 1 << SUB_BITS, dtype=torch.int64, device=dev)
        self.collected: list[tuple[torch.Tensor, torch.Tensor]] = []  # (target index, key)
        self.next_targets: list = []

    @classmethod
    def from_histogram(cls, counts, ranks, pending, answer, *, budget: int, num_values: int) -> "Refinement":
        """The first further pass: each pending order statistic's histogram bin is its key range."""
        cum = counts.cumsum(dim=1).cpu()
        targets = []
        for unit, slot in pending:
            rank = ranks[slot]
            b = int(torch.searchsorted(cum[unit], torch.tensor([rank]), right=True))
            lo, hi = bin_key_range(b)
            below = int(cum[unit, b - 1]) if b > 0 else 0
            targets.append({"unit": unit, "slot": slot, "rank": rank, "lo": lo, "hi": hi, "below": below,
                            "expected": int(cum[unit, b]) - below})
        values, done = answer
        return cls(targets, (values.clone(), done.clone()), budget=budget, num_values=num_values,
                   device=counts.device)

    def add(self, values: torch.Tensor) -> None:
        """values: (K, M) float64 of this batch."""
        self.seen += values.shape[1]
        k = keys(values[self.units])  # (T, M)
        inside = (k >= self.lo[:, None]) & (k <= self.hi[:, None])
        gather = inside & self.collect[:, None]
        if bool(gather.any()):
            t_idx, col = torch.nonzero(gather, as_tuple=True)
            self.collected.append((t_idx, k[t_idx, col]))
        count = inside & ~self.collect[:, None]
        if bool(count.any()):
            t_idx, col = torch.nonzero(count, as_tuple=True)
            sub = (k[t_idx, col] - self.lo[t_idx]) >> self.shift[t_idx]
            self.sub_counts.view(-1).index_add_(0, t_idx * (1 << SUB_BITS) + sub,
                                                torch.ones_like(sub))

    def state_bytes(self) -> int:
        return self.sub_counts.numel() * 8 + sum(t.numel() * 16 for t, _ in self.collected)

    def _collected(self):
        t = torch.cat([t for t, _ in self.collected]) if self.collected else torch.zeros(0, dtype=torch.int64)
        k = torch.cat([k for _, k in self.collected]) if self.collected else torch.zeros(0, dtype=torch.int64)
        return t.cpu(), k.cpu()

    def contribution(self) -> dict:
        t, k = self._collected()
        return {"seen": self.seen, "targets": [(x["unit"], x["slot"], x["lo"], x["hi"]) for x in self.targets],
                "collected_targets": t, "collected_keys": k, "sub_counts": self.sub_counts.cpu()}

    def absorb(self, state: dict) -> None:
        mine = [(x["unit"], x["slot"], x["lo"], x["hi"]) for x in self.targets]
        if state["targets"] != mine:
            raise ValueError("merge_pass: the shards are in different further passes; merge their first passes "
                             "before new_pass()")
        dev = self.sub_counts.device
        self.seen += state["seen"]
        self.sub_counts += state["sub_counts"].to(dev)
        if state["collected_keys"].numel():
            self.collected.append((state["collected_targets"].to(dev), state["collected_keys"].to(dev)))

    def finish(self):
        """(values, done, pending) after this pass; the pending targets' narrower ranges are kept for
        `next_pass`."""
        if self.seen != self.num_values:
            raise RuntimeError(f"this pass saw {self.seen} values per unit but the first pass saw "
                               f"{self.num_values}: a further pass must add exactly the same data again")
        values, done = self.answer
        t_all, k_all = self._collected()
        sub_counts = self.sub_counts.cpu()
        self.next_targets = []
        for i, t in enumerate(self.targets):
            if bool(self.collect[i]):
                mine = torch.sort(k_all[t_all == i]).values
                found = mine.numel()
            else:
                found = int(sub_counts[i].sum())
            if found != t["expected"]:
                raise RuntimeError(f"unit {t['unit']}: this pass found {found} values in a range where the first "
                                   f"pass counted {t['expected']}: a further pass must add exactly the same data")
            offset = t["rank"] - t["below"]
            if bool(self.collect[i]):
                values[t["unit"], t["slot"]] = float(values_of(mine[offset:offset + 1])[0])
                done[t["unit"], t["slot"]] = True
                continue
            narrower = self._narrow(t, sub_counts[i], int(self.shift[i]), offset)
            if narrower["lo"] == narrower["hi"]:
                values[t["unit"], t["slot"]] = float(values_of(torch.tensor([narrower["lo"]]))[0])
                done[t["unit"], t["slot"]] = True
            else:
                self.next_targets.append(narrower)
        pending = [(t["unit"], t["slot"]) for t in self.next_targets]
        return values, done, pending

    @staticmethod
    def _narrow(target: dict, sub_counts: torch.Tensor, shift: int, offset: int) -> dict:
        """The sub-range of `target` holding its order statistic (at `offset` within the range)."""
        cum = sub_counts.cumsum(0)
        s = int(torch.searchsorted(cum, torch.tensor([offset]), right=True))
        lo = target["lo"] + (s << shift)
        hi = min(target["hi"], lo + (1 << shift) - 1)
        below = target["below"] + (int(cum[s - 1]) if s > 0 else 0)
        return {**target, "lo": lo, "hi": hi, "below": below, "expected": int(sub_counts[s])}

    def next_pass(self) -> "Refinement":
        """The pass after this one (call finish() first)."""
        return Refinement(self.next_targets, self.answer, budget=self.budget, num_values=self.num_values,
                          device=self.sub_counts.device)
