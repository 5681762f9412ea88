"""Exact per-unit quantiles streamed over batches: `TopQuantile`.

The first pass keeps, per unit, a histogram over 4096 order-preserving bins (csrc/common/histogram_key.h:
zero alone, then 1/8 octaves) and the exact values of the bins from a *floor bin* up
(floor_histogram.py, kept_values.py). The floor only rises; how far is the one choice (quantile_floor.py):

- when the number of values per unit is declared (`total_values`, or `expect()` before the first
  batch), the floor keeps the top r values so far, r = the count of values at or above the *final*
  needed rank. The final order statistics are among the top r of every prefix, so they are never
  under the floor, whatever the order of the data: one pass, always (`needs_pass` stays False; the
  GPU kernels get a buffer for a whole batch, so no batch overflows). It keeps about r values at
  the end, fewer than the margin below ends with (1.5 r + 64). A stream longer
  than declared is refused at the batch that passes the total; a shorter one stays exact. Shards of
  one data set (`merge`, `all_reduce`) each declare the *global* total: a shard's own count would
  give a floor that is too high for the merged data.
- when it is unknown, the floor trails the needed rank of the values seen so far with a margin
  (m + m/2 + 64, m = values at or above it). Data whose large values come first (a few bright
  images early) can leave the final order statistic under a floor raised earlier.

At the end each needed order statistic is read exactly from the kept values when its bin is at or
above the floor, as 0 when its bin is the zero bin, as the unit's value when the unit is constant;
otherwise (the data drifted below the floor, a GPU batch overflowed its buffer) the order statistic needs
another pass over the same data: `needs_pass` says so, `new_pass()` starts it
(quantile_refinement.py: at most six passes, usually one).

Memory (documented in the README): 8 * K * (4096 + 3) bytes of histogram, min/max and floor, plus
8 bytes per kept value. A unit keeps the values of the bins from its floor up, which is about
q * n (declared total) or 1.5 * q * n + 64 (unknown) values plus the part of one bin above them;
kept values are compacted when they double, so the peak is at most twice that plus one batch. A
further pass holds at most 8 * max(refine_budget, 4096) bytes per unfinished order statistic.
"""

from __future__ import annotations

import torch

from ..kernels import dispatch
from ..core import validate
from ..core.deprecation import reordered
from ..core.quantile import check_method, interpolate, order_statistics
from .floor_histogram import FloorHistogram, unit_major
from .quantile_shards import QuantileShards
from .quantile_floor import final_keep_top, margin_keep_top
from .quantile_refinement import Refinement

REFINE_BUDGET = 1 << 16


