"""Dissection results: per-layer unit labels, summaries, CSVs (tidy and NetDissect-Lite's tally.csv), save/load."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..files import tensorfile
from ..files.atomic import make_dirs, write_csv
from ..files.tensorfile import UnsafeFileError, check_fields
from ..engine.controls import beyond_chance
from ..engine.scoring import Scores

if TYPE_CHECKING:
    from ..engine.compositional import Formulas

FORMAT_VERSION = 3  # 3: a safetensors file (2, a pickle, is refused: reading one could run its code)
MANIFEST = "manifest.json"
SUFFIX = ".safetensors"
RESULTS_KIND = "dissection"
RECREATE = ("re-create it with this fastdissect: run the dissection again (fd.dissect(...).save(dir), or "
            "fastdissect dissect ... --out DIR --overwrite)")
METRICS = ("iou", "f1", "precision", "recall", "coverage")


def check_metric(metric) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def metric_values(scores: Scores, metric: str) -> torch.Tensor:
    """(K, C) float64: the metric that ranks labels, from the exact counts."""
    return getattr(scores, check_metric(metric))


@dataclass
class LayerResult:
    """One layer's dissection. `units` labels each unit the NetDissect way: its best concept in each
    category, then the category whose best IoU is highest; a unit is a detector when that IoU exceeds
    `iou_threshold`. With metric="f1" (or "precision", "recall") that metric ranks the labels and is
    the value held against `iou_threshold` instead."""

    layer: str
    scores: Scores
    concept_names: list[str]
    category_names: list[str]
    categories: torch.Tensor          # (C,) primary category of each concept
    iou_threshold: float
    top_images: torch.Tensor | None = None   # (K, top_k) images with the highest per-image max activation
    top_values: torch.Tensor | None = None   # (K, top_k) those maxima
    top_maps: torch.Tensor | None = None     # (K, top_k, h, w) the unit's maps on those images
    formulas: Formulas | None = None   # each unit's compositional formula (fd.dissect(formula_length=...))
    control: Scores | None = None            # the permuted control's scores (fd.dissect(controls=("permuted",)))
    metric: str = "iou"                      # what ranks labels and meets iou_threshold (one of METRICS)
    basis: str | None = None                 # the basis the layer was read in (fd.dissect(basis=...)), or its units
    _units: list | None = field(default=None, repr=False)

    @property
    def num_units(self) -> int:
        return self.scores.iou.shape[0]

    def best_per_category(self, metric: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(concept, value), each (K, G): the best concept of each category by `metric` (default:
        the layer's; concept 0 never counts)."""
        iou = metric_values(self.scores, metric or self.metric).clone()
        iou[:, 0] = -1.0
        G = len(self.category_names)
        best_c = torch.zeros(self.num_units, G, dtype=torch.int64)
        best_iou = torch.full((self.num_units, G), -1.0, dtype=torch.float64)
        for g in range(G):
            members = torch.nonzero(self.categories == g).flatten()
            members = members[members > 0]
            if members.numel() == 0:
                continue
            v, i = iou[:, members].max(dim=1)   # lowest concept id on ties
            best_c[:, g], best_iou[:, g] = members[i], v
        return best_c, best_iou

    @property
    def units(self) -> list[dict]:
        """One row per unit: unit, label, category, iou, threshold, detector, the label's precision
        (I / |M|), recall (I / |L|) and F1, then <category>-label/-iou (the label's and each
        category's best value of the layer's metric: IoU unless metric= says otherwise)."""
        if self._units is None:
            best_c, best_iou = self.best_per_category()
            g = best_iou.argmax(dim=1)             # first category on ties
            s = self.scores
            precision, recall, f1 = s.precision, s.recall, s.f1
            coverage = s.coverage if s.image_hits is not None else None
            control = metric_values(self.control, self.metric) if self.control is not None else None
            rows = []
            for k in range(self.num_units):
                c, value = int(best_c[k, g[k]]), float(best_iou[k, g[k]])
                row = {"unit": k, "label": self.concept_names[c], "category": self.category_names[int(g[k])],
                       "iou": max(float(s.iou[k, c]), 0.0) if value >= 0 else 0.0,
                       "threshold": float(self.scores.thresholds[k]),
                       "detector": value > self.iou_threshold, "precision": float(precision[k, c]),
                       "recall": float(recall[k, c]), "f1": float(f1[k, c])}
                if coverage is not None:
                    row["coverage"] = float(coverage[k, c])
                if self.metric != "iou":
                    row["score"] = max(value, 0.0)
                if self.control is not None:
                    control_best = float(control[k, 1:].max()) if control.shape[1] > 1 else 0.0
                    row.update({"control_iou": float(control[k, c]), "control_best_iou": control_best,
                                "beyond_chance": beyond_chance(value, control_best, self.iou_threshold)})
                if self.formulas is not None:
                    f = self.formulas.formulas[k]
                    row.update({"formula": f.to_str(self.concept_names) if f is not None else "",
                                "formula_ids": str(f) if f is not None else "",
                                "formula_iou": float(self.formulas.iou[k]),
                                "formula_length": len(f) if f is not None else 0})
                for gi, cat in enumerate(self.category_names):
                    row[f"{cat}-label"] = self.concept_names[int(best_c[k, gi])] if best_iou[k, gi] >= 0 else ""
                    row[f"{cat}-{self.metric}"] = max(float(best_iou[k, gi]), 0.0)
                rows.append(row)
            self._units = rows
        return self._units

    @property
    def summary(self) -> dict:
        """Interpretable units and unique detectors (distinct concepts among detectors) per category."""
        detectors = [u for u in self.units if u["detector"]]
        unique = {cat: len({u["label"] for u in detectors if u["category"] == cat}) for cat in self.category_names}
        out = {"layer": self.layer, "units": self.num_units, "interpretable": len(detectors),
               "unique_detectors": unique, "unique_total": sum(unique.values())}
        if self.control is not None:
            out["beyond_chance"] = sum(u["beyond_chance"] for u in self.units)
            out["chance_detectors"] = sum(u["control_best_iou"] > self.iou_threshold for u in self.units)
        return out

    def to_csv(self, path) -> Path:
        """One row per unit; a layer read in a basis calls its rows features ("feature" for "unit")."""
        rows = self.units if self.basis is None else [{("feature" if k == "unit" else k): v for k, v in u.items()}
                                                       for u in self.units]
        return write_csv(path, rows)

    def formula_csv(self, path) -> Path:
        """compexp's tally columns (unit, category, label, score, length, label_noncomp,
        category_noncomp, score_noncomp) with concept and category names; units that never fire or
        meet no concept have an empty label and score 0."""
        if self.formulas is None:
            raise ValueError(f"layer {self.layer} has no formulas: dissect with formula_length=N")
        cats = [self.category_names[int(g)] for g in self.categories]
        return write_csv(path, self.formulas.rows(names=self.concept_names, categories=cats))

    def tally_csv(self, path) -> Path:
        """NetDissect-Lite's tally.csv: unit (1-based, as Lite numbers them), category, label, score, then
        per category <cat>-label, -truth (concept area), -activation (the union's unit term),
        -intersect, -iou, and last unit_index (0-based, as everywhere else in fastdissect); rows by
        score, descending."""
        s = self.scores
        best_c, best_iou = self.best_per_category("iou")
        unit_term = s.union + s.intersection - s.concept_area[None, :]
        rows = []
        for k in range(self.num_units):  # Lite's labels are by IoU, whatever metric ranks the layer's
            g_best = int(best_iou[k].argmax())
            row = {"unit": k + 1, "category": self.category_names[g_best],
                   "label": self.concept_names[int(best_c[k, g_best])], "score": max(float(best_iou[k, g_best]), 0.0)}
            for g, cat in enumerate(self.category_names):
                c = int(best_c[k, g])
                row.update({f"{cat}-label": self.concept_names[c], f"{cat}-truth": int(s.concept_area[c]),
                            f"{cat}-activation": int(unit_term[k, c]), f"{cat}-intersect": int(s.intersection[k, c]),
                            f"{cat}-iou": max(float(best_iou[k, g]), 0.0)})
            row["unit_index"] = k
            rows.append(row)
        rows.sort(key=lambda r: -r["score"])
        return write_csv(path, rows, float_format=None)


