"""The Broden layout read (`Broden`) and written (`write_broden`, in broden_write.py).

The layout's files and their checks are in broden_index.py; what every reader checks before it
trusts a file (DatasetError, the pixel limit, decoding) in reading.py. The names other modules have
always taken from here (DatasetError, MAX_PIXELS, the decoders, read_csv, INDEX_COLUMNS,
write_broden) are handed on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .broden_index import INDEX_COLUMNS, primary_categories, read_categories, read_index, read_label_names
from .broden_write import write_broden
from .reading import (MAX_PIXELS, DatasetError, check_inside, check_max_pixels, check_pixels, decode_image,
                      decode_label_png, load_image, read_csv, read_text)
from .sample import Sample

__all__ = ["INDEX_COLUMNS", "MAX_PIXELS", "Broden", "DatasetError", "check_inside", "check_max_pixels", "check_pixels",
           "concept_id", "decode_image", "decode_label_png", "load_image", "read_csv", "read_text", "write_broden"]


def concept_id(names, concept) -> int:
    import difflib

    if isinstance(concept, (int, np.integer)) and not isinstance(concept, bool):
        if not 0 < int(concept) < len(names):
            raise ValueError(f"concept id {concept} is not in 1..{len(names) - 1}")
        return int(concept)
    if concept in names[1:]:
        return names.index(concept, 1)
    close = difflib.get_close_matches(str(concept), names[1:], n=3)
    raise ValueError(f"no concept {concept!r}" + (f"; did you mean {', '.join(map(repr, close))}?" if close else ""))


class Broden:
    """A Broden-layout data set, read as NetDissect and NetDissect-Lite read it.

    root: the directory holding index.csv, label.csv, category.csv, c_<category>.csv and images/.
    categories: the categories to read (default: all of category.csv). split: "train"/"val"/None.
    `dataset[i]` is a `Sample` with the image as stored and every label plane of the selected pixel
    categories at the segmentation size (sh x sw), zero-padded to `num_planes` planes; image-level
    labels as ids. Label number 0 is "unlabeled": image-level label 0 is dropped (NetDissect-Lite
    counts it as a concept; fastdissect.compat reproduces that), pixel label 0 is background.
    max_pixels: the most pixels an image or label file (its header, and index.csv's sizes) may have;
    larger ones are refused before decoding (default MAX_PIXELS = 2**26, 8192 x 8192; None: no limit).
    Picklable, so it works in DataLoader workers.
    """

    def __init__(self, root, categories: Sequence[str] | None = None, split: str | None = None, *,
                 follow_symlinks: bool = False, max_pixels: int | None = MAX_PIXELS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: Broden directory not found")
        self.follow_symlinks = follow_symlinks
        self.max_pixels = check_max_pixels(max_pixels)
        self.category_names = read_categories(self.root)
        if categories is None:
            categories = list(self.category_names)
        unknown = [c for c in categories if c not in self.category_names]
        if unknown:
            raise DatasetError(f"{self.root / 'category.csv'}: unknown categories {unknown}; it lists "
                               f"{self.category_names}")
        if len(set(categories)) != len(categories):  # each plane would be read, and counted, twice
            raise ValueError(f"categories lists a category twice: {list(categories)}")
        self.categories = list(categories)
        self._read_labels()
        self.records, self.label_size, self.num_planes = read_index(
            self.root, self.categories, self._known, split, follow_symlinks=follow_symlinks,
            max_pixels=self.max_pixels)

    def _read_labels(self) -> None:
        """Concept names by id (label.csv; ids it skips are named ""), which ids it lists, and each
        concept's primary category (the c_<category>.csv files)."""
        names = read_label_names(self.root)
        self.num_concepts = max(names) + 1 if names else 1
        self.concept_names = [names.get(i, "") for i in range(self.num_concepts)]
        self.concept_names[0] = self.concept_names[0] or "-"
        self._known = np.zeros(self.num_concepts, dtype=bool)
        self._known[list(names)] = True
        self._known[0] = True
        self.primary_category = primary_categories(self.root, self.category_names, self._known)

    # ---- access
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self.records):
            raise IndexError(f"image {i} out of range for {len(self.records)} images")
        r = self.records[i]
        return Sample(self.image(i), self.labels(i), self.image_labels(i), i, list(r["plane_categories"]),
                      list(r["image_label_categories"]))

    def image(self, i: int) -> np.ndarray:
        """(ih, iw, 3) uint8 image i, without decoding its labels."""
        r = self.records[i]
        where = f"{self.root / 'index.csv'}, row {r['line']}"
        image = load_image(self.root / "images" / r["image"], where, max_pixels=self.max_pixels)
        if image.shape[:2] != (r["ih"], r["iw"]):
            raise DatasetError(f"{where}: image {r['image']} is {image.shape[0]}x{image.shape[1]}, index.csv says "
                               f"{r['ih']}x{r['iw']}")
        return image

    def labels(self, i: int) -> np.ndarray:
        """(num_planes, sh, sw) int64 label planes of image i (decoded without the image)."""
        r = self.records[i]
        where = f"{self.root / 'index.csv'}, row {r['line']}"
        sh, sw = self.label_size
        labels = np.zeros((self.num_planes, sh, sw), dtype=np.int64)
        for p, name in enumerate(r["files"]):
            plane = decode_label_png(self.root / "images" / name, where, max_pixels=self.max_pixels)
            if plane.shape != (sh, sw):
                raise DatasetError(f"{where}: label file {name} is {plane.shape[0]}x{plane.shape[1]}, "
                                   f"index.csv says {sh}x{sw}")
            unknown = plane >= self.num_concepts
            if not unknown.any():
                unknown = ~self._known[plane]
            if unknown.any():
                raise DatasetError(f"{where}: label file {name} holds label {int(plane[unknown][0])}, which is "
                                   "not in label.csv")
            labels[p] = plane
        return labels

    def image_path(self, i: int) -> Path:
        return self.root / "images" / self.records[i]["image"]

    # ---- which images hold what
    def concept_id(self, concept) -> int:
        """A concept's id from its name or id (ValueError naming close names if unknown)."""
        return concept_id(self.concept_names, concept)

    def image_labels(self, i: int) -> list[int]:
        """The ids of image i's image-level concepts (scenes, ...), from the index alone."""
        return list(self.records[i]["image_labels"])

    def concept_ids_of(self, i: int) -> list[int]:
        """The ids of the concepts image i holds (label planes and image-level labels), ascending,
        0 ("unlabeled") left out; the image itself is not decoded."""
        ids = set(np.unique(self.labels(i)).tolist()) | set(self.image_labels(i))
        return sorted(ids - {0})

    def concepts_of(self, i: int) -> list[str]:
        """The names of the concepts image i holds (label planes and image-level labels), by id."""
        return [self.concept_names[c] for c in self.concept_ids_of(i)]

    def images_with(self, concept, *, verbose: bool = True) -> list[int]:
        """The images holding `concept` (a name or an id). The first call decodes every image's labels
        once (a progress bar) and keeps an index of (image, concept) pairs for later calls; a packed
        store (fd.datasets.open_packed) answers from its entries without decoding."""
        c = self.concept_id(concept)
        if getattr(self, "_holders", None) is None:
            from tqdm.auto import tqdm

            holders: dict[int, list[int]] = {}
            for i in tqdm(range(len(self)), desc="indexing concepts", unit="img", disable=not verbose):
                for cid in self.concept_ids_of(i):
                    holders.setdefault(cid, []).append(i)
            self._holders = holders
        return list(self._holders.get(c, []))

    def fingerprint(self) -> dict:
        """The content identity of what this object reads (for checkpoints and results)."""
        if getattr(self, "_fingerprint", None) is None:
            from ..files.identity import broden_fingerprint

            csvs = ["index.csv", "label.csv", "category.csv"] + [f"c_{c}.csv" for c in self.category_names]
            files = [name for r in self.records for name in [r["image"], *r["files"]]]
            self._fingerprint = {**broden_fingerprint(self.root, csvs, files), "categories": list(self.categories)}
        return self._fingerprint
