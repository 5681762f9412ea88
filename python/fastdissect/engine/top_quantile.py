"""Exact per-unit quantiles streamed over batches: `TopQuantile`.

The first pass keeps, per unit, a histogram over 4096 order-preserving bins (csrc/common/histogram_key.h:
zero alone, then 1/8 octaves) and the exact values of the bins from a *floor bin* up. The floor bin
trails the bin of the rank needed, with a margin (the top m + m/2 + 64 values, m = values at or above
the needed rank), and only rises. At the end each needed order statistic is read exactly:

- from the kept values when its bin is at or above the floor,
- as 0 when its bin is the zero bin, as the unit's value when the unit is constant,
- otherwise (the data drifted below a floor raised earlier, or heavy ties crowd one bin) the unit's
  order statistic needs another pass over the same data: `needs_pass` says so, `new_pass()` starts it.
  Each further pass narrows a key range by 12 bits, or collects the range's values once there are at
  most `refine_budget` of them, so it ends after at most six passes, usually one.

Memory (documented in the README): 8 * K * (4096 + 3) bytes of histogram, min/max and floor, plus
8 bytes per kept value. A unit keeps the values of the bins from its floor up, which is about
1.5 * q * n + 64 values plus the part of one bin above them; kept values are compacted when they
double, so the peak is at most twice that plus one batch. A further pass holds at most
8 * max(refine_budget, 4096) bytes per unfinished order statistic.
"""

from __future__ import annotations

import torch

from ..kernels import dispatch
from ..core import validate
from ..core.histogram_keys import HIST_BINS, ZERO_BIN, bin_floor_values, bin_key_range, bins, keys, values_of
from ..core.quantile import check_method, interpolate, order_statistics

SUB_BITS = 12  # a further pass splits a key range into 2**SUB_BITS sub-ranges
REFINE_BUDGET = 1 << 16
COMPACT_MIN_VALUES = 1 << 20
_FLOOR_TABLES: dict = {}  # device -> bin_floor_values, built once  # kept chunks are merged once they hold twice the last merge, and this many


