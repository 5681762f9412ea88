"""COCO-style instance annotations as a concept data set, without pycocotools.

Each category of the JSON becomes a concept (category "object" unless `category=` says otherwise);
each image's instances are rasterised (polygons with Pillow, RLE decoded here: uncompressed counts
and the compressed string form alike) at the image's size, merged per concept (crowd regions
included), resized to `label_size` with nearest neighbour, and given one label plane per concept
present, so overlapping instances of different concepts both count.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .broden import DatasetError
from .custom import SegmentationDataset


def rle_counts(counts) -> list[int]:
    """Run lengths from COCO's RLE `counts`: a list, or the compressed string (6-bit groups, the
    sign bit on the last group, and each count after the second a delta to the one two before)."""
    if isinstance(counts, list):
        return [int(c) for c in counts]
    out: list[int] = []
    data, p = counts.encode("ascii") if isinstance(counts, str) else counts, 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def decode_rle(rle: dict) -> np.ndarray:
    """(h, w) bool from {"size": [h, w], "counts": ...}; runs alternate 0s and 1s in column-major order."""
    h, w = (int(v) for v in rle["size"])
    flat = np.zeros(h * w, dtype=bool)
    pos, value = 0, False
    for run in rle_counts(rle["counts"]):
        if value:
            flat[pos:pos + run] = True
        pos += run
        value = not value
    if pos != h * w:
        raise DatasetError(f"an RLE mask covers {pos} pixels, its size says {h}x{w}")
    return flat.reshape(w, h).T


def polygons_mask(polygons, height: int, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if len(poly) >= 6:
            draw.polygon([(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)], fill=1)
    return np.asarray(canvas, dtype=bool)


class _CocoSamples:
    def __init__(self, images, by_image, ids, root: Path, label_size):
        self.images, self.by_image, self.ids, self.root, self.label_size = images, by_image, ids, root, label_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        info = self.images[i]
        path = self.root / info["file_name"]
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read image {info['id']} ({exc})") from None
        h, w = int(info.get("height", image.shape[0])), int(info.get("width", image.shape[1]))
        masks: dict[int, np.ndarray] = {}
        for ann in self.by_image.get(info["id"], []):
            seg = ann.get("segmentation")
            if isinstance(seg, list):
                m = polygons_mask(seg, h, w)
            elif isinstance(seg, dict):
                m = decode_rle(seg)
            else:
                continue
            c = self.ids[ann["category_id"]]
            masks[c] = masks.get(c, np.zeros((h, w), bool)) | m
        sh, sw = self.label_size
        planes = np.zeros((max(1, len(masks)), sh, sw), dtype=np.int64)
        for p, (c, m) in enumerate(sorted(masks.items())):
            small = np.asarray(Image.fromarray(m.astype(np.uint8)).resize((sw, sh), Image.NEAREST), dtype=bool)
            planes[p][small] = c
        return image, planes


def from_coco(annotations, images, *, label_size=(112, 112), category: str = "object") -> SegmentationDataset:
    """A concept data set from a COCO-style annotation JSON and its image directory."""
    annotations, images = Path(annotations), Path(images)
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
        cats = sorted(data["categories"], key=lambda c: c["id"])
        infos = list(data["images"])
        anns = list(data.get("annotations", []))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{annotations}: not a COCO annotation file ({type(exc).__name__}: {exc})") from None
    ids = {c["id"]: i + 1 for i, c in enumerate(cats)}
    by_image: dict = {}
    for n, ann in enumerate(anns):
        if ann.get("category_id") not in ids:
            raise DatasetError(f"{annotations}: annotation {n} has category_id {ann.get('category_id')}, which "
                               "no category lists")
        by_image.setdefault(ann["image_id"], []).append(ann)
    names = ["-"] + [str(c["name"]) for c in cats]
    return SegmentationDataset(_CocoSamples(infos, by_image, ids, images, tuple(label_size)), names,
                               [""] + [category] * len(cats))


__all__ = ["decode_rle", "from_coco", "rle_counts"]
