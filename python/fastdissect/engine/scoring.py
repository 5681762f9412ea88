"""Scoring units against concepts: `score` (one call) and `Tally` (streamed over batches)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels import dispatch
from ..core import validate
from ..core.masks import ConceptMasks, as_concept_masks
from .top_quantile import thresholds as exact_thresholds


@dataclass(frozen=True)
class Scores:
    """IoU of every unit (row) against every concept (column), summed over the data set.

    intersection[k, c] = sum_x |M_k(x) & L_c(x)|, union[k, c] as the union mode defines it,
    iou = intersection / union (0 where union == 0).
    """

    intersection: torch.Tensor  # (K, C) int64
    union: torch.Tensor         # (K, C) int64
    iou: torch.Tensor           # (K, C) float64
    unit_area: torch.Tensor     # (K,) int64  sum_x |M_k(x)|
    concept_area: torch.Tensor  # (C,) int64  sum_x |L_c(x)|
    thresholds: torch.Tensor    # (K,) float64 T_k
    union_mode: str
    num_images: int
    image_hits: torch.Tensor | None = None      # (K, C) int64 images where M_k meets L_c
    concept_images: torch.Tensor | None = None  # (C,) int64 images where L_c is present

    @property
    def precision(self) -> torch.Tensor:
        """(K, C) float64 I / |M|: the share of the unit's mask on the concept (0 for a silent unit)."""
        return _ratio(self.intersection, self.unit_area[:, None])

    @property
    def recall(self) -> torch.Tensor:
        """(K, C) float64 I / |L|: the share of the concept the unit covers (CCE's detection accuracy)."""
        return _ratio(self.intersection, self.concept_area[None, :])

    @property
    def f1(self) -> torch.Tensor:
        """(K, C) float64 2 I / (|M| + |L|), the harmonic mean of precision and recall (Dice)."""
        return _ratio(2 * self.intersection, self.unit_area[:, None] + self.concept_area[None, :])

    @property
    def coverage(self) -> torch.Tensor:
        """(K, C) float64: the share of the concept's images on which the unit's mask meets it
        (CCE's sample coverage; 0 for an absent concept). Image counts, not pixels: a unit that
        touches every instance of a concept a little covers it fully."""
        if self.image_hits is None or self.concept_images is None:
            raise ValueError("these scores have no image counts (saved by an older fastdissect): dissect again "
                             "for coverage")
        return _ratio(self.image_hits, self.concept_images[None, :])

    def best(self):
        """(concept, iou) per unit: the concept with the highest IoU (lowest id on ties)."""
        iou, concept = self.iou.max(dim=1)
        return concept, iou


