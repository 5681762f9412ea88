"""`fd.compositional`: the options checked, the units' masks read a chunk at a time, each chunk searched."""

from __future__ import annotations

from ...core import validate
from ...core.deprecation import renamed
from ...core.formula_masks import concept_set
from ...core.masks import as_concept_masks
from .beam import BeamSearch
from .counts import SearchContext
from .optimal import OptimalSearch
from .result import Formulas
from .sources import ActivationSource

SEARCHES = ("beam", "optimal")
_SEARCHERS = {"beam": BeamSearch, "optimal": OptimalSearch}


@renamed(x="activations", length="formula_length", progress="verbose")
def compositional(activations, masks, *, thresholds=None, quantile: float = 0.005, formula_length: int = 3,
                  beam_size: int = 5, search: str = "beam", penalty: float = 1.0, backend: str = "auto",
                  verbose: bool = False, units=None) -> Formulas:
    """The best formula of at most `formula_length` concepts for every unit.

    activations: (N, K, h, w), upsampled and thresholded exactly as `fd.score` does (thresholds
    given, or the exact (1 - quantile) quantile of each unit); or unit masks (N, K, H, W) bool.
    masks: dense (N, C, H, W) masks or a `ConceptMasks`; image-level concepts cover their image.
    search: "beam" is compexp's beam search (same formulas, same order on ties); "optimal" the
    highest-IoU formula of the same space, proven by branch and bound (formula_length <= 3).
    verbose: a progress bar over the units.
    units: an optional list of unit ids to explain (the others get None), e.g. for sampling.
    Old argument names (x, length, progress) work for one release, with a DeprecationWarning.
    """
    settings = search_settings(formula_length, beam_size, search, penalty, "formula_length")
    validate.quantile_level(quantile)  # even with thresholds given: a bad value is a mistake either way
    validate.backend(backend)
    validate.boolean(verbose, "verbose")
    if units is not None:
        units = validate.int_list(units, "units")
    m = as_concept_masks(masks)
    source = ActivationSource(activations, m, thresholds, quantile, backend)
    used_quantile = quantile if thresholds is None and not source.is_mask else None
    return find_formulas(source, settings, used_quantile, units, verbose)


def search_settings(length, beam_size, search, penalty, length_name: str = "length") -> dict:
    """The validated search options (also the pipeline's and compexp's: length_name is the name
    their caller gave the length, for its messages)."""
    length = validate.positive_int(length, length_name)
    beam_size = validate.positive_int(beam_size, "beam_size")
    validate.choice(search, "search", SEARCHES)
    if search == "optimal" and length > 3:
        raise ValueError(f'search="optimal" proves formulas of length <= 3, got {length_name}={length}; '
                         'use search="beam" for longer formulas')
    penalty = validate.number(penalty, "penalty", 0.0, 1.0, low_open=True)
    return dict(length=length, beam_size=beam_size, search=search, penalty=penalty)


def find_formulas(source, settings: dict, quantile, units=None, verbose: bool = False) -> Formulas:
    """Runs the search over a unit source (`ActivationSource`, or `SetSource` for collected masks);
    `settings` from `search_settings`, `quantile` the one recorded in the result's settings."""
    m = source.masks
    if m.num_concepts < 1 or int(m.offsets[-1]) == 0:
        raise ValueError("masks have no concept present in any image: nothing to explain units with")
    chosen = source.unit_ids(units)
    concepts = concept_set(m)
    concept_area = m.concept_area()
    searcher = _SEARCHERS[settings["search"]]
    shared: dict = {}  # what every chunk's search reuses (the optimal search's pair table)
    out = Formulas.empty(source.num_units, source.thresholds, {**settings, "quantile": quantile})
    from tqdm.auto import tqdm

    bar = tqdm(total=len(chosen), desc=f"formulas ({settings['search']})", unit="unit", disable=not verbose)
    for chunk in source.chunks(chosen):
        units_set, unit_ids = source.unit_masks(chunk)
        ctx = SearchContext(source.backend, m, concepts, concept_area, units_set, unit_ids, settings["penalty"])
        searcher(ctx, settings["length"], settings["beam_size"], shared).run(out)
        bar.update(len(chunk))
    bar.close()
    return out


