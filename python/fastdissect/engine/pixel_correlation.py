"""Pixel-level correlation between a unit's upsampled activation and a concept's mask (Pearson's r
over every pixel of the data set; Neuron_Eval's sanity checks pass it, beside IoU and F1).

For unit k's map A (h x w) upsampled to the labels' H x W by the score kernel's bilinear taps,
U = Ry A Rx^T (Ry: H x h, Rx: W x w, each row two taps), and concept c's mask M (H x W, 0/1), over
all P = N H W pixels:

    S_a = sum U,   S_aa = sum U^2,   S_m = sum M,   S_am = sum U * M
    r = (P S_am - S_a S_m) / sqrt((P S_aa - S_a^2) (P S_m - S_m^2))

Upsampling is linear, so no map is ever upsampled: sum U * M = <A, Ry^T M Rx> (the mask brought
down to the map's h x w by the transposed taps), sum U = <A, Ry^T 1 Rx> and
sum U^2 = <A, (Ry^T Ry) A (Rx^T Rx)>. Sums are float64; a unit or concept that is constant over the
data set has no correlation (NaN, never a made-up 0).

>>> import torch, fastdissect as fd
>>> masks = torch.zeros(2, 2, 8, 8, dtype=torch.bool); masks[:, 1, :, :4] = True   # concept 1: left half
>>> acts = torch.zeros(2, 1, 4, 4); acts[:, 0, :, :2] = 1.0                         # a left-half unit
>>> r = fd.pixel_correlation(acts, masks)
>>> round(r[0, 1].item(), 3), r[0, 0].isnan().item()                               # concept 0: never there
(0.971, True)
"""

from __future__ import annotations

import torch

from ..core import validate
from ..core.masks import as_concept_masks
from ..kernels.torch_backend import linear_taps

SUMS = ("pixels", "unit_sum", "unit_square_sum", "concept_area", "cross_sum")