def _on(m: ConceptMasks, device: torch.device) -> ConceptMasks:
    return m if m.device == device else m.to(device)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den in float64 from exact integer counts, 0 where den is 0 (then num is 0 too)."""
    num, den = torch.broadcast_tensors(num, den)
    out = torch.zeros(num.shape, dtype=torch.float64, device=num.device)
    nz = den > 0
    out[nz] = num[nz].to(torch.float64) / den[nz].to(torch.float64)
    return out


class Tally:
    """Streaming scorer: add batches of (activations, masks), read `scores()` at any time.

    Tallies are integer sums, so `merge` combines shards exactly and batch sizes never change a result.

    >>> import torch, fastdissect as fd
    >>> t = fd.Tally(num_units=2, num_concepts=3, thresholds=[0.5, 0.5])
    >>> masks = torch.zeros(4, 3, 8, 8, dtype=torch.bool); masks[:, 1, :4] = True
    >>> acts = torch.zeros(4, 2, 2, 2); acts[:, 0, 0] = 1.0          # unit 0 fires on the top row
    >>> for i in range(0, 4, 2):
    ...     t.add(acts[i:i + 2], masks[i:i + 2])
    >>> s = t.scores()
    >>> s.iou[0, 1].item() > 0.5, s.iou[1].tolist()
    (True, [0.0, 0.0, 0.0])
    """

    def __init__(self, num_units: int, num_concepts: int, thresholds, *, union: str = "global",
                 categories=None, backend: str = "auto", device=None):
        num_units = validate.positive_int(num_units, "num_units")
        num_concepts = validate.positive_int(num_concepts, "num_concepts")
        thresholds = validate.thresholds(thresholds, num_units)
        union, categories, num_categories = validate.union_and_categories(union, categories, num_concepts)
        self._set(num_units, num_concepts, thresholds, union, categories, num_categories, validate.backend(backend),
                  validate.device(device))

    @classmethod
    def _trusted(cls, num_units: int, num_concepts: int, thresholds: torch.Tensor, union: str,
                categories: torch.Tensor | None, num_categories: int, backend: str, device: torch.device) -> "Tally":
        """A Tally of arguments validated already (`score`): thresholds (K,) float64 on the CPU, union
        and categories as `validate.union_and_categories` returns them, backend resolved for device."""
        tally = cls.__new__(cls)
        tally._set(num_units, num_concepts, thresholds, union, categories, num_categories, backend, device)
        tally._backend = backend
        return tally

    def _set(self, num_units, num_concepts, thresholds, union, categories, num_categories, backend, device) -> None:
        self.num_units, self.num_concepts, self.thresholds = num_units, num_concepts, thresholds
        self.union, self.categories, self.num_categories = union, categories, num_categories
        self.backend, self.device = backend, device
        self.num_images = 0
        self._state: dict[str, torch.Tensor] | None = None
        self._backend: str | None = None  # resolved once, at the first batch

    def _zeros(self, device) -> dict[str, torch.Tensor]:
        """The tallies, all int64 sums; non_finite counts NaN/inf seen by the GPU kernels."""
        z = lambda *shape: torch.zeros(*shape, dtype=torch.int64, device=device)  # noqa: E731
        state = {"intersection": z(self.num_units, self.num_concepts), "unit_area": z(self.num_units),
                 "concept_area": z(self.num_concepts), "non_finite": z(self.num_units),
                 "image_hits": z(self.num_units, self.num_concepts), "concept_images": z(self.num_concepts)}
        if self.union != "global":
            state["unit_category_area"] = z(self.num_units, self.num_categories)
        return state

    def _tallies(self) -> dict[str, torch.Tensor]:
        if self._state is None:
            self._state = self._zeros(self.device or "cpu")
        return self._state

    def add(self, activations, masks, *, control=None) -> None:
        """Adds a batch: activations (N, K, h, w) and the same N images' masks (dense (N, C, H, W)
        bool/uint8, or a `ConceptMasks` from `pack_masks`).

        control: (tally, control_masks), another Tally of the same units and concepts and masks of the
        same N images (the permuted control's: image i paired with another image's masks); it gets
        exactly what `tally.add(activations, control_masks)` would add. When both Tallies share
        thresholds, union, categories and a kernel backend, one kernel call makes each unit mask
        M_k(x) once and counts it against both mask sets; otherwise two calls are made."""
        act = validate.activations(activations, num_units=self.num_units, check_finite=False)
        m = as_concept_masks(masks, self.num_concepts)
        validate.same_images(act.shape[0], m.num_images)
        if control is not None:
            control = self._control_pair(control, act.shape[0])
        self._add(act, m, control=control)

    def _control_pair(self, control, num_images: int) -> tuple["Tally", ConceptMasks]:
        """`add`'s control argument, checked: (Tally, ConceptMasks of num_images images)."""
        if not (isinstance(control, tuple) and len(control) == 2 and isinstance(control[0], Tally)):
            raise TypeError(f"control must be a (Tally, masks) pair, got {type(control).__name__}")
        other, masks = control
        if other is self:
            raise ValueError("control must be another Tally than the one added to")
        if (other.num_units, other.num_concepts) != (self.num_units, self.num_concepts):
            raise ValueError(f"control Tally has {other.num_units} units and {other.num_concepts} concepts, this "
                             f"one {self.num_units} and {self.num_concepts}")
        m = as_concept_masks(masks, self.num_concepts)
        validate.same_images(num_images, m.num_images)
        return other, m

    def _add(self, act: torch.Tensor, m: ConceptMasks, known_finite: bool = False,
             control: tuple["Tally", ConceptMasks] | None = None) -> None:
        """known_finite: the activations passed the finiteness policy already (`score`'s quantile pass).
        control: a checked (Tally, masks) pair, tallied in the same kernel call when it can be."""
        self._bind(act.device)
        if control is not None and not self._shares_kernel_with(control[0], act.device):
            self._add(act, m, known_finite)
            control[0]._add(act, control[1], known_finite)
            return
        if not known_finite:
            validate.finite_on_host(act, "activations", self._backend)
        state, m = self._tallies(), _on(m, self.device)
        cats = self.categories.to(self.device) if self.categories is not None else None
        ctl, non_finite = None, state["non_finite"]
        if control is not None:
            other, cm = control[0], _on(control[1], self.device)
            o = other._tallies()
            ctl = dispatch.ControlTallies(cm, o["intersection"], o["unit_area"], o.get("unit_category_area"),
                                          o["image_hits"])
            non_finite = torch.zeros_like(non_finite)  # the GPU kernels' count, for both Tallies
        dispatch.tally_batch(self._backend, act, m, self.thresholds.to(self.device), self.union, cats,
                             self.num_categories, state["intersection"], state["unit_area"],
                             state.get("unit_category_area"), non_finite, image_hits=state["image_hits"],
                             control=ctl)
        self._count_images(m, act.shape[0])
        if control is not None:
            state["non_finite"] += non_finite
            o["non_finite"] += non_finite
            other._count_images(cm, act.shape[0])

    def _bind(self, device: torch.device) -> None:
        """Fixes the device (at the first batch) and resolves the backend for it once."""
        if self.device is None:
            self.device = device
        if device != self.device:
            raise ValueError(f"activations are on {device} but this Tally accumulates on {self.device}")
        if self._backend is None:
            self._backend = dispatch.resolve_backend(self.backend, self.device)

    def _shares_kernel_with(self, other: "Tally", device: torch.device) -> bool:
        """Whether `other` can be counted in this Tally's kernel call: the same unit masks (thresholds)
        and union, on a kernel backend (the torch backend makes two calls anyway)."""
        other._bind(device)
        same_cats = (self.categories is None) == (other.categories is None) and (
            self.categories is None or torch.equal(self.categories, other.categories))
        return (self._backend == other._backend != "torch" and self.union == other.union and same_cats
                and torch.equal(self.thresholds, other.thresholds))

    def _count_images(self, m: ConceptMasks, num_images: int) -> None:
        state = self._tallies()
        state["concept_area"] += m.concept_area()
        state["concept_images"] += m.concept_images()
        self.num_images += num_images

    def scores(self) -> Scores:
        """The scores of everything added so far (a snapshot: later `add` calls do not change it)."""
        return self._scores(copy=True)

    def _scores(self, copy: bool) -> Scores:
        """copy=False hands over the tallies themselves (for a Tally that is discarded afterwards)."""
        state = self._tallies()
        validate.report_non_finite(state["non_finite"])
        inter = state["intersection"]
        concept_area = state["concept_area"]
        if self.union == "global":
            unit_term, cats = state["unit_area"], None
        else:
            unit_term, cats = state["unit_category_area"], self.categories.to(inter.device)
        union, iou = dispatch.union_and_iou(self._read_backend(inter.device), inter, unit_term, cats, concept_area)
        keep = (lambda t: t.clone()) if copy else (lambda t: t)  # noqa: E731
        return Scores(keep(inter), union, iou, keep(state["unit_area"]), keep(concept_area),
                      self.thresholds.clone(), self.union, self.num_images, keep(state["image_hits"]),
                      keep(state["concept_images"]))

    def _read_backend(self, device: torch.device) -> str:
        """The concrete backend that computes union and IoU: the batches' (resolved at the first one),
        or for tallies that saw no batch where they are now (loaded, merged, moved), the C++ pass for
        CPU tallies when "auto" or "cpu" was asked for, plain torch otherwise (it fits any device)."""
        if self._backend is not None:
            return self._backend
        return "cpu" if self.backend in ("auto", "cpu") and device.type == "cpu" and dispatch.has_extension() \
            else "torch"

    def state_dict(self) -> dict:
        state = self._tallies()
        validate.report_non_finite(state["non_finite"])
        return {"num_units": self.num_units, "num_concepts": self.num_concepts, "union": self.union,
                "thresholds": self.thresholds.clone(),
                "categories": None if self.categories is None else self.categories.clone(),
                "num_images": self.num_images, **{k: v.detach().cpu().clone() for k, v in state.items()}}

    @classmethod
    def from_state_dict(cls, state: dict, device=None, *, backend: str = "auto") -> "Tally":
        """The Tally a `state_dict()` describes, its tallies on `device` (default the CPU)."""
        tally = cls(state["num_units"], state["num_concepts"], state["thresholds"], union=state["union"],
                    categories=state["categories"], backend=backend, device=device)
        tally.load_state_dict(state)
        return tally

    def load_state_dict(self, state: dict) -> None:
        self._check_compatible(state, "state_dict")
        device = self.device or "cpu"
        zeros = self._zeros("cpu")
        missing = [k for k in ("image_hits", "concept_images") if k not in state]
        if missing:
            raise ValueError(f"state_dict has no {' or '.join(missing)} (written by an older fastdissect): tally "
                             "again")
        self._state = {k: state.get(k, zeros[k]).to(device, copy=True) for k in zeros}
        self.num_images = int(state["num_images"])

    def merge(self, other: "Tally") -> "Tally":
        """Adds another shard's tallies into this one (same units, concepts, thresholds, union)."""
        if not isinstance(other, Tally):
            raise TypeError(f"merge takes a Tally, got {type(other).__name__}")
        theirs = other.state_dict()
        self._check_compatible(theirs, "other")
        for key, tally in self._tallies().items():
            tally += theirs[key].to(tally.device)
        self.num_images += other.num_images
        return self

    def to(self, device) -> "Tally":
        """Moves the tallies to `device`; later batches must be on it. Returns self."""
        self.device = torch.device(device)
        self._backend = None
        if self._state is not None:
            self._state = {k: v.to(self.device) for k, v in self._state.items()}
        return self

    def all_reduce(self, comm) -> None:
        """Sums every rank's tallies in place (int64, exact): afterwards each rank holds the totals."""
        if comm.world == 1:
            return
        for tensor in self._tallies().values():
            comm.all_reduce_(tensor)
        count = torch.tensor([self.num_images], dtype=torch.int64, device=self._state["intersection"].device)
        comm.all_reduce_(count)
        self.num_images = int(count)

    def _check_compatible(self, state: dict, name: str) -> None:
        for key in ("num_units", "num_concepts", "union"):
            if state[key] != getattr(self, key):
                raise ValueError(f"{name} has {key}={state[key]!r}, this Tally has {getattr(self, key)!r}")
        if not torch.equal(state["thresholds"].to(torch.float64), self.thresholds):
            raise ValueError(f"{name} was tallied with different thresholds; shards must share T_k")
        cats = state["categories"]
        if (cats is None) != (self.categories is None) or (cats is not None and not torch.equal(cats,
                                                                                              self.categories)):
            raise ValueError(f"{name} has different categories")


