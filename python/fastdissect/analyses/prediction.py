"""Explaining one prediction by the labeled units that made it (Network Dissection, TPAMI extension).

For image x, class t with logit y_t and the layer's maps A_k (k = 1..K, h x w), each attribution gives
every unit a weight a_k and a contribution c_k:
  "gradcam"   a_k = mean over positions of dy_t / dA_k;    c_k = a_k * mean A_k;
              heatmap = ReLU(sum_k a_k A_k)  (Selvaraju et al.)
  "cam"       a_k = W[t, k] of the linear head that follows a global average pool of this layer;
              c_k = a_k * mean A_k, exactly the unit's share of y_t - b_t;  heatmap = ReLU(sum_k a_k A_k)
  "gradient x activation"  a_k = mean dy_t / dA_k;  c_k = sum over positions of dy_t/dA_k * A_k
              (first-order Taylor: the logit's change if the unit were switched off)
Units are ranked by c_k; `labeled_share` is the detectors' part of sum_k c_k (over the units with a
positive contribution: what pushed the class up). With `pixels=` (a method of `fd.attribute`), each
explanation also holds a fine pixel map beside the heatmap: the attribution's magnitude per pixel,
max_c |a_c(x)|, divided by its 99th percentile over the image and clipped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core import validate
from ..core.deprecation import reordered, warn
from . import inputs
from .attribution import LAYER_METHODS, METHODS, attribute, class_targets, layer_forward
from ..kernels.torch_backend import upsample
from ..pipeline.results import Dissection

ATTRIBUTIONS = ("gradcam", "cam", "gradient x activation")


@dataclass
class PredictionExplanation:
    """One image's explanation: the class, its score, the heatmap and the ranked units."""

    image: np.ndarray               # (H, W, 3) uint8 as given
    target: int                     # the class explained (predicted unless given)
    predicted: int                  # the model's top-1 class
    score: float                    # the target's logit
    probability: float              # its softmax probability
    heatmap: np.ndarray             # (H, W) float64 in [0, 1] at image resolution
    units: list[dict]               # ranked: unit, label, category, iou, formula, detector, weight, contribution
    labeled_share: float            # share of the positive contributions carried by detector units
    attribution: str
    layer: str
    maps: np.ndarray = field(repr=False, default=None)  # (len(units), H, W) their maps upsampled to the image
    pixels: np.ndarray = field(repr=False, default=None)  # (H, W) float64 in [0, 1]: the pixel map, or None
    pixels_method: str = None                          # the fd.attribute method of `pixels`

    @property
    def method(self) -> str:
        warn("PredictionExplanation.method", "PredictionExplanation.attribution")
        return self.attribution


class PredictionExplanations(Sequence):
    """What `fd.explain_prediction` returns: one `PredictionExplanation` per image, in order (indexed
    and iterated as the list earlier releases returned), written as a page or a table."""

    def __init__(self, explanations):
        self.explanations = list(explanations)

    def __getitem__(self, i):
        return PredictionExplanations(self.explanations[i]) if isinstance(i, slice) else self.explanations[i]

    def __len__(self) -> int:
        return len(self.explanations)

    def __repr__(self) -> str:
        return f"PredictionExplanations({len(self)} images)"

    def rows(self) -> list[dict]:
        """One row per (image, ranked unit); an image with no unit to show has one row without them."""
        rows = []
        for i, e in enumerate(self.explanations):
            head = {"image": i, "target": e.target, "predicted": e.predicted, "score": e.score,
                    "probability": e.probability, "labeled_share": e.labeled_share, "attribution": e.attribution,
                    "layer": e.layer}
            shown = [{"rank": r, **{k: u[k] for k in UNIT_COLUMNS}} for r, u in enumerate(e.units)]
            rows += [{**head, **u} for u in shown] or [{**head, "rank": None, **dict.fromkeys(UNIT_COLUMNS)}]
        return rows

    def to_csv(self, path) -> Path:
        from ..files.atomic import write_csv

        return write_csv(path, self.rows(), float_format=None)

    def write(self, directory, *, class_names=None, title: str = "") -> Path:
        """The HTML page of `write_page`; returns its index.html."""
        return write_page(self.explanations, directory, class_names=class_names, title=title)