class TopQuantile:
    """Exact (1 - quantile) quantile of each unit's values, streamed over batches.

    >>> import torch, fastdissect as fd
    >>> q = fd.TopQuantile(num_units=2, quantile=0.005)
    >>> data = torch.arange(2000.).reshape(1000, 2)          # unit 0: 0, 2, ..., unit 1: 1, 3, ...
    >>> for batch in data.split(300):
    ...     q.add(batch)
    >>> q.needs_pass, q.thresholds().tolist()
    (False, [1988.01, 1989.01])

    `add` takes (N, K, h, w) activations or (M, K) values, any float dtype; thresholds are
    numpy.quantile(all values of unit k as float64, 1 - quantile, method=method). NaN and +-inf are
    rejected with the units that hold them. When `needs_pass` is True after a pass, read the same
    data again (any order and batching) after `new_pass()`; `fd.thresholds` does this for you.
    """

    def __init__(self, num_units: int, quantile: float = 0.005, method: str = "linear", *,
                 backend: str = "auto", refine_budget: int = REFINE_BUDGET):
        self.num_units = validate.positive_int(num_units, "num_units")
        self.quantile = validate.quantile_level(quantile)
        self.method = check_method(method)
        self.backend = validate.backend(backend)
        self.refine_budget = validate.positive_int(refine_budget, "refine_budget")
        self.num_values = 0        # per unit, first pass
        self.passes = 1            # passes started over the data
        self._device: torch.device | None = None
        self._backend: str | None = None  # resolved once, when the first batch shows the device
        self._counts = self._floor = self._min_max = None
        self._incomplete = self._non_finite = None  # set by the GPU kernels only
        self._kept: list = []  # (values, count per unit) chunks, or _DeviceChunk from the GPU kernels
        self._compacted = 0
        self._refine: _Refinement | None = None
        self._answer: tuple[torch.Tensor, torch.Tensor, list] | None = None

    # ---- streaming
    def add(self, activations) -> None:
        """Adds a batch: (N, K, h, w) activations or (M, K) values."""
        act = _as_values(activations, self.num_units)
        if self._device is None:
            self._start(act.device)
        elif act.device != self._device:
            raise ValueError(f"activations are on {act.device} but this TopQuantile holds its state on "
                             f"{self._device}: move them, or the TopQuantile with .to(device)")
        if self._backend is None:
            self._backend = dispatch.resolve_backend(self.backend, self._device)
        backend = self._backend
        if backend not in ("cpu",) + dispatch.GPU_BACKENDS or self._refine is not None:
            validate.finite(act, "activations")  # the kernels check their batches themselves
        if self._refine is not None:
            self._answer = None
            self._refine.add(_unit_major(act))
            return
        n = self.num_values + act.shape[0] * (act.shape[2] * act.shape[3] if act.dim() == 4 else 1)
        keep_top = self._keep_top(n)
        if backend == "cpu":
            chunk = dispatch.histogram_add_cpu(act, self._floor, keep_top, self._counts, self._min_max)
            if chunk is None:  # the batch holds NaN or inf; the state is unchanged
                validate.finite(act, "activations")
                raise AssertionError("the kernel rejected a finite batch")  # pragma: no cover
        elif backend in dispatch.GPU_BACKENDS:
            chunk = self._histogram_add_gpu(backend, act, keep_top)
        else:
            chunk = _histogram_add_torch(_unit_major(act), self._floor, keep_top, self._counts, self._min_max)
        self._answer = None
        self.num_values = n
        self._kept.append(chunk)
        if sum(_chunk_size(c) for c in self._kept) > max(2 * self._compacted, COMPACT_MIN_VALUES):
            self._compact()

    def floor_values(self) -> torch.Tensor:
        """(K,) float64 on the state's device: the least value of each unit's floor bin. A value seen
        below it is not kept; the floor only rises (the single-pass tally keeps maps by it)."""
        if self._device is None:
            raise RuntimeError("no values were added: call add() with activations first")
        table = _FLOOR_TABLES.get(self._device)
        if table is None:
            table = _FLOOR_TABLES[self._device] = bin_floor_values(self._device)
        return table[self._floor.to(torch.int64)]

    @property
    def needs_pass(self) -> bool:
        """True when some unit's order statistic needs another pass over the same data."""
        return bool(self._resolve()[2])

    def new_pass(self) -> None:
        """Starts another pass over the same data (call `add` with all of it again, in any order)."""
        value, done, pending = self._resolve()
        if not pending:
            raise RuntimeError("no further pass is needed: read thresholds() now")
        if self._refine is None:
            self._refine = _Refinement.from_histogram(self, pending)
        else:
            self._refine = self._refine.next_pass()
        self.passes += 1
        self._answer = None

    def finish(self, batches) -> torch.Tensor:
        """Runs the further passes the data needs, `batches()` yielding all of it again each time
        (any order and batching), and returns `thresholds()`."""
        while self.needs_pass:
            self.new_pass()
            for batch in batches():
                self.add(batch)
        return self.thresholds()

    def thresholds(self) -> torch.Tensor:
        """(K,) float64 thresholds on the CPU."""
        if self.num_values == 0:
            raise RuntimeError("no values were added: call add() with activations first")
        value, done, pending = self._resolve()
        if pending:
            units = sorted({u for u, _ in pending})
            shown = ", ".join(map(str, units[:10])) + (f", ... ({len(units)} units)" if len(units) > 10 else "")
            raise RuntimeError(f"unit(s) {shown} need another pass over the same data to be exact: call "
                               "new_pass() and add() every batch again while needs_pass is True")
        _, _, gamma = order_statistics(self.num_values, 1.0 - self.quantile, self.method)
        return interpolate(value[:, 0], value[:, 1], gamma).cpu()

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

    # ---- state
    def state_bytes(self) -> int:
        """Bytes held by the state now (histograms, kept values, further-pass buffers)."""
        if self._device is None:
            return 0
        total = sum(t.numel() * t.element_size() for t in (self._counts, self._floor, self._min_max))
        total += sum(_chunk_size(c) * 8 + self.num_units * 8 for c in self._kept)
        return total + (self._refine.state_bytes() if self._refine is not None else 0)

    def state_dict(self) -> dict:
        if self._refine is not None:
            raise RuntimeError("state_dict is available during the first pass only")
        validate.report_non_finite(self._non_finite)
        self._compact()
        values, per_unit = self._kept[0] if self._kept else (torch.zeros(0, dtype=torch.float64),
                                                             torch.zeros(self.num_units, dtype=torch.int64))
        cpu = lambda t: None if t is None else t.detach().cpu().clone()  # noqa: E731
        return {"num_units": self.num_units, "quantile": self.quantile, "method": self.method,
                "num_values": self.num_values, "counts": cpu(self._counts), "floor": cpu(self._floor),
                "min_max": cpu(self._min_max), "kept_values": cpu(values), "kept_per_unit": cpu(per_unit),
                "incomplete": cpu(self._incomplete)}

    def load_state_dict(self, state: dict, device=None) -> None:
        """Restores a first-pass `state_dict()`, onto `device` (default the CPU)."""
        for key in ("num_units", "quantile", "method"):
            if state[key] != getattr(self, key):
                raise ValueError(f"state has {key}={state[key]!r}, this TopQuantile has {getattr(self, key)!r}")
        self.__init__(self.num_units, self.quantile, self.method, backend=self.backend,
                      refine_budget=self.refine_budget)
        if state["counts"] is None:
            return
        self._start(torch.device(device) if device is not None else torch.device("cpu"))
        self._counts.copy_(state["counts"])
        self._floor.copy_(state["floor"])
        self._min_max.copy_(state["min_max"])
        self._kept = [(state["kept_values"].to(self._device, copy=True),
                       state["kept_per_unit"].to(self._device, copy=True))]
        self._compacted = state["kept_values"].numel()
        self.num_values = int(state["num_values"])
        if state.get("incomplete") is not None:
            self._incomplete.copy_(state["incomplete"])

    def merge(self, other: "TopQuantile") -> "TopQuantile":
        """Adds another shard's first pass into this one; the result equals one pass over both shards."""
        if not isinstance(other, TopQuantile):
            raise TypeError(f"merge takes a TopQuantile, got {type(other).__name__}")
        if self._refine is not None or other._refine is not None:
            raise RuntimeError("merge shards after their first pass, before new_pass()")
        theirs = other.state_dict()
        if theirs["counts"] is None:
            return self
        if self._device is None:
            self.load_state_dict(theirs)
            return self
        dev = self._device
        self._counts += theirs["counts"].to(dev)
        self._floor = torch.maximum(self._floor, theirs["floor"].to(dev))
        self._min_max[:, 0] = torch.minimum(self._min_max[:, 0], theirs["min_max"][:, 0].to(dev))
        self._min_max[:, 1] = torch.maximum(self._min_max[:, 1], theirs["min_max"][:, 1].to(dev))
        self._kept.append((theirs["kept_values"].to(dev), theirs["kept_per_unit"].to(dev)))
        if theirs.get("incomplete") is not None:
            self._incomplete |= theirs["incomplete"].to(dev)
        self.num_values += theirs["num_values"]
        self._answer = None
        _raise_floor(self._floor, self._counts, self._keep_top(self.num_values))
        self._compact()
        return self

    @property
    def device(self) -> torch.device | None:
        """Where the state lives (None before the first batch)."""
        return self._device

    def to(self, device) -> "TopQuantile":
        """Moves the first-pass state to `device`; later batches must be on it. Returns self."""
        device = torch.device(device)
        if self._refine is not None:
            raise RuntimeError("a TopQuantile can move between passes only before new_pass()")
        if self._device is not None and device != self._device:
            self.load_state_dict(self.state_dict(), device)
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
        merged = TopQuantile(self.num_units, self.quantile, self.method, backend=self.backend,
                             refine_budget=self.refine_budget)
        for shard in comm.gather(self.state_dict()):
            part = TopQuantile(self.num_units, self.quantile, self.method, refine_budget=self.refine_budget)
            part.load_state_dict(shard)
            merged.merge(part)
        self.load_state_dict(merged.state_dict())

    # ---- internals
    def _histogram_add_gpu(self, backend: str, act: torch.Tensor, keep_top: int) -> "_DeviceChunk":
        per_unit = act.shape[0] * (act.shape[2] * act.shape[3] if act.dim() == 4 else 1)
        # Kept values of one batch rarely exceed the top 2 * keep_top of each unit; a unit that overflows
        # is marked incomplete and finished by a further pass, so the bound costs speed, never exactness.
        capacity = self.num_units * min(per_unit, 2 * keep_top + 256)
        values, units, count = dispatch.histogram_add_gpu(backend, act, self._floor, keep_top, self._counts,
                                                           self._min_max, self._non_finite, self._incomplete,
                                                           capacity)
        return _DeviceChunk(values, units, count, capacity)

    def _start(self, device: torch.device) -> None:
        self._backend = None
        self._device = device
        K = self.num_units
        self._counts = torch.zeros(K, HIST_BINS, dtype=torch.int64, device=device)
        self._floor = torch.zeros(K, dtype=torch.int32, device=device)
        self._min_max = torch.tensor([[float("inf"), float("-inf")]], dtype=torch.float64,
                                     device=device).repeat(K, 1)
        self._incomplete = torch.zeros(K, dtype=torch.int32, device=device)
        self._non_finite = torch.zeros(K, dtype=torch.int64, device=device)

    def _needed_ranks(self) -> tuple[int, int]:
        i, j, gamma = order_statistics(self.num_values, 1.0 - self.quantile, self.method)
        return i, (i if gamma == 0 else j)

    def _keep_top(self, n: int) -> int:
        """How many of the top values the floor keeps after n values: m + m/2 + 64, m = n - needed rank."""
        i, _, _ = order_statistics(n, 1.0 - self.quantile, self.method)
        m = n - i
        return m + m // 2 + 64  # the margin absorbs batch-to-batch drift (measured on the demo)

    def _compact(self) -> None:
        """Merges the kept chunks into one, unit by unit, dropping values below the (raised) floors."""
        if not self._kept:
            return
        K, dev = self.num_units, self._device
        self._kept = [c.materialize(K) if isinstance(c, _DeviceChunk) else c for c in self._kept]
        per_chunk = torch.stack([c.to(dev) for _, c in self._kept])             # (chunks, K)
        merged = per_chunk.sum(dim=0)
        unit_start = merged.cumsum(0) - merged
        chunk_offset = per_chunk.cumsum(0) - per_chunk                          # within each unit's run
        out = torch.empty(int(merged.sum()), dtype=torch.float64, device=dev)
        for c, (values, per_unit) in enumerate(self._kept):
            unit_of = torch.repeat_interleave(torch.arange(K, device=dev), per_unit.to(dev))
            run_start = (per_unit.cumsum(0) - per_unit).to(dev)
            pos = torch.arange(values.numel(), device=dev) - run_start[unit_of]
            out[unit_start[unit_of] + chunk_offset[c, unit_of] + pos] = values.to(dev)
        unit_of = torch.repeat_interleave(torch.arange(K, device=dev), merged)
        keep = bins(out) >= self._floor.to(torch.int64)[unit_of]
        self._kept = [(out[keep], torch.bincount(unit_of[keep], minlength=K))]
        self._compacted = self._kept[0][0].numel()

    def _resolve(self):
        """(values (K, 2), resolved (K, 2), pending [(unit, slot)]) for the needed order statistics."""
        if self._answer is not None:
            return self._answer
        if self._refine is not None:
            self._answer = self._refine.finish()
            return self._answer
        if self.num_values == 0:
            raise RuntimeError("no values were added: call add() with activations first")
        validate.report_non_finite(self._non_finite)
        self._compact()
        K, dev = self.num_units, self._device
        values, per_unit = self._kept[0]
        sorted_vals, start = _sort_within_units(values, per_unit)
        cum = self._counts.cumsum(dim=1)
        floor = self._floor.to(torch.int64)
        below_floor = torch.where(floor > 0, cum.gather(1, (floor - 1).clamp(min=0)[:, None]).squeeze(1), 0)
        zeros = self._counts[:, ZERO_BIN]
        constant = self._min_max[:, 0] == self._min_max[:, 1]
        out = torch.zeros(K, 2, dtype=torch.float64, device=dev)
        done = torch.zeros(K, 2, dtype=torch.bool, device=dev)
        for slot, rank in enumerate(self._needed_ranks()):
            b = torch.searchsorted(cum, torch.full((K, 1), rank, dtype=torch.int64, device=dev),
                                   right=True).squeeze(1)
            skipped_zeros = torch.where((floor <= ZERO_BIN) & (b > ZERO_BIN), zeros, 0)
            index = rank - below_floor - skipped_zeros
            kept_ok = (b >= floor) & (b != ZERO_BIN) & (index >= 0) & (index < per_unit) & (self._incomplete == 0)
            picked = sorted_vals[(start + index.clamp(min=0)).clamp(max=max(values.numel() - 1, 0))] \
                if values.numel() else torch.zeros(K, dtype=torch.float64, device=dev)
            out[:, slot] = torch.where(kept_ok, picked, out[:, slot])
            out[:, slot] = torch.where(b == ZERO_BIN, 0.0, out[:, slot])
            out[:, slot] = torch.where(constant, self._min_max[:, 0], out[:, slot])
            done[:, slot] = kept_ok | (b == ZERO_BIN) | constant
        pending = [(int(u), int(s)) for u, s in torch.nonzero(~done).tolist()]
        self._answer = (out, done, pending)
        return self._answer

    @classmethod
    def from_state_dict(cls, state: dict, device=None, *, backend: str = "auto") -> "TopQuantile":
        """The TopQuantile a first-pass `state_dict()` describes, its state on `device` (default the CPU)."""
        acc = cls(state["num_units"], state["quantile"], state["method"], backend=backend)
        acc.load_state_dict(state, device)
        return acc


