"""Compositional explanations: a logical formula of concepts per unit (Mu & Andreas, 2020).

For a formula F, a concept L and the unit's mask U, every candidate of one search step follows
exactly from six integers: |F|, |F & U| (known for F), |L|, |L & U| (one tally) and the two
popcounts |F & L|, |F & U & L| (the formula-count kernel, on the images where F and L meet):

    F OR L       area |F| + |L| - |F & L|    intersection |F & U| + |L & U| - |F & U & L|
    F AND L      area |F & L|                intersection |F & U & L|
    F AND NOT L  area |F| - |F & L|          intersection |F & U| - |F & U & L|

and IoU = intersection / (area + |U| - intersection), summed over the data set (global IoU).

>>> import torch, fastdissect as fd
>>> masks = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
>>> masks[:, 0, :2] = True; masks[:, 1, :, :2] = True                # 0: top half, 1: left half
>>> units = (masks[:, 0] & ~masks[:, 1]).unsqueeze(1)                 # a unit firing top-right
>>> ex = fd.compositional(units, masks, length=2)
>>> str(ex.formulas[0]), ex.iou[0].item(), ex.single_iou[0].item()
('(0 AND (NOT 1))', 1.0, 0.5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..kernels import dispatch
from ..core import validate
from ..core.formula import And, Formula, Leaf, Not, Or
from ..core.formula_masks import AND, AND_NOT, OR, MaskSet, combine, concat, concept_set, unit_rows
from ..core.masks import ConceptMasks, as_concept_masks, offsets_of_groups
from ..kernels.torch_backend import pack_bits
from .top_quantile import thresholds as exact_thresholds
from .unit_masks import fired_entries, fired_set

SEARCHES = ("beam", "optimal")
UNIT_MASK_BYTES = 256 << 20  # unit masks of one chunk of units, at most about this much
MAP_BLOCK_BYTES = 64 << 20   # the score kernel's mask output for one block of images


@dataclass
class Explanations:
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


def compositional(x, masks, *, thresholds=None, quantile: float = 0.005, length: int = 3, beam_size: int = 5,
                  search: str = "beam", penalty: float = 1.0, backend: str = "auto", progress: bool = False,
                  units=None) -> Explanations:
    """The best formula of at most `length` concepts for every unit.

    x: activations (N, K, h, w), upsampled and thresholded exactly as `fd.score` does (thresholds
    given, or the exact (1 - quantile) quantile of each unit); or unit masks (N, K, H, W) bool.
    masks: dense (N, C, H, W) masks or a `ConceptMasks`; image-level concepts cover their image.
    search: "beam" is compexp's beam search (same formulas, same order on ties); "optimal" the
    highest-IoU formula of the same space, proven by branch and bound (length <= 3).
    units: an optional list of unit ids to explain (the others get None), e.g. for sampling.
    """
    settings = search_settings(length, beam_size, search, penalty)
    validate.quantile_level(quantile)  # even with thresholds given: a bad value is a mistake either way
    validate.backend(backend)
    validate.boolean(progress, "progress")
    if units is not None:
        units = validate.int_list(units, "units")
    m = as_concept_masks(masks)
    source = _UnitSource(x, m, thresholds, quantile, backend)
    used_quantile = quantile if thresholds is None and not source.is_mask else None
    return explain(source, settings, used_quantile, units, progress)


def search_settings(length, beam_size, search, penalty, length_name: str = "length") -> dict:
    """The validated search options (also the pipeline's, whose length is formula_length)."""
    length = validate.positive_int(length, length_name)
    beam_size = validate.positive_int(beam_size, "beam_size")
    validate.choice(search, "search", SEARCHES)
    if search == "optimal" and length > 3:
        raise ValueError(f'search="optimal" proves formulas of length <= 3, got {length_name}={length}; '
                         'use search="beam" for longer formulas')
    penalty = validate.number(penalty, "penalty", 0.0, 1.0, low_open=True)
    return dict(length=length, beam_size=beam_size, search=search, penalty=penalty)


def explain(source, settings: dict, quantile, units=None, progress: bool = False) -> Explanations:
    """Runs the search over a unit source (`_UnitSource`, or `SetSource` for collected masks)."""
    m = source.masks
    if m.num_concepts < 1 or int(m.offsets[-1]) == 0:
        raise ValueError("masks have no concept present in any image: nothing to explain units with")
    chosen = source.unit_ids(units)
    concepts = concept_set(m)
    concept_area = m.concept_area()
    searcher = _BeamSearch if settings["search"] == "beam" else _OptimalSearch
    shared: dict = {}  # what every chunk's search reuses (the optimal search's pair table)
    out = _empty_results(source.num_units, source, {**settings, "quantile": quantile})
    from tqdm.auto import tqdm

    bar = tqdm(total=len(chosen), desc=f"formulas ({settings['search']})", unit="unit", disable=not progress)
    for chunk in source.chunks(chosen):
        units_set, unit_ids = source.unit_masks(chunk)
        ctx = _Context(source.backend, m, concepts, concept_area, units_set, unit_ids, settings["penalty"])
        searcher(ctx, settings["length"], settings["beam_size"], shared).run(out)
        bar.update(len(chunk))
    bar.close()
    return out


def _empty_results(K: int, source: "_UnitSource", settings: dict) -> Explanations:
    z = lambda dt: torch.zeros(K, dtype=dt)  # noqa: E731
    return Explanations([None] * K, z(torch.float64), z(torch.int64), z(torch.int64), z(torch.int64), [None] * K,
                        z(torch.float64), z(torch.int64), source.thresholds, settings)


class _Chunks:
    """Unit ids and chunking shared by the unit sources."""

    num_units: int
    masks: ConceptMasks

    def unit_ids(self, units) -> list[int]:
        if units is None:
            return list(range(self.num_units))
        ids = [int(u) for u in units]
        bad = [u for u in ids if not 0 <= u < self.num_units]
        if bad:
            raise ValueError(f"units {bad[:5]} are out of range for {self.num_units} units")
        return sorted(set(ids))

    def chunks(self, ids: list[int]):
        wpm = self.masks.words_per_mask
        # A chunk's unit masks can take at most N * chunk * wpm * 8 bytes (every map firing).
        per = max(1, min(256, UNIT_MASK_BYTES // max(1, self.masks.num_images * wpm * 8)))
        for i in range(0, len(ids), per):
            yield ids[i:i + per]


class SetSource(_Chunks):
    """Units whose masks were collected already (`unit_masks.UnitMasks`, in the pipeline)."""

    def __init__(self, units: MaskSet, masks: ConceptMasks, thresholds, backend: str):
        self.units, self.masks, self.num_units, self.thresholds = units, masks, len(units), thresholds
        self.backend = dispatch.resolve_backend(backend, units.device)

    def unit_masks(self, chunk: list[int]) -> tuple[MaskSet, torch.Tensor]:
        ids = torch.tensor(chunk, dtype=torch.int64)
        return self.units.select(ids), ids


class _UnitSource(_Chunks):
    """The units' masks, a chunk of units at a time, from activations or given masks."""

    def __init__(self, x, masks: ConceptMasks, thresholds, quantile: float, backend: str):
        x = validate.as_tensor(x, "x")
        if x.dim() != 4:
            raise ValueError(f"x must be activations (N, K, h, w) or unit masks (N, K, H, W), got shape {tuple(x.shape)}")
        validate.same_images(x.shape[0], masks.num_images)
        self.is_mask = x.dtype == torch.bool
        if self.is_mask:
            if tuple(x.shape[2:]) != (masks.height, masks.width):
                raise ValueError(f"unit masks x must have the masks' size H x W = {masks.height} x {masks.width}, "
                                 f"got shape {tuple(x.shape)}")
            if thresholds is not None:
                raise ValueError("thresholds apply to activations; x holds unit masks (bool) already")
        else:
            x = validate.activations(x, name="x")
        self.backend = dispatch.resolve_backend(backend, x.device)
        self.x, self.num_units = x, x.shape[1]
        self.masks = masks.to(x.device) if masks.device != x.device else masks
        self.thresholds = None
        if not self.is_mask:
            if thresholds is None:
                thresholds = exact_thresholds(x, quantile=quantile, backend=backend)
            self.thresholds = validate.thresholds(thresholds, self.num_units).to(torch.float64)

    def unit_masks(self, chunk: list[int]) -> tuple[MaskSet, torch.Tensor]:
        """The MaskSet of the chunk's units (mask j = unit chunk[j]), every entry its own row."""
        ids = torch.tensor(chunk, dtype=torch.int64, device=self.x.device)
        N, H, W = self.x.shape[0], self.masks.height, self.masks.width
        wpm = self.masks.words_per_mask
        per = max(1, MAP_BLOCK_BYTES // max(1, len(chunk) * wpm * 8))
        pairs, words = [], []
        for n0 in range(0, N, per):
            block = self.x[n0:n0 + per].index_select(1, ids)
            if self.is_mask:
                packed = pack_bits(block.reshape(block.shape[0], len(chunk), H * W))
            else:
                packed = dispatch.unit_masks(self.backend, block, H, W, self.thresholds[ids])
            p, w = fired_entries(packed, n0)
            pairs.append(p)
            words.append(w)
        return fired_set(pairs, words, len(chunk), N, H * W, self.x.device), ids


@dataclass
class _Context:
    """What a search of one chunk of units reads: the concept and unit masks and their counts."""

    backend: str
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


def _iou(inter: torch.Tensor, area: torch.Tensor, unit_area) -> torch.Tensor:
    union = (area + unit_area - inter).to(torch.float64)
    return torch.where(union > 0, inter.to(torch.float64) / union.clamp_min(1), torch.zeros_like(union))


def _candidates(fa, fi, fl, flu, ca, ci):
    """(..., C, 3) area and intersection of F OR L, F AND L, F AND NOT L (the module docstring)."""
    fa, fi = fa[..., None], fi[..., None]
    area = torch.stack([fa + ca - fl, fl, fa - fl], dim=-1)
    inter = torch.stack([fi + ci - flu, flu, fi - flu], dim=-1)
    return area, inter


def _extend(f: Formula, concept: int, op: int) -> Formula:
    leaf = Leaf(concept)
    return Or(f, leaf) if op == OR else And(f, leaf) if op == AND else And(f, Not(leaf))


@dataclass
class _Beam:
    """A unit's beam: formulas in order, their exact counts and penalised scores."""

    formulas: list
    area: list
    inter: list
    score: list


class _BeamSearch:
    """compexp's beam search, each step one formula-count call for every beam of the chunk."""

    def __init__(self, ctx: _Context, length: int, beam_size: int, shared: dict | None = None):
        self.ctx, self.length, self.beam_size = ctx, length, beam_size
        self.evaluated = [0] * len(ctx.units)

    def run(self, out: Explanations) -> None:
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

    def _initial(self, out: Explanations):
        """The beam_size concepts of highest IoU > 0 per unit, ties to the lower id (compexp)."""
        ctx = self.ctx
        inter = ctx.unit_concept
        iou = _iou(inter, ctx.concept_area[None, :], ctx.unit_area[:, None])
        beams, unit_of, concept_of = [], [], []
        for j in range(len(ctx.units)):
            order = torch.sort(iou[j], descending=True, stable=True).indices[:self.beam_size]
            order = order[iou[j, order] > 0].tolist()
            k = int(ctx.unit_ids[j])
            self.evaluated[j] = ctx.present.shape[0]
            if not order:
                beams.append(None)
                continue
            out.single[k], out.single_iou[k] = Leaf(order[0]), float(iou[j, order[0]])
            beams.append(_Beam([Leaf(c) for c in order], [int(ctx.concept_area[c]) for c in order],
                               [int(inter[j, c]) for c in order], [float(iou[j, c]) for c in order]))
            unit_of += [j] * len(order)
            concept_of += order
        masks = ctx.concepts.select(torch.tensor(concept_of, dtype=torch.int64))
        return beams, (masks, torch.tensor(unit_of, dtype=torch.int64))

    def _step(self, beams: list, state, live: list[int]):
        ctx = self.ctx
        masks, unit_of = state
        fl, flu = ctx.counts(masks, unit_of)
        present = ctx.present
        ca = ctx.concept_area[present]
        new_beams, pieces, new_unit_of, row = list(beams), [], [], 0
        for j in live:
            beam = beams[j]
            b = len(beam.formulas)
            rows = slice(row, row + b)
            row += b
            fa = torch.tensor(beam.area, dtype=torch.int64)
            fi = torch.tensor(beam.inter, dtype=torch.int64)
            area, inter = _candidates(fa, fi, fl[rows][:, present], flu[rows][:, present], ca,
                                      ctx.unit_concept[j, present])
            lengths = torch.tensor([len(f) for f in beam.formulas], dtype=torch.float64)
            weight = torch.stack([ctx.penalty ** lengths, ctx.penalty ** lengths, ctx.penalty ** (lengths + 1)], -1)
            score = _iou(inter, area, ctx.unit_area[j]) * weight[:, None, :]
            self.evaluated[j] += score.numel()
            pool = torch.cat([torch.tensor(beam.score, dtype=torch.float64), score.flatten()])
            keep = torch.sort(pool, descending=True, stable=True).indices[:self.beam_size].tolist()
            new = _Beam([], [], [], [])
            for i in keep:
                if i < b:
                    new.formulas.append(beam.formulas[i]); new.area.append(beam.area[i])  # noqa: E702
                    new.inter.append(beam.inter[i]); pieces.append(("old", row - b + i, None))  # noqa: E702
                else:
                    parent, c, op = _unravel(i - b, len(present))
                    concept = int(present[c])
                    new.formulas.append(_extend(beam.formulas[parent], concept, op))
                    new.area.append(int(area[parent, c, op])); new.inter.append(int(inter[parent, c, op]))  # noqa: E702
                    pieces.append((op, row - b + parent, concept))
                new.score.append(float(pool[i]))
                new_unit_of.append(j)
            new_beams[j] = new
        return new_beams, (_build_masks(ctx, masks, pieces), torch.tensor(new_unit_of, dtype=torch.int64))


def _unravel(i: int, num_concepts: int) -> tuple[int, int, int]:
    """A flat candidate index (beam order, concept order, op order) -> (parent, concept, op)."""
    parent, rest = divmod(i, num_concepts * 3)
    c, op = divmod(rest, 3)
    return parent, c, op


def _build_masks(ctx: _Context, masks: MaskSet, pieces: list) -> MaskSet:
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


class _OptimalSearch:
    """The highest-scoring formula of at most 3 concepts, by branch and bound on exact counts.

    Length 1 and 2 are scored exhaustively from two (C, C) count tables: |A & B| over the data set
    (computed once per call) and |A & B & U| (on the unit's images only). A length-3 formula
    (A op B) op' L is only counted when the bound of its prefix F = A op B exceeds the best score so
    far (the beam's result to begin with); prefixes are taken in decreasing bound, so the search
    stops at the first that cannot win. Prefixes that repeat another (b OR a, b AND a) or a shorter
    formula (a OR a, a AND a, a AND NOT a) are skipped. Every bound is multiplied by penalty ** len(F).
    Prefix bounds, with u = |U|, fu = |F & U|, and for a concept L: lu = |L & U|, lo = |L \\ U|
    (IoU = I / (u + |G \\ U|) for any formula G with I = |G & U|):
      F AND L, F AND NOT L are subsets of F:  IoU <= fu / u
      F OR L: I = fu + |L & U \\ F| <= fu + min(lu, u - fu) and |G \\ U| = |F \\ U| + |L \\ U \\ F|
              >= |F \\ U| + max(0, lo - |F \\ U|), so IoU <= max over L of
              (fu + min(lu, u - fu)) / (|F u U| + max(0, lo - |F \\ U|)),
    the maximum taken over the concepts not dominated in (lu high, lo low). A batch of prefixes that
    passes is first counted on the unit's images only, which bounds each (prefix, L, op) closely
    (`_refined_bounds`); only prefixes whose refined bound can still win are counted over the data set.
    """

    PREFIX_BATCH = 64

    def __init__(self, ctx: _Context, length: int, beam_size: int, shared: dict):
        self.ctx, self.length, self.beam_size, self.shared = ctx, length, beam_size, shared

    def run(self, out: Explanations) -> None:
        ctx = self.ctx
        # The beam result is a formula of the same space: a first lower bound to prune with.
        _BeamSearch(ctx, self.length, self.beam_size).run(out)
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
        ctx = self.ctx
        present = ctx.present
        P = present.shape[0]
        u = int(ctx.unit_area[j])
        la, lu = ctx.concept_area[present], ctx.unit_concept[j, present]
        iou1 = _iou(lu, la, u)
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
        f_area, f_inter = _candidates(la, lu, pairs, pu, la, lu)  # F = leaf a, L = leaf b
        w2 = torch.tensor([ctx.weight(2), ctx.weight(2), ctx.weight(3)], dtype=torch.float64)
        s2 = _iou(f_inter, f_area, u) * w2
        evaluated += s2.numel()
        flat = int(torch.argmax(s2))
        a, b, op = _unravel(flat, P)
        best.offer(_extend(Leaf(int(present[a])), int(present[b]), op), float(s2.flatten()[flat]),
                   int(f_area.flatten()[flat]), int(f_inter.flatten()[flat]))
        if self.length == 2:
            return evaluated
        # Each prefix's area on the unit's images, by the same algebra from the cut tables.
        cut_area = cut.areas().cpu()
        f_area_cut, _ = _candidates(cut_area, cut_area, fl_cut, fl_cut, cut_area, cut_area)
        return evaluated + self._third(j, f_area.reshape(-1), f_inter.reshape(-1), f_area_cut.reshape(-1), pairs,
                                       cut, best)

    def _prefix_bounds(self, j: int, f_area: torch.Tensor, f_inter: torch.Tensor) -> torch.Tensor:
        """Upper bounds of every extension of each length-2 prefix (class docstring), penalised;
        -1 for prefixes another prefix or a shorter formula repeats."""
        ctx = self.ctx
        u = int(ctx.unit_area[j])
        present = ctx.present
        P = present.shape[0]
        lu = ctx.unit_concept[j, present].to(torch.float64)
        lo = (ctx.concept_area[present] - ctx.unit_concept[j, present]).to(torch.float64)
        front = _pareto_front(lu, lo)
        fu, fa = f_inter.to(torch.float64), f_area.to(torch.float64)
        # A prefix with fu = 0 cannot win: its OR bound lu / (u + max(|F - U|, lo)) is at most the
        # IoU of the leaf L (scored at length 1), and its AND bound is 0. Only the others are bounded.
        meets = torch.nonzero(fu > 0).flatten()
        fu_m, f_out = fu[meets], fa[meets] - fu[meets]
        f_union = fa[meets] + u - fu_m
        bound_or = torch.zeros_like(fu)
        best_or = torch.zeros_like(fu_m)
        for c in front.tolist():  # the front is short: tens of concepts
            gain = torch.minimum(lu[c].expand_as(fu_m), u - fu_m)
            best_or = torch.maximum(best_or, (fu_m + gain) / (f_union + (lo[c] - f_out).clamp_min(0)))
        bound_or[meets] = best_or
        # An extension of a prefix of length l scores at most IoU * penalty ** l (penalty <= 1);
        # prefixes (a op b) have length 2, or 3 with AND NOT.
        prefix_len = torch.tensor([2.0, 2.0, 3.0], dtype=torch.float64).repeat(f_area.shape[0] // 3)
        bounds = torch.maximum(fu / u, bound_or) * ctx.penalty ** prefix_len
        # b OR a and b AND a repeat a OR b, a AND b; a OR a and a AND a are the leaf a, whose
        # extensions are length-2 formulas (scored above); a AND NOT a is empty.
        a = torch.arange(P)[:, None, None]
        b = torch.arange(P)[None, :, None]
        op = torch.arange(3)[None, None, :]
        repeated = torch.where(op == AND_NOT, a == b, b <= a)
        return bounds.masked_fill_(repeated.reshape(-1), -1.0)

    def _third(self, j: int, f_area: torch.Tensor, f_inter: torch.Tensor, f_area_cut: torch.Tensor,
               pairs: torch.Tensor, cut: MaskSet, best: "_Best") -> int:
        """Length 3: prefixes in decreasing bound; each batch is first bounded per (prefix, concept,
        op) from its counts on the unit's images (`_refined_bounds`), and counted over the whole
        data set only where that bound can still beat the best."""
        ctx = self.ctx
        present = ctx.present
        P = present.shape[0]
        bounds = self._prefix_bounds(j, f_area, f_inter)
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
            refined = self._refined_bounds(j, f_area[batch], f_inter[batch], f_area_cut[batch], fl_cut[:, present],
                                           t[:, present], pairs, a, b, op, cut_area)
            need = refined.flatten(1).amax(dim=1) > best.score
            if not bool(need.any()):
                continue
            a, b, op, batch = a[need], b[need], op[need], batch[need]
            fl, flu = ctx.counts(_prefix_masks(leaves, a, b, op), unit_of[:batch.shape[0]])
            area, inter = _candidates(f_area[batch], f_inter[batch], fl[:, present], flu[:, present],
                                      ctx.concept_area[present], ctx.unit_concept[j, present])
            score = _iou(inter, area, int(ctx.unit_area[j])) * self._extension_weights(op)
            evaluated += score.numel()
            flat = int(torch.argmax(score))
            p, c, op3 = _unravel(flat, P)
            prefix = _extend(Leaf(int(present[a[p]])), int(present[b[p]]), int(op[p]))
            best.offer(_extend(prefix, int(present[c]), op3), float(score.flatten()[flat]),
                       int(area.flatten()[flat]), int(inter.flatten()[flat]))
        return evaluated

    def _extension_weights(self, op: torch.Tensor) -> torch.Tensor:
        """(B, 1, 3) penalty weights of prefix (a op b) extended by OR, AND, AND NOT."""
        pen = self.ctx.penalty
        prefix_len = torch.where(op == AND_NOT, 3, 2).to(torch.float64)
        return torch.stack([pen ** prefix_len, pen ** prefix_len, pen ** (prefix_len + 1)], -1)[:, None, :]

    def _refined_bounds(self, j, fa, fu, fa_cut, fl_cut, t, pairs, a, b, op, cut_area) -> torch.Tensor:
        r"""(B, P, 3) bounds of (prefix) op' L from exact counts on the unit's images: t = |F & L & U|
        and s = |F & L \ U| there. Elsewhere only the overlap o = |F & L| on the other images is
        unknown, at most min(|F|, |L|) there and |F & L| - |F & L on the unit's images|, where
        |F & L| <= |A & L| + |B & L| (OR), min (AND), |A & L| (AND NOT). With fo = |F \ U|, lo = |L \ U|:
          OR:      I = fu + lu - t,  outside U = fo + lo - s - o
          AND:     I = t,            outside U >= s
          AND NOT: I = fu - t,       outside U = fo - s - o
        and IoU <= I / (u + outside)."""
        ctx = self.ctx
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
        return bound * self._extension_weights(op)


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


def _pareto_front(gain: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """Indices of the concepts no other beats in both gain (higher) and cost (lower)."""
    order = torch.argsort(cost, stable=True)
    front, best_gain = [], -math.inf
    for i in order.tolist():
        if float(gain[i]) > best_gain:
            front.append(i)
            best_gain = float(gain[i])
    return torch.tensor(front, dtype=torch.int64)


@dataclass
class _Best:
    formula: Formula
    score: float
    area: int
    inter: int

    def offer(self, formula: Formula, score: float, area: int, inter: int) -> None:
        if score > self.score:
            self.formula, self.score, self.area, self.inter = formula, score, area, inter


__all__ = ["Explanations", "SetSource", "compositional", "explain", "search_settings"]
