"""Users' own segmentation data as a concept data set."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .reading import MAX_PIXELS, DatasetError, check_max_pixels, decode_image, read_text
from .sample import Sample


class SegmentationDataset:
    """Any sequence of (image, label_map) or (image, label_map, image_labels) as a concept data set.

    image: (H, W, 3) uint8 array (or anything numpy.asarray turns into one, e.g. a PIL image).
    label_map: (sh, sw) or (P, sh, sw) integer concept ids per pixel, 0 = unlabeled; every image's
    labels must have the same sh x sw. image_labels: ids of whole-image concepts (scenes, textures).
    concept_names[c], concept_categories[c]: name and category of concept id c (entry 0 is ignored).

    >>> import numpy as np, fastdissect as fd
    >>> img = np.zeros((32, 32, 3), np.uint8); lab = np.zeros((16, 16), np.int64); lab[:8] = 1
    >>> ds = fd.datasets.SegmentationDataset([(img, lab, [2])], ["-", "sky", "beach"], ["", "object", "scene"])
    >>> s = ds[0]; s.labels.shape, s.image_labels, ds.category_names, ds.primary_category.tolist()
    ((1, 16, 16), [2], ['object', 'scene'], [0, 0, 1])
    """

    def __init__(self, samples: Sequence, concept_names: Sequence[str], concept_categories: Sequence[str]):
        if len(concept_names) != len(concept_categories):
            raise ValueError(f"concept_names has {len(concept_names)} entries but concept_categories has "
                             f"{len(concept_categories)}: give one category per concept id (entry 0 is ignored)")
        if len(concept_names) < 2:
            raise ValueError("concept_names must name at least one concept besides id 0 (unlabeled)")
        self.samples = samples
        self.num_concepts = len(concept_names)
        self.concept_names = ["-"] + [str(n) for n in concept_names[1:]]
        self.category_names = list(dict.fromkeys(str(c) for c in concept_categories[1:]))
        index = {c: i for i, c in enumerate(self.category_names)}
        self.primary_category = np.asarray([0] + [index[str(c)] for c in concept_categories[1:]], dtype=np.int64)
        self.label_size = None
        self.num_planes = None

    def __len__(self) -> int:
        return len(self.samples)

    def fingerprint(self) -> dict:
        """A hash of every sample's image and labels (computed on each call: the samples may change)."""
        from ..files.identity import samples_fingerprint

        return {"content": samples_fingerprint(self)}

    def image(self, i: int) -> np.ndarray:
        return self[i].image

    def __getitem__(self, i: int) -> Sample:
        item = self.samples[i]
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise DatasetError(f"sample {i}: expected (image, label_map) or (image, label_map, image_labels), "
                               f"got {type(item).__name__}")
        image = np.asarray(item[0])
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DatasetError(f"sample {i}: image must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
        labels = np.asarray(item[1])
        if labels.ndim == 2:
            labels = labels[None]
        if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(f"sample {i}: label_map must be (sh, sw) or (P, sh, sw) integers, got "
                               f"{labels.dtype} {labels.shape}")
        if self.label_size is None:
            self.label_size = labels.shape[1:]
        elif labels.shape[1:] != self.label_size:
            raise DatasetError(f"sample {i}: labels are {labels.shape[1]}x{labels.shape[2]}, earlier samples "
                               f"{self.label_size[0]}x{self.label_size[1]}")
        image_labels = [int(c) for c in (item[2] if len(item) == 3 else [])]
        for c in list(np.unique(labels)) + image_labels:
            if not 0 <= c < self.num_concepts:
                raise DatasetError(f"sample {i}: label id {c} is not a concept (ids are 0..{self.num_concepts - 1})")
        return Sample(image, labels.astype(np.int64), [c for c in image_labels if c != 0], i)


class _PairFiles:
    """(image, label map) pairs read from disk on access (a lazy sequence for SegmentationDataset)."""

    def __init__(self, pairs: list[tuple[Path, Path]], max_pixels: int | None = MAX_PIXELS):
        self.pairs, self.max_pixels = pairs, max_pixels

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        image_path, label_path = self.pairs[i]
        where = f"pair {i}"

        def label_map(lab):
            if lab.format != "PNG":
                raise DatasetError(f"{where}: {label_path} is a {lab.format} image, not a PNG label map")
            return np.asarray(lab if lab.mode in ("P", "L", "I", "I;16") else lab.convert("L")).astype(np.int64)

        image = decode_image(image_path, where, f"image {image_path}", lambda im: np.asarray(im.convert("RGB")),
                             max_pixels=self.max_pixels)
        return image, decode_image(label_path, where, f"label map {label_path}", label_map, max_pixels=self.max_pixels)


def from_label_pngs(images, labels, names, *, max_pixels: int | None = MAX_PIXELS) -> SegmentationDataset:
    """A concept data set from a directory of images and a directory of label PNGs with the same
    file stems (`images/0001.jpg` + `labels/0001.png`), each label pixel a class index (palette, 8- or
    16-bit grey; 0 = unlabeled), and a names file: one line per class id from 1, `name` or
    `name,category` (default category "object"), as VOC-, ADE- or Cityscapes-style exports come.
    max_pixels: the most pixels an image or label map may have; larger ones are refused before
    decoding (default 2**26; None: no limit)."""
    images, labels, names = Path(images), Path(labels), Path(names)
    for path in (images, labels):
        if not path.is_dir():
            raise DatasetError(f"{path}: directory not found")
    lines = [line.strip() for line in read_text(names).splitlines()]
    entries = [line.split(",", 1) for line in lines if line]
    concept_names = ["-"] + [e[0].strip() for e in entries]
    categories = [""] + [(e[1].strip() if len(e) > 1 else "object") for e in entries]
    label_files = {p.stem: p for p in labels.iterdir() if p.suffix.lower() == ".png"}
    pairs = []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        if image.stem not in label_files:
            raise DatasetError(f"{image}: no label PNG {image.stem}.png in {labels}")
        pairs.append((image, label_files[image.stem]))
    if not pairs:
        raise DatasetError(f"{images}: no .jpg or .png images")
    return SegmentationDataset(_PairFiles(pairs, check_max_pixels(max_pixels)), concept_names, categories)
