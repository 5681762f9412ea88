"""What `fd.dissect_images` returns: per layer, each unit's per-image scores, its metric against every
tag, its best tag with a Mann-Whitney p-value, and (with formula_length > 1) its best tag formula.
Saved as one tensor file (nothing read runs code) plus one CSV per layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.formula import Formula
from ..files import atomic, tensorfile

KIND = "image-dissection"
VERSION = 1


@dataclass
class ImageLayerResult:
    layer: str
    scores: torch.Tensor      # (N, K) float32: each unit's per-image score (max or mean over positions)
    values: torch.Tensor      # (K, C) float64: the metric of every unit and tag
    p_values: torch.Tensor    # (K,) one-sided Mann-Whitney p of the unit's best tag
    metric: str
    tag_names: list[str]
    formulas: list = field(default_factory=list)        # per unit: Formula or None (formula_length > 1)
    formula_values: torch.Tensor | None = None          # (K,)

    @property
    def num_units(self) -> int:
        return self.values.shape[0]

    @property
    def best(self) -> torch.Tensor:
        """(K,) each unit's best tag (NaN values never win; the lowest id on ties)."""
        return torch.nan_to_num(self.values, nan=-torch.inf).argmax(dim=1)

    @property
    def units(self) -> list[dict]:
        rows = []
        for k, c in enumerate(self.best.tolist()):
            row = {"unit": k, "label": self.tag_names[c], self.metric: float(self.values[k, c]),
                   "p_value": float(self.p_values[k])}
            if self.formulas:
                f = self.formulas[k]
                row.update({"formula": f.to_str(self.tag_names) if f is not None else "",
                            "formula_ids": str(f) if f is not None else "",
                            f"formula_{self.metric}": float(self.formula_values[k])})
            rows.append(row)
        return rows

    def to_tree(self) -> dict:
        return {"layer": self.layer, "scores": self.scores, "values": self.values, "p_values": self.p_values,
                "metric": self.metric, "tag_names": self.tag_names,
                "formulas": [str(f) if f is not None else None for f in self.formulas],
                "formula_values": self.formula_values}

    @classmethod
    def from_tree(cls, t: dict, where) -> "ImageLayerResult":
        tensorfile.check_fields(t, where, required=("layer", "scores", "values", "p_values", "metric", "tag_names",
                                                    "formulas", "formula_values"),
                                tensors=("scores", "values", "p_values"), optional_tensors=("formula_values",))
        formulas = [Formula.parse(f) if f is not None else None for f in t["formulas"]]
        return cls(t["layer"], t["scores"], t["values"], t["p_values"], t["metric"], list(t["tag_names"]),
                   formulas, t["formula_values"])


class LayerResults(dict):
    """{layer: its result}, with the run's identity (model weights, data set, settings); one CSV of
    the units per layer, `<layer>-<csv_suffix>.csv`."""

    csv_suffix = "units"

    def __init__(self, layers: dict, identity: dict):
        super().__init__(layers)
        self.identity = identity

    def to_csv(self, directory) -> list[Path]:
        directory = atomic.make_dirs(directory)
        return [atomic.write_csv(directory / f"{name}-{self.csv_suffix}.csv", r.units) for name, r in self.items()]


class ImageDissection(LayerResults):
    """{layer: ImageLayerResult}: what `fd.dissect_images` returns."""

    csv_suffix = "images"

    def save(self, path) -> Path:
        path = Path(path)
        tree = {"version": VERSION, "identity": self.identity, "layers": {n: r.to_tree() for n, r in self.items()}}
        atomic.write_bytes(path, tensorfile.dumps(tree, kind=KIND))
        return path

    @classmethod
    def load(cls, path) -> "ImageDissection":
        path = Path(path)
        tree = tensorfile.check_fields(tensorfile.read(path, kind=KIND), path,
                                       required=("version", "identity", "layers"))
        if tree["version"] != VERSION:
            raise tensorfile.UnsafeFileError(f"{path}: image dissection format {tree['version']!r}, this version "
                                             f"reads {VERSION}")
        return cls({n: ImageLayerResult.from_tree(t, f"{path} ({n})") for n, t in tree["layers"].items()},
                   tree["identity"])
