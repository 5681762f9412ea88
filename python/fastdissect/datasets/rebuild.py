"""A Broden-layout data set at another image size (32 for CIFAR models, 64, 448, ...).

Images are resized with Pillow's antialiased bicubic filter, label PNGs with nearest neighbour (a
label number is never blended), the segmentation size scales with the images (Broden's labels are at
half the image size: 224 -> 112, so 32 -> 16), and index.csv gets the new sizes; label.csv,
category.csv and c_<category>.csv are copied. The new data set is written into a temporary
directory beside `out` and renamed into place once complete: an interruption leaves no half data set.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from pathlib import Path

from .broden import Broden
from .reading import MAX_PIXELS, DatasetError, decode_image


def rebuild(source, size: int, out, *, verbose: bool = True, max_pixels: int | None = MAX_PIXELS) -> Path:
    """Writes the Broden data set at `source` with square images of `size` px into `out`.
    max_pixels: as Broden's (files of more pixels are refused before decoding)."""
    from PIL import Image
    from tqdm.auto import tqdm

    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    ds = Broden(source, max_pixels=max_pixels)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: rebuild writes a new directory")
    ih, sh = ds.records[0]["ih"], ds.label_size[0]
    label_side = max(1, round(size * sh / ih))
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        (tmp / "images").mkdir()
        for name in ["label.csv", "category.csv"] + [f"c_{c}.csv" for c in ds.category_names]:
            if (ds.root / name).is_file():
                shutil.copyfile(ds.root / name, tmp / name)
        header, rows = _read_index(ds.root / "index.csv")
        col = {n: i for i, n in enumerate(header)}
        by_line = {r["line"]: i for i, r in enumerate(ds.records)}
        for line, row in tqdm(list(enumerate(rows, start=2)), desc=f"rebuilding at {size} px", unit="img",
                              disable=not verbose):
            if line not in by_line:
                continue
            r = ds.records[by_line[line]]
            where = f"{ds.root / 'index.csv'}, row {line}"
            for name, side, how in [(r["image"], size, Image.BICUBIC),
                                    *((name, label_side, Image.NEAREST) for name in r["files"])]:
                what = f"{'image' if name == r['image'] else 'label file'} {ds.root / 'images' / name}"
                small = decode_image(ds.root / "images" / name, where, what,
                                     lambda im: im.convert("RGB").resize((side, side), how), max_pixels=max_pixels)
                _save(small, tmp / "images" / name)
            row[col["ih"]], row[col["iw"]] = str(size), str(size)
            row[col["sh"]], row[col["sw"]] = str(label_side), str(label_side)
        with open(tmp / "index.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(row for line, row in enumerate(rows, start=2) if line in by_line)
        Broden(tmp, max_pixels=max_pixels)  # it must open before it takes the name
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _read_index(path: Path):
    from .reading import read_csv

    header, rows = read_csv(path)
    return header, [list(r) for r in rows]


def _save(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    path.write_bytes(buffer.getvalue())


__all__ = ["rebuild", "DatasetError"]
