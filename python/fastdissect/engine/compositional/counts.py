"""What every search step reads: the exact counts of a chunk's units against the concepts, and the
algebra that turns them into each candidate's area, intersection and IoU (the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ...core.formula import And, Formula, Leaf, Not, Or
from ...core.formula_masks import AND, OR, MaskSet, unit_rows
from ...core.masks import ConceptMasks
from ...kernels import dispatch


@dataclass
class SearchContext:
    """What a search of one chunk of units reads: the concept and unit masks and their counts."""

    backend: str                 # resolved (`dispatch.resolve_backend`)
    masks: ConceptMasks
    concepts: MaskSet
    concept_area: torch.Tensor   # (C,)
    units: MaskSet               # mask j = unit unit_ids[j]
    unit_ids: torch.Tensor       # (J,)
    penalty: float

    # Masks stay on their device; the counts (small) and the search itself are on the CPU.
    def __post_init__(self):
        self.concept_area = self.concept_area.cpu()
        self.unit_area = self.units.areas().cpu()
        self.present = torch.nonzero(self.concept_area > 0).flatten()  # compexp's label list
        # |U & L| for every unit and concept: the units' own masks counted against the concepts.
        self.unit_concept, _ = self.counts(self.units, torch.arange(len(self.units)))

    @cached_property
    def present_masks(self) -> MaskSet:
        """Mask i is concept present[i]'s (the optimal search's leaves)."""
        return self.concepts.select(self.present)

    def counts(self, formulas: MaskSet, unit_of: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, C) |F & L| and |F & U & L| on the CPU; formula j belongs to local unit unit_of[j]."""
        rows = unit_rows(formulas, unit_of.to(formulas.device), self.units)
        fl, flu = dispatch.formula_counts(self.backend, formulas, rows, self.units.words, self.masks)
        return fl.cpu(), flu.cpu()

    def weight(self, formula_length: int) -> float:
        return self.penalty ** (formula_length - 1)


def iou(inter: torch.Tensor, area: torch.Tensor, unit_area) -> torch.Tensor:
    """float64 intersection / (area + |U| - intersection), 0 where that union is empty."""
    union = (area + unit_area - inter).to(torch.float64)
    return torch.where(union > 0, inter.to(torch.float64) / union.clamp_min(1), torch.zeros_like(union))


def candidates(fa, fi, fl, flu, ca, ci):
    """(..., C, 3) area and intersection of F OR L, F AND L, F AND NOT L (the package docstring)."""
    fa, fi = fa[..., None], fi[..., None]
    area = torch.stack([fa + ca - fl, fl, fa - fl], dim=-1)
    inter = torch.stack([fi + ci - flu, flu, fi - flu], dim=-1)
    return area, inter


def extend(f: Formula, concept: int, op: int) -> Formula:
    """f op concept, for op one of the codes OR, AND, AND_NOT."""
    leaf = Leaf(concept)
    return Or(f, leaf) if op == OR else And(f, leaf) if op == AND else And(f, Not(leaf))


def unravel(i: int, num_concepts: int) -> tuple[int, int, int]:
    """A flat candidate index (parent order, concept order, op order) -> (parent, concept, op)."""
    parent, rest = divmod(i, num_concepts * 3)
    c, op = divmod(rest, 3)
    return parent, c, op
