"""The highest-IoU formula of at most 3 concepts, proven by branch and bound on exact counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.formula import Formula, Leaf
from ...core.formula_masks import AND, AND_NOT, OR, MaskSet, combine, concat, unit_rows
from ...core.masks import offsets_of_groups
from ...kernels import dispatch
from .beam import BeamSearch
from .bounds import extension_weights, prefix_bounds, refined_bounds
from .counts import SearchContext, candidates, extend, iou, unravel
from .result import Formulas


class OptimalSearch:
    """The highest-scoring formula of at most 3 concepts, by branch and bound on exact counts.

    Length 1 and 2 are scored exhaustively from two (C, C) count tables: |A & B| over the data set
    (computed once per call) and |A & B & U| (on the unit's images only). A length-3 formula
    (A op B) op' L is only counted when the bound of its prefix F = A op B (`bounds.prefix_bounds`)
    exceeds the best score so far (the beam's result to begin with); prefixes are taken in
    decreasing bound, so the search stops at the first that cannot win. Prefixes that repeat
    another (b OR a, b AND a) or a shorter formula (a OR a, a AND a, a AND NOT a) are skipped. A
    batch of prefixes that passes is first counted on the unit's images only, which bounds each
    (prefix, L, op) closely (`bounds.refined_bounds`); only prefixes whose refined bound can still
    win are counted over the data set.
    """

    PREFIX_BATCH = 64

    def __init__(self, ctx: SearchContext, length: int, beam_size: int, shared: dict):
        self.ctx, self.length, self.beam_size, self.shared = ctx, length, beam_size, shared

    def run(self, out: Formulas) -> None:
        ctx = self.ctx
        # The beam result is a formula of the same space: a first lower bound to prune with.
        BeamSearch(ctx, self.length, self.beam_size).run(out)
        if self.length > 1 and "pairs" not in self.shared:
            self.shared["pairs"] = self._pair_table()
        pairs = self.shared.get("pairs")
        for j in range(len(ctx.units)):
            k = int(ctx.unit_ids[j])
            if out.formulas[k] is None:
                continue
            best = _Best(out.formulas[k], float(out.iou[k]), int(out.formula_area[k]), int(out.intersection[k]))
            out.evaluated[k] = self._search(j, pairs, best)
            out.formulas[k], out.iou[k] = best.formula, best.score
            out.formula_area[k], out.intersection[k] = best.area, best.inter

    def _pair_table(self) -> torch.Tensor:
        """(P, P) |A & B| over the data set for the present concepts."""
        ctx = self.ctx
        leaves = ctx.present_masks
        fl, _ = dispatch.formula_counts(ctx.backend, leaves, torch.full_like(leaves.images, -1), ctx.units.words,
                                         ctx.masks)
        return fl.cpu()[:, ctx.present]

    def _cut_to_unit(self, j: int) -> tuple[MaskSet, torch.Tensor]:
        """The present concepts' masks cut to the images where unit j fires, and the entries' unit rows."""
        ctx = self.ctx
        leaves = ctx.present_masks
        unit_of = torch.full((len(leaves),), j, dtype=torch.int64, device=leaves.device)
        rows = unit_rows(leaves, unit_of, ctx.units)
        on = rows >= 0
        return MaskSet(leaves.num_images, leaves.num_pixels, offsets_of_groups(leaves.owners()[on], len(leaves)),
                       leaves.images[on], leaves.rows[on], leaves.words), rows[on]

    def _search(self, j: int, pairs, best: "_Best") -> int:
        """Unit j's best formula into `best`; returns how many formulas were scored exactly."""
        ctx = self.ctx
        present = ctx.present
        P = present.shape[0]
        u = int(ctx.unit_area[j])
        la, lu = ctx.concept_area[present], ctx.unit_concept[j, present]
        iou1 = iou(lu, la, u)
        evaluated = P
        i = int(torch.argmax(iou1))  # first maximum: the lowest id
        best.offer(Leaf(int(present[i])), float(iou1[i]), int(la[i]), int(lu[i]))
        if self.length == 1:
            return evaluated
        cut, cut_rows = self._cut_to_unit(j)
        # |A & B & U| needs only the unit's images; |A & B| there comes with it.
        fl_cut, pu = (t.cpu()[:, present] for t in dispatch.formula_counts(ctx.backend, cut, cut_rows,
                                                                               ctx.units.words, ctx.masks))
        # Length 2: prefix (a, op, b) counts, shape (P, P, 3) in op order OR, AND, AND NOT.
        f_area, f_inter = candidates(la, lu, pairs, pu, la, lu)  # F = leaf a, L = leaf b
        w2 = torch.tensor([ctx.weight(2), ctx.weight(2), ctx.weight(3)], dtype=torch.float64)
        s2 = iou(f_inter, f_area, u) * w2
        evaluated += s2.numel()
        flat = int(torch.argmax(s2))
        a, b, op = unravel(flat, P)
        best.offer(extend(Leaf(int(present[a])), int(present[b]), op), float(s2.flatten()[flat]),
                   int(f_area.flatten()[flat]), int(f_inter.flatten()[flat]))
        if self.length == 2:
            return evaluated
        # Each prefix's area on the unit's images, by the same algebra from the cut tables.
        cut_area = cut.areas().cpu()
        f_area_cut, _ = candidates(cut_area, cut_area, fl_cut, fl_cut, cut_area, cut_area)
        return evaluated + self._third(j, f_area.reshape(-1), f_inter.reshape(-1), f_area_cut.reshape(-1), pairs,
                                       cut, best)

    def _third(self, j: int, f_area: torch.Tensor, f_inter: torch.Tensor, f_area_cut: torch.Tensor,
               pairs: torch.Tensor, cut: MaskSet, best: "_Best") -> int:
        """Length 3: prefixes in decreasing bound; each batch is first bounded per (prefix, concept,
        op) from its counts on the unit's images (`refined_bounds`), and counted over the whole
        data set only where that bound can still beat the best."""
        ctx = self.ctx
        present = ctx.present
        P = present.shape[0]
        bounds = prefix_bounds(ctx, j, f_area, f_inter)
        order = torch.argsort(bounds, descending=True, stable=True)
        alive = order[bounds[order] > best.score]
        cut_area = cut.areas().cpu()  # each concept's area on the unit's images
        leaves = ctx.present_masks
        evaluated = 0
        unit_of = torch.full((self.PREFIX_BATCH,), j, dtype=torch.int64)
        for i0 in range(0, alive.shape[0], self.PREFIX_BATCH):
            batch = alive[i0:i0 + self.PREFIX_BATCH]
            batch = batch[bounds[batch] > best.score]
            if batch.numel() == 0:
                break
            a, b, op = batch // (P * 3), (batch // 3) % P, batch % 3
            on_unit = _prefix_masks(cut, a, b, op)
            fl_cut, t = ctx.counts(on_unit, unit_of[:batch.shape[0]])
            refined = refined_bounds(ctx, j, f_area[batch], f_inter[batch], f_area_cut[batch], fl_cut[:, present],
                                     t[:, present], pairs, a, b, op, cut_area)
            need = refined.flatten(1).amax(dim=1) > best.score
            if not bool(need.any()):
                continue
            a, b, op, batch = a[need], b[need], op[need], batch[need]
            fl, flu = ctx.counts(_prefix_masks(leaves, a, b, op), unit_of[:batch.shape[0]])
            area, inter = candidates(f_area[batch], f_inter[batch], fl[:, present], flu[:, present],
                                     ctx.concept_area[present], ctx.unit_concept[j, present])
            score = iou(inter, area, int(ctx.unit_area[j])) * extension_weights(ctx.penalty, op)
            evaluated += score.numel()
            flat = int(torch.argmax(score))
            p, c, op3 = unravel(flat, P)
            prefix = extend(Leaf(int(present[a[p]])), int(present[b[p]]), int(op[p]))
            best.offer(extend(prefix, int(present[c]), op3), float(score.flatten()[flat]),
                       int(area.flatten()[flat]), int(inter.flatten()[flat]))
        return evaluated


def _prefix_masks(leaves: MaskSet, a: torch.Tensor, b: torch.Tensor, op: torch.Tensor) -> MaskSet:
    """Masks of the prefixes leaves[a[i]] op[i] leaves[b[i]], in order."""
    sets, where, base = [], torch.empty(a.shape[0], dtype=torch.int64), 0
    for code in (OR, AND, AND_NOT):
        sel = torch.nonzero(op == code).flatten()
        if sel.numel() == 0:
            continue
        sets.append(combine(leaves, a[sel], leaves, b[sel], code))
        where[sel] = base + torch.arange(sel.shape[0])
        base += sel.shape[0]
    return concat(sets).select(where.to(a.device))


@dataclass
class _Best:
    """The best formula of a unit so far, and its exact counts."""

    formula: Formula
    score: float
    area: int
    inter: int

    def offer(self, formula: Formula, score: float, area: int, inter: int) -> None:
        if score > self.score:
            self.formula, self.score, self.area, self.inter = formula, score, area, inter
