"""compexp's beam search (same formulas, same order on ties), batched over a chunk of units."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.formula import Leaf
from ...core.formula_masks import MaskSet, combine, concat
from .counts import SearchContext, candidates, extend, iou, unravel
from .result import Formulas


@dataclass
class _Beam:
    """A unit's beam: formulas in order, their exact counts and penalised scores."""

    formulas: list
    area: list
    inter: list
    score: list


class BeamSearch:
    """compexp's beam search, each step one formula-count call for every beam of the chunk."""

    def __init__(self, ctx: SearchContext, length: int, beam_size: int, shared: dict | None = None):
        self.ctx, self.length, self.beam_size = ctx, length, beam_size
        self.evaluated = [0] * len(ctx.units)

    def run(self, out: Formulas) -> None:
        ctx = self.ctx
        beams, masks = self._initial(out)
        for _ in range(self.length - 1):
            live = [j for j, b in enumerate(beams) if b is not None]
            if not live:
                break
            beams, masks = self._step(beams, masks, live)
        for j, beam in enumerate(beams):
            k = int(ctx.unit_ids[j])
            out.unit_area[k] = ctx.unit_area[j]
            out.evaluated[k] = self.evaluated[j]
            if beam is None:
                continue
            out.formulas[k], out.iou[k] = beam.formulas[0], beam.score[0]
            out.formula_area[k], out.intersection[k] = beam.area[0], beam.inter[0]

    def _initial(self, out: Formulas):
        """The beam_size concepts of highest IoU > 0 per unit, ties to the lower id (compexp)."""
        ctx = self.ctx
        inter = ctx.unit_concept
        scores = iou(inter, ctx.concept_area[None, :], ctx.unit_area[:, None])
        beams, unit_of, concept_of = [], [], []
        for j in range(len(ctx.units)):
            order = torch.sort(scores[j], descending=True, stable=True).indices[:self.beam_size]
            order = order[scores[j, order] > 0].tolist()
            k = int(ctx.unit_ids[j])
            self.evaluated[j] = ctx.present.shape[0]
            if not order:
                beams.append(None)
                continue
            out.single[k], out.single_iou[k] = Leaf(order[0]), float(scores[j, order[0]])
            beams.append(_Beam([Leaf(c) for c in order], [int(ctx.concept_area[c]) for c in order],
                               [int(inter[j, c]) for c in order], [float(scores[j, c]) for c in order]))
            unit_of += [j] * len(order)
            concept_of += order
        masks = ctx.concepts.select(torch.tensor(concept_of, dtype=torch.int64))
        return beams, (masks, torch.tensor(unit_of, dtype=torch.int64))

    def _step(self, beams: list, state, live: list[int]):
        """One more concept for every live beam: all candidates scored, the beam_size best kept."""
        ctx = self.ctx
        masks, unit_of = state
        fl, flu = ctx.counts(masks, unit_of)
        new_beams, pieces, new_unit_of, row = list(beams), [], [], 0
        for j in live:
            beam = beams[j]
            rows = slice(row, row + len(beam.formulas))
            new_beams[j] = self._next_beam(j, beam, fl[rows], flu[rows], row, pieces)
            new_unit_of += [j] * len(new_beams[j].formulas)
            row += len(beam.formulas)
        return new_beams, (_build_masks(ctx, masks, pieces), torch.tensor(new_unit_of, dtype=torch.int64))

    def _next_beam(self, j: int, beam: _Beam, fl: torch.Tensor, flu: torch.Tensor, row: int,
                   pieces: list) -> _Beam:
        """Unit j's next beam from its beam's counts (rows row.. of the step); appends how each new
        formula's mask is made to `pieces`."""
        ctx = self.ctx
        present = ctx.present
        b = len(beam.formulas)
        fa = torch.tensor(beam.area, dtype=torch.int64)
        fi = torch.tensor(beam.inter, dtype=torch.int64)
        area, inter = candidates(fa, fi, fl[:, present], flu[:, present], ctx.concept_area[present],
                                 ctx.unit_concept[j, present])
        lengths = torch.tensor([len(f) for f in beam.formulas], dtype=torch.float64)
        weight = torch.stack([ctx.penalty ** lengths, ctx.penalty ** lengths, ctx.penalty ** (lengths + 1)], -1)
        score = iou(inter, area, ctx.unit_area[j]) * weight[:, None, :]
        self.evaluated[j] += score.numel()
        pool = torch.cat([torch.tensor(beam.score, dtype=torch.float64), score.flatten()])
        keep = torch.sort(pool, descending=True, stable=True).indices[:self.beam_size].tolist()
        new = _Beam([], [], [], [])
        for i in keep:
            if i < b:
                new.formulas.append(beam.formulas[i])
                new.area.append(beam.area[i])
                new.inter.append(beam.inter[i])
                pieces.append(("old", row + i, None))
            else:
                parent, c, op = unravel(i - b, len(present))
                concept = int(present[c])
                new.formulas.append(extend(beam.formulas[parent], concept, op))
                new.area.append(int(area[parent, c, op]))
                new.inter.append(int(inter[parent, c, op]))
                pieces.append((op, row + parent, concept))
            new.score.append(float(pool[i]))
        return new


def _build_masks(ctx: SearchContext, masks: MaskSet, pieces: list) -> MaskSet:
    """The masks of a new beam, in its order: kept formulas shared, new ones combined per op."""
    dev = masks.device
    groups = {}
    for pos, (kind, parent, concept) in enumerate(pieces):
        groups.setdefault(kind, []).append((pos, parent, concept))
    sets, where = [], torch.empty(len(pieces), dtype=torch.int64)
    base = 0
    for kind, items in groups.items():
        parents = torch.tensor([p for _, p, _ in items], dtype=torch.int64, device=dev)
        if kind == "old":
            sets.append(masks.select(parents))
        else:
            concepts = torch.tensor([c for _, _, c in items], dtype=torch.int64, device=dev)
            sets.append(combine(masks, parents, ctx.concepts, concepts, kind))
        for i, (pos, _, _) in enumerate(items):
            where[pos] = base + i
        base += len(items)
    return concat(sets).select(where.to(dev))