def thresholds(activations, quantile: float = 0.005, method: str = "linear", *,
               backend: str = "auto") -> torch.Tensor:
    """(K,) float64 exact T_k: numpy.quantile(unit k's values, 1 - quantile, method=method).

    activations: (N, K, h, w) or (M, K). One `TopQuantile` pass, plus the rare further passes it asks
    for (the data is in memory). Use `fd.NETDISSECT_QUANTILE` with method="hazen" for NetDissect's level.

    >>> import torch, fastdissect as fd
    >>> a = torch.arange(1000.).reshape(10, 1, 10, 10)
    >>> fd.thresholds(a, quantile=0.005).item()
    994.005
    """
    validate.quantile_level(quantile)
    check_method(method)
    validate.backend(backend)
    x = _as_values(activations, None)
    q = TopQuantile(x.shape[1], quantile, method, backend=backend)
    q.add(x)
    return q.finish(lambda: [x])


class _Refinement:
    """Further passes for the order statistics the first pass could not read.

    Each target (unit, slot) has a key range [lo, hi] holding its order statistic, `below` = values
    under lo, `expected` = values inside. A pass either collects the range's keys (when expected <=
    budget) or histograms them into 2**SUB_BITS sub-ranges of (key - lo) >> shift.
    """

    def __init__(self, owner: TopQuantile, targets, answer):
        self.owner = owner
        self.targets = targets  # list of dicts: unit, slot, rank, lo, hi, below, expected
        self.answer = answer    # (values, done) carried from earlier passes
        self.seen = 0
        dev = owner._device
        self.units = torch.tensor([t["unit"] for t in targets], dtype=torch.int64, device=dev)
        self.lo = torch.tensor([t["lo"] for t in targets], dtype=torch.int64, device=dev)
        self.hi = torch.tensor([t["hi"] for t in targets], dtype=torch.int64, device=dev)
        self.collect = torch.tensor([t["expected"] <= owner.refine_budget for t in targets], device=dev)
        shifts = [max(0, (t["hi"] - t["lo"]).bit_length() - SUB_BITS) for t in targets]
        self.shift = torch.tensor(shifts, dtype=torch.int64, device=dev)
        self.sub_counts = torch.zeros(len(targets), 1 << SUB_BITS, dtype=torch.int64, device=dev)
        self.collected: list[tuple[torch.Tensor, torch.Tensor]] = []  # (target index, key)

    @classmethod
    def from_histogram(cls, owner: TopQuantile, pending) -> "_Refinement":
        cum = owner._counts.cumsum(dim=1).cpu()
        ranks = owner._needed_ranks()
        targets = []
        for unit, slot in pending:
            rank = ranks[slot]
            b = int(torch.searchsorted(cum[unit], torch.tensor([rank]), right=True))
            lo, hi = bin_key_range(b)
            below = int(cum[unit, b - 1]) if b > 0 else 0
            targets.append({"unit": unit, "slot": slot, "rank": rank, "lo": lo, "hi": hi, "below": below,
                            "expected": int(cum[unit, b]) - below})
        values, done, _ = owner._answer
        return cls(owner, targets, (values.clone(), done.clone()))

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

    def contribution(self) -> dict:
        t = torch.cat([t for t, _ in self.collected]) if self.collected else torch.zeros(0, dtype=torch.int64)
        k = torch.cat([k for _, k in self.collected]) if self.collected else torch.zeros(0, dtype=torch.int64)
        return {"seen": self.seen, "targets": [(x["unit"], x["slot"], x["lo"], x["hi"]) for x in self.targets],
                "collected_targets": t.cpu(), "collected_keys": k.cpu(), "sub_counts": self.sub_counts.cpu()}

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
        owner = self.owner
        if self.seen != owner.num_values:
            raise RuntimeError(f"this pass saw {self.seen} values per unit but the first pass saw "
                               f"{owner.num_values}: a further pass must add exactly the same data again")
        values, done = self.answer
        t_all = torch.cat([t for t, _ in self.collected]) if self.collected else torch.zeros(0, dtype=torch.int64)
        k_all = torch.cat([k for _, k in self.collected]) if self.collected else torch.zeros(0, dtype=torch.int64)
        t_all, k_all = t_all.cpu(), k_all.cpu()
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
            cum = sub_counts[i].cumsum(0)
            s = int(torch.searchsorted(cum, torch.tensor([offset]), right=True))
            shift = int(self.shift[i])
            lo = t["lo"] + (s << shift)
            hi = min(t["hi"], lo + (1 << shift) - 1)
            below = t["below"] + (int(cum[s - 1]) if s > 0 else 0)
            if lo == hi:
                values[t["unit"], t["slot"]] = float(values_of(torch.tensor([lo]))[0])
                done[t["unit"], t["slot"]] = True
                continue
            self.next_targets.append({**t, "lo": lo, "hi": hi, "below": below, "expected": int(sub_counts[i, s])})
        pending = [(t["unit"], t["slot"]) for t in self.next_targets]
        return values, done, pending

    def next_pass(self) -> "_Refinement":
        values, done, _ = self.owner._answer
        return _Refinement(self.owner, self.next_targets, (values, done))