class Dissection(dict):
    """Results of `fd.dissect`: {layer name: LayerResult}, in the order the layers were given.
    `dataset` is the concept data set they were computed on (its images feed the report)."""

    dataset = None
    dataset_root = None  # set by load(): where the data set was
    identity: dict = {}  # what the numbers depend on (fastdissect.identity), set by fd.dissect and load()
    random_init: "Dissection | None" = None  # the random-init control (fd.dissect(controls=("random_init",)))
    run_seconds: float | None = None  # how long fd.dissect took (shown in the report's header)

    def to_csv(self, directory) -> Path:
        """Writes <layer>.csv (tidy, one row per unit) and <layer>-tally.csv (NetDissect-Lite layout);
        the random-init control's in random_init/."""
        directory = make_dirs(directory)
        for name, layer in self.items():
            layer.to_csv(directory / f"{name}.csv")
            layer.tally_csv(directory / f"{name}-tally.csv")
            if layer.formulas is not None:
                layer.formula_csv(directory / f"{name}-formulas.csv")
        if self.random_init is not None:
            self.random_init.to_csv(directory / "random_init")
        return directory

    def summary_text(self) -> str:
        from ..files.identity import describe

        about = describe(self.identity)
        lines = [" · ".join(f"{k} {v}" for k, v in about.items() if k != "layers")] if about else []
        for layer in self.values():
            s = layer.summary
            cats = ", ".join(f"{c} {n}" for c, n in s["unique_detectors"].items() if n)
            line = (f"{s['layer']}: {s['interpretable']}/{s['units']} units interpretable, "
                    f"{s['unique_total']} unique detectors ({cats or 'none'})")
            if "beyond_chance" in s:
                line += f"; {s['beyond_chance']} beyond chance"
            if self.random_init is not None and s["layer"] in self.random_init:  # control_layers may leave it out
                r = self.random_init[s["layer"]].summary
                line += f"; random weights: {r['interpretable']}/{r['units']} interpretable"
            lines.append(line)
        return "\n".join(lines)

    def save(self, directory) -> Path:
        """Writes the results to `directory`, replacing an earlier result there as a whole.

        The layers (and the random-init control's) go to dissection-<digest>.safetensors (tensors and
        JSON, nothing that runs when read: see files/tensorfile.py), a new name, then
        summary.json, then manifest.json, which names that file and its BLAKE2 digest and is what
        `fd.load` reads first. Each file is written to a temporary name and renamed into place, and
        the older result's file is removed only once the new manifest is in place: an interruption at
        any point leaves either the old result or the new one loadable, never a torn one."""
        from ..files import atomic
        from ..files.lock import locked

        with locked(directory, "output directory") as directory:
            root = getattr(self.dataset, "root", None)
            control = self.random_init
            payload = tensorfile.dumps({
                "layers": _layers_state(self),
                "random_init": _layers_state(control) if control is not None else None,
                "random_init_identity": control.identity if control is not None else None,
                "dataset_root": str(Path(root).resolve()) if root is not None else None,
                # relative too: a results directory moved with its data set (OUT/concepts) still finds it
                "dataset_root_relative": os.path.relpath(Path(root).resolve(), directory.resolve())
                if root is not None else None, "identity": self.identity, "run_seconds": self.run_seconds},
                kind=RESULTS_KIND)
            digest = atomic.digest(payload)
            name = f"dissection-{digest[:16]}{SUFFIX}"
            atomic.write_bytes(directory / name, payload)
            atomic.write_text(directory / "summary.json", json.dumps(self.summaries(), indent=1))
            atomic.write_text(directory / MANIFEST, json.dumps({
                "format": "fastdissect-results", "version": FORMAT_VERSION, "dissection": name, "blake2b": digest,
                "bytes": len(payload)}, indent=1))
            for old in directory.glob("dissection*.*"):  # the replaced result's file, and legacy ones
                if old.name != name and old.suffix in (SUFFIX, ".pt"):
                    old.unlink(missing_ok=True)
        return directory

    def summaries(self) -> list[dict]:
        """Each layer's summary; with the random-init control, its summary under "random_init"."""
        control = self.random_init
        return [dict(r.summary, **({"random_init": control[name].summary} if control is not None and name in control
                                   else {}))
                for name, r in self.items()]


