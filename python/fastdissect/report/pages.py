"""The dissection report: a static HTML site that works from the file system, offline.

index.html (per-layer summary, unique detectors per category across layers) and one page per layer
(the paper's bar graph, a sortable/filterable unit table, per-unit strips of the top images with the
unit's thresholded, upsampled mask drawn over each image at the strip's resolution, the best concept
of each category) and a page of its units, each beside its feature visualisation when one is given
(`visualizations=`). Figures are matplotlib PNGs, pages come from jinja2 templates, every asset is
local.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import torch

from ..core.version import __version__
from ..kernels import dispatch
from ..core import validate
from ..files.atomic import directory_in_place, image_bytes, make_dirs, save_figure, write_new, write_text
from ..files.identity import describe
from .draw import (CYAN, YELLOW, FormulaOutlines, bright_and_dim, category_colors, drawing_backend, pyplot,
                   tile_size)

THUMB = 112  # px, the height of each image in a unit's strip
STRIP_CHUNK = 64  # units whose strips one thread draws at a time
THUMB_CACHE_BYTES = 256 << 20  # tiles of earlier layers' top images kept for later layers


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _bar_figure(path: Path, title: str, categories, counts, colors) -> None:
    plt = pyplot()
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
    plt = pyplot()

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
    plt = pyplot()

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


def _thumbnail(dataset, i: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The (bright, dim) tiles of image i, `height` px high."""
    from PIL import Image

    image = np.asarray(dataset.image(i) if hasattr(dataset, "image") else dataset[i].image)
    th, tw = tile_size(image.shape, height)
    return bright_and_dim(np.asarray(Image.fromarray(image).resize((tw, th), Image.BILINEAR)))


def _thumbnails(dataset, indices, cache: dict, height: int, pool=None) -> None:
    """cache[i, height] = _thumbnail(dataset, i, height) for the indices not in it yet: each image
    decoded and resized once per report and height (in `pool`'s threads when given: decoding
    releases the GIL). Tiles of earlier layers stay for later ones while the cache holds under
    THUMB_CACHE_BYTES; beyond, only this layer's are kept, so memory is bounded by one layer's top
    images (about 100 KB each at 112 px)."""
    wanted = {(i, height) for i in indices}
    if sum(b.nbytes + d.nbytes for b, d in cache.values()) > THUMB_CACHE_BYTES:
        for key in set(cache) - wanted:
            del cache[key]
    missing = [i for i in indices if (i, height) not in cache]
    tiles = pool.map(lambda i: _thumbnail(dataset, i, height), missing) if pool is not None else \
        (_thumbnail(dataset, i, height) for i in missing)
    cache.update(zip(((i, height) for i in missing), tiles))


class _Thumbnails:
    """The layer's top images' tiles, `height` px high, stacked by tile width as draw_tiles reads them."""

    def __init__(self, cache: dict, indices, height: int):
        by_width: dict[int, list[int]] = {}
        for i in indices:
            by_width.setdefault(cache[i, height][0].shape[1], []).append(i)
        self.height = height
        self.width = {i: cache[i, height][0].shape[1] for i in indices}
        self.row = {i: n for members in by_width.values() for n, i in enumerate(members)}
        self.stacks = {w: tuple(torch.from_numpy(np.stack([cache[i, height][b] for i in members]))
                                for b in (0, 1)) for w, members in by_width.items()}


def _strip_layout(tops: list[list[int]], thumbs: _Thumbnails) -> tuple[list[tuple], list[int]]:
    """Each tile's (strip, y, x) corner, side by side 2 px apart, and each strip's width."""
    corners, widths = [], []
    for c, row in enumerate(tops):
        x = 0
        for i in row:
            corners.append((c, 0, x))
            x += thumbs.width[i] + 2
        widths.append(max(0, x - 2))
    return corners, widths