def _as_values(activations, num_units: int | None) -> torch.Tensor:
    x = validate.as_tensor(activations, "activations")
    if x.dim() not in (2, 4):
        raise ValueError(f"activations must have shape [N, K, h, w] or [M, K], got {tuple(x.shape)}")
    if x.dtype not in validate.FLOAT_DTYPES:
        raise TypeError(f"activations must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"activations must be non-empty, got shape {tuple(x.shape)}")
    if num_units is not None and x.shape[1] != num_units:
        raise ValueError(f"activations must have {num_units} units (dim 1), got shape {tuple(x.shape)}")
    return x


def _unit_major(act: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) or (M, K) -> (K, values) float64."""
    if act.dim() == 4:
        act = act.transpose(0, 1).reshape(act.shape[1], -1)
    else:
        act = act.T
    return act.to(torch.float64)


def _sort_within_units(values: torch.Tensor, per_unit: torch.Tensor):
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


class _DeviceChunk:
    """Values a GPU kernel kept: read (one host sync) only when the chunks are merged."""

    def __init__(self, values, units, count, capacity):
        self.values, self.units, self.count, self.capacity = values, units, count, capacity

    def materialize(self, num_units: int):
        n = min(int(self.count), self.capacity)
        order = torch.argsort(self.units[:n], stable=True)
        return self.values[:n][order], torch.bincount(self.units[:n], minlength=num_units)


def _chunk_size(chunk) -> int:
    return chunk.capacity if isinstance(chunk, _DeviceChunk) else chunk[0].numel()


def _histogram_add_torch(values, floor, keep_top, counts, min_max):
    """The same update as csrc/cpu/histogram_cpu.cpp in torch ops; values (K, M) float64."""
    K = values.shape[0]
    b = bins(values)
    flat = (torch.arange(K, device=values.device)[:, None] * HIST_BINS + b).flatten()
    counts.view(-1).add_(torch.bincount(flat, minlength=K * HIST_BINS))
    min_max[:, 0] = torch.minimum(min_max[:, 0], values.amin(dim=1))
    min_max[:, 1] = torch.maximum(min_max[:, 1], values.amax(dim=1))
    _raise_floor(floor, counts, keep_top)
    keep = (b >= floor.to(torch.int64)[:, None]) & (b != ZERO_BIN)
    return values[keep], keep.sum(dim=1)


def _raise_floor(floor, counts, keep_top: int) -> None:
    """Raises each unit's floor (in place) to the bin holding its keep_top-th largest value."""
    above = counts.flip(1).cumsum(dim=1)  # above[:, r] = values in bins >= HIST_BINS - 1 - r
    reached = torch.searchsorted(above, torch.full((counts.shape[0], 1), keep_top, dtype=torch.int64,
                                                   device=counts.device)).squeeze(1)
    bin_ = torch.where(reached < HIST_BINS, HIST_BINS - 1 - reached, 0)
    torch.maximum(floor, bin_.to(torch.int32), out=floor)
