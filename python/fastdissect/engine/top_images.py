"""`TopImages`: per unit, the images with the highest per-image maximum activation, and their maps."""

from __future__ import annotations

import torch

from ..core import validate


class TopImages:
    """The `top_k` images of each unit by the maximum of its map, with those maps (for the report).

    Ties keep the earlier image: batches must arrive in image order, and `merge(other)` takes
    `other` to hold later images than this one (shards in rank order).

    >>> import torch, fastdissect as fd
    >>> t = fd.TopImages(top_k=2)
    >>> acts = torch.zeros(4, 1, 2, 2); acts[1, 0, 0, 0] = 3.0; acts[3, 0, 1, 1] = 5.0
    >>> t.add(acts[:2], torch.arange(0, 2)); t.add(acts[2:], torch.arange(2, 4))
    >>> t.images.tolist(), t.values.tolist()
    ([[3, 1]], [[5.0, 3.0]])
    """

    def __init__(self, top_k: int = 8):
        self.top_k = validate.positive_int(top_k, "top_k")
        self.values: torch.Tensor | None = None  # (K, k) float64 per-image maxima, descending
        self.images: torch.Tensor | None = None  # (K, k) int64 their image ids
        self.maps: torch.Tensor | None = None    # (K, k, h, w) float32 the unit's maps on them

    @property
    def device(self) -> torch.device | None:
        return None if self.values is None else self.values.device

    def add(self, activations: torch.Tensor, indices: torch.Tensor) -> None:
        """activations (B, K, h, w) of the images `indices` (B,), which follow every image added before."""
        act = validate.activations(activations, check_finite=False)
        if indices.shape != (act.shape[0],):
            raise ValueError(f"indices must have shape ({act.shape[0]},) (one id per image), "
                             f"got {tuple(indices.shape)}")
        peak = act.amax(dim=(2, 3)).T.to(torch.float64)               # (K, B)
        ids = indices.to(peak.device, torch.int64).expand_as(peak)
        # only the winners' maps are read: a copy of the whole batch in the (K, B) layout cost more
        # than the rest of the accumulator
        self._keep(peak, ids, lambda rows, cols: act[cols.to(act.device), rows.to(act.device)].float(),
                   (act.shape[1], *act.shape[2:]))

    def _keep(self, values: torch.Tensor, images: torch.Tensor, pick, shape: tuple) -> None:
        """Keeps the top_k of the current lists followed by these candidates (stable: earlier first).
        pick(rows, cols): the candidates' maps, (K, n, h, w), of units rows (K, 1) at candidate
        columns cols (K, n); shape: the candidates' (K, h, w)."""
        old = 0
        if self.values is not None:
            if tuple(shape) != (self.maps.shape[0], *self.maps.shape[2:]):
                raise ValueError(f"maps of shape (K, h, w) = {tuple(shape)} do not match the "
                                 f"{tuple(self.maps.shape[:1] + self.maps.shape[2:])} kept so far")
            old = self.values.shape[1]
            values = torch.cat([self.values, values.to(self.device)], 1)
            images = torch.cat([self.images, images.to(self.device)], 1)
        order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :self.top_k]
        rows = torch.arange(order.shape[0], device=order.device)[:, None]
        maps = pick(rows, (order - old).clamp(min=0)).to(order.device)
        if old:
            kept = self.maps[rows, order.clamp(max=old - 1)]
            maps = torch.where((order < old)[:, :, None, None], kept, maps)
        self.values, self.images, self.maps = values.gather(1, order), images.gather(1, order), maps

    def merge(self, other: "TopImages") -> "TopImages":
        """Adds another shard (of later images) into this one."""
        if not isinstance(other, TopImages):
            raise TypeError(f"merge takes a TopImages, got {type(other).__name__}")
        if other.values is not None:
            maps = other.maps if self.device is None else other.maps.to(self.device)
            self._keep(other.values, other.images, lambda rows, cols: maps[rows.to(maps.device), cols.to(maps.device)],
                       (maps.shape[0], *maps.shape[2:]))
        return self

    def state_dict(self) -> dict:
        cpu = lambda t: None if t is None else t.detach().cpu().clone()  # noqa: E731
        return {"top_k": self.top_k, "values": cpu(self.values), "images": cpu(self.images), "maps": cpu(self.maps)}

    def load_state_dict(self, state: dict, device=None) -> None:
        if state["top_k"] != self.top_k:
            raise ValueError(f"state has top_k={state['top_k']}, this TopImages has top_k={self.top_k}")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        move = lambda t: None if t is None else t.to(dev, copy=True)  # noqa: E731
        self.values, self.images, self.maps = move(state["values"]), move(state["images"]), move(state["maps"])

    @classmethod
    def from_state_dict(cls, state: dict, device=None) -> "TopImages":
        """The TopImages a `state_dict()` describes, on `device` (default the CPU)."""
        acc = cls(state["top_k"])
        acc.load_state_dict(state, device)
        return acc

    def to(self, device) -> "TopImages":
        if self.values is not None:
            self.load_state_dict(self.state_dict(), device)
        return self

    def all_reduce(self, comm) -> None:
        """Every rank ends with the top_k over all ranks' images (ranks hold consecutive shards)."""
        if comm.world == 1:
            return
        device = self.device
        merged = TopImages(self.top_k)
        for shard in comm.gather(self.state_dict()):
            part = TopImages(self.top_k)
            part.load_state_dict(shard)
            merged.merge(part)
        self.values, self.images, self.maps = merged.values, merged.images, merged.maps
        if device is not None:
            self.to(device)
