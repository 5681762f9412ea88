"""`fd.dissect_images`: label units from image-level tags (no masks), INVERT-style (Bykov et al. 2023).

One forward pass over the images (stopped at the last traced layer) gives each unit one score per
image: the max (default) or mean of its map. Each unit is then scored against every tag by an image
metric (engine/image_metrics.py: AUROC by default, exact, ties counting half; AUPRC, correlation, F1),
labelled with its best tag and that tag's one-sided Mann-Whitney p-value, and with formula_length > 1
given its best AND / OR / AND NOT formula of tags (engine/tag_formulas.py).

Memory: the per-image scores, N x K x 4 bytes per layer (63,305 images x 2,048 units: 519 MB); the
metric tables K x C x 8 bytes.
"""

from __future__ import annotations

import torch

from ..core import validate
from ..datasets.sample import IMAGENET_MEAN, IMAGENET_STD
from ..datasets.tags import ImageTags, tags_of
from ..engine.auroc import mann_whitney_p
from ..engine.image_metrics import METRICS, metric_table
from ..engine.tag_formulas import SEARCHES, check_optimal, optimal_unit, search_unit
from ..files.identity import state_hash
from .forward import image_batches, layer_outputs
from .hooks import find_modules
from .image_results import ImageDissection, ImageLayerResult

REDUCTIONS = ("max", "mean")


def _reduced(act: torch.Tensor, reduce: str, layer: str) -> torch.Tensor:
    if act.dim() == 2:
        return act.float()
    if act.dim() < 2:
        raise ValueError(f"layer {layer!r} gives outputs of shape {tuple(act.shape)}: expected (N, K, ...)")
    flat = act.flatten(2).float()
    return flat.amax(dim=2) if reduce == "max" else flat.mean(dim=2)


def image_scores(model, layers, images, *, reduce, batch_size, image_size, mean, std, transform,
                 verbose) -> dict[str, torch.Tensor]:
    """{layer: (N, K) per-image scores} over `images` (any data set with image(i) or samples), from one
    forward pass stopped at the last traced layer."""
    from tqdm.auto import tqdm

    parts: dict[str, list] = {name: [] for name in layers}
    with tqdm(total=len(images), desc="image scores", unit="img", disable=not verbose) as bar:
        for idx, batch in image_batches(images, batch_size):
            acts = layer_outputs(model, layers, batch, idx, image_size=image_size, mean=mean, std=std,
                                 transform=transform)
            for name in layers:
                parts[name].append(_reduced(acts[name], reduce, name).cpu())
            bar.update(len(idx))
    return {name: torch.cat(p) for name, p in parts.items()}


def label_layer(name, scores, tags: ImageTags, *, metric, formula_length, beam_size, quantile, min_positives,
                verbose, search: str = "beam") -> ImageLayerResult:
    from tqdm.auto import tqdm

    values = metric_table(metric, scores, tags.tags, quantile=quantile)
    n1 = tags.tags.sum(0)
    rare = (n1 < min_positives) | (len(tags) - n1 < min_positives)
    values[:, rare] = float("nan")
    best = torch.nan_to_num(values, nan=-torch.inf).argmax(dim=1)
    p_all = mann_whitney_p(scores, tags.tags)
    p = p_all[torch.arange(len(best)), best]
    result = ImageLayerResult(name, scores, values, p, metric, list(tags.tag_names))
    if formula_length > 1:
        def best(k):
            if search == "optimal":
                return optimal_unit(scores[:, k], tags.tags, metric, formula_length, quantile, values[k], min_positives)
            return search_unit(scores[:, k], tags.tags, metric, formula_length, beam_size, quantile, values[k],
                               min_positives)

        found = [best(k) for k in tqdm(range(scores.shape[1]), desc=f"{name}: tag formulas ({search})", unit="unit",
                                       disable=not verbose)]
        result.formulas = [f for f, _ in found]
        result.formula_values = torch.tensor([v for _, v in found], dtype=torch.float64)
    return result


def dissect_images(model: torch.nn.Module, layers, dataset, *, reduce: str = "max", metric: str = "auroc",
                   formula_length: int = 1, beam_size: int = 5, search: str = "beam", quantile: float = 0.05,
                   min_positives: int = 5, batch_size: int = 32,
                   image_size=None, mean=IMAGENET_MEAN, std=IMAGENET_STD, transform: dict | None = None,
                   verbose: bool = True) -> ImageDissection:
    """Labels every unit of `layers` with the image-level tag (or tag formula) its per-image score
    predicts best, by `metric`; `dataset` is an `fd.datasets.ImageTags` or any concept data set (its
    concepts present in an image are the image's tags). quantile: the firing level F1 uses.
    min_positives: a tag (or formula) on fewer images than this, or missing from fewer, is no candidate
    (on one image, any metric is perfect or worthless by luck). search: "beam" (beam_size formulas kept
    per length) or "optimal" (every formula of the same space scored; refused past
    engine/tag_formulas.OPTIMAL_BUDGET formulas per unit)."""
    validate.module(model)
    layers = validate.layer_names(layers)
    find_modules(model, layers)
    validate.choice(reduce, "reduce", REDUCTIONS)
    validate.choice(metric, "metric", METRICS)
    validate.integer(formula_length, "formula_length", low=1)
    validate.positive_int(beam_size, "beam_size")
    validate.choice(search, "search", SEARCHES)
    validate.positive_int(batch_size, "batch_size")
    validate.positive_int(min_positives, "min_positives")
    validate.number(quantile, "quantile", 0.0, 1.0, low_open=True, high_open=True)
    image_size = validate.image_size(image_size)
    tags = dataset if isinstance(dataset, ImageTags) else tags_of(dataset, verbose=verbose)
    if search == "optimal":  # refused before the forward pass, not after it
        check_optimal(tags.tags.shape[1], formula_length)
    was_training = model.training
    model.eval()
    try:
        scores = image_scores(model, layers, tags, reduce=reduce, batch_size=batch_size, image_size=image_size,
                              mean=tuple(mean), std=tuple(std), transform=transform, verbose=verbose)
    finally:
        model.train(was_training)
    results = {name: label_layer(name, s, tags, metric=metric, formula_length=formula_length, beam_size=beam_size,
                                 quantile=quantile, min_positives=min_positives, verbose=verbose, search=search)
               for name, s in scores.items()}
    identity = {"model_weights": state_hash(model), "layers": layers, "dataset": tags.fingerprint(),
                "reduce": reduce, "metric": metric, "formula_length": formula_length, "beam_size": beam_size,
                "search": search,
                "quantile": quantile, "min_positives": min_positives, "image_size": list(image_size) if image_size else None,
                "mean": list(mean), "std": list(std)}
    return ImageDissection(results, identity)
