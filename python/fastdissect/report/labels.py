"""The page of a dissection labelled without masks: `fd.dissect_images` (image-level tags) or
`fd.clip_dissect` (words and CLIP). One index.html: per layer, a bar figure of how many units carry
each label, and a table of every unit with its label, its score (the metric of its best tag, with
the tag's one-sided Mann-Whitney p-value; or the soft-WPMI / WPMI / cos^3 of its best word, with its
next best words) and, when searched, its formula of tags. There are no top-image strips: these
results keep no maps."""

from __future__ import annotations

import re
from pathlib import Path

from ..core.version import __version__
from ..files.atomic import make_dirs, save_figure, write_text
from ..pipeline.clip import ClipDissection
from ..pipeline.image_results import ImageDissection
from .draw import pyplot

MOST_LABELS = 20  # bars in a layer's figure: the most frequent labels


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def label_counts(units: list[dict]) -> list[tuple[str, int]]:
    """(label, units carrying it), most frequent first, ties by name."""
    counts: dict[str, int] = {}
    for u in units:
        counts[u["label"]] = counts.get(u["label"], 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _labels_figure(path: Path, layer: str, counts: list[tuple[str, int]], what: str) -> None:
    plt = pyplot()
    shown = counts[:MOST_LABELS][::-1]
    fig, ax = plt.subplots(figsize=(5.6, 0.9 + 0.24 * len(shown)), dpi=110)
    ax.barh(range(len(shown)), [n for _, n in shown], color="#3b5bdb")
    ax.set_yticks(range(len(shown)), [label for label, _ in shown], fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)  # counts of units
    ax.set_xlabel(f"units labelled with the {what}")
    more = f" ({len(counts) - MOST_LABELS} more labels not shown)" if len(counts) > MOST_LABELS else ""
    ax.set_title(f"{layer}: units per {what}{more}", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _layer_view(name: str, layer, kind: str) -> dict:
    """What the template shows of one layer: columns named for the result's kind, rows as text."""
    units = layer.units
    if kind == "images":
        m = layer.metric
        rows = [{"unit": u["unit"], "label": u["label"], "score": u[m], "p_value": u["p_value"],
                 "formula": u.get("formula", ""), "formula_score": u.get(f"formula_{m}")} for u in units]
        return {"name": name, "score": m, "rows": rows, "has_p": True, "has_formulas": bool(layer.formulas),
                "has_words": False, "counts": label_counts(units), "what": "tag"}
    rows = [{"unit": u["unit"], "label": u["label"], "score": u["score"], "top_words": u["top_words"]} for u in units]
    return {"name": name, "score": layer.similarity, "rows": rows, "has_p": False, "has_formulas": False,
            "has_words": True, "counts": label_counts(units), "what": "word"}


def write_label_report(dissection, directory, *, verbose: bool = True) -> Path:
    """Writes the page of an `ImageDissection` (fd.dissect_images) or a `ClipDissection`
    (fd.clip_dissect) into `directory` (index.html and one labels_<layer>.png per layer, atomically);
    returns the page's path."""
    from jinja2 import Environment, PackageLoader, select_autoescape
    from tqdm.auto import tqdm

    if isinstance(dissection, ImageDissection):
        kind = "images"
    elif isinstance(dissection, ClipDissection):
        kind = "clip"
    else:
        raise TypeError(f"dissection must be what fd.dissect_images or fd.clip_dissect returns, got "
                        f"{type(dissection).__name__} (fd.write_report writes the page of fd.dissect's results)")
    directory = make_dirs(directory)
    layers = []
    for name, layer in tqdm(dissection.items(), desc="labels page", unit="layer", disable=not verbose):
        view = _layer_view(name, layer, kind)
        view["figure"] = f"labels_{_slug(name)}.png"
        _labels_figure(directory / view["figure"], name, view["counts"], view["what"])
        layers.append(view)
    env = Environment(loader=PackageLoader("fastdissect.report", "templates"), autoescape=select_autoescape(["j2"]))
    page = env.get_template("labels.html.j2").render(kind=kind, layers=layers, identity=dissection.identity,
                                                     version=__version__)
    write_text(directory / "index.html", page)
    return directory / "index.html"
