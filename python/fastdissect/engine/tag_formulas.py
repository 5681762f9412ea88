"""Formulas over image-level tags (AND, OR, AND NOT) that maximise a unit's image metric: a beam search,
or (`optimal_unit`) every formula of the space scored, the best by enumeration.

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


SEARCHES = ("beam", "optimal")
OPTIMAL_BUDGET = 2_000_000  # formulas per unit the enumeration scores before it refuses (use the beam)


def formula_count(num_tags: int, formula_length: int) -> int:
    """Formulas of compexp's left-deep space: t, then (f op t) for op in AND, OR, AND NOT and t a tag f
    does not use, up to `formula_length` tags."""
    total, level = num_tags, num_tags
    for used in range(1, formula_length):
        level *= 3 * max(num_tags - used, 0)
        total += level
    return total


def check_optimal(num_tags: int, formula_length: int) -> None:
    count = formula_count(num_tags, formula_length)
    if count > OPTIMAL_BUDGET:
        raise ValueError(f"search='optimal' would score {count:,} formulas per unit ({num_tags} tags, "
                         f"formula_length={formula_length}), more than {OPTIMAL_BUDGET:,}: use search='beam'")


def optimal_unit(score: torch.Tensor, tags: torch.Tensor, metric: str, formula_length: int, quantile: float,
                 first: torch.Tensor | None = None, min_positives: int = 1) -> tuple[Formula | None, float]:
    """The best formula of the beam's space for one unit, every formula scored (ties: the first in
    enumeration order: leaves, then each formula's extensions by ascending tag, AND, OR and AND NOT
    of each). Memory: the formulas one step short of the last length."""
    check_optimal(tags.shape[1], formula_length)
    values = first if first is not None else scored(metric, score, tags, quantile, min_positives)
    frontier = [(Leaf(t), tags[:, t]) for t in range(tags.shape[1])]
    best = _better(None, values, [f for f, _ in frontier])
    for length in range(2, formula_length + 1):
        grown = []
        for f, v in frontier:
            vectors, formulas = _extensions([(None, v, f)], tags)
            if vectors is None:
                continue
            best = _better(best, scored(metric, score, vectors, quantile, min_positives), formulas)
            if length < formula_length:
                grown += list(zip(formulas, vectors.unbind(dim=1)))
        frontier = grown
    return (best[1], best[0]) if best is not None else (None, float("nan"))


def _better(best, values: torch.Tensor, formulas: list):
    """(value, formula) of the highest non-NaN value, if above `best`'s (strictly: ties keep the first)."""
    clean = torch.nan_to_num(values, nan=-torch.inf)
    if clean.numel() == 0 or not bool(torch.isfinite(clean).any()):
        return best
    i = int(torch.argmax(clean))  # the first of the maxima
    return (float(values[i]), formulas[i]) if best is None or float(values[i]) > best[0] else best
