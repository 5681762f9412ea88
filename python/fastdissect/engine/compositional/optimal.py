"""The highest-IoU formula of at most 3 concepts, proven by branch and bound on exact counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.formula import Formula, Leaf
from ...core.formula_masks import AND, AND_NOT, OR, MaskSet, unit_rows
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
    exceeds the best score so far (the beam's result to begin with). Prefixes that repeat another
    (b OR a, b AND a) or a shorter formula (a OR a, a AND a, a AND NOT a) are skipped. The counts
    of all four prefixes of a pair {a, b} follow from the pair tables and the pair's triple counts
    |A & B & L|, |A & B & U & L| (`dispatch.pair_counts`; no prefix mask is built), so pairs are
    taken in decreasing bound of their prefixes and the search stops at the first that cannot win.
    A batch of pairs is first counted on the unit's images only, which bounds each (prefix, L, op)
    closely (`bounds.refined_bounds`); only pairs with a prefix whose refined bound can still win
    are counted over the data set, and those counts, the same for every unit, are kept for the next.
    """

    PAIR_BATCH = 256
    CACHE_BYTES = 256 << 20  # the pairs' |A & B & L| rows kept across units

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
        cut_area = torch.diagonal(fl_cut).clone()  # |A & A| on the unit's images: A's area there
        f_area_cut, _ = candidates(cut_area, cut_area, fl_cut, fl_cut, cut_area, cut_area)
        return evaluated + self._third(j, f_area.reshape(-1), f_inter.reshape(-1), f_area_cut.reshape(-1), pairs,
                                       fl_cut, pu, cut_area, best)

    def _third(self, j: int, f_area: torch.Tensor, f_inter: torch.Tensor, f_area_cut: torch.Tensor,
               pairs: torch.Tensor, fl_cut: torch.Tensor, pu: torch.Tensor, cut_area: torch.Tensor,
               best: "_Best") -> int:
        """Length 3: concept pairs {a, b} in decreasing bound of their four prefixes (a OR b, a AND b,
        a AND NOT b, b AND NOT a); each batch is counted on the unit's images (`dispatch.pair_counts`),
        which bounds each (prefix, concept, op) closely (`refined_bounds`), and over the whole data
        set only where that bound can still beat the best."""
        ctx = self.ctx
        P = ctx.present.shape[0]
        bounds = prefix_bounds(ctx, j, f_area, f_inter, best.score)
        by_op = bounds.view(P, P, 3)
        pair_bound = torch.maximum(torch.maximum(by_op[..., 0], by_op[..., 1]),
                                   torch.maximum(by_op[..., 2], by_op[..., 2].T))
        pair_bound = pair_bound.masked_fill_(~torch.ones(P, P, dtype=torch.bool).triu_(1), -1.0).flatten()
        alive = torch.nonzero(pair_bound > best.score).flatten()
        alive = alive[torch.argsort(pair_bound[alive], descending=True, stable=True)]
        unit_rows = self._unit_rows(j)
        evaluated = 0
        for i0 in range(0, alive.shape[0], self.PAIR_BATCH):
            batch = alive[i0:i0 + self.PAIR_BATCH]
            batch = batch[pair_bound[batch] > best.score]
            if batch.numel() == 0:
                break
            a, b = batch // P, batch % P
            t_cut, tu = (t.cpu()[:, ctx.present] for t in self._pair_counts(a, b, unit_rows, True))
            q, pa, pb, op = _prefixes_of(a, b)
            flat = pa * (P * 3) + pb * 3 + op
            keep = bounds[flat] > best.score
            q, pa, pb, op, flat = q[keep], pa[keep], pb[keep], op[keep], flat[keep]
            f_lu = _with_pair(pu, pa, pb, op, tu[q])  # |F & L & U|
            refined = refined_bounds(ctx, j, f_area[flat], f_inter[flat], f_area_cut[flat],
                                     _with_pair(fl_cut, pa, pb, op, t_cut[q]), f_lu, pairs, pa, pb, op, cut_area)
            need = refined.flatten(1).amax(dim=1) > best.score
            if not bool(need.any()):
                continue
            q, pa, pb, op, flat, f_lu = q[need], pa[need], pb[need], op[need], flat[need], f_lu[need]
            counted, where = torch.unique(q, return_inverse=True)
            t = self._global_triples(a[counted], b[counted])
            area, inter = candidates(f_area[flat], f_inter[flat], _with_pair(pairs, pa, pb, op, t[where]), f_lu,
                                     ctx.concept_area[ctx.present], ctx.unit_concept[j, ctx.present])
            score = iou(inter, area, int(ctx.unit_area[j])) * extension_weights(ctx.penalty, op)
            evaluated += score.numel()
            flat3 = int(torch.argmax(score))
            p, c, op3 = unravel(flat3, P)
            prefix = extend(Leaf(int(ctx.present[pa[p]])), int(ctx.present[pb[p]]), int(op[p]))
            best.offer(extend(prefix, int(ctx.present[c]), op3), float(score.flatten()[flat3]),
                       int(area.flatten()[flat3]), int(inter.flatten()[flat3]))
        return evaluated

    def _unit_rows(self, j: int) -> torch.Tensor:
        """(N,) the row of unit j's mask on each image in ctx.units.words, -1 where it is off."""
        units = self.ctx.units
        lo, hi = int(units.offsets[j]), int(units.offsets[j + 1])
        rows = torch.full((units.num_images,), -1, dtype=torch.int64, device=units.device)
        rows[units.images[lo:hi]] = units.rows[lo:hi]
        return rows

    def _pair_counts(self, a: torch.Tensor, b: torch.Tensor, unit_rows: torch.Tensor, unit_only: bool):
        ctx = self.ctx
        dev = ctx.present_masks.device
        return dispatch.pair_counts(ctx.backend, ctx.present_masks, a.to(dev), b.to(dev), unit_rows, ctx.units.words,
                                    ctx.masks, unit_only=unit_only)

    def _global_triples(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(Q, P) |A & B & L| over the data set for the present concepts: the same for every unit, so
        kept across units and chunks (in self.shared) up to CACHE_BYTES."""
        ctx = self.ctx
        P = ctx.present.shape[0]
        cache = self.shared.setdefault("triples", {})
        keys = (a * P + b).tolist()
        missing = [i for i, key in enumerate(keys) if key not in cache]
        if missing:
            sel = torch.tensor(missing, dtype=torch.int64)
            off = torch.full((ctx.units.num_images,), -1, dtype=torch.int64, device=ctx.present_masks.device)
            t = self._pair_counts(a[sel], b[sel], off, False)[0].cpu()[:, ctx.present]
            room = max(0, self.CACHE_BYTES // (8 * P) - len(cache))
            fresh = dict(zip((keys[i] for i in missing), t))
            cache.update(dict(list(fresh.items())[:room]))
        else:
            fresh = {}
        return torch.stack([cache[key] if key in cache else fresh[key] for key in keys])


def _prefixes_of(a: torch.Tensor, b: torch.Tensor):
    """The four prefixes of each pair q = (a[q], b[q]): (pair, first, second, op), pair-major."""
    q = torch.arange(a.shape[0]).repeat_interleave(4)
    first = torch.stack([a, a, a, b], dim=1).flatten()
    second = torch.stack([b, b, b, a], dim=1).flatten()
    op = torch.tensor([OR, AND, AND_NOT, AND_NOT]).repeat(a.shape[0])
    return q, first, second, op


def _with_pair(table: torch.Tensor, first: torch.Tensor, second: torch.Tensor, op: torch.Tensor,
               triple: torch.Tensor) -> torch.Tensor:
    """(S, P) |F & L| for F = first op second, from the rows |A & L| of `table` and triple = |A & B & L|
    (csrc/common/pair_counts.h has the algebra); the same with U throughout gives |F & U & L|."""
    ta = table[first]
    return torch.where((op == OR)[:, None], ta + table[second] - triple,
                       torch.where((op == AND)[:, None], triple, ta - triple))


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
