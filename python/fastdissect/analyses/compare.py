"""Comparisons across models, layers and training checkpoints (Network Dissection's experiments).

`fd.compare({"name": dissection or results directory, ...})` lines the dissections up by name, in the
order given: interpretable units and unique detectors per category for every (model, layer) (the
paper's architecture figure), the concepts found by one model and by none of the others, and, between
consecutive entries that share a layer of the same width on the same concepts (two checkpoints of
one model), the units whose label changed (the fine-tuning experiment). With `series=True` the
entries are a checkpoint series: lines over training iterations, read from the last number in each
name (or their positions).

>>> import fastdissect as fd  # doctest: +SKIP
>>> fd.compare({"resnet18": "out_a", "resnet18-places": "out_b"}).write("compare")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

from ..core import validate
from ..files.atomic import make_dirs, save_figure, write_csv, write_text
from ..pipeline.results import Dissection, load
from ..report.draw import pyplot, unique_detector_bars


class Comparison:
    def __init__(self, dissections: Mapping[str, Dissection], series: bool = False):
        if len(dissections) < 2:
            raise ValueError(f"compare needs at least two dissections, got {len(dissections)}")
        self.dissections = dict(dissections)
        self.names = list(self.dissections)
        self.series = series
        cats = {tuple(next(iter(d.values())).category_names) for d in self.dissections.values()}
        if len(cats) != 1:
            raise ValueError("the dissections were made with different concept categories "
                             f"({' vs '.join(map(str, sorted(cats)))}): compare dissections on the same data set")
        self.categories = list(cats.pop())

    # ---- tables
    def table(self) -> list[dict]:
        """One row per (model, layer): units, interpretable, unique detectors in all and per category."""
        rows = []
        for model, d in self.dissections.items():
            for layer in d.values():
                s = layer.summary
                rows.append({"model": model, "layer": s["layer"], "units": s["units"],
                             "interpretable": s["interpretable"],
                             "interpretable_fraction": s["interpretable"] / s["units"],
                             "unique_detectors": s["unique_total"],
                             **{f"unique_{c}": s["unique_detectors"][c] for c in self.categories}})
        return rows

    def concepts(self, model: str) -> dict[str, str]:
        """{concept: category} detected by some unit of any layer of `model`."""
        return {u["label"]: u["category"] for layer in self.dissections[model].values()
                for u in layer.units if u["detector"]}

    def only_in(self) -> list[dict]:
        """Concepts some unit of one model detects and no unit of any other model does."""
        found = {m: self.concepts(m) for m in self.names}
        rows = []
        for m in self.names:
            others = set().union(*(found[o] for o in self.names if o != m))
            for concept in sorted(set(found[m]) - others):
                layers = [name for name, layer in self.dissections[m].items()
                          if any(u["detector"] and u["label"] == concept for u in layer.units)]
                rows.append({"model": m, "concept": concept, "category": found[m][concept],
                             "layers": " ".join(layers)})
        return rows

    def label_changes(self) -> list[dict]:
        """Between consecutive entries, per shared layer of the same width on the same concepts:
        each unit that is a detector in either and whose label differs."""
        rows = []
        for a, b in zip(self.names, self.names[1:]):
            da, db = self.dissections[a], self.dissections[b]
            for name in [n for n in da if n in db]:
                la, lb = da[name], db[name]
                if la.num_units != lb.num_units or la.concept_names != lb.concept_names:
                    continue
                for ua, ub in zip(la.units, lb.units):
                    if (ua["detector"] or ub["detector"]) and (ua["label"], ua["detector"]) != (ub["label"],
                                                                                               ub["detector"]):
                        rows.append({"from": a, "to": b, "layer": name, "unit": ua["unit"],
                                     "label_from": ua["label"] if ua["detector"] else "",
                                     "iou_from": ua["iou"], "label_to": ub["label"] if ub["detector"] else "",
                                     "iou_to": ub["iou"]})
        return rows

    def iterations(self) -> list[float]:
        """The x axis of a checkpoint series: the last number in each name, else the positions."""
        numbers = [re.findall(r"\d+(?:\.\d+)?", n) for n in self.names]
        if all(numbers):
            values = [float(n[-1]) for n in numbers]
            if len(set(values)) == len(values):
                return values
        return [float(i) for i in range(len(self.names))]

    # ---- output
    def write(self, directory, *, verbose: bool = True) -> Path:
        """Writes index.html, its PNG figures and comparison.csv, only_in.csv, label_changes.csv;
        returns the page's path."""
        from jinja2 import Environment, PackageLoader, select_autoescape

        from ..core.version import __version__
        from ..report.draw import category_colors, pyplot

        directory = make_dirs(directory)
        colors = category_colors(self.categories)
        rows, only, changes = self.table(), self.only_in(), self.label_changes()
        for name, table in (("comparison.csv", rows), ("only_in.csv", only), ("label_changes.csv", changes)):
            write_csv(directory / name, table)  # an empty table is an empty file: nothing was found
        figures = {"detectors": "models_detectors.png"}
        _models_figure(directory / figures["detectors"], rows, self.categories, colors)
        if self.series:
            figures["series"] = "series.png"
            _series_figure(directory / figures["series"], self, colors)
        page = Environment(loader=PackageLoader("fastdissect.report", "templates"),
                           autoescape=select_autoescape(["j2"])).get_template("compare.html.j2").render(
            names=self.names, rows=rows, only=only, changes=changes, categories=self.categories, figures=figures,
            series=self.series, version=__version__)
        write_text(directory / "index.html", page)
        if verbose:
            print(f"fastdissect: comparison of {', '.join(self.names)}: {directory / 'index.html'}")
        return directory / "index.html"