def taps_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out_size, in_size) float64: row d holds output d's two bilinear weights (the score kernel's)."""
    i0, i1, l0, l1 = (t.cpu() for t in linear_taps(in_size, out_size, "cpu"))
    r = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    r.index_put_((rows, i0), l0.double(), accumulate=True)
    r.index_put_((rows, i1), l1.double(), accumulate=True)
    return r


class PixelCorrelation:
    """Streaming sums for `pixel_correlation`: `add(activations, masks)` per batch, `correlation()`
    at the end; `state_dict` / `from_state_dict` / `merge` / `to` / `all_reduce` as every accumulator
    (engine/accumulator.py), except that float64 sums make the last bits depend on the batching."""

    def __init__(self, num_units: int, num_concepts: int):
        self.num_units = validate.integer(num_units, "num_units", low=1)
        self.num_concepts = validate.integer(num_concepts, "num_concepts", low=1)
        k, c = self.num_units, self.num_concepts
        self.sums = {"pixels": torch.zeros((), dtype=torch.float64), "unit_sum": torch.zeros(k, dtype=torch.float64),
                     "unit_square_sum": torch.zeros(k, dtype=torch.float64),
                     "concept_area": torch.zeros(c, dtype=torch.float64),
                     "cross_sum": torch.zeros(k, c, dtype=torch.float64)}

    @property
    def device(self) -> torch.device:
        return self.sums["cross_sum"].device

    def add(self, activations, masks) -> None:
        """activations (N, K, h, w) float (no NaN/inf); masks (N, C, H, W) bool or `ConceptMasks`."""
        a = validate.activations(activations, num_units=self.num_units)
        m = as_concept_masks(masks, self.num_concepts)
        if m.num_images != a.shape[0]:
            raise ValueError(f"activations have N={a.shape[0]}, masks have N={m.num_images}")
        if m.num_concepts != self.num_concepts:
            raise ValueError(f"masks have {m.num_concepts} concepts, this accumulator {self.num_concepts}")
        self._fold(a.to(self.device, torch.float64), m.to(self.device))

    def _fold(self, a: torch.Tensor, m) -> None:
        n, k, h, w = a.shape
        ry, rx = taps_matrix(h, m.height).to(a.device), taps_matrix(w, m.width).to(a.device)
        s = self.sums
        s["pixels"] += n * m.height * m.width
        s["unit_sum"] += torch.einsum("nkyx,y,x->k", a, ry.sum(0), rx.sum(0))
        s["unit_square_sum"] += torch.einsum("nkyx,yz,nkzq,xq->k", a, ry.t() @ ry, a, rx.t() @ rx)
        image = torch.repeat_interleave(torch.arange(n, device=a.device), m.offsets.diff())
        dense = m.unpack_rows(m.mask_rows).reshape(-1, m.height, m.width).to(torch.float64)  # (E, H, W)
        s["concept_area"].index_add_(0, m.concept_ids, dense.sum(dim=(1, 2)))
        down = torch.einsum("yz,eyx,xq->ezq", ry, dense, rx)  # each entry's mask at the map's h x w
        s["cross_sum"].index_add_(1, m.concept_ids, torch.einsum("ekzq,ezq->ke", a[image], down))

    def correlation(self) -> torch.Tensor:
        """(K, C) float64 Pearson r on the CPU; NaN where the unit or the concept is constant."""
        s = {key: v.cpu() for key, v in self.sums.items()}
        p = s["pixels"]
        cov = p * s["cross_sum"] - s["unit_sum"][:, None] * s["concept_area"][None, :]
        var_a = (p * s["unit_square_sum"] - s["unit_sum"] ** 2).clamp_min(0.0)
        var_m = (p * s["concept_area"] - s["concept_area"] ** 2).clamp_min(0.0)
        denom = torch.sqrt(var_a[:, None] * var_m[None, :])
        return torch.where(denom > 0, cov / denom, torch.full_like(cov, float("nan")))

    def state_dict(self) -> dict:
        return {"num_units": self.num_units, "num_concepts": self.num_concepts,
                **{key: v.cpu().clone() for key, v in self.sums.items()}}

    def load_state_dict(self, state: dict) -> None:
        fresh = PixelCorrelation(state["num_units"], state["num_concepts"])
        for key in SUMS:
            got = torch.as_tensor(state[key], dtype=torch.float64)
            if got.shape != fresh.sums[key].shape:
                raise ValueError(f"state {key!r} has shape {tuple(got.shape)}, expected {tuple(fresh.sums[key].shape)}")
            fresh.sums[key] = got.to(self.device)
        self.num_units, self.num_concepts, self.sums = fresh.num_units, fresh.num_concepts, fresh.sums

    @classmethod
    def from_state_dict(cls, state: dict, device=None) -> "PixelCorrelation":
        acc = cls(state["num_units"], state["num_concepts"])
        acc.load_state_dict(state)
        return acc.to(device or "cpu")

    def merge(self, other: "PixelCorrelation") -> "PixelCorrelation":
        if not isinstance(other, PixelCorrelation):
            raise TypeError(f"merge takes a PixelCorrelation, got {type(other).__name__}")
        if (other.num_units, other.num_concepts) != (self.num_units, self.num_concepts):
            raise ValueError(f"cannot merge {other.num_units} units x {other.num_concepts} concepts into "
                             f"{self.num_units} x {self.num_concepts}")
        for key in SUMS:
            self.sums[key] += other.sums[key].to(self.device)
        return self

    def to(self, device) -> "PixelCorrelation":
        self.sums = {key: v.to(device) for key, v in self.sums.items()}
        return self

    def all_reduce(self, comm) -> None:
        for key in SUMS:
            comm.all_reduce_(self.sums[key])


def pixel_correlation(activations, masks) -> torch.Tensor:
    """(K, C) float64: Pearson's r between each unit's upsampled activation and each concept's mask
    over every pixel of the data set (the module's formula). activations (N, K, h, w); masks
    (N, C, H, W) bool or `fd.pack_masks` output."""
    a = validate.activations(activations, check_finite=False)  # add() checks
    m = as_concept_masks(masks)
    acc = PixelCorrelation(a.shape[1], m.num_concepts)
    acc.add(a, m)
    return acc.correlation()