class TopQuantile(QuantileShards):
    """Exact (1 - quantile) quantile of each unit's values, streamed over batches.

    >>> import torch, fastdissect as fd
    >>> q = fd.TopQuantile(num_units=2, quantile=0.005, total_values=1000)
    >>> data = torch.arange(2000.).reshape(1000, 2)          # unit 0: 0, 2, ..., unit 1: 1, 3, ...
    >>> for batch in data.split(300):
    ...     q.add(batch)
    >>> q.needs_pass, q.thresholds().tolist()
    (False, [1988.01, 1989.01])

    `add` takes (N, K, h, w) activations or (M, K) values, any float dtype; thresholds are
    numpy.quantile(all values of unit k as float64, 1 - quantile, method=method). NaN and +-inf are
    rejected with the units that hold them. `total_values` (values per unit the whole stream will
    hold, every shard's together) makes one pass enough for any order of the data; without it, when
    `needs_pass` is True after a pass, read the same data again (any order and batching) after
    `new_pass()`; `fd.thresholds` does this for you.
    """

    def __init__(self, num_units: int, quantile: float = 0.005, method: str = "linear", *,
                 backend: str = "auto", refine_budget: int = REFINE_BUDGET, total_values: int | None = None):
        self.num_units = validate.positive_int(num_units, "num_units")
        self.quantile = validate.quantile_level(quantile)
        self.method = check_method(method)
        self.backend = validate.backend(backend)
        self.refine_budget = validate.positive_int(refine_budget, "refine_budget")
        self.total_values = validate.optional_positive_int(total_values, "total_values")
        self.passes = 1            # passes started over the data
        self._hist: FloorHistogram | None = None  # the first pass, from the first batch on
        self._backend: str | None = None  # resolved once, when the first batch shows the device
        self._refine: Refinement | None = None
        self._answer: tuple[torch.Tensor, torch.Tensor, list] | None = None

    @classmethod
    def from_state_dict(cls, state: dict, device=None, *, backend: str = "auto",
                        refine_budget: int = REFINE_BUDGET) -> "TopQuantile":
        """A TopQuantile restored from a first-pass `state_dict()`, onto `device` (default the CPU)."""
        q = cls(state["num_units"], state["quantile"], state["method"], backend=backend,
                refine_budget=refine_budget, total_values=state.get("total_values"))
        q.load_state_dict(state, device)
        return q

    def expect(self, total_values: int) -> "TopQuantile":
        """Declares the values per unit of the whole stream (all shards), before the first batch."""
        total_values = validate.positive_int(total_values, "total_values")
        if self.num_values and total_values != self.total_values:
            raise RuntimeError("expect() must come before the first add(): the floor already rose without it")
        self.total_values = total_values
        return self

    @property
    def num_values(self) -> int:
        """Values per unit added in the first pass."""
        return 0 if self._hist is None else self._hist.num_values

    # ---- streaming
    def add(self, activations) -> None:
        """Adds a batch: (N, K, h, w) activations or (M, K) values."""
        act = _as_values(activations, self.num_units)
        if self._hist is None:
            self._hist = FloorHistogram(self.num_units, act.device)
        elif act.device != self._hist.device:
            raise ValueError(f"activations are on {act.device} but this TopQuantile holds its state on "
                             f"{self._hist.device}: move them, or the TopQuantile with .to(device)")
        if self._backend is None:
            self._backend = dispatch.resolve_backend(self.backend, self._hist.device)
        if self._backend not in ("cpu",) + dispatch.GPU_BACKENDS or self._refine is not None:
            validate.finite(act, "activations")  # the kernels check their batches themselves
        self._answer = None
        if self._refine is not None:
            self._refine.add(unit_major(act))
            return
        n = self.num_values + act.shape[0] * (act.shape[2] * act.shape[3] if act.dim() == 4 else 1)
        self._check_total(n, "this batch brings")
        self._hist.add(act, self._backend, self._keep_top(n), whole_batch=self.total_values is not None)

    def floor_values(self) -> torch.Tensor:
        """(K,) float64 on the state's device: the least value of each unit's floor bin. A value seen
        below it is not kept; the floor only rises (the single-pass tally keeps maps by it)."""
        return self._first_pass().floor_values()

    @property
    def needs_pass(self) -> bool:
        """True when some unit's order statistic needs another pass over the same data."""
        return bool(self._resolve()[2])

    @property
    def pending_units(self) -> list[int]:
        """The units whose order statistic needs another pass (empty when `needs_pass` is False)."""
        return sorted({unit for unit, _ in self._resolve()[2]})

    def new_pass(self) -> None:
        """Starts another pass over the same data (call `add` with all of it again, in any order)."""
        value, done, pending = self._resolve()
        if not pending:
            raise RuntimeError("no further pass is needed: read thresholds() now")
        if self._refine is None:
            self._refine = Refinement.from_histogram(self._hist.counts, self._needed_ranks(), pending, (value, done),
                                                     budget=self.refine_budget, num_values=self.num_values)
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
        value, done, pending = self._resolve()
        if pending:
            units = sorted({u for u, _ in pending})
            shown = ", ".join(map(str, units[:10])) + (f", ... ({len(units)} units)" if len(units) > 10 else "")
            raise RuntimeError(f"unit(s) {shown} need another pass over the same data to be exact: call "
                               "new_pass() and add() every batch again while needs_pass is True")
        _, _, gamma = order_statistics(self.num_values, 1.0 - self.quantile, self.method)
        return interpolate(value[:, 0], value[:, 1], gamma).cpu()

    # ---- state
    def state_bytes(self) -> int:
        """Bytes held by the state now (histograms, kept values, further-pass buffers)."""
        if self._hist is None:
            return 0
        return self._hist.state_bytes() + (self._refine.state_bytes() if self._refine is not None else 0)

    def state_dict(self) -> dict:
        if self._refine is not None:
            raise RuntimeError("state_dict is available during the first pass only")
        state = {"num_units": self.num_units, "quantile": self.quantile, "method": self.method,
                 "total_values": self.total_values}
        if self._hist is None:
            return {**state, "num_values": 0, "counts": None, "floor": None, "min_max": None, "incomplete": None,
                    "kept_values": torch.zeros(0, dtype=torch.float64),
                    "kept_per_unit": torch.zeros(self.num_units, dtype=torch.int64)}
        return {**state, **self._hist.state_dict()}

    def load_state_dict(self, state: dict, device=None) -> None:
        """Restores a first-pass `state_dict()`, onto `device` (default the CPU). Its `total_values`
        replaces this one's (its floors were raised by it); a state without one has none."""
        for key in ("num_units", "quantile", "method"):
            if state[key] != getattr(self, key):
                raise ValueError(f"state has {key}={state[key]!r}, this TopQuantile has {getattr(self, key)!r}")
        theirs = state.get("total_values")
        if theirs is not None and self.total_values is not None and theirs != self.total_values:
            raise ValueError(f"state has total_values={theirs!r}, this TopQuantile has {self.total_values!r}")
        self.__init__(self.num_units, self.quantile, self.method, backend=self.backend,
                      refine_budget=self.refine_budget, total_values=theirs)
        if state["counts"] is not None:
            device = torch.device(device) if device is not None else torch.device("cpu")
            self._hist = FloorHistogram.from_state_dict(state, self.num_units, device)

    @property
    def in_further_pass(self) -> bool:
        """True once new_pass() started a further pass (shards then merge contributions, not states)."""
        return self._refine is not None

    @property
    def device(self) -> torch.device | None:
        """Where the state lives (None before the first batch)."""
        return None if self._hist is None else self._hist.device

    def to(self, device) -> "TopQuantile":
        """Moves the first-pass state to `device`; later batches must be on it. Returns self."""
        device = torch.device(device)
        if self._refine is not None:
            raise RuntimeError("a TopQuantile can move between passes only before new_pass()")
        if self._hist is not None and device != self._hist.device:
            self.load_state_dict(self.state_dict(), device)
        return self

    # ---- internals
    def _first_pass(self) -> FloorHistogram:
        if self._hist is None:
            raise RuntimeError("no values were added: call add() with activations first")
        return self._hist

    def _needed_ranks(self) -> tuple[int, int]:
        i, j, gamma = order_statistics(self.num_values, 1.0 - self.quantile, self.method)
        return i, (i if gamma == 0 else j)

    def _keep_top(self, n: int) -> int:
        """How many of the top values the floor keeps after n values (quantile_floor.py)."""
        if self.total_values is not None:
            return final_keep_top(self.total_values, self.quantile, self.method)
        return margin_keep_top(n, self.quantile, self.method)

    def _check_total(self, n: int, what: str) -> None:
        # Past the declared total the floor may already sit above the needed rank: refuse, never guess.
        if self.total_values is not None and n > self.total_values:
            raise ValueError(f"{what} {n} values per unit, more than total_values={self.total_values} declared: "
                             "declare the whole stream's values per unit (every shard's together), or None")

    def _resolve(self):
        """(values (K, 2), resolved (K, 2), pending [(unit, slot)]) for the needed order statistics."""
        if self._answer is None:
            self._answer = (self._refine.finish() if self._refine is not None
                            else self._first_pass().read(self._needed_ranks()))
        return self._answer


@reordered("activations, quantile=None, method=None", {})
def thresholds(activations, *, quantile: float = 0.005, method: str = "linear",
               backend: str = "auto") -> torch.Tensor:
    """(K,) float64 exact T_k: numpy.quantile(unit k's values, 1 - quantile, method=method).

    activations: (N, K, h, w) or (M, K). One `TopQuantile` pass, told the number of values so that
    one is enough (the further-pass loop stays as a safeguard; the data is in memory). Use `fd.NETDISSECT_QUANTILE` with method="hazen" for NetDissect's level.

    >>> import torch, fastdissect as fd
    >>> a = torch.arange(1000.).reshape(10, 1, 10, 10)
    >>> fd.thresholds(a, quantile=0.005).item()
    994.005
    """
    validate.quantile_level(quantile)
    check_method(method)
    validate.backend(backend)
    x = _as_values(activations, None)
    total = x.shape[0] * (x.shape[2] * x.shape[3] if x.dim() == 4 else 1)
    q = TopQuantile(x.shape[1], quantile, method, backend=backend, total_values=total)
    q.add(x)
    return q.finish(lambda: [x])


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