def _models_figure(path: Path, rows, categories, colors) -> None:
    """Unique detectors per category, stacked, for every (model, layer): the paper's architecture figure."""
    plt = pyplot()
    labels = [f"{r['model']}\n{r['layer']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(rows) + 2), 3.6), dpi=110)
    bottom = unique_detector_bars(ax, rows, categories, colors, labels, 0.7)
    for x, r in enumerate(rows):
        ax.text(x, bottom[x], f"{r['interpretable']}/{r['units']}", ha="center", va="bottom", fontsize=7)
    ax.set_title("unique detectors per category (above each bar: interpretable units)", fontsize=11)
    ax.legend(ncol=min(len(categories), 6), fontsize=8, frameon=False, loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _shown(comparison: Comparison) -> list[str]:
    """The categories with a detector somewhere (an all-zero line only crowds the legend)."""
    rows = comparison.table()
    return [c for c in comparison.categories if any(r[f"unique_{c}"] for r in rows)] or comparison.categories[:1]


def _series_figure(path: Path, comparison: Comparison, colors) -> None:
    """A checkpoint series: per layer, unique detectors per category and interpretable units against
    the training iteration."""
    plt = pyplot()
    xs = comparison.iterations()
    layers = list(dict.fromkeys(name for d in comparison.dissections.values() for name in d))
    fig, axes = plt.subplots(1, len(layers) + 1, figsize=(4.2 * (len(layers) + 1), 3.3), dpi=110, squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for cat in _shown(comparison):
            ys = [d[layer].summary["unique_detectors"][cat] if layer in d else float("nan")
                  for d in comparison.dissections.values()]
            ax.plot(xs, ys, "o-", color=colors[cat], label=cat)
        ax.set_title(f"{layer}: unique detectors", fontsize=10)
    last = axes[0][-1]
    for layer in layers:
        last.plot(xs, [d[layer].summary["interpretable"] if layer in d else float("nan")
                       for d in comparison.dissections.values()], "o-", label=layer)
    last.set_title("interpretable units", fontsize=10)
    for ax in axes[0]:
        ax.set_xlabel("training iteration")
        ax.legend(fontsize=7, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def compare(dissections: Mapping, *, series: bool = False) -> Comparison:
    """A `Comparison` of dissections ({name: Dissection or a directory `fd.load` reads}), in order."""
    if not isinstance(dissections, Mapping):
        raise validate.ArgumentTypeError(f"dissections must be a dict {{name: dissection or results directory}}, "
                                          f"in the order to show them, got {type(dissections).__name__}")
    validate.boolean(series, "series")
    names = [str(name) for name in dissections]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # {1: a, "1": b} would keep one of them silently
        raise ValueError(f"dissections: the names {twice} are the same once written as text")
    for name, d in dissections.items():
        if not isinstance(d, (Dissection, str, os.PathLike)):
            raise validate.ArgumentTypeError(f"dissections[{name!r}] must be a Dissection or a results directory "
                                              f"(str or os.PathLike), got {type(d).__name__}")
    loaded = {str(name): d if isinstance(d, Dissection) else load(d) for name, d in dissections.items()}
    return Comparison(loaded, series)


__all__ = ["Comparison", "compare"]
