"""Units with planted answers: `fd.synthetic_units` builds activation maps whose true explanation is
known (a concept, a formula such as A OR B or A AND NOT B, or an image-level tag), so that a labeler
can be tested on whether it finds it (MAIA's synthetic neurons, Shaham et al. 2024, in the spirit).

Unit k on image i is, at the label resolution (sh, sw):

    a_k(i) = M_k(i) + noise * e,     e ~ N(0, 1) per pixel, seeded per (seed, image)

with M_k(i) the 0/1 mask of formula k on image i (a concept's mask is the union of its pixels in
every label plane, or the whole image when it is an image-level label; level="image" makes M_k the
whole image wherever the formula holds at any pixel). Maps at the label resolution are scored by
fd.score without resampling, so the planted mask is the unit's mask exactly when noise is 0.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core import validate
from ..core.formula import And, Formula, Leaf, Not, Or

LEVELS = ("pixel", "image")


def as_formula(f, names) -> Formula:
    """A Formula, a concept id, a concept name, or a formula's text in ids ("(3 OR 7)")."""
    if isinstance(f, Formula):
        return f
    if isinstance(f, (int, np.integer)) and not isinstance(f, bool):
        return Leaf(int(f))
    if isinstance(f, str):
        if f in names:
            return Leaf(list(names).index(f))
        try:
            return Formula.parse(f)
        except ValueError:
            raise ValueError(f"formulas: {f!r} is neither a concept name of the data set nor a formula of "
                             "concept ids such as '(3 OR 7)'") from None
    raise validate.ArgumentTypeError(f"formulas: expected Formula, concept id or name, got {type(f).__name__}")


def concept_mask(sample, concept: int) -> np.ndarray:
    labels = np.asarray(sample.labels)
    if concept in set(int(c) for c in sample.image_labels):
        return np.ones(labels.shape[1:], dtype=bool)
    return (labels == concept).any(axis=0)


def formula_mask(formula: Formula, sample, cache: dict) -> np.ndarray:
    if isinstance(formula, Leaf):
        if formula.concept not in cache:
            cache[formula.concept] = concept_mask(sample, formula.concept)
        return cache[formula.concept]
    if isinstance(formula, Not):
        return ~formula_mask(formula.operand, sample, cache)
    left, right = formula_mask(formula.left, sample, cache), formula_mask(formula.right, sample, cache)
    return left & right if isinstance(formula, And) else left | right


def synthetic_units(dataset, formulas, *, noise: float = 0.0, level: str = "pixel", seed: int = 0) -> torch.Tensor:
    """(N, K, sh, sw) float32 activations of K units, unit k planted to detect formulas[k]."""
    if isinstance(formulas, (str, Formula)) or not hasattr(formulas, "__len__") or len(formulas) == 0:
        raise validate.ArgumentTypeError("formulas must be a non-empty list (one formula per unit)")
    validate.number(noise, "noise", 0.0)
    validate.choice(level, "level", LEVELS)
    validate.integer(seed, "seed")
    planted = [as_formula(f, dataset.concept_names) for f in formulas]
    for f in planted:
        bad = [c for c in f.concepts() if c >= dataset.num_concepts or c == 0]
        if bad:
            raise ValueError(f"formulas: {f} names concept ids {bad} the data set does not have "
                             f"(ids 1..{dataset.num_concepts - 1})")
    out = None
    for i in range(len(dataset)):
        s, cache = dataset[i], {}
        masks = np.stack([formula_mask(f, s, cache) for f in planted])
        if level == "image":
            masks = np.broadcast_to(masks.any(axis=(1, 2))[:, None, None], masks.shape)
        if out is None:
            out = torch.empty(len(dataset), len(planted), *masks.shape[1:], dtype=torch.float32)
        out[i] = torch.from_numpy(masks.astype(np.float32))
        if noise:
            g = torch.Generator().manual_seed(seed * 1_000_003 + i)
            out[i] += noise * torch.randn(out.shape[1:], generator=g)
    return out
