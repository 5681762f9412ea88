r"""Upper bounds of the optimal search: how high any extension of a length-2 prefix can score.

With u = |U|, fu = |F & U| for the prefix F, and for a concept L: lu = |L & U|, lo = |L \ U|
(IoU = I / (u + |G \ U|) for any formula G with I = |G & U|):
  F AND L, F AND NOT L are subsets of F:  IoU <= fu / u
  F OR L: I = fu + |L & U \ F| <= fu + min(lu, u - fu) and |G \ U| = |F \ U| + |L \ U \ F|
          >= |F \ U| + max(0, lo - |F \ U|), so IoU <= max over L of
          (fu + min(lu, u - fu)) / (|F u U| + max(0, lo - |F \ U|)),
the maximum taken over the concepts not dominated in (lu high, lo low). Every bound is multiplied
by penalty ** len(F): an extension of a prefix of length l scores at most IoU * penalty ** l.
"""

from __future__ import annotations

import functools
import math

import torch

from ...core.formula_masks import AND, AND_NOT, OR
from .counts import SearchContext


def prefix_bounds(ctx: SearchContext, j: int, f_area: torch.Tensor, f_inter: torch.Tensor,
                  best: float = -1.0) -> torch.Tensor:
    """Upper bounds of every extension of each length-2 prefix (a, b, op) of unit j (flat, in
    (a, b, op) order), penalised; -1 for prefixes another prefix or a shorter formula repeats.
    The OR bound is first taken with its cost term dropped (looser); only where that decides
    whether the prefix can beat `best` is the cost term's maximum over the front computed."""
    u = int(ctx.unit_area[j])
    present = ctx.present
    P = present.shape[0]
    lu = ctx.unit_concept[j, present].to(torch.float64)
    lo = (ctx.concept_area[present] - ctx.unit_concept[j, present]).to(torch.float64)
    canon, weight = _canonical_prefixes(P, ctx.penalty)
    fu, fa = f_inter[canon].to(torch.float64), f_area[canon].to(torch.float64)
    # A prefix with fu = 0 cannot win: its OR bound lu / (u + max(|F - U|, lo)) is at most the
    # IoU of the leaf L (scored at length 1), and its AND bound is 0.
    bound_and = fu / u
    loose = torch.where(fu > 0, (fu + torch.minimum(lu.max(), u - fu)) / (fa + u - fu), 0.0)
    bounds = torch.maximum(bound_and, loose) * weight
    meets = torch.nonzero((bounds > best) & (bound_and * weight <= best)).flatten()
    fu_m, f_out = fu[meets], fa[meets] - fu[meets]
    f_union = fa[meets] + u - fu_m
    best_or = torch.zeros_like(fu_m)
    for c in pareto_front(lu, lo).tolist():  # the front is short: tens of concepts
        gain = torch.minimum(lu[c].expand_as(fu_m), u - fu_m)
        best_or = torch.maximum(best_or, (fu_m + gain) / (f_union + (lo[c] - f_out).clamp_min(0)))
    bounds[meets] = torch.maximum(bound_and[meets], best_or) * weight[meets]
    return torch.full((P * P * 3,), -1.0, dtype=torch.float64).index_put_((canon,), bounds)


@functools.lru_cache(maxsize=2)
def _canonical_prefixes(P: int, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat (a, b, op) indices of the prefixes no other prefix or shorter formula repeats, and
    their penalty weights. b OR a and b AND a repeat a OR b, a AND b; a OR a and a AND a are the
    leaf a, whose extensions are length-2 formulas (scored before); a AND NOT a is empty. Prefixes
    (a op b) have length 2, or 3 with AND NOT."""
    a = torch.arange(P)[:, None, None]
    b = torch.arange(P)[None, :, None]
    op = torch.arange(3)[None, None, :]
    canon = torch.nonzero(torch.where(op == AND_NOT, a != b, b > a).reshape(-1)).flatten()
    weight = torch.full(canon.shape, penalty ** 2, dtype=torch.float64)
    weight[canon % 3 == AND_NOT] = penalty ** 3
    return canon, weight


def extension_weights(penalty: float, op: torch.Tensor) -> torch.Tensor:
    """(B, 1, 3) penalty weights of prefix (a op b) extended by OR, AND, AND NOT."""
    prefix_len = torch.where(op == AND_NOT, 3, 2).to(torch.float64)
    return torch.stack([penalty ** prefix_len, penalty ** prefix_len, penalty ** (prefix_len + 1)], -1)[:, None, :]


def refined_bounds(ctx: SearchContext, j, fa, fu, fa_cut, fl_cut, t, pairs, a, b, op, cut_area) -> torch.Tensor:
    r"""(B, P, 3) bounds of (prefix) op' L from exact counts on the unit's images: t = |F & L & U|
    and s = |F & L \ U| there. Elsewhere only the overlap o = |F & L| on the other images is
    unknown, at most min(|F|, |L|) there and |F & L| - |F & L on the unit's images|, where
    |F & L| <= |A & L| + |B & L| (OR), min (AND), |A & L| (AND NOT). With fo = |F \ U|, lo = |L \ U|:
      OR:      I = fu + lu - t,  outside U = fo + lo - s - o
      AND:     I = t,            outside U >= s
      AND NOT: I = fu - t,       outside U = fo - s - o
    and IoU <= I / (u + outside)."""
    present = ctx.present
    u = float(ctx.unit_area[j])
    lu = ctx.unit_concept[j, present].to(torch.float64)[None, :]
    lo = (ctx.concept_area[present] - ctx.unit_concept[j, present]).to(torch.float64)[None, :]
    pa, pb = pairs[a].to(torch.float64), pairs[b].to(torch.float64)
    global_fl = torch.where((op == OR)[:, None], pa + pb, torch.where((op == AND)[:, None], torch.minimum(pa, pb), pa))
    fl_cut, t = fl_cut.to(torch.float64), t.to(torch.float64)
    f_elsewhere = (fa - fa_cut).to(torch.float64)[:, None]
    l_elsewhere = (ctx.concept_area[present] - cut_area).to(torch.float64)[None, :]
    o = torch.minimum(torch.minimum(f_elsewhere, l_elsewhere), (global_fl - fl_cut).clamp_min(0))
    fu = fu.to(torch.float64)[:, None]
    fo = fa.to(torch.float64)[:, None] - fu
    s = fl_cut - t
    bound = torch.stack([(fu + lu - t) / (u + (fo + lo - s - o).clamp_min(0)), t / (u + s),
                         (fu - t) / (u + (fo - s - o).clamp_min(0))], dim=-1)
    return bound * extension_weights(ctx.penalty, op)


def pareto_front(gain: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """Indices of the concepts no other beats in both gain (higher) and cost (lower)."""
    order = torch.argsort(cost, stable=True)
    front, best_gain = [], -math.inf
    for i in order.tolist():
        if float(gain[i]) > best_gain:
            front.append(i)
            best_gain = float(gain[i])
    return torch.tensor(front, dtype=torch.int64)
