"""Formulas over image-level tags (AND, OR, AND NOT) that maximise a unit's image metric: a beam search.

Length 1 is every tag. Each further step extends every formula of the beam by every tag t it does not
use, as f AND t, f OR t and f AND NOT t (compexp's operations), scores all candidates at once as label
vectors (one (N, M) bool matrix per unit) and keeps the `beam_size` best distinct label vectors. The
answer is the best formula seen at any length up to `formula_length`. With beam_size >= the number
of tags, length 2 is exhaustive: every (a op b) is scored (tests/test_dissect_images.py checks this
against brute force).
"""

from __future__ import annotations

import torch

from ..core.formula import And, Formula, Leaf, Not, Or
from .image_metrics import metric_table


def scored(metric: str, score: torch.Tensor, vectors: torch.Tensor, quantile: float, min_positives: int):
    """(M,) metric of one unit's scores for each label vector; NaN for a vector with fewer than
    `min_positives` positive or negative images (a tag on one image ranks perfectly by luck)."""
    values = metric_table(metric, score[:, None], vectors, quantile=quantile)[0]
    n1 = vectors.sum(0)
    rare = (n1 < min_positives) | (vectors.shape[0] - n1 < min_positives)
    return torch.where(rare, torch.full_like(values, float("nan")), values)


def _best(values: torch.Tensor, vectors: torch.Tensor, formulas: list, beam_size: int):
    """The beam_size best (value, vector, formula), NaN last, one per distinct label vector."""
    order = torch.argsort(torch.nan_to_num(values, nan=-torch.inf), descending=True, stable=True)
    kept, seen = [], set()
    for i in order.tolist():
        key = vectors[:, i].numpy().tobytes()
        if key in seen:
            continue
        seen.add(key)
        kept.append((float(values[i]), vectors[:, i], formulas[i]))
        if len(kept) == beam_size:
            break
    return kept


def _extensions(beam, tags: torch.Tensor):
    vectors, formulas = [], []
    for _, v, f in beam:
        used = set(f.concepts())
        for t in range(tags.shape[1]):
            if t in used:
                continue
            leaf, y = Leaf(t), tags[:, t]
            vectors += [v & y, v | y, v & ~y]
            formulas += [And(f, leaf), Or(f, leaf), And(f, Not(leaf))]
    return (torch.stack(vectors, dim=1), formulas) if vectors else (None, [])


def search_unit(score: torch.Tensor, tags: torch.Tensor, metric: str, formula_length: int, beam_size: int,
                quantile: float, first: torch.Tensor | None = None, min_positives: int = 1
                ) -> tuple[Formula | None, float]:
    """The best formula for one unit's (N,) scores; `first`: its (C,) single-tag values if known."""
    values = first if first is not None else scored(metric, score, tags, quantile, min_positives)
    beam = _best(values, tags, [Leaf(t) for t in range(tags.shape[1])], beam_size)
    best = beam[0] if beam and beam[0][0] == beam[0][0] else None
    for _ in range(formula_length - 1):
        vectors, formulas = _extensions(beam, tags)
        if vectors is None:
            break
        values = scored(metric, score, vectors, quantile, min_positives)
        beam = _best(torch.cat([torch.tensor([b[0] for b in beam]), values]),
                     torch.cat([torch.stack([b[1] for b in beam], dim=1), vectors], dim=1),
                     [b[2] for b in beam] + formulas, beam_size)
        if beam and (best is None or beam[0][0] > best[0]):
            best = beam[0]
    return (best[2], best[0]) if best is not None else (None, float("nan"))