UNIT_COLUMNS = ("unit", "label", "category", "iou", "formula", "detector", "threshold", "weight", "contribution")


def _linear_head(model: torch.nn.Module, num_units: int) -> torch.nn.Linear:
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.in_features == num_units]
    if not heads:
        raise ValueError(f'attribution="cam" needs a linear head on the {num_units} pooled units (global average '
                         'pool + nn.Linear); this model has none: use attribution="gradcam"')
    return heads[-1]


@reordered("model, images, dissection, layer", {2: Dissection}, method="attribution", top="top_k")
def explain_prediction(model: torch.nn.Module, layer: str, images, dissection, *, target=None,
                       attribution: str = "gradcam", top_k: int = 5, units=None, detectors_only: bool = True,
                       image_size=None, pixels: str | None = None, samples: int = 50) -> PredictionExplanations:
    """Explains the model's prediction (or class `target`) on each image by the units of `layer`.

    images: (H, W, 3) uint8 arrays (one, a list, a stack, or image paths), fed as the dissection fed
    its data (mean, std, image size from its identity; image_size overrides the size). The top_k
    units by contribution are shown, among `units` (default: all) and, with detectors_only (the
    default), only the layer's detectors. pixels: a method of `fd.attribute` ("guided_gradcam",
    "smoothgrad", ...; Grad-CAM's at `layer`) whose map of the explained class is added to each
    explanation, shown beside the heatmap; None (the default): none. samples: SmoothGrad's noisy copies
    (pixels="smoothgrad"; each a forward and a backward pass of the model).
    """
    validate.module(model, "model")
    validate.layer_name(layer)
    inputs.dissection(dissection)
    target = validate.targets(target)
    validate.choice(attribution, "attribution", ATTRIBUTIONS)
    top_k = validate.positive_int(top_k, "top_k")
    units, detectors_only = _old_units(units, detectors_only)
    units = None if units is None else validate.int_list(units, "units")
    validate.boolean(detectors_only, "detectors_only")
    image_size = validate.image_size(image_size)
    if pixels is not None:
        validate.choice(pixels, "pixels", METHODS)
    samples = validate.positive_int(samples, "samples")
    result = inputs.layer_of(dissection, layer, model)
    if units is not None and max(units) >= result.num_units:
        raise ValueError(f"units {units} are outside layer {layer!r}'s {result.num_units} units")
    settings = inputs.input_settings(dissection)
    if image_size is not None:
        settings["image_size"] = image_size
    pictures = inputs.as_images(images)
    act, logits, t, grads = _evidence(model, layer, pictures, settings, result, attribution, target)
    weights, contributions = _weights(attribution, model, act, grads, t)
    probs = torch.softmax(logits.double(), dim=1)
    candidates = _candidates(result, units, detectors_only)
    fine = _pixel_maps(model, layer, pictures, settings, t, pixels, samples)
    return PredictionExplanations(
        _explanation(pictures[i], result, act[i], weights[i], contributions[i], int(t[i]), int(logits[i].argmax()),
                     float(logits[i, t[i]]), float(probs[i, t[i]]), attribution, layer, top_k, candidates,
                     fine[i], pixels)
        for i in range(len(pictures)))


def _pixel_maps(model, layer, pictures, settings, t: torch.Tensor, pixels, samples: int) -> list:
    """Per image, `pixels`' map of class t at image resolution (the docstring's normalisation), or None."""
    if pixels is None:
        return [None] * len(pictures)
    x = inputs.model_batch(pictures, settings, inputs.model_device(model))
    a = attribute(model, x, t, method=pixels, layer=layer if pixels in LAYER_METHODS else None, samples=samples)
    return [pixel_map(a[i], *pictures[i].shape[:2]) for i in range(len(pictures))]


