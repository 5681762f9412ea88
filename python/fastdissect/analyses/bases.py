"""`fd.compare_bases`: one layer read in several bases (its units, a rotation, a sparse autoencoder,
directions of one's own), every basis dissected from one forward pass, and the comparison people ask
for: which basis is more interpretable, and by how much beyond chance?

Per basis: features, interpretable share (detectors / features), unique detectors per category
(distinct concepts among detectors), concepts covered (detected by at least one feature), the
distribution of best IoUs, and - with the permuted control, on by default - the share of features
whose label beats the best a mismatched image's labels reach (engine/controls.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..bases.basis import as_basis
from ..core import validate
from ..files.atomic import make_dirs, save_figure, write_csv, write_text
from ..pipeline.dissect import dissect
from ..pipeline.hooks import find_modules
from ..pipeline.results import Dissection
from ..report.draw import category_colors, pyplot, unique_detector_bars


def view_name(layer: str, basis: str) -> str:
    return f"{layer}@{basis}"


class BasisComparison:
    """The bases of one layer, each a `LayerResult` of the same dissection (`result(name)`)."""

    def __init__(self, dissection: Dissection, layer: str, names: list[str], views: dict[str, str]):
        self.dissection, self.layer, self.names, self.views = dissection, layer, names, views
        self.categories = list(self.result(names[0]).category_names)

    def result(self, name: str):
        """The LayerResult of basis `name`."""
        return self.dissection[self.views[name]]

    def best_ious(self, name: str) -> np.ndarray:
        return np.array([u["iou"] for u in self.result(name).units])

    def table(self) -> list[dict]:
        rows = []
        for name in self.names:
            r = self.result(name)
            s, units = r.summary, r.units
            detected = {u["label"] for u in units if u["detector"]}
            ious = self.best_ious(name)
            row = {"basis": name, "features": r.num_units, "interpretable": s["interpretable"],
                   "interpretable_share": s["interpretable"] / r.num_units, "unique_detectors": s["unique_total"],
                   "concepts_covered": len(detected), "median_best_iou": float(np.median(ious)),
                   "mean_best_iou": float(ious.mean())}
            if "beyond_chance" in s:
                row["beyond_chance"] = s["beyond_chance"]
                row["beyond_chance_share"] = s["beyond_chance"] / r.num_units
            row.update({f"unique_{cat}": s["unique_detectors"][cat] for cat in self.categories})
            rows.append(row)
        return rows

    def write(self, directory, *, verbose: bool = True) -> Path:
        """index.html with its figures and bases.csv; returns the page's path."""
        from jinja2 import Environment, PackageLoader, select_autoescape

        from ..core.version import __version__

        directory = make_dirs(directory)
        rows = self.table()
        write_csv(directory / "bases.csv", rows)
        colors = category_colors(self.categories)
        figures = {"shares": "bases_shares.png", "ious": "bases_best_iou.png", "unique": "bases_unique.png"}
        _shares_figure(directory / figures["shares"], rows)
        _iou_figure(directory / figures["ious"], self, self.result(self.names[0]).iou_threshold)
        _unique_figure(directory / figures["unique"], rows, self.categories, colors)
        env = Environment(loader=PackageLoader("fastdissect.report", "templates"), autoescape=select_autoescape(["j2"]))
        page = env.get_template("bases.html.j2").render(layer=self.layer, rows=rows, categories=self.categories,
                                                        figures=figures, version=__version__)
        write_text(directory / "index.html", page)
        if verbose:
            print(f"fastdissect: bases of {self.layer} ({', '.join(self.names)}): {directory / 'index.html'}")
        return directory / "index.html"


def _finish(plt, fig, ax, path: Path) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _shares_figure(path: Path, rows) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.8, 1.2 * len(rows) + 2), 3.4), dpi=110)
    x = np.arange(len(rows))
    width = 0.38 if "beyond_chance_share" in rows[0] else 0.6
    ax.bar(x - (width / 2 if width < 0.6 else 0), [100 * r["interpretable_share"] for r in rows], width,
           color="#3b5bdb", label="interpretable")
    if width < 0.6:
        ax.bar(x + width / 2, [100 * r["beyond_chance_share"] for r in rows], width, color="#f08c00",
               label="beyond chance (permuted control)")
    ax.set_xticks(x, [f"{r['basis']}\n{r['features']} features" for r in rows], fontsize=8)
    ax.set_ylabel("% of features")
    ax.legend(fontsize=8, frameon=False)
    _finish(plt, fig, ax, path)


def _iou_figure(path: Path, comparison: BasisComparison, threshold: float) -> None:
    """Each basis's best IoUs as a survival curve: the share of features whose best IoU exceeds x."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.4), dpi=110)
    for name in comparison.names:
        ious = np.sort(comparison.best_ious(name))
        ax.step(ious, 1 - np.arange(len(ious)) / len(ious), where="post", label=name)
    ax.axvline(threshold, color="0.6", ls="--", lw=1, label=f"detector threshold {threshold:g}")
    ax.set_xlabel("best IoU of a feature")
    ax.set_ylabel("share of features above")
    ax.legend(fontsize=8, frameon=False)
    _finish(plt, fig, ax, path)


def _unique_figure(path: Path, rows, categories, colors) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.8, 1.2 * len(rows) + 2), 3.4), dpi=110)
    unique_detector_bars(ax, rows, categories, colors, [r["basis"] for r in rows], 0.6)
    ax.legend(ncol=min(len(categories), 6), fontsize=7, frameon=False, loc="upper left")
    _finish(plt, fig, ax, path)


def compare_bases(model: torch.nn.Module, layer: str, dataset, bases: Mapping, *, controls=("permuted",),
                  verbose: bool = True, **dissect_options) -> BasisComparison:
    """Dissects `layer` of `model` in every basis of `bases` ({name: None (the units), a (F, C) tensor of
    directions, an `fd.SparseAutoencoder`, `fd.random_rotation(C)`, or a callable (N, C, h, w) ->
    (N, F, h, w)}) from one forward pass over `dataset`; `dissect_options` go to `fd.dissect`."""
    validate.module(model)
    if not isinstance(layer, str):
        raise validate.ArgumentTypeError(f"layer must be one layer name (a str), got {type(layer).__name__}")
    find_modules(model, [layer])
    if not isinstance(bases, Mapping) or not bases:
        raise validate.ArgumentTypeError("bases must be a non-empty dict {name: basis}, e.g. "
                                         "{'units': None, 'rotation': fd.random_rotation(C)}")
    names = [str(n) for n in bases]
    if len(set(names)) != len(names):
        raise ValueError(f"bases: two names are the same once written as text: {names}")
    transforms = {str(n): as_basis(b, f"bases[{n!r}]") for n, b in bases.items()}
    views = {n: (layer if t is None else view_name(layer, n)) for n, t in transforms.items()}
    d = dissect(model, [layer] if None in transforms.values() else [], dataset, controls=controls,
                views={views[n]: (layer, t) for n, t in transforms.items() if t is not None},
                verbose=verbose, **dissect_options)
    return BasisComparison(d, layer, names, views)
