"""Chance baselines for dissection labels.

The "permuted" control tallies every unit against the concept masks of another image: image i is
paired with image perm[i] of a fixed, seeded derangement. Each unit keeps its activation statistics
and each concept its frequency; only their pairing is broken. A unit's control IoU with a concept is
then what its label would score by chance.

The "random_init" control dissects the same architecture with random weights (`random_weights`),
with the same settings: what the architecture and the data give without any training.

Rule: a detector is *beyond chance* when its label's IoU exceeds iou_threshold and also exceeds the
unit's highest control IoU over every concept. The maximum, not the label's own control IoU, because
the label itself was chosen as a maximum over concepts: chance gets the same choice.

>>> from fastdissect.engine.controls import derangement
>>> p = derangement(6, seed=0)
>>> sorted(p.tolist()) == list(range(6)) and all(p[i] != i for i in range(6))
True
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.masks import ConceptMasks
from .scoring import Tally

CONTROLS = ("permuted", "random_init")


def derangement(n: int, seed: int = 0) -> torch.Tensor:
    """(n,) int64 permutation without fixed points: Sattolo's algorithm draws a uniformly random
    cyclic permutation (one cycle through every image), seeded."""
    if n < 2:
        raise ValueError(f"a permuted control needs at least 2 images, got {n}")
    rng = np.random.default_rng(seed)
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i: never the element itself
        perm[i], perm[j] = perm[j], perm[i]
    return torch.from_numpy(perm)


class PermutedControl:
    """The "permuted" control of one layer: a `Tally` of each image's activations against the masks of
    image perm[i] (`derangement`). `masks` (every image's `ConceptMasks`, which the derangement reads
    in any order) must be set before the first `add`; it is not part of the state.

    >>> import torch, fastdissect as fd
    >>> from fastdissect.engine.controls import PermutedControl
    >>> masks = fd.pack_masks(torch.eye(2, dtype=torch.bool)[:, :, None, None].expand(2, 2, 4, 4))
    >>> c = PermutedControl(fd.Tally(1, 2, [0.5]), torch.tensor([1, 0]), masks)
    >>> c.add(torch.ones(1, 1, 2, 2), first_image=0)   # image 0 meets image 1's masks: concept 1
    >>> c.scores().intersection.tolist()
    [[0, 16]]
    """

    def __init__(self, tally: Tally, perm: torch.Tensor, masks=None):
        if not isinstance(tally, Tally):
            raise TypeError(f"tally must be a Tally, got {type(tally).__name__}")
        self.tally, self.perm, self.masks = tally, torch.as_tensor(perm, dtype=torch.int64), masks

    @property
    def device(self) -> torch.device | None:
        return self.tally.device

    def add(self, activations: torch.Tensor, first_image: int) -> None:
        """Activations (N, K, h, w) of images first_image .. first_image + N - 1."""
        self.tally.add(activations, self.paired_masks(first_image, activations.shape[0], activations.device))

    def add_with(self, tally: Tally, activations: torch.Tensor, masks, first_image: int) -> None:
        """`tally.add(activations, masks)` and this control's `add(activations, first_image)` in one
        kernel call: each unit mask M_k(x_i) is made once and counted against image i's masks and
        image perm[i]'s (Tally.add's `control`). The numbers are those of the two calls."""
        pair = (self.tally, self.paired_masks(first_image, activations.shape[0], activations.device))
        tally.add(activations, masks, control=pair)

    def paired_masks(self, first_image: int, num_images: int, device=None):
        """The masks images first_image .. first_image + num_images - 1 are tallied against: image i
        meets image perm[i]'s (the data set's packed words shared, only the entry lists gathered)."""
        if self.masks is None:
            raise RuntimeError("the permuted control has no masks to pair the images with: set masks first")
        if first_image < 0 or first_image + num_images > len(self.perm):
            raise ValueError(f"images {first_image}..{first_image + num_images - 1} are outside the derangement "
                             f"of {len(self.perm)} images")
        indices = torch.arange(first_image, first_image + num_images)
        m = self.masks.take(self.perm[indices])
        return m if device is None or m.device == torch.device(device) else _compact(m).to(device)

    def scores(self):
        return self.tally.scores()

    def state_dict(self) -> dict:
        return self.tally.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.tally.load_state_dict(state)

    @classmethod
    def from_state_dict(cls, state: dict, device=None, *, perm: torch.Tensor, masks=None,
                        backend: str = "auto") -> "PermutedControl":
        return cls(Tally.from_state_dict(state, device, backend=backend), perm, masks)

    def merge(self, other: "PermutedControl") -> "PermutedControl":
        if not isinstance(other, PermutedControl):
            raise TypeError(f"merge takes a PermutedControl, got {type(other).__name__}")
        if not torch.equal(self.perm, other.perm):
            raise ValueError("shards of a permuted control must share one derangement")
        self.tally.merge(other.tally)
        return self

    def to(self, device) -> "PermutedControl":
        self.tally.to(device)
        return self

    def all_reduce(self, comm) -> None:
        self.tally.all_reduce(comm)


def _compact(m: ConceptMasks) -> ConceptMasks:
    """The same masks holding only the packed rows their entries use: `take` shares the whole data
    set's words, which a move to another device would otherwise copy for every batch."""
    used = m.mask_rows >= 0
    rows = torch.full_like(m.mask_rows, -1)
    rows[used] = torch.arange(int(used.sum()), dtype=torch.int64, device=rows.device)
    return ConceptMasks(m.num_concepts, m.height, m.width, m.offsets, m.concept_ids, rows, m.words[m.mask_rows[used]],
                        m.areas, verified=True)


def check_controls(controls) -> tuple:
    controls = tuple(controls or ())
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise ValueError(f"controls must be drawn from {CONTROLS}, got {unknown}")
    return controls


def random_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy of `model` with every module's `reset_parameters()` called under a seeded generator
    (PyTorch's own initialisation; batch-norm statistics reset too). The global RNG is untouched.
    A module that holds parameters but cannot re-initialise them is refused by name: a copy that
    kept trained weights would not be a control."""
    import copy

    clone = copy.deepcopy(model)
    stuck = [name or "<root>" for name, m in clone.named_modules()
             if not hasattr(m, "reset_parameters") and not hasattr(m, "_reset_parameters")
             and any(True for _ in m.parameters(recurse=False))]
    if stuck:
        raise ValueError(f"random_init control: modules {stuck[:5]} hold parameters but have no reset_parameters(); "
                         "pass control_model= (the same architecture with random weights) instead")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in clone.modules():
            reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
            if callable(reset):
                reset()
    return clone


def beyond_chance(iou: float, control_best: float, iou_threshold: float) -> bool:
    return iou > iou_threshold and iou > control_best


__all__ = ["CONTROLS", "PermutedControl", "derangement", "check_controls", "random_weights", "beyond_chance"]