def _draw_strips(layer, units: range, thumbs: _Thumbnails, outlines: FormulaOutlines, backend: str, pitch: int):
    """(len(units), pitch, W) int32 RGBX strips of `units`, thumbs.height px high at the top of their
    `pitch` rows (white elsewhere and beyond a strip's width), and their widths; the tiles of each
    width are drawn from one mask-kernel call."""
    from ..kernels.torch_backend import pack_bits

    height = thumbs.height
    tops = layer.top_images[units.start:units.stop].tolist()
    corners, widths = _strip_layout(tops, thumbs)
    out = torch.full((len(tops), pitch, max(widths)), dispatch.rgbx((255, 255, 255)), dtype=torch.int32)
    slots = [(c, j) for c, row in enumerate(tops) for j in range(len(row))]
    for width in {thumbs.width[i] for row in tops for i in row}:
        group = [n for n, (c, j) in enumerate(slots) if thumbs.width[tops[c][j]] == width]
        ks = torch.tensor([units.start + slots[n][0] for n in group])
        js = torch.tensor([slots[n][1] for n in group])
        images = [tops[slots[n][0]][slots[n][1]] for n in group]
        masks = dispatch.unit_masks(backend, layer.top_maps[ks, js][None], height, width,
                                     layer.scores.thresholds[ks])[0]
        second = None
        if layer.formulas is not None:
            second = pack_bits(torch.from_numpy(np.stack([
                outlines.mask(layer.formulas.formulas[int(k)], i, height, width).reshape(-1)
                for k, i in zip(ks, images)])))
        bright, dim = thumbs.stacks[width]
        dispatch.draw_tiles(backend, masks, second, bright, dim, torch.tensor([thumbs.row[i] for i in images]),
                             out, torch.tensor([corners[n] for n in group], dtype=torch.int64), YELLOW, CYAN)
    return out, widths