def pixel_map(a: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(height, width) float64 in [0, 1]: max_c |a_c| upsampled, over its 99th percentile, clipped."""
    magnitude = upsample(a.detach().abs().amax(dim=0).cpu(), height, width).numpy()
    # the percentile, not the max: saliency maps are peaked, and a few pixels would darken the rest
    scale = float(np.quantile(magnitude, 0.99)) or float(magnitude.max())
    return np.clip(magnitude / scale, 0, 1) if scale > 0 else magnitude


def _old_units(units, detectors_only: bool):
    """units="detectors" / "all", the choice of earlier releases, as detectors_only."""
    if isinstance(units, str) and units in ("detectors", "all"):
        warn(f'explain_prediction(units="{units}")',
             f"explain_prediction(detectors_only={units == 'detectors'}) (units= is now a list of unit ids)", 5)
        return None, units == "detectors"
    return units, detectors_only


def _evidence(model, layer, pictures, settings, result, attribution, target):
    """(act, logits, targets, grads): the layer's maps and the logits on the images, the classes
    explained and, unless attribution is "cam", the target logits' gradients at the layer (float64)."""
    x = inputs.model_batch(pictures, settings, inputs.model_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x.requires_grad_(True)  # gradients reach the layer even when the weights are frozen
            logits, act = layer_forward(model, layer, x)
            inputs.check_map_size(result, act, layer)
            if act.shape[1] != result.num_units:
                raise ValueError(f"layer {layer!r} has {act.shape[1]} units here, the dissection {result.num_units}")
            t = class_targets(target, logits)
            grads = None
            if attribution != "cam":
                if not act.requires_grad:
                    raise ValueError(f'attribution="{attribution}" needs gradients through layer {layer!r}, and the '
                                     'model computes it without (torch.no_grad or detached): use attribution="cam"')
                chosen = logits.gather(1, t[:, None]).sum()
                grads = torch.autograd.grad(chosen, act)[0].detach().double()
    finally:
        model.train(was_training)
    return act.detach().double(), logits.detach(), t, grads


def _candidates(result, units, detectors_only: bool) -> torch.Tensor:
    """The unit ids that may be shown, ascending."""
    chosen = torch.ones(len(result.units), dtype=torch.bool) if units is None else torch.zeros(len(result.units),
                                                                                                dtype=torch.bool)
    if units is not None:
        chosen[torch.as_tensor(units, dtype=torch.int64)] = True
    if detectors_only:
        chosen &= torch.tensor([u["detector"] for u in result.units], dtype=torch.bool)
    return torch.nonzero(chosen).flatten()


def _weights(attribution: str, model, act: torch.Tensor, grads, t: torch.Tensor):
    """(N, K) weights a_k and contributions c_k (float64)."""
    mean_act = act.mean(dim=(2, 3))
    if attribution == "cam":
        head = _linear_head(model, act.shape[1])
        weights = head.weight.detach().double()[t]
        return weights, weights * mean_act
    weights = grads.mean(dim=(2, 3))
    if attribution == "gradcam":
        return weights, weights * mean_act
    return weights, (grads * act).sum(dim=(2, 3))


def _explanation(image, result, act, weights, contributions, target, predicted, score, probability, attribution,
                 layer, top_k, candidates, pixels=None, pixels_method=None) -> PredictionExplanation:
    H, W = image.shape[:2]
    heat = torch.relu((weights[:, None, None] * act).sum(dim=0))
    heat = upsample(heat, H, W).clamp(min=0)
    heat = (heat / heat.max()).numpy() if float(heat.max()) > 0 else heat.numpy()
    rows = result.units
    detector = torch.tensor([u["detector"] for u in rows])
    order = candidates[torch.argsort(-contributions[candidates], stable=True)][:top_k]
    positive = contributions.clamp(min=0)
    share = float(positive[detector].sum() / positive.sum()) if float(positive.sum()) > 0 else 0.0
    units = [{"unit": int(k), "label": rows[k]["label"], "category": rows[k]["category"], "iou": rows[k]["iou"],
              "formula": rows[k].get("formula", ""), "detector": rows[k]["detector"],
              "threshold": rows[k]["threshold"], "weight": float(weights[k]), "contribution": float(contributions[k])}
             for k in order.tolist()]
    maps = upsample(act[order], H, W).numpy() if len(units) else np.zeros((0, H, W))
    return PredictionExplanation(image, target, predicted, score, probability, heat, units, share, attribution, layer,
                                 maps, pixels, pixels_method if pixels is not None else None)


def write_page(explanations: list[PredictionExplanation], directory, *, class_names=None, title: str = "") -> Path:
    """One HTML page: per image, the image, the prediction, the heatmap (and the pixel map, when the
    explanation has one) and the top units with their labels and their masks (the map above the
    unit's threshold) over the image; and per image one PNG of all of them side by side
    (explained_<i>.png, for slides and READMEs)."""
    from jinja2 import Environment, PackageLoader, select_autoescape
    from PIL import Image

    from ..core.version import __version__
    from ..files.atomic import make_dirs, save_image, write_text
    from ..report.draw import mask_overlay

    directory = make_dirs(directory)
    name = (lambda c: class_names[c] if class_names and c < len(class_names) else f"class {c}")  # noqa: E731
    pages = []
    for i, e in enumerate(explanations):
        save_image(Image.fromarray(e.image), directory / f"image_{i}.png")
        save_image(Image.fromarray(heat_overlay(e.image, e.heatmap)), directory / f"heatmap_{i}.png")
        units, tiles = [], [e.image, heat_overlay(e.image, e.heatmap)]
        if e.pixels is not None:
            tiles.append(pixel_picture(e.pixels))
            save_image(Image.fromarray(tiles[-1]), directory / f"pixels_{i}.png")
        for j, u in enumerate(e.units):
            mask = e.maps[j] > u["threshold"]
            tiles.append(mask_overlay(e.image, mask))
            save_image(Image.fromarray(tiles[-1]), directory / f"unit_{i}_{j}.png")
            units.append(dict(u, picture=f"unit_{i}_{j}.png", covers=float(mask.mean())))
        save_image(Image.fromarray(np.concatenate(
            [np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=255) for t in tiles], axis=1)),
            directory / f"explained_{i}.png")
        pages.append({"index": i, "target": name(e.target), "predicted": name(e.predicted),
                      "is_predicted": e.target == e.predicted, "score": e.score, "probability": e.probability,
                      "share": e.labeled_share, "units": units, "method": e.attribution, "layer": e.layer,
                      "pixels": e.pixels_method if e.pixels is not None else None})
    env = Environment(loader=PackageLoader("fastdissect.report", "templates"), autoescape=select_autoescape(["j2"]))
    html = env.get_template("explain.html.j2").render(pages=pages, title=title, version=__version__)
    write_text(directory / "index.html", html)
    return directory / "index.html"


def pixel_picture(pixels: np.ndarray) -> np.ndarray:
    """The pixel map alone in a dark-to-bright colour map (a fine map blended with the image is lost in it)."""
    import matplotlib

    return (matplotlib.colormaps["inferno"](pixels)[..., :3] * 255).clip(0, 255).astype(np.uint8)


def heat_overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The image blended with a colour map of the heatmap (red: where the class's evidence is)."""
    import matplotlib

    colored = matplotlib.colormaps["jet"](heat)[..., :3] * 255
    return (0.55 * image + 0.45 * colored).clip(0, 255).astype(np.uint8)


__all__ = ["ATTRIBUTIONS", "PredictionExplanation", "PredictionExplanations", "explain_prediction", "write_page"]
