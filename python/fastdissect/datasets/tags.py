"""Data sets of images with image-level tags (no masks): `ImageTags`, read from a folder per class
(`from_image_folder`), a CSV of images and tags (`from_tags_csv`), or any concept data set, whose
concepts present anywhere in an image become its tags (`tags_of`, COCO's categories per image too).

An `ImageTags` has `image(i)` (the (H, W, 3) uint8 image as stored), `tags` ((N, C) bool), `tag_names`
and `sources` (where each image came from, for messages and the report). It is what
`fd.dissect_images` labels units from.

>>> import numpy as np, fastdissect as fd
>>> images = [np.zeros((8, 8, 3), np.uint8)] * 3
>>> t = fd.datasets.ImageTags(images, [["dog"], ["dog", "grass"], []])
>>> t.tag_names, t.tags.int().tolist()
(['dog', 'grass'], [[1, 0], [1, 1], [0, 0]])
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core import validate
from .broden import MAX_PIXELS, DatasetError, check_inside, load_image, read_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageTags:
    """Images with image-level tags: `images` arrays or files, `tags` one list of tag names per image."""

    def __init__(self, images: Sequence, tags: Sequence[Sequence[str]], *, tag_names: Sequence[str] | None = None,
                 sources: Sequence[str] | None = None, max_pixels: int | None = MAX_PIXELS):
        if len(images) != len(tags):
            raise ValueError(f"{len(images)} images but {len(tags)} tag lists: give one list per image")
        if len(images) == 0:
            raise ValueError("no images: an ImageTags data set needs at least one image")
        self.images, self.max_pixels = list(images), max_pixels
        self.sources = list(sources) if sources is not None else [f"image {i}" for i in range(len(images))]
        names = list(tag_names) if tag_names is not None else list(dict.fromkeys(t for ts in tags for t in ts))
        if len(set(names)) != len(names):
            raise ValueError(f"tag_names lists a tag twice: {sorted({n for n in names if names.count(n) > 1})}")
        index = {n: j for j, n in enumerate(names)}
        self.tags = torch.zeros(len(images), len(names), dtype=torch.bool)
        for i, ts in enumerate(tags):
            for t in ts:
                if t not in index:
                    raise ValueError(f"{self.sources[i]}: tag {t!r} is not in tag_names")
                self.tags[i, index[t]] = True
        self.tag_names = names

    @classmethod
    def from_matrix(cls, images, tags: torch.Tensor, tag_names: Sequence[str], sources: Sequence[str],
                    max_pixels: int | None = MAX_PIXELS) -> "ImageTags":
        """An ImageTags from an (N, C) bool tag matrix (images: any indexable of arrays or files)."""
        if tags.dtype != torch.bool or tags.dim() != 2 or tags.shape != (len(images), len(tag_names)):
            raise ValueError(f"tags must be a ({len(images)}, {len(tag_names)}) bool matrix, got "
                             f"{tags.dtype} {tuple(tags.shape)}")
        out = cls.__new__(cls)
        out.images, out.tags, out.tag_names = images, tags, list(tag_names)
        out.sources, out.max_pixels = list(sources), max_pixels
        return out

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_tags(self) -> int:
        return len(self.tag_names)

    def image(self, i: int) -> np.ndarray:
        im = self.images[i]
        if isinstance(im, (str, Path)):
            return load_image(Path(im), self.sources[i], max_pixels=self.max_pixels)
        im = np.asarray(im)
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise ValueError(f"{self.sources[i]}: expected an (H, W, 3) uint8 image, got {im.dtype} {im.shape}")
        return im

    def fingerprint(self) -> dict:
        """What a result records of the data set: its size, tags and sources (files by name)."""
        from ..files.atomic import digest

        text = "\0".join(self.tag_names) + "\1" + "\0".join(self.sources)
        return {"kind": "ImageTags", "images": len(self), "tags": digest(text.encode() + self.tags.numpy().tobytes())}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def from_image_folder(directory, *, max_pixels: int | None = MAX_PIXELS) -> ImageTags:
    """A folder per class (ImageNet's and torchvision's ImageFolder layout): each image is tagged with
    its folder's name."""
    root = Path(directory)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory (expected one sub-directory of images per class)")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{root}: no class sub-directories (expected {root}/<class>/<image>.jpg ...)")
    images, tags, sources = [], [], []
    for folder in classes:
        files = _image_files(folder)
        if not files:
            raise DatasetError(f"{folder}: class {folder.name!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        images += files
        tags += [[folder.name]] * len(files)
        sources += [str(f) for f in files]
    return ImageTags(images, tags, tag_names=[c.name for c in classes], sources=sources, max_pixels=max_pixels)


def from_tags_csv(path, images_dir, *, tag_names: Sequence[str] | None = None, separator: str = ";",
                  follow_symlinks: bool = False, max_pixels: int | None = MAX_PIXELS) -> ImageTags:
    """A CSV with a header `image,tags`: an image path under `images_dir` and its tags, `separator`-
    separated (an empty cell: no tag). tag_names fixes the vocabulary (an unknown tag is refused)."""
    path, root = Path(path), Path(images_dir)
    validate.choice(separator, "separator", (";", "|", " ", ","))
    rows = list(csv.reader(read_text(path).splitlines()))
    if not rows or [c.strip() for c in rows[0][:2]] != ["image", "tags"]:
        raise DatasetError(f"{path}, line 1: expected the header 'image,tags', got {rows[0] if rows else 'nothing'}")
    images, tags, sources, seen = [], [], [], {}
    for line, row in enumerate(rows[1:], start=2):
        where = f"{path}, line {line}"
        if not row:
            continue
        if len(row) != 2:
            raise DatasetError(f"{where}: expected 2 cells (image, tags), got {len(row)}")
        name, cell = row[0].strip(), row[1].strip()
        check_inside(root, name, where, follow_symlinks=follow_symlinks, what=f"the images directory {root}")
        if name in seen:
            raise DatasetError(f"{where}: image {name!r} is listed twice (first on line {seen[name]})")
        seen[name] = line
        if not (root / name).is_file():
            raise DatasetError(f"{where}: image file {root / name} not found")
        names = [t.strip() for t in cell.split(separator)] if cell else []
        if any(not t for t in names):
            raise DatasetError(f"{where}: an empty tag in {cell!r} (two separators in a row?)")
        if tag_names is not None and any(t not in tag_names for t in names):
            raise DatasetError(f"{where}: tag {next(t for t in names if t not in tag_names)!r} is not in tag_names")
        images.append(root / name)
        tags.append(names)
        sources.append(where)
    if not images:
        raise DatasetError(f"{path}: no images listed")
    return ImageTags(images, tags, tag_names=tag_names, sources=sources, max_pixels=max_pixels)


def tags_of(dataset, *, verbose: bool = True) -> ImageTags:
    """A concept data set (Broden, the built-in set, COCO, your SegmentationDataset) as image tags: a
    concept present in any pixel of an image, or as its image-level label, is a tag of the image.
    Reads every image's labels once (with a progress bar), without the image where the data set can
    (`concept_ids_of`: a Broden decodes only its label files, a packed store nothing)."""
    from tqdm.auto import tqdm

    n, c = len(dataset), dataset.num_concepts
    tags = torch.zeros(n, c, dtype=torch.bool)
    for i in tqdm(range(n), desc="tags from labels", unit="img", disable=not verbose):
        tags[i, _concept_ids(dataset, i)] = True
    tags[:, 0] = False  # 0 is "unlabeled", never a tag
    return ImageTags.from_matrix(_ImagesOf(dataset), tags, list(dataset.concept_names),
                                 [f"image {i} of the data set" for i in range(n)])


def _concept_ids(dataset, i: int) -> list[int]:
    if callable(getattr(dataset, "concept_ids_of", None)):
        return dataset.concept_ids_of(i)
    s = dataset[i]
    return np.unique(np.asarray(s.labels)).astype(np.int64).tolist() + [int(t) for t in s.image_labels]


class _ImagesOf:
    """The images of a concept data set, indexable as ImageTags' `images`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> np.ndarray:
        d = self.dataset
        return d.image(i) if hasattr(d, "image") else d[i].image
