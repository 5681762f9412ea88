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

from .reading import MAX_PIXELS, DatasetError, check_inside, check_max_pixels, check_pixels, decode_image
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
    def __init__(self, images, by_image, ids, root: Path, label_size, annotations: Path, max_pixels):
        self.images, self.by_image, self.ids, self.root, self.label_size = images, by_image, ids, root, label_size
        self.annotations, self.max_pixels = annotations, max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        info = self.images[i]
        path = self.root / info["file_name"]
        where = f"{self.annotations}, image {info['id']}"
        image = decode_image(path, where, f"image {path}", lambda im: np.asarray(im.convert("RGB")),
                             max_pixels=self.max_pixels)
        h, w = int(info.get("height", image.shape[0])), int(info.get("width", image.shape[1]))
        masks: dict[int, np.ndarray] = {}
        for n, ann in self.by_image.get(info["id"], []):
            m = self._mask(ann, h, w, f"{where} ({info['file_name']}), {_named(ann, n)}")
            if m is not None:
                c = self.ids[ann["category_id"]]
                masks[c] = masks.get(c, np.zeros((h, w), bool)) | m
        sh, sw = self.label_size
        planes = np.zeros((max(1, len(masks)), sh, sw), dtype=np.int64)
        for p, (c, m) in enumerate(sorted(masks.items())):
            small = np.asarray(Image.fromarray(m.astype(np.uint8)).resize((sw, sh), Image.NEAREST), dtype=bool)
            planes[p][small] = c
        return image, planes

    @staticmethod
    def _mask(ann: dict, h: int, w: int, where: str) -> np.ndarray | None:
        """The annotation's (h, w) mask, None without a segmentation; a malformed one is named."""
        try:
            return _segmentation(ann.get("segmentation"), h, w)
        except DatasetError as exc:
            raise DatasetError(f"{where}: {exc}") from None
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise DatasetError(f"{where}: malformed segmentation ({type(exc).__name__}: {exc})") from None


def _segmentation(seg, h: int, w: int) -> np.ndarray | None:
    if isinstance(seg, list):
        return polygons_mask(seg, h, w)
    if not isinstance(seg, dict):
        return None
    size = tuple(int(v) for v in seg["size"])
    if size != (h, w):  # checked before decoding: the size alone says how much it allocates
        raise DatasetError(f"its RLE mask is {'x'.join(map(str, size))}, the image is {h}x{w}")
    return decode_rle(seg)


def _named(ann, n: int) -> str:
    """An annotation as messages name it: by its position in the file and by its id, if it has one."""
    ident = ann.get("id")
    return f"annotation {n}" + (f" (id {ident})" if ident is not None else "")


def _check_images(infos, images: Path, annotations: Path, max_pixels, follow_symlinks: bool) -> None:
    """Every image entry has an id and a file_name inside the image directory, of a size within
    max_pixels (masks are drawn at that size): checked before anything is opened."""
    for n, info in enumerate(infos):
        if not isinstance(info, dict) or "id" not in info or not isinstance(info.get("file_name"), str):
            raise DatasetError(f"{annotations}: image entry {n} lacks an 'id' or a 'file_name'")
        where = f"{annotations}, image {info['id']}"
        check_inside(images, info["file_name"], where, follow_symlinks=follow_symlinks,
                     what="the image directory")
        try:
            h, w = int(info.get("height", 1)), int(info.get("width", 1))
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: height and width must be integers") from None
        check_pixels(h, w, where, "the image (height x width)", max_pixels)


def _by_image(anns, ids: dict, image_ids: set, annotations: Path) -> dict:
    by_image: dict = {}
    for n, ann in enumerate(anns):
        if not isinstance(ann, dict):
            raise DatasetError(f"{annotations}: annotation {n} is not a JSON object")
        if ann.get("category_id") not in ids:
            raise DatasetError(f"{annotations}: {_named(ann, n)} has category_id {ann.get('category_id')}, which "
                               "no category lists")
        if ann.get("image_id") not in image_ids:  # it would be dropped unseen
            raise DatasetError(f"{annotations}: {_named(ann, n)} has image_id {ann.get('image_id')!r}, which no "
                               "image lists")
        by_image.setdefault(ann["image_id"], []).append((n, ann))
    return by_image


def from_coco(annotations, images, *, label_size=(112, 112), category: str = "object",
              max_pixels: int | None = MAX_PIXELS, follow_symlinks: bool = False) -> SegmentationDataset:
    """A concept data set from a COCO-style annotation JSON and its image directory.
    Every `file_name` must stay inside `images` (no '..', no absolute path, no symlink out unless
    follow_symlinks=True); max_pixels: the most pixels an image may have (its header and the JSON's
    height x width), larger ones refused before decoding (default 2**26; None: no limit)."""
    annotations, images = Path(annotations), Path(images)
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
        cats = sorted(data["categories"], key=lambda c: c["id"])
        infos = list(data["images"])
        anns = list(data.get("annotations", []))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{annotations}: not a COCO annotation file ({type(exc).__name__}: {exc})") from None
    max_pixels = check_max_pixels(max_pixels)
    _check_images(infos, images, annotations, max_pixels, follow_symlinks)
    ids = {c["id"]: i + 1 for i, c in enumerate(cats)}
    by_image = _by_image(anns, ids, {info["id"] for info in infos}, annotations)
    names = ["-"] + [str(c["name"]) for c in cats]
    return SegmentationDataset(_CocoSamples(infos, by_image, ids, images, tuple(label_size), annotations, max_pixels),
                               names, [""] + [category] * len(cats))


__all__ = ["decode_rle", "from_coco", "rle_counts"]
