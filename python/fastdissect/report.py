"""The dissection report: a static HTML site that works from the file system, offline.

index.html (per-layer summary, unique detectors per category across layers) and one page per layer
(the paper's bar graph, a sortable/filterable unit table, per-unit strips of the top images with the
unit's thresholded, upsampled mask drawn over each image at image resolution, the best concept of
each category). Figures are matplotlib PNGs, pages come from jinja2 templates, every asset is local.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from . import __version__
from ._atomic import make_dirs, save_figure, save_image, write_text
from .identity import describe
from .torch_backend import upsample

PALETTE = ["#4263eb", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#1098ad", "#5c940d", "#862e9c", "#d9480f"]
THUMB = 112  # px, the height of each image in a unit's strip


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _colors(categories):
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(categories)}


def _bar_figure(path: Path, title: str, categories, counts, colors) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 2.8), dpi=110)
    ax.bar(categories, counts, color=[colors[c] for c in categories])
    for x, n in enumerate(counts):
        ax.text(x, n, str(n), ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("unique detectors")
    ax.set_title(title, fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_ylim(0, max(max(counts), 1) * 1.18)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _concept_figure(path: Path, layer, colors) -> bool:
    """The paper's per-concept bars: one bar per concept some unit detects, coloured by category,
    height = its number of detectors, tallest first. False (and no file) when there are none."""
    counts: dict[tuple[str, str], int] = {}
    for u in layer.units:
        if u["detector"]:
            counts[(u["label"], u["category"])] = counts.get((u["label"], u["category"]), 0) + 1
    if not counts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    fig, ax = plt.subplots(figsize=(min(24, max(6.4, 0.22 * len(items) + 1.5)), 3.2), dpi=110)
    ax.bar(range(len(items)), [n for _, n in items], color=[colors[c] for (_, c), _ in items])
    ax.set_xticks(range(len(items)), [name for (name, _), _ in items], rotation=90, fontsize=7)
    ax.set_ylabel("detectors")
    ax.set_xlim(-0.6, len(items) - 0.4)
    ax.spines[["top", "right"]].set_visible(False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[c]) for c in dict.fromkeys(c for (_, c), _ in items)]
    ax.legend(handles, list(dict.fromkeys(c for (_, c), _ in items)), fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True


def _comparison_figure(path: Path, summaries, categories, colors) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [s["layer"] for s in summaries]
    fig, ax = plt.subplots(figsize=(max(6.4, 1.3 * len(layers) + 2), 3.2), dpi=110)
    width = 0.8 / max(len(categories), 1)
    for j, cat in enumerate(categories):
        xs = np.arange(len(layers)) + (j - (len(categories) - 1) / 2) * width
        ax.bar(xs, [s["unique_detectors"][cat] for s in summaries], width, label=cat, color=colors[cat])
    ax.set_xticks(np.arange(len(layers)), layers)
    ax.set_ylabel("unique detectors")
    ax.set_title("unique detectors per category, early to late layers", fontsize=11)
    ax.legend(ncol=min(len(categories), 6), fontsize=8, frameon=False, loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    top = max([s["unique_detectors"][c] for s in summaries for c in categories] + [1])
    ax.set_ylim(0, top * 1.35)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _edge(mask: np.ndarray) -> np.ndarray:
    """The outline of a (..., H, W) mask: its pixels with a 4-neighbour outside it."""
    return mask & ~(np.roll(mask, 1, -2) & np.roll(mask, -1, -2) & np.roll(mask, 1, -1) & np.roll(mask, -1, -1))


def _overlay(image: np.ndarray, mask: np.ndarray, formula_mask: np.ndarray | None = None) -> np.ndarray:
    """The image dimmed outside the mask, the mask's outline in yellow and, when given, the outline of
    the unit's formula's mask in cyan (all at image resolution; stacks of images and masks too)."""
    dim = np.where(mask, np.float32(1.0), np.float32(0.3))[..., None]  # a product, not a masked scatter
    out = image.astype(np.float32) * dim
    if formula_mask is not None:
        out[_edge(formula_mask)] = (0, 220, 255)
    out[_edge(mask)] = (255, 212, 59)
    return out.astype(np.uint8)


def formula_mask_of(formula, sample, height: int, width: int) -> np.ndarray:
    """The formula's mask on one image (labels of a `Sample`), nearest-resized to height x width."""
    from PIL import Image

    from .formula import And, Leaf, Not

    def mask(f):
        if isinstance(f, Leaf):
            whole = f.concept in set(int(c) for c in sample.image_labels)
            planes = (sample.labels == f.concept).any(axis=0) if len(sample.labels) else \
                np.zeros(sample.labels.shape[1:], dtype=bool)
            return planes | whole
        if isinstance(f, Not):
            return ~mask(f.operand)
        left, right = mask(f.left), mask(f.right)
        return left & right if isinstance(f, And) else left | right
    m = Image.fromarray(mask(formula).astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
    return np.asarray(m) > 0


def _strips(layer, dataset, directory: Path, images: dict) -> list[str]:
    """One JPEG strip per unit: its top images, each with the unit's mask; images are read once.
    Torch runs single-threaded meanwhile: for thousands of small upsamplings, threads cost 30x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _unit_strips(layer, dataset, directory, images)
    finally:
        torch.set_num_threads(threads)


def _unit_strips(layer, dataset, directory: Path, images: dict) -> list[str]:
    from PIL import Image

    if layer.top_images is None or layer.top_maps is None:
        return [""] * layer.num_units
    make_dirs(directory)
    paths = []
    thresholds = layer.scores.thresholds
    samples: dict = {}  # label planes of the top images, read only when a formula needs them
    for k in range(layer.num_units):
        formula = layer.formulas.formulas[k] if layer.formulas is not None else None
        tops = layer.top_images[k].tolist()
        for index in tops:
            if index not in images:
                images[index] = np.asarray(dataset.image(index) if hasattr(dataset, "image") else dataset[index].image)
            if formula is not None and index not in samples:
                samples[index] = dataset[index]
        f_masks = [formula_mask_of(formula, samples[i], *images[i].shape[:2]) if formula is not None else None
                   for i in tops]
        sizes = {images[i].shape[:2] for i in tops}
        if len(sizes) == 1:  # the usual case: all the unit's maps upsampled and overlaid at once
            masks = (upsample(layer.top_maps[k], *next(iter(sizes))) > float(thresholds[k])).numpy()
            shown = _overlay(np.stack([images[i] for i in tops]), masks,
                             np.stack(f_masks) if formula is not None else None)
        else:
            shown = [_overlay(images[i], (upsample(layer.top_maps[k, j], *images[i].shape[:2]) >
                                          float(thresholds[k])).numpy(), f_masks[j]) for j, i in enumerate(tops)]
        tiles = [Image.fromarray(t).resize((max(1, round(THUMB * t.shape[1] / t.shape[0])), THUMB), Image.BILINEAR)
                 for t in shown]
        strip = Image.new("RGB", (sum(t.width for t in tiles) + 2 * (len(tiles) - 1), THUMB), (255, 255, 255))
        x = 0
        for t in tiles:
            strip.paste(t, (x, 0))
            x += t.width + 2
        name = f"unit_{k:04d}.jpg"
        save_image(strip, directory / name, quality=85)
        paths.append(f"{directory.name}/{name}")
    return paths


def _unit_pages(env, layer, units, directory: Path, layer_page: str, colors, top: int = 5) -> list[dict]:
    """One page per unit: its strip, its `top` concepts by IoU as bars, formula, control, metrics."""
    make_dirs(directory)
    iou = layer.scores.iou.clone()
    iou[:, 0] = -1.0
    values, concepts = iou.topk(min(top, iou.shape[1] - 1), dim=1) if iou.shape[1] > 1 else (iou[:, :0], iou[:, :0])
    template = env.get_template("unit.html.j2")
    out = []
    for u in units:
        k = u["unit"]
        best = [{"name": layer.concept_names[int(c)], "category": layer.category_names[int(layer.categories[int(c)])],
                 "iou": max(float(v), 0.0)} for v, c in zip(values[k], concepts[k])]
        name = f"unit_{k:04d}.html"
        page = template.render(u=u, layer=layer.layer, layer_page=layer_page,
                               strip=Path(u["strip"]).name if u["strip"] else "", top=best,
                               top_iou=max([b["iou"] for b in best] + [0.0]), colors=colors)
        write_text(directory / name, page, durable=False)
        out.append({"unit": k, "unit_page": f"{directory.name}/{name}"})
    return out


EXPLANATIONS_MARK = "<!-- explanations -->"


def link_explanations(index: Path, page: Path, count: int) -> None:
    """Adds a link to an explanation page to the report's index (if `index` is one), once."""
    import os

    if not index.is_file() or EXPLANATIONS_MARK not in index.read_text(encoding="utf-8"):
        return
    html = index.read_text(encoding="utf-8")
    href = os.path.relpath(page, index.parent)
    if f'href="{href}"' in html:
        return
    plural = "s" if count != 1 else ""
    link = f'<p class="explanations"><a href="{href}">Explained predictions ({count} image{plural})</a></p>'
    write_text(index, html.replace(EXPLANATIONS_MARK, f"{link}\n{EXPLANATIONS_MARK}"))


def _about(dissection) -> dict:
    """The index's header: what was dissected, on what, how, and how long it took."""
    about = describe(getattr(dissection, "identity", {}))
    layer = next(iter(dissection.values()))
    if layer.top_maps is not None:
        about["map size"] = "x".join(map(str, layer.top_maps.shape[2:])) + " (first layer)"
    about["concepts"] = f"{len(layer.concept_names) - 1} in {len(layer.category_names)} categories"
    seconds = getattr(dissection, "run_seconds", None)
    if seconds is not None:
        about["run time"] = f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    about["fastdissect"] = __version__
    return about


def _random_init_summaries(dissection) -> dict:
    """{layer: summary} of the random-init control (fd.dissect(controls=("random_init",))), if any."""
    control = getattr(dissection, "random_init", None)
    return {name: layer.summary for name, layer in control.items()} if control is not None else {}


def write_report(dissection, directory, dataset=None, *, verbose: bool = True) -> Path:
    """Writes the report for `dissection` into `directory`; returns the path of index.html.

    dataset: the concept data set the dissection ran on (for the top images); without it the unit
    strips are left out.
    """
    from jinja2 import Environment, PackageLoader, select_autoescape
    from tqdm.auto import tqdm

    directory = Path(directory)
    make_dirs(directory)
    env = Environment(loader=PackageLoader("fastdissect", "templates"), autoescape=select_autoescape(["j2"]))
    first = next(iter(dissection.values()))
    categories = list(first.category_names)
    colors = _colors(categories)
    images: dict[int, np.ndarray] = {}
    summaries = []
    for name, layer in tqdm(dissection.items(), desc="report", unit="layer", disable=not verbose):
        slug = _slug(name)
        summary = dict(layer.summary, page=f"layer_{slug}.html")
        summaries.append(summary)
        figure = f"layer_{slug}_detectors.png"
        _bar_figure(directory / figure, f"{name}: unique detectors per category", categories,
                    [summary["unique_detectors"][c] for c in categories], colors)
        strips = _strips(layer, dataset, directory / f"units_{slug}", images) if dataset is not None else \
            [""] * layer.num_units
        units = [dict(u, strip=s) for u, s in zip(layer.units, strips)]
        for u in _unit_pages(env, layer, units, directory / f"units_{slug}", summary["page"], colors):
            units[u["unit"]]["unit_page"] = u["unit_page"]
        concept_figure = f"layer_{slug}_concepts.png"
        if not _concept_figure(directory / concept_figure, layer, colors):
            concept_figure = None
        page = env.get_template("layer.html.j2").render(
            layer=name, summary=summary, figure=figure, concept_figure=concept_figure, units=units,
            categories=categories, colors=colors,
            has_formulas=layer.formulas is not None, has_control=layer.control is not None, metric=layer.metric,
            top_k=layer.top_images.shape[1] if layer.top_images is not None else 0)
        write_text(directory / summary["page"], page)
    _comparison_figure(directory / "layers_detectors.png", summaries, categories, colors)
    index = env.get_template("index.html.j2").render(
        n_layers=len(summaries), n_images=first.scores.num_images, union=first.scores.union_mode,
        iou_threshold=first.iou_threshold, metric=first.metric, comparison_figure="layers_detectors.png",
        summaries=summaries, random_init=_random_init_summaries(dissection),
        categories=categories, version=__version__, about=_about(dissection),
        written=time.strftime("%Y-%m-%d %H:%M"))
    write_text(directory / "index.html", index)
    return directory / "index.html"