def _layers_state(dissection: Dissection) -> dict:
    layers = {}
    for name, r in dissection.items():
        s = r.scores
        layers[name] = {"scores": {k: getattr(s, k) for k in _SCORE_TENSORS},
                        "union_mode": s.union_mode, "num_images": s.num_images,
                        "concept_names": r.concept_names, "category_names": r.category_names,
                        "categories": r.categories, "iou_threshold": r.iou_threshold, "metric": r.metric,
                        "top_images": r.top_images, "top_values": r.top_values, "top_maps": r.top_maps,
                        "formulas": _formulas_state(r.formulas), "control": _scores_state(r.control),
                        "basis": r.basis}
    return layers


_LAYER_FIELDS = ("scores", "union_mode", "num_images", "concept_names", "category_names", "categories",
                 "iou_threshold", "metric", "top_images", "top_values", "top_maps", "formulas", "control")


def _layers_from_state(layers, path) -> Dissection:
    """The layers of a results file; every field is one this version writes, of the kind it writes."""
    if not isinstance(layers, dict):
        raise UnsafeFileError(f"{path}: \"layers\" is not a mapping of layer names")
    out = Dissection()
    for name, d in layers.items():
        where = f"{path}, layer {name!r}"
        d = check_fields(d, where, required=_LAYER_FIELDS, optional=("basis",), tensors=("categories",),
                         optional_tensors=("top_images", "top_values", "top_maps"))
        scores = _scores_from_state({**d["scores"], "union_mode": d["union_mode"], "num_images": d["num_images"]},
                                    where)
        out[name] = LayerResult(name, scores, d["concept_names"], d["category_names"], d["categories"],
                                d["iou_threshold"], d["top_images"], d["top_values"], d["top_maps"],
                                _formulas_from_state(d["formulas"], where), _scores_from_state(d["control"], where),
                                d["metric"], d.get("basis"))
    return out


