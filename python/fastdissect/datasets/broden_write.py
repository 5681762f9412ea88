"""`write_broden`: samples written as a Broden-layout directory (the layout: broden_index.py).

Each sample is an image file and one label PNG per non-empty plane (label number = R + 256 * G);
label.csv, category.csv and the c_<category>.csv files carry, per concept and category, the number
of images holding it (frequency) and its mean share of an image's pixels (coverage).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from .broden_index import INDEX_COLUMNS


def write_broden(root, samples, concept_names: Sequence[str], concept_categories: Sequence[Sequence[str]],
                 category_names: Sequence[str], *, split: str = "train", image_format: str = "png",
                 syns: Sequence[str] | None = None) -> Path:
    """Writes samples as a Broden-layout data set (used by the built-in set and custom adapters).

    samples: iterable of Sample carrying `plane_categories` (the category of each label plane) and
    `image_label_categories`; empty planes are not written.
    concept_names[c] / concept_categories[c]: name and categories of concept id c (id 0 = "-");
    syns[c]: label.csv's syns column (e.g. the name a concept had in its source data set).
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    C = len(concept_names)
    frequency = np.zeros((len(category_names), C), dtype=np.int64)   # images holding the concept
    pixels = np.zeros((len(category_names), C), dtype=np.float64)    # pixels holding it
    index_rows = [_write_sample(root, s, split, image_format, category_names, frequency, pixels) for s in samples]
    n = max(len(index_rows), 1)
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(INDEX_COLUMNS) + list(category_names))
        w.writerows(index_rows)
    _write_labels(root, concept_names, concept_categories, category_names, frequency, pixels, n, syns)
    _write_categories(root, concept_names, concept_categories, category_names, frequency, pixels, n)
    return root


def _write_sample(root: Path, s, split: str, image_format: str, category_names: Sequence[str],
                  frequency: np.ndarray, pixels: np.ndarray) -> list:
    """Writes sample s's image and label PNGs, adds its concepts to frequency and pixels (category x
    concept, in place) and returns its index.csv row."""
    from PIL import Image

    cat_index = {c: i for i, c in enumerate(category_names)}
    name = f"{split}_{s.index:06d}"
    image_file = f"{name}.{image_format}"
    Image.fromarray(s.image).save(root / "images" / image_file)
    cells = {c: [] for c in category_names}
    sh, sw = s.labels.shape[1:]
    for p, (plane, cat) in enumerate(zip(s.labels, s.plane_categories)):
        if not plane.any():
            continue
        png = f"{name}_{cat}_{p}.png"
        rgb = np.zeros(plane.shape + (3,), dtype=np.uint8)
        rgb[..., 0], rgb[..., 1] = plane % 256, plane // 256
        Image.fromarray(rgb).save(root / "images" / png)
        cells[cat].append(png)
        ids, counts = np.unique(plane[plane > 0], return_counts=True)
        frequency[cat_index[cat], ids] += 1
        pixels[cat_index[cat], ids] += counts / float(sh * sw)
    for label, cat in zip(s.image_labels, s.image_label_categories):
        cells[cat].append(str(label))
        frequency[cat_index[cat], label] += 1
        pixels[cat_index[cat], label] += 1.0
    ih, iw = s.image.shape[:2]
    return [image_file, split, ih, iw, sh, sw] + [";".join(cells[c]) for c in category_names]


def _write_labels(root: Path, concept_names, concept_categories, category_names, frequency, pixels, n: int,
                  syns) -> None:
    """label.csv; a concept's coverage is its pixels over every category, over the n images."""
    cat_index = {c: i for i, c in enumerate(category_names)}
    with open(root / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        w.writerow([0, "-", "", 0, 0, ""])
        for c in range(1, len(concept_names)):
            cats = ";".join(f"{k}({frequency[cat_index[k], c]})" for k in concept_categories[c])
            w.writerow([c, concept_names[c], cats, int(frequency[:, c].sum()), f"{pixels[:, c].sum() / n:.6g}",
                        syns[c] if syns is not None else ""])


def _write_categories(root: Path, concept_names, concept_categories, category_names, frequency, pixels,
                      n: int) -> None:
    """category.csv and one c_<category>.csv per category (coverage: the category's pixels over n images)."""
    with open(root / "category.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "first", "last", "count", "frequency"])
        for k, cat in enumerate(category_names):
            ids = [c for c in range(1, len(concept_names)) if cat in concept_categories[c]]
            w.writerow([cat, min(ids, default=0), max(ids, default=0), len(ids), int(frequency[k].sum())])
            with open(root / f"c_{cat}.csv", "w", newline="") as g:
                cw = csv.writer(g)
                cw.writerow(["code", "number", "name", "frequency", "coverage"])
                for code, c in enumerate(ids, start=1):
                    cw.writerow([code, c, concept_names[c], int(frequency[k, c]), f"{pixels[k, c] / n:.6g}"])
