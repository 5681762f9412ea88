"""Compositional explanations: a logical formula of concepts per unit (Mu & Andreas, 2020).

For a formula F, a concept L and the unit's mask U, every candidate of one search step follows
exactly from six integers: |F|, |F & U| (known for F), |L|, |L & U| (one tally) and the two
popcounts |F & L|, |F & U & L| (the formula-count kernel, on the images where F and L meet):

    F OR L       area |F| + |L| - |F & L|    intersection |F & U| + |L & U| - |F & U & L|
    F AND L      area |F & L|                intersection |F & U & L|
    F AND NOT L  area |F| - |F & L|          intersection |F & U| - |F & U & L|

and IoU = intersection / (area + |U| - intersection), summed over the data set (global IoU).

The modules: `api` (`fd.compositional`, the options, the loop over chunks of units), `sources`
(the units' masks), `counts` (a chunk's counts and the algebra above), `beam` (compexp's beam
search), `optimal` and `bounds` (branch and bound), `result` (`Formulas`).

>>> import torch, fastdissect as fd
>>> masks = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
>>> masks[:, 0, :2] = True; masks[:, 1, :, :2] = True                # 0: top half, 1: left half
>>> units = (masks[:, 0] & ~masks[:, 1]).unsqueeze(1)                 # a unit firing top-right
>>> found = fd.compositional(units, masks, formula_length=2)
>>> str(found.formulas[0]), found.iou[0].item(), found.single_iou[0].item()
('(0 AND (NOT 1))', 1.0, 0.5)
"""

from .api import SEARCHES, compositional, find_formulas, search_settings
from .result import Formulas
from .sources import SetSource

__all__ = ["Formulas", "SEARCHES", "SetSource", "compositional", "find_formulas", "search_settings"]