def load(directory) -> Dissection:
    """Reads what `Dissection.save` wrote, after checking the file against the manifest's digest.
    `DIR/random_init` names the random-init control of the result in DIR. Nothing in the directory
    can run code when read (a result of fastdissect before results were safetensors files is refused
    with a message saying how to write it again)."""
    from ..files import atomic
    from ..core.validate import ArgumentTypeError

    if not isinstance(directory, (str, os.PathLike)):
        raise ArgumentTypeError(f"directory must be a results directory (str or os.PathLike), got "
                                f"{type(directory).__name__}")
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        parent = directory.parent
        if directory.name == "random_init" and (parent / MANIFEST).is_file():
            control = load(parent).random_init
            if control is None:
                raise FileNotFoundError(f"{parent}: this result has no random-init control")
            return control
        legacy = " (a dissection.pt without it: an interrupted save, or a result from before fastdissect 0.2)" \
            if (directory / "dissection.pt").is_file() else ""
        raise FileNotFoundError(f"{manifest_path}: no complete saved dissection here{legacy}; write one with "
                                "d.save(dir)")
    manifest = _read_manifest(manifest_path)
    path = directory / manifest["dissection"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the file {manifest_path} names is missing")
    if atomic.file_digest(path) != manifest["blake2b"]:
        raise ValueError(f"{path} does not match the digest in {manifest_path}: the file is damaged")
    data = check_fields(tensorfile.read(path, kind=RESULTS_KIND), path, required=_RESULT_FIELDS)
    out = _layers_from_state(data["layers"], path)
    out.dataset_root = data["dataset_root"]
    relative = data["dataset_root_relative"]
    if isinstance(relative, str) and (directory / relative).is_dir():
        out.dataset_root = str((directory / relative).resolve())
    out.identity = data["identity"] or {}
    out.run_seconds = data["run_seconds"]
    if data["random_init"] is not None:
        out.random_init = _layers_from_state(data["random_init"], path)
        out.random_init.identity = data["random_init_identity"] or {}
        out.random_init.dataset_root = out.dataset_root
    return out


_RESULT_FIELDS = ("layers", "random_init", "random_init_identity", "dataset_root", "dataset_root_relative",
                  "identity", "run_seconds")


def _read_manifest(path: Path) -> dict:
    """The manifest's fields, each of the type it must have; an older format is refused by name."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a fastdissect manifest ({type(exc).__name__}: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "fastdissect-results":
        raise ValueError(f"{path}: not a fastdissect results manifest")
    version = manifest.get("version")
    if version in (1, 2):
        raise UnsafeFileError(f"{path}: a result written by an older fastdissect as a pickle, a format whose "
                              f"reading can run code: fastdissect no longer reads it; {RECREATE}")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: a fastdissect result of version {version!r}; this fastdissect reads version "
                         f"{FORMAT_VERSION}")
    name, digest = manifest.get("dissection"), manifest.get("blake2b")
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(SUFFIX):
        raise ValueError(f"{path}: \"dissection\" must name a {SUFFIX} file in this directory, got {name!r}")
    if not isinstance(digest, str):
        raise ValueError(f"{path}: \"blake2b\" must be a hex digest, got {digest!r}")
    return manifest


_FORMULA_TENSORS = ("iou", "intersection", "formula_area", "unit_area", "single_iou", "evaluated", "thresholds")


def _formulas_state(ex):
    """Formulas as compexp's text (parsed back by fd.Formula.parse) beside their exact counts."""
    if ex is None:
        return None
    text = lambda fs: [str(f) if f is not None else None for f in fs]  # noqa: E731
    return {"formulas": text(ex.formulas), "single": text(ex.single), "settings": dict(ex.settings),
            **{k: getattr(ex, k) for k in _FORMULA_TENSORS}}


def _formulas_from_state(state, where):
    if state is None:
        return None
    from ..engine.compositional import Formulas
    from ..core.formula import Formula

    state = check_fields(state, f"{where}, formulas", required=("formulas", "single", "settings", *_FORMULA_TENSORS),
                   tensors=_FORMULA_TENSORS)
    parse = lambda fs: [Formula.parse(f) if f is not None else None for f in fs]  # noqa: E731
    return Formulas(parse(state["formulas"]), state["iou"], state["intersection"], state["formula_area"],
                        state["unit_area"], parse(state["single"]), state["single_iou"], state["evaluated"],
                        state["thresholds"], state["settings"])


_SCORE_TENSORS = ("intersection", "union", "iou", "unit_area", "concept_area", "thresholds", "image_hits",
                  "concept_images")


def _scores_state(s: Scores | None):
    if s is None:
        return None
    return {**{k: getattr(s, k) for k in _SCORE_TENSORS}, "union_mode": s.union_mode, "num_images": s.num_images}


def _scores_from_state(state, where) -> Scores | None:
    if state is None:
        return None
    state = check_fields(state, f"{where}, scores", required=(*_SCORE_TENSORS, "union_mode", "num_images"),
                   tensors=_SCORE_TENSORS[:6], optional_tensors=_SCORE_TENSORS[6:])
    return Scores(**state)