def _write_sheet(layer, units: range, thumbs: _Thumbnails, outlines: FormulaOutlines, directory: Path, backend: str,
                 prefix: str):
    """One JPEG of the strips of `units`, one below the other; where each strip lies in it. Strips
    start every multiple of JPEG's 16 px blocks, so no strip's compression reads its neighbour's pixels."""
    from PIL import Image

    pitch = -(-thumbs.height // 16) * 16
    out, widths = _draw_strips(layer, units, thumbs, outlines, backend, pitch)
    name = f"{prefix}_{units.start // STRIP_CHUNK:04d}.jpg"
    sheet = Image.frombuffer("RGBX", (out.shape[2], out.shape[0] * pitch), out.numpy(), "raw", "RGBX", 0, 1)
    write_new(directory / name, image_bytes(sheet, ".jpg", quality=85))
    return [{"sheet": name, "y": c * pitch, "width": w, "height": thumbs.height} for c, w in enumerate(widths)]


def _has_top_images(layer) -> bool:
    return not (layer.top_images is None or layer.top_maps is None or layer.top_images.shape[1] == 0)


def _formula_outlines(layer, dataset, indices) -> FormulaOutlines:
    """The formula outlines on the top images (their label planes), when the layer has formulas; the
    images themselves are not decoded where the data set can read labels alone (a Broden)."""
    if layer.formulas is None:
        return FormulaOutlines({})
    if hasattr(dataset, "labels") and hasattr(dataset, "image_labels"):
        return FormulaOutlines({i: (dataset.labels(i), dataset.image_labels(i)) for i in indices})
    return FormulaOutlines({i: (s.labels, s.image_labels) for i in indices for s in [dataset[i]]})


def _strips(layer, dataset, directory: Path, cache: dict, height: int = THUMB, prefix: str = "strips") -> list:
    """Each unit's strip (its top images, `height` px high, each with the unit's mask), as {sheet, y,
    width, height}: where it lies in the JPEG sheets `prefix`_NNNN.jpg written into `directory` (a
    `directory_in_place`), a sheet per STRIP_CHUNK units (a file per unit costs more to create than
    to draw). Masks are drawn at tile resolution by the scoring kernel: bilinear upsampling samples
    one surface, so at tile size it draws the scored mask's shape, not a resized copy of it. Chunks
    are drawn in threads (kernels and JPEG encoding release the GIL), each kernel call
    single-threaded: for many small calls, threads inside a call cost more than they give."""
    from concurrent.futures import ThreadPoolExecutor

    if not _has_top_images(layer):
        return [None] * layer.num_units
    backend = drawing_backend()
    indices = sorted(set(layer.top_images.flatten().tolist()))
    outlines = _formula_outlines(layer, dataset, indices)
    chunks = [range(a, min(a + STRIP_CHUNK, layer.num_units)) for a in range(0, layer.num_units, STRIP_CHUNK)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            _thumbnails(dataset, indices, cache, height, pool)
            thumbs = _Thumbnails(cache, indices, height)
            sheets = pool.map(lambda units: _write_sheet(layer, units, thumbs, outlines, directory, backend, prefix),
                              chunks)
            return [s for sheet in sheets for s in sheet]
    finally:
        torch.set_num_threads(threads)


def strip_image(layer, unit: int, dataset, height: int = THUMB):
    """Unit `unit`'s strip, as the report shows it, as a PIL image `height` px high (for a figure or
    a slide): `strip_image(dissection["layer4"], 120, dataset).save("unit120.png")`."""
    from PIL import Image

    if not _has_top_images(layer):
        raise ValueError(f"layer {layer.layer} kept no top images (dissect it with top_k >= 1)")
    if not 0 <= unit < layer.num_units:
        raise ValueError(f"unit must be in [0, {layer.num_units}), got {unit}")
    validate.positive_int(height, "height")
    cache: dict = {}
    indices = layer.top_images[unit].tolist()
    _thumbnails(dataset, indices, cache, height)
    outlines = _formula_outlines(layer, dataset, indices)
    backend = drawing_backend()
    thumbs = _Thumbnails(cache, indices, height)
    out, widths = _draw_strips(layer, range(unit, unit + 1), thumbs, outlines, backend, height)
    return Image.frombuffer("RGBX", (widths[0], height), np.ascontiguousarray(out[0, :, :widths[0]].numpy()),
                            "raw", "RGBX", 0, 1).convert("RGB")


def _label_height(dataset) -> int:
    """The data set's label height when it has one size (a Broden, COCO): the unit page shows the
    top images at it when it is finer than the strips' THUMB px; else 0."""
    size = getattr(dataset, "label_size", None)
    return int(size[0]) if isinstance(size, (tuple, list)) and len(size) == 2 else 0


def _best_concepts(layer, top: int) -> list[list[dict]]:
    """Each unit's `top` concepts by IoU, with the width of their bar (300 px for the unit's best)."""
    iou = layer.scores.iou.clone()
    iou[:, 0] = -1.0
    values, concepts = iou.topk(min(top, iou.shape[1] - 1), dim=1) if iou.shape[1] > 1 else (iou[:, :0], iou[:, :0])
    names, cats, groups = layer.concept_names, layer.category_names, layer.categories.tolist()
    out = []
    for vs, cs in zip(values.clamp(min=0.0).tolist(), concepts.tolist()):
        high = max(vs + [0.0])
        out.append([{"name": names[c], "category": cats[groups[c]], "iou": v,
                     "bar": round(300 * v / high, 1) if high > 0 else 0} for v, c in zip(vs, cs)])
    return out


def _unit_page(env, layer, units: list[dict], directory: Path, layer_page: str, colors, top: int = 5) -> str:
    """The page of the layer's units, written into `directory` (a `directory_in_place`): each unit's
    visualisation (if any) and strip, its `top` concepts by IoU as bars, formula, control, metrics; the address's #unit-N shows
    unit N (one page, not a file per unit: files cost more to create than to render)."""
    shown = [dict(u, top=best) for u, best in zip(units, _best_concepts(layer, top))]
    page = env.get_template("units.html.j2").render(units=shown, layer=layer.layer, layer_page=layer_page,
                                                    colors=colors)
    write_new(directory / "units.html", page.encode("utf-8"))
    return "units.html"


def checked_visualizations(dissection, visualizations) -> dict:
    """{layer: visualisation} checked against the dissection: each is duck-typed (the report is
    below the analyses that compute `fd.Visualization`s): `units` (unit ids) and `images`
    ((U, S, S, 3) uint8), optionally `layer`, `objective` and `settings`."""
    if visualizations is None:
        return {}
    validate.mapping(visualizations, "visualizations", "{layer: fd.Visualization}")
    for name, vis in visualizations.items():
        if name not in dissection:
            raise LookupError(f"visualizations names layer {name!r}, which the dissection does not hold "
                              f"(layers: {list(dissection)})")
        images, units = np.asarray(getattr(vis, "images", None)), getattr(vis, "units", None)
        if units is None or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 \
                or len(images) != len(units):
            raise ValueError(f"visualizations[{name!r}] must have units and (units, S, S, 3) uint8 images (an "
                             f"fd.Visualization), got {type(vis).__name__} with images of shape {images.shape}")
        if getattr(vis, "layer", name) != name:
            raise ValueError(f"visualizations[{name!r}] visualises layer {vis.layer!r}, not {name!r}")
        bad = [u for u in units if not 0 <= int(u) < dissection[name].num_units]
        if bad:
            raise ValueError(f"visualizations[{name!r}] shows units {bad}, outside layer {name!r}'s "
                             f"{dissection[name].num_units} units")
    return dict(visualizations)


def _write_visuals(vis, directory: Path, height: int) -> dict:
    """{unit: {src, size, caption}}: each visualised unit's image as vis_<unit>.png in `directory`
    (a `directory_in_place`), shown `height` px high beside its top images."""
    from PIL import Image

    if vis is None:
        return {}
    settings = getattr(vis, "settings", {}) or {}
    objective = getattr(vis, "objective", "channel")
    steps = f", {settings['steps']} steps" if "steps" in settings else ""
    basis = ", a basis feature" if settings.get("basis") else ""
    out = {}
    for unit, image in zip(vis.units, np.asarray(vis.images)):
        name = f"vis_{int(unit)}.png"
        write_new(directory / name, image_bytes(Image.fromarray(image), ".png"))
        out[int(unit)] = {"src": name, "size": height,
                          "caption": f"feature visualisation: the {objective} objective maximised{basis}{steps}"}
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


LOCATION = ("root", "store")  # where a data set lies, not what it holds: a moved copy is the same data set
_WHAT = {"files": "its image and label files differ (sizes or times)", "concepts": "its concept names differ",
         "categories": "its categories differ", "content": "its content differs",
         "arrays": "its packed arrays differ", "header": "its packed header differs",
         "source": "it was packed from another data set"}


def _recorded_dataset(dissection, kind: str) -> dict:
    """The identity of the data set whose images the dissection's numbers belong to: a dissection
    of a packed store records the store's, and its images' data set under "images_from"."""
    recorded = dict((getattr(dissection, "identity", None) or {}).get("dataset") or {})
    images_from = recorded.pop("images_from", None)
    return images_from if images_from is not None and recorded.get("kind") != kind else recorded


def dataset_differences(dissection, dataset, where: str = "this data set") -> list[str]:
    """What differs between `dataset` and the data set the dissection was computed on, as recorded
    in its identity (nothing when the dissection recorded none); its location is left out."""
    from ..files.identity import flatten, dataset_identity

    now = dataset_identity(dataset)
    recorded = _recorded_dataset(dissection, now["kind"])
    if not recorded:
        return []
    a = flatten({k: v for k, v in recorded.items() if k not in LOCATION})
    b = flatten({k: v for k, v in now.items() if k not in LOCATION})
    changed = [key for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    lines = []
    if "images" in changed:  # first: the count and the kind say the most
        lines.append(f"{a.get('images', '?')} images in the results, {b.get('images', '?')} in {where}")
    if "kind" in changed:
        lines.append(f"the results were computed on a {a.get('kind', '?')}, {where} is a {b.get('kind', '?')}")
    csvs = [key[4:] for key in changed if key.startswith("csv.")]
    if csvs:
        names = ", ".join(csvs[:4]) + (" ..." if len(csvs) > 4 else "")
        lines.append(f"its {names} differ{'s' if len(csvs) == 1 else ''}")
    lines += [_WHAT.get(key, f"{key} differs") for key in changed
              if key not in ("images", "kind") and not key.startswith("csv.")]
    return lines


def _images_needed(dissection) -> int:
    """How many images the report reads: one past the highest top image of any layer."""
    return max((int(layer.top_images.max()) + 1 for layer in dissection.values()
                if layer.top_images is not None and layer.top_images.numel()), default=0)


def check_dataset(dissection, dataset, where: str = "the data set", *, allow_changed: bool = False) -> None:
    """Refuses (DatasetError, naming what differs) a data set that is not the one the dissection
    was computed on: its images would be drawn beside another data set's numbers. allow_changed:
    accept a changed one anyway, if it still holds every top image."""
    from ..datasets import DatasetError

    differences = dataset_differences(dissection, dataset, where)
    needed, held = _images_needed(dissection), len(dataset)
    if held < needed:
        differences = differences or [f"the dissection's top images go up to image {needed - 1}, {where} holds {held}"]
        raise DatasetError(f"{where} is not the data set the results were computed on ({'; '.join(differences)}): "
                           "pass the data set the dissection ran on")
    if differences and not allow_changed:
        raise DatasetError(f"{where} is not the data set the results were computed on ({'; '.join(differences)}): "
                           "pass the data set the dissection ran on (--dataset), or --allow-changed-dataset to draw "
                           "this one's images beside the results anyway")


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


def _layer_pages(env, directory: Path, name: str, layer, dataset, thumbs: dict, visualization, categories,
                 colors) -> dict:
    """A layer's page, its figures and its units' folder (strips, visualisations, the units' page);
    returns the layer's summary for the index."""
    slug = _slug(name)
    summary = dict(layer.summary, page=f"layer_{slug}.html")
    figure = f"layer_{slug}_detectors.png"
    _bar_figure(directory / figure, f"{name}: unique detectors per category", categories,
                [summary["unique_detectors"][c] for c in categories], colors)
    folder = f"units_{slug}"  # the strips and the units' page, published together
    with directory_in_place(directory / folder) as fresh:
        strips = _strips(layer, dataset, fresh, thumbs) if dataset is not None else [None] * layer.num_units
        units = [dict(u, strip=s) for u, s in zip(layer.units, strips)]
        label_height = _label_height(dataset)
        full = strips if label_height <= THUMB else _strips(layer, dataset, fresh, thumbs, label_height, "full")
        visuals = _write_visuals(visualization, fresh, max(label_height, THUMB))
        units_page = _unit_page(env, layer, [dict(u, strip=f, visual=visuals.get(u["unit"]))
                                             for u, f in zip(units, full)], fresh, summary["page"], colors)
    for u in units:
        u["unit_page"] = f"{folder}/{units_page}#unit-{u['unit']}"
        u["visual"] = visuals.get(u["unit"])
    concept_figure = f"layer_{slug}_concepts.png"
    if not _concept_figure(directory / concept_figure, layer, colors):
        concept_figure = None
    page = env.get_template("layer.html.j2").render(
        layer=name, summary=summary, figure=figure, concept_figure=concept_figure, units=units, units_folder=folder,
        categories=categories, colors=colors, has_visuals=bool(visuals),
        has_formulas=layer.formulas is not None, has_control=layer.control is not None, metric=layer.metric,
        top_k=layer.top_images.shape[1] if layer.top_images is not None else 0)
    write_text(directory / summary["page"], page)
    return summary


def write_report(dissection, directory, dataset=None, *, visualizations=None, verbose: bool = True) -> Path:
    """Writes the report for `dissection` into `directory`; returns the path of index.html.

    dataset: the concept data set the dissection ran on (for the top images; default the one
    `fd.dissect` ran on, `dissection.dataset`); without one the unit strips are left out. One with
    fewer images than the top images name is refused (DatasetError).
    visualizations: {layer: fd.Visualization} (`fd.visualize`): each visualised unit's page shows
    its image beside its top images, and the layer's table a thumbnail.
    """
    visualizations = checked_visualizations(dissection, visualizations)
    if dataset is None:
        dataset = getattr(dissection, "dataset", None)
    from jinja2 import Environment, PackageLoader, select_autoescape
    from tqdm.auto import tqdm

    if dataset is not None and len(dataset) < _images_needed(dissection):
        from ..datasets import DatasetError

        raise DatasetError(f"the data set holds {len(dataset)} images, the dissection's top images go up to image "
                           f"{_images_needed(dissection) - 1}: it is not the data set the dissection ran on")
    directory = Path(directory)
    make_dirs(directory)
    env = Environment(loader=PackageLoader("fastdissect.report", "templates"), autoescape=select_autoescape(["j2"]))
    first = next(iter(dissection.values()))
    categories = list(first.category_names)
    colors = category_colors(categories)
    thumbs: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # the top images' tiles, shared by the layers
    summaries = [_layer_pages(env, directory, name, layer, dataset, thumbs, visualizations.get(name), categories,
                              colors)
                 for name, layer in tqdm(dissection.items(), desc="report", unit="layer", disable=not verbose)]
    _comparison_figure(directory / "layers_detectors.png", summaries, categories, colors)
    index = env.get_template("index.html.j2").render(
        n_layers=len(summaries), n_images=first.scores.num_images, union=first.scores.union_mode,
        iou_threshold=first.iou_threshold, metric=first.metric, comparison_figure="layers_detectors.png",
        summaries=summaries, random_init=_random_init_summaries(dissection),
        categories=categories, version=__version__, about=_about(dissection),
        written=time.strftime("%Y-%m-%d %H:%M"))
    write_text(directory / "index.html", index)
    return directory / "index.html"
