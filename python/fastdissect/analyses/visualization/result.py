"""`Visualization`: the optimised images of a layer's units, their objective per step, the settings.

Saved as one PNG per image and a JSON manifest (nothing read back runs code):

>>> import numpy as np, tempfile
>>> from fastdissect.analyses.visualization.result import Visualization
>>> v = Visualization("conv", "channel", [3], np.zeros((1, 1, 8, 8, 3), np.uint8), np.zeros((1, 1, 2)),
...                   np.zeros((1, 1)), {"steps": 2})
>>> d = v.save(tempfile.mkdtemp() + "/vis")
>>> w = Visualization.load(d)
>>> w.units, w.images.shape, w.trace.shape
([3], (1, 8, 8, 3), (1, 2))
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ...files.atomic import directory_in_place, image_bytes, write_new
from ...report.draw import pyplot

FORMAT, VERSION = "fastdissect-visualization", 1
MANIFEST = "visualization.json"
_NAME = re.compile(r"unit_-?\d+(_\d+)?\.png")  # the only file names a manifest may point to


class Visualization:
    """Images that maximise an objective on `layer`, one set of `images_per_unit` per unit.

    all_images: (U, n, S, S, 3) uint8; all_traces: (U, n, steps) float64, the objective of each image
    at each step (on that step's transformed image, before its update); all_values: (U, n) float64,
    the objective of each returned image as saved (uint8 / 255, no transform). images, trace and
    values are those of each unit's first image: (U, S, S, 3), (U, steps), (U,).
    """

    def __init__(self, layer: str, objective: str, units, all_images, all_traces, all_values, settings: dict):
        self.layer, self.objective, self.units = str(layer), str(objective), [int(u) for u in units]
        self.all_images = np.ascontiguousarray(all_images, dtype=np.uint8)
        self.all_traces = np.asarray(all_traces, dtype=np.float64)
        self.all_values = np.asarray(all_values, dtype=np.float64)
        self.settings = dict(settings)
        u, n = len(self.units), self.all_images.shape[1] if self.all_images.ndim == 5 else -1
        if self.all_images.ndim != 5 or self.all_images.shape[0] != u or self.all_images.shape[4] != 3 \
                or self.all_traces.shape[:2] != (u, n) or self.all_values.shape != (u, n):
            raise ValueError(f"a Visualization of {u} units needs (U, n, S, S, 3) images, (U, n, steps) traces and "
                             f"(U, n) values, got {self.all_images.shape}, {self.all_traces.shape}, "
                             f"{self.all_values.shape}")

    images = property(lambda self: self.all_images[:, 0], doc="(U, S, S, 3) uint8: each unit's first image")
    trace = property(lambda self: self.all_traces[:, 0], doc="(U, steps) float64: its objective per step")
    values = property(lambda self: self.all_values[:, 0], doc="(U,) float64: its returned image's objective")
    images_per_unit = property(lambda self: self.all_images.shape[1])
    size = property(lambda self: self.all_images.shape[2])

    def __len__(self) -> int:
        return len(self.units)

    def __repr__(self) -> str:
        return (f"Visualization({self.layer!r}, {self.objective!r}, {len(self.units)} units x {self.images_per_unit} "
                f"image(s) of {self.size} px)")

    def image(self, unit: int, index: int = 0) -> np.ndarray:
        """(S, S, 3) uint8: image `index` of unit `unit` (a unit id, not a position)."""
        if unit not in self.units:
            raise KeyError(f"unit {unit} was not visualised (units: {self.units})")
        return self.all_images[self.units.index(unit), index]

    def file_names(self) -> list[list[str]]:
        n = self.images_per_unit
        return [[f"unit_{u}.png" if n == 1 else f"unit_{u}_{j}.png" for j in range(n)] for u in self.units]

    def save(self, directory) -> Path:
        """Writes `directory` (replaced whole, atomically): the PNGs and visualization.json."""
        from PIL import Image

        directory = Path(directory)
        names = self.file_names()
        manifest = {"format": FORMAT, "version": VERSION, "layer": self.layer, "objective": self.objective,
                    "units": self.units, "files": names, "traces": self.all_traces.tolist(),
                    "values": self.all_values.tolist(), "settings": self.settings}
        with directory_in_place(directory) as fresh:
            for row, files in zip(self.all_images, names):
                for image, name in zip(row, files):
                    write_new(fresh / name, image_bytes(Image.fromarray(image), ".png"))
            write_new(fresh / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))
        return directory

    @classmethod
    def load(cls, directory) -> "Visualization":
        """Reads what `save` wrote (JSON and PNG only)."""
        directory = Path(directory)
        try:
            manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{directory} holds no readable {MANIFEST} ({exc})") from None
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ValueError(f"{directory / MANIFEST} is not a {FORMAT} version {VERSION} manifest")
        images = np.stack([np.stack([_read_png(directory, name) for name in files]) for files in manifest["files"]])
        return cls(manifest["layer"], manifest["objective"], manifest["units"], images, manifest["traces"],
                   manifest["values"], manifest["settings"])

    def figure(self, path=None, *, columns: int = 8):
        """A grid of each unit's first image, titled by unit id and objective value; saved to `path`
        (PNG) when given. Returns the matplotlib figure."""
        from ...files.atomic import save_figure

        plt = pyplot()
        columns = max(1, min(columns, len(self.units)))
        rows = -(-len(self.units) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), dpi=110, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, unit, image, value in zip(axes.flat, self.units, self.images, self.values):
            ax.imshow(image)
            ax.set_title(f"unit {unit}: {value:.3g}", fontsize=8)
        fig.suptitle(f"{self.layer}, objective {self.objective}", fontsize=9)
        fig.tight_layout()
        if path is not None:
            save_figure(fig, path)
            plt.close(fig)
        return fig


def _read_png(directory: Path, name: str) -> np.ndarray:
    from PIL import Image

    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{directory / MANIFEST} names a file {name!r} that is not a unit's PNG")
    with Image.open(directory / name) as image:
        if image.format != "PNG" or image.mode != "RGB":
            raise ValueError(f"{directory / name} is not an RGB PNG ({image.format}, {image.mode})")
        return np.asarray(image).copy()
