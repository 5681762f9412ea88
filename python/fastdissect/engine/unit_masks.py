"""Accumulators that keep, during the tally pass, what a compositional search reads afterwards:
each layer's packed unit masks (only the maps that fire) and the data set's packed concept masks.

Memory: 8 * ceil(H * W / 64) bytes per (image, unit) map that fires, plus the concept masks
(masks.py); nothing for maps that stay below their threshold.
"""

from __future__ import annotations

import torch

from ..kernels import dispatch
from ..core.formula_masks import MaskSet
from ..core.masks import ConceptMasks, masks_from_state, masks_state, offsets_of_groups


def fired_entries(packed: torch.Tensor, first_image: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From packed masks (N, K, words) of images first_image.., the maps that fire: (E, 2) (unit,
    image) pairs and their (E, words) words."""
    fired = torch.nonzero(packed.ne(0).any(dim=2))
    return torch.stack([fired[:, 1], fired[:, 0] + first_image], dim=1), packed[fired[:, 0], fired[:, 1]]


def fired_set(pairs: list[torch.Tensor], words: list[torch.Tensor], num_units: int, num_images: int,
              num_pixels: int, device) -> MaskSet:
    """The MaskSet (mask k = unit k) of `fired_entries` batches collected in any order."""
    wpm = (num_pixels + 63) // 64
    pair = torch.cat(pairs) if pairs else torch.zeros(0, 2, dtype=torch.int64, device=device)
    word = torch.cat(words) if words else torch.zeros(0, wpm, dtype=torch.int64, device=device)
    key = pair[:, 0] * num_images + pair[:, 1]
    order = torch.argsort(key, stable=True)
    key, word = key[order], word[order]
    return MaskSet(num_images, num_pixels, offsets_of_groups(key // num_images, num_units), key % num_images,
                   torch.arange(key.shape[0], device=key.device), word.contiguous())


class UnitMasks:
    """The packed masks M_k(x) of every (image, unit) that fires, in any batch order.

    >>> import torch, fastdissect as fd
    >>> from fastdissect.engine.unit_masks import UnitMasks
    >>> acc = UnitMasks(torch.tensor([0.5, 0.5]), 4, 4)
    >>> acts = torch.zeros(3, 2, 2, 2); acts[1, 0] = 1.0
    >>> acc.add(acts, first_image=0)
    >>> s = acc.mask_set(num_images=3); s.offsets.tolist(), s.images.tolist()
    ([0, 1, 1], [1])
    """

    def __init__(self, thresholds: torch.Tensor, height: int, width: int, *, backend: str = "auto", device=None,
                 pillow=None):
        self.thresholds = torch.as_tensor(thresholds, dtype=torch.float64)
        self.num_units = self.thresholds.shape[0]
        self.height, self.width, self.backend = height, width, backend
        self.pillow = pillow  # Pillow-compatible resampling tables (compat.compexp), CPU only
        self.device = torch.device(device) if device is not None else None
        self._backend: str | None = None
        self.keys: list[torch.Tensor] = []   # unit * (a large stride) + image, per batch
        self.words: list[torch.Tensor] = []

    def add(self, act: torch.Tensor, first_image: int) -> None:
        """Activations (N, K, h, w) of images first_image .. first_image + N - 1."""
        if self.device is None:
            self.device = act.device
        if self._backend is None:
            self._backend = dispatch.resolve_backend(self.backend, self.device)
        packed = dispatch.unit_masks(self._backend, act, self.height, self.width, self.thresholds.to(act.device),
                                      pillow=self.pillow)
        pairs, words = fired_entries(packed, first_image)
        self.keys.append(pairs)
        self.words.append(words)

    def mask_set(self, num_images: int) -> MaskSet:
        """Mask k of the set is unit k's mask over the `num_images` images."""
        return fired_set(self.keys, self.words, self.num_units, num_images, self.height * self.width,
                         self.device or torch.device("cpu"))

    def nbytes(self) -> int:
        return sum(w.numel() * 8 + k.numel() * 8 for w, k in zip(self.words, self.keys))

    def state_dict(self) -> dict:
        cat = lambda xs, shape: torch.cat(xs).cpu() if xs else torch.zeros(*shape, dtype=torch.int64)  # noqa: E731
        wpm = (self.height * self.width + 63) // 64
        return {"thresholds": self.thresholds.clone(), "height": self.height, "width": self.width,
                "keys": cat(self.keys, (0, 2)), "words": cat(self.words, (0, wpm))}

    def load_state_dict(self, state: dict, device=None) -> None:
        if not torch.equal(state["thresholds"], self.thresholds) or (state["height"], state["width"]) != \
                (self.height, self.width):
            raise ValueError("the saved unit masks belong to other thresholds or another label size")
        dev = torch.device(device) if device is not None else self.device or torch.device("cpu")
        self.keys, self.words = [state["keys"].to(dev)], [state["words"].to(dev)]

    @classmethod
    def from_state_dict(cls, state: dict, device=None, *, backend: str = "auto") -> "UnitMasks":
        """The UnitMasks a `state_dict()` describes, on `device` (default the CPU)."""
        acc = cls(state["thresholds"], state["height"], state["width"], backend=backend, device=device)
        acc.load_state_dict(state)
        return acc

    def to(self, device) -> "UnitMasks":
        self.device = torch.device(device)
        self._backend = None
        self.keys = [k.to(self.device) for k in self.keys]
        self.words = [w.to(self.device) for w in self.words]
        return self

    def merge(self, other: "UnitMasks") -> "UnitMasks":
        """Adds another shard's masks (disjoint images)."""
        if not isinstance(other, UnitMasks):
            raise TypeError(f"merge takes a UnitMasks, got {type(other).__name__}")
        state = other.state_dict()
        dev = self.device or torch.device("cpu")
        self.keys.append(state["keys"].to(dev))
        self.words.append(state["words"].to(dev))
        return self

    def all_reduce(self, comm) -> None:
        """Every rank ends with every rank's masks."""
        if comm.world == 1:
            return
        shards = comm.gather(self.state_dict())
        dev = self.device or torch.device("cpu")
        self.keys = [s["keys"].to(dev) for s in shards]
        self.words = [s["words"].to(dev) for s in shards]


class MaskLog:
    """The concept masks of every batch, concatenated in image order (batches arrive in order)."""

    def __init__(self):
        self.parts: list[ConceptMasks] = []

    def add(self, masks: ConceptMasks) -> None:
        self.parts.append(masks)

    def masks(self) -> ConceptMasks:
        return concat_masks(self.parts)

    def state_dict(self) -> dict:
        return {"parts": [masks_state(m) for m in self.parts]}

    def load_state_dict(self, state: dict, device=None) -> None:
        self.parts = [masks_from_state(s, device) for s in state["parts"]]

    @classmethod
    def from_state_dict(cls, state: dict, device=None) -> "MaskLog":
        log = cls()
        log.load_state_dict(state, device)
        return log

    @property
    def device(self) -> torch.device | None:
        return self.parts[0].device if self.parts else None

    def merge(self, other: "MaskLog") -> "MaskLog":
        """Appends another shard's masks, of later images."""
        if not isinstance(other, MaskLog):
            raise TypeError(f"merge takes a MaskLog, got {type(other).__name__}")
        device = self.device
        self.parts += [m if device is None else m.to(device) for m in other.parts]
        return self

    def to(self, device) -> "MaskLog":
        self.parts = [m.to(device) for m in self.parts]
        return self

    def all_reduce(self, comm) -> None:
        """Every rank ends with all ranks' masks, in rank order (ranks hold consecutive shards)."""
        if comm.world == 1:
            return
        parts = []
        for shard in comm.gather(self.state_dict()):
            parts += [masks_from_state(s, None) for s in shard["parts"]]
        self.parts = parts


def concat_masks(parts: list[ConceptMasks]) -> ConceptMasks:
    """The images of every part, in order, as one ConceptMasks (rows renumbered, each part's
    referenced rows copied once)."""
    if not parts:
        raise ValueError("no masks were collected")
    first = parts[0]
    offsets, ids, rows, words, areas = [first.offsets[:1]], [], [], [], []
    entry_base = row_base = 0
    for m in parts:
        lo, hi = 0, int(m.offsets[-1])
        used = m.mask_rows[lo:hi]
        packed = used >= 0
        remap = torch.full_like(used, -1)
        remap[packed] = torch.arange(int(packed.sum()), device=used.device) + row_base
        words.append(m.words[used[packed]])
        row_base += int(packed.sum())
        offsets.append(m.offsets[1:] + entry_base)
        entry_base += hi
        ids.append(m.concept_ids[lo:hi])
        rows.append(remap)
        areas.append(m.areas[lo:hi])
    return ConceptMasks(first.num_concepts, first.height, first.width, torch.cat(offsets), torch.cat(ids),
                        torch.cat(rows), torch.cat(words), torch.cat(areas), verified=True)


__all__ = ["UnitMasks", "MaskLog", "concat_masks"]
