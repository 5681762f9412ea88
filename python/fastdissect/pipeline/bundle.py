"""`LayerBundle`: one layer's accumulators, saved, restored, merged, moved and all-reduced together.

A bundle holds up to five accumulators, by kind: the `TopQuantile` (thresholds), the `TopImages`,
the `Tally`, the permuted control (`PermutedControl`) and the `UnitMasks` (formulas). Each of those
operations is one loop over the accumulator protocol (engine/accumulator.py); the bundle never reads
an accumulator's internals. The kinds' checkpoint fields are `FIELDS`.
"""

from __future__ import annotations

import torch

from ..engine.controls import PermutedControl
from ..engine.scoring import Tally
from ..engine.top_images import TopImages
from ..engine.top_quantile import TopQuantile
from ..engine.unit_masks import UnitMasks
from .options import DissectOptions

# Each kind's checkpoint field, in the order bundles are saved, restored and combined.
FIELDS = {"quantile": "quantiles", "tally": "tallies", "top": "top", "unit_masks": "unit_masks",
          "control": "control_tallies"}
# What `combine` all-reduces after the tally: the thresholds are merged before it (merge.py).
TALLIED = ("tally", "control", "top", "unit_masks")


def new_quantile(num_units: int, opts: DissectOptions, total_values: int | None = None) -> TopQuantile:
    """The one place a layer's TopQuantile is made: the dissection's quantile, method and backend, and
    the values per unit of the whole data set (every shard's) when known, which makes the single pass
    exact in one forward pass whatever the data set's order (engine/quantile_floor.py)."""
    return TopQuantile(num_units, opts.quantile, opts.method, backend=opts.backend, total_values=total_values)


class LayerBundle:
    """The accumulators of one layer (or view) of a dissection, by kind."""

    def __init__(self, opts: DissectOptions, derangement: torch.Tensor | None = None):
        self.opts, self.derangement = opts, derangement
        self.parts: dict = {"top": TopImages(opts.top_k)}

    def get(self, kind: str):
        return self.parts.get(kind)

    @property
    def top(self) -> TopImages:
        return self.parts["top"]

    @property
    def tally(self) -> Tally:
        return self.parts["tally"]

    def quantile(self, num_units: int | None = None, total_values: int | None = None) -> TopQuantile:
        """The layer's TopQuantile, made for `num_units` units (and `total_values` per unit) when it has
        none yet."""
        if "quantile" not in self.parts:
            self.parts["quantile"] = new_quantile(num_units, self.opts, total_values)
        return self.parts["quantile"]

    def start_tallies(self, num_concepts: int, categories: torch.Tensor) -> None:
        """The Tally (and the permuted control's) at the layer's final thresholds."""
        q, o = self.parts["quantile"], self.opts
        tally = lambda: Tally(q.num_units, num_concepts, q.thresholds(), union=o.union,  # noqa: E731
                              categories=None if o.union == "global" else categories, backend=o.backend,
                              device=o.device)
        self.parts["tally"] = tally()
        if self.derangement is not None:  # the permuted control, at this layer
            self.parts["control"] = PermutedControl(tally(), self.derangement)

    def set_control_masks(self, masks) -> None:
        if "control" in self.parts:
            self.parts["control"].masks = masks

    def add_to_tallies(self, act: torch.Tensor, masks, first_image: int, formulas: bool) -> None:
        """What depends on the thresholds, for images first_image.. (consecutive)."""
        # The permuted control rides along in the tally's kernel call: each unit mask is made once.
        if "control" in self.parts:
            self.parts["control"].add_with(self.parts["tally"], act, masks, first_image)
        else:
            self.parts["tally"].add(act, masks)
        if formulas:
            if "unit_masks" not in self.parts:
                self.parts["unit_masks"] = UnitMasks(self.tally.thresholds, masks.height, masks.width,
                                                     backend=self.opts.backend, device=self.opts.device)
            self.parts["unit_masks"].add(act, first_image)

    # ---- the protocol, over every accumulator held
    def state_dict(self, kinds=tuple(FIELDS)) -> dict:
        return {kind: self.parts[kind].state_dict() for kind in kinds if kind in self.parts}

    def load_state_dict(self, states: dict) -> None:
        """Replaces the accumulators of the kinds in `states` by the ones their states describe."""
        device, backend = self.opts.device, self.opts.backend
        for kind, state in states.items():
            if kind == "top":
                self.parts[kind] = TopImages.from_state_dict(state, device)
            elif kind == "control":
                self.parts[kind] = PermutedControl.from_state_dict(state, device, perm=self.derangement,
                                                                   backend=backend)
            else:
                cls = {"quantile": TopQuantile, "tally": Tally, "unit_masks": UnitMasks}[kind]
                self.parts[kind] = cls.from_state_dict(state, device, backend=backend)

    def merge(self, other: "LayerBundle") -> "LayerBundle":
        """Folds in another shard's bundle (of later images); a kind only it holds is taken over."""
        for kind, acc in other.parts.items():
            if kind in self.parts:
                self.parts[kind].merge(acc)
            else:
                self.parts[kind] = acc
        return self

    def to(self, device) -> "LayerBundle":
        for acc in self.parts.values():
            acc.to(device)
        return self

    def all_reduce(self, comm, kinds=TALLIED) -> None:
        for kind in kinds:
            if kind in self.parts:
                self.parts[kind].all_reduce(comm)