def default_union(union: str | None, categories) -> str | None:
    """union=None: "netdissect" where concept categories are known, "global" where they are not
    (the rule fd.dissect follows too, docs/api.md); a given union is returned as it is."""
    if union is not None:
        return union
    return "netdissect" if categories is not None else "global"


def score(activations, masks, *, thresholds=None, quantile: float = 0.005, union: str | None = None,
          categories=None, backend: str = "auto") -> Scores:
    """Scores every unit against every concept in one call.

    M_k(x) = bilinear upsample of activations[x, k] to the masks' H x W (half-pixel centres, edge
    clamp, evaluated in float64) > T_k, strictly. IoU_{k,c} = sum_x |M_k & L_c| / union.

    >>> import torch, fastdissect as fd
    >>> acts = torch.arange(16.).reshape(1, 1, 4, 4)             # one image, one unit
    >>> masks = torch.zeros(1, 2, 8, 8, dtype=torch.bool); masks[0, 1, 4:, 4:] = True
    >>> s = fd.score(acts, masks, thresholds=torch.tensor([9.0]))
    >>> s.intersection.tolist(), s.unit_area.tolist(), s.concept_area.tolist()
    ([[0, 15]], [26], [0, 16])

    thresholds: (K,) values used as given; None computes the exact (1 - quantile) quantile of each
    unit's raw activations in this call (numpy's "linear" method).
    union: "global", "netdissect" or "lite" (the latter two need `categories`, each concept's
    primary category id; see docs/numbers.md for their definitions); None (the default) means
    "netdissect" when `categories` is given and "global" when it is not, as in `fd.dissect`.
    backend: "auto", "cpu" (C++ kernels), "cuda" (CUDA kernels, CUDA tensors), "cuda_emu" (the CUDA
    kernels emulated on the CPU, for testing) or "torch" (plain torch, any device).
    """
    # Everything is checked here, once (quantile even with thresholds given: a bad value is a mistake
    # either way); the Tally below trusts it, and the backend is resolved once for all of it.
    validate.quantile_level(quantile)
    union = validate.union_mode(default_union(union, categories))
    validate.backend(backend)
    act = validate.activations(activations, check_finite=False)
    m = as_concept_masks(masks)
    validate.same_images(act.shape[0], m.num_images)
    K = act.shape[1]
    if thresholds is not None:
        thresholds = validate.thresholds(thresholds, K)
    union, categories, num_categories = validate.union_and_categories(union, categories, m.num_concepts)
    resolved = dispatch.resolve_backend(backend, act.device)
    computed = thresholds is None
    if computed:  # the quantile pass rejects NaN and inf (fd.thresholds): the tally need not look again
        thresholds = exact_thresholds(act, quantile=quantile, backend=resolved).to("cpu", torch.float64).contiguous()
    tally = Tally._trusted(K, m.num_concepts, thresholds, union, categories, num_categories, resolved, act.device)
    tally._add(act, m, known_finite=computed)
    return tally._scores(copy=False)
