"""The result of a formula search: one formula per unit and the exact counts behind its IoU."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Formulas:
    """One formula per unit, and the exact counts behind its IoU.

    iou is penalised as compexp does: IoU(F) * penalty ** (len(F) - 1). A unit that never fires
    (unit_area 0), or whose mask meets no concept, has formula None and IoU 0.
    """

    formulas: list            # K entries: a fd.Formula or None
    iou: torch.Tensor         # (K,) float64, penalised
    intersection: torch.Tensor  # (K,) int64  sum_x |F & U|
    formula_area: torch.Tensor  # (K,) int64  sum_x |F|
    unit_area: torch.Tensor     # (K,) int64  sum_x |U|
    single: list              # K entries: the best length-1 formula (a fd.Leaf) or None
    single_iou: torch.Tensor  # (K,) float64
    evaluated: torch.Tensor   # (K,) int64 formulas whose IoU was computed exactly
    thresholds: torch.Tensor | None  # (K,) float64 T_k, None when unit masks were given
    settings: dict = field(default_factory=dict)  # length, beam_size, search, penalty, quantile

    @classmethod
    def empty(cls, num_units: int, thresholds: torch.Tensor | None, settings: dict) -> "Formulas":
        """No formula yet for any unit: what a search fills in."""
        z = lambda dt: torch.zeros(num_units, dtype=dt)  # noqa: E731
        return cls([None] * num_units, z(torch.float64), z(torch.int64), z(torch.int64), z(torch.int64),
                   [None] * num_units, z(torch.float64), z(torch.int64), thresholds, settings)

    def __len__(self) -> int:
        return len(self.formulas)

    def rows(self, names=None, categories=None) -> list[dict]:
        """compexp's tally columns per unit: unit, category, label, score, length, label_noncomp,
        category_noncomp, score_noncomp. names / categories: per concept id (sequences or callables)."""
        def text(f, table):
            if f is None:
                return ""
            return f.to_str(table) if table is not None else str(f)
        out = []
        for k, f in enumerate(self.formulas):
            s = self.single[k]
            out.append({"unit": k, "category": text(f, categories), "label": text(f, names),
                        "score": float(self.iou[k]), "length": len(f) if f is not None else 0,
                        "label_noncomp": text(s, names), "category_noncomp": text(s, categories),
                        "score_noncomp": float(self.single_iou[k])})
        return out
