"""The Broden layout: read (`Broden`) and write (`write_broden`).

index.csv: image, split, ih, iw, sh, sw, then one column per category; cells are ';'-separated lists
of label PNG names (pixel categories, under images/) or integer label numbers (image-level ones).
Label PNGs hold the global label number as R + 256 * G. label.csv: number, name, category,
frequency, coverage, syns. category.csv: name, first, last, count, frequency (row order = category
order). c_<category>.csv: code, number, name, frequency, coverage.
"""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .sample import Sample

INDEX_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")


# Most pixels a file may have before it is decoded (8192 x 8192: above any camera's photograph, 1,300
# times Broden's 227 x 227; a label plane this size is 512 MB as int64). Below Pillow's own
# warning (89,478,485 pixels), so a header claiming 40,000 x 40,000 is refused here, by file and row.
MAX_PIXELS = 1 << 26


class DatasetError(ValueError):
    """A concept data set on disk is missing, malformed or inconsistent (the message names the file).

    A DataLoader worker's DatasetError reaches the main process re-created from torch's text
    "Caught DatasetError in DataLoader worker process N.\nOriginal Traceback ...\n<module>.DatasetError:
    <message>": the message is the worker's again and torch's text is kept as `worker_traceback`."""

    def __init__(self, message="", *args):
        message, self.worker_traceback = _unwrap_worker(type(self), message)
        super().__init__(message, *args)
        if self.worker_traceback:
            self.add_note(self.worker_traceback)  # a traceback printed in full still shows the worker's


def _unwrap_worker(cls, message) -> tuple:
    """(the worker's message, torch's whole text) of a message torch.utils.data re-raised, else (message, None)."""
    marker = f"\n{cls.__module__}.{cls.__qualname__}: "
    if not (isinstance(message, str) and message.startswith(f"Caught {cls.__name__} ") and marker in message):
        return message, None
    return message.rsplit(marker, 1)[1].rstrip("\n"), message


def check_max_pixels(max_pixels) -> int | None:
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive int or None (no limit), got {max_pixels!r}")
    return max_pixels


def check_pixels(height: int, width: int, where: str, what: str, max_pixels: int | None) -> None:
    """Refuses a file whose header (or index.csv) claims more than max_pixels pixels, before any decoding:
    a few bytes can claim 40,000 x 40,000 pixels and inflate to gigabytes."""
    if max_pixels is not None and height * width > max_pixels:
        raise DatasetError(f"{where}: {what} is {height}x{width} = {height * width:,} pixels, more than "
                           f"max_pixels={max_pixels:,}; refused before decoding (a damaged header or a "
                           "decompression bomb?); pass a larger max_pixels= to read it")


def decode_image(source, where: str, what: str, convert, *, max_pixels: int | None = MAX_PIXELS):
    """convert(im) of the image at `source` (a path or a seekable file object), its header's size
    checked first; `what` names it in messages ("image a.jpg"). Every failure is a DatasetError."""
    from PIL import Image

    try:
        with contextlib.ExitStack() as stack:
            f = stack.enter_context(open(source, "rb")) if isinstance(source, (str, os.PathLike)) else source
            size = _png_size(f)
            if size is not None:  # before Pillow, whose own limit is larger and would be named instead
                check_pixels(*size, where, what, max_pixels)
            im = stack.enter_context(Image.open(f))  # reads the header only
            check_pixels(im.height, im.width, where, what, max_pixels)
            return convert(im)
    except DatasetError:
        raise
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{where}: {what} is refused before decoding: {exc} (Pillow's limit, "
                           "PIL.Image.MAX_IMAGE_PIXELS)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DatasetError(f"{where}: cannot decode {what} ({exc})") from None


def _png_size(f) -> tuple[int, int] | None:
    """(h, w) from a PNG's IHDR (None for another kind of file), the file's position left as it was."""
    from .label_png import png_size

    start = f.tell()
    head = f.read(24)
    f.seek(start)
    return png_size(head)


def read_text(path: Path) -> str:
    """A UTF-8 text file (a BOM allowed); a missing file or another encoding is named by file and line."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DatasetError(f"{path}, line {line}: not UTF-8 text (byte {data[exc.start]:#04x}); save the file as "
                           "UTF-8") from None


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(read_text(path).splitlines()))
    if not rows:
        raise DatasetError(f"{path}: empty file (expected a header row)")
    return rows[0], rows[1:]


def decode_label_png(path: Path, where: str, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """(h, w) int64 label numbers R + 256 * G (decoded in int64: uint8 arithmetic would wrap).
    Broden's own kind of PNG (8-bit RGB/RGBA) is read by label_png, anything else by Pillow; either
    way the header's size is checked against max_pixels before anything is inflated."""
    import io

    from .label_png import LabelPngError, decode, png_size

    what = f"label file {path}"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise DatasetError(f"{where}: {what} not found") from None
    size = png_size(data)
    if size is not None:
        check_pixels(*size, where, what, max_pixels)
    try:
        labels = decode(data)
    except (LabelPngError, ValueError, OSError) as exc:
        raise DatasetError(f"{where}: cannot decode {what} ({exc})") from None
    if labels is not None:
        return labels

    def rgb(im):
        if im.format != "PNG":  # a lossy format would turn its pixels into made-up label numbers
            raise DatasetError(f"{where}: {what} is a {im.format or 'non-PNG'} image, not a PNG label image "
                               "(labels are R + 256 * G, stored losslessly)")
        return np.asarray(im.convert("RGB"))

    pixels = decode_image(io.BytesIO(data), where, what, rgb, max_pixels=max_pixels)
    return pixels[..., 0].astype(np.int64) + 256 * pixels[..., 1].astype(np.int64)


def load_image(path: Path, where: str, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{where}: image file {path} not found")
    return decode_image(path, where, f"image {path}", lambda im: np.asarray(im.convert("RGB")),
                        max_pixels=max_pixels)


def check_inside(directory: Path, name: str, where: str, *, follow_symlinks: bool = False,
                 what: str = "the data set's images/ directory") -> None:
    """A path a data set's file lists must name a file under `directory`: no absolute path, no '..' out
    of it, and (unless follow_symlinks) no symlink that leads out. Checked before anything is opened."""
    base = Path(directory).resolve()
    target = Path(name)
    if not name or target.is_absolute():
        raise DatasetError(f"{where}: {name!r} is not a path inside {what}")
    lexical = Path(os.path.normpath(base / target))
    if not lexical.is_relative_to(base):
        raise DatasetError(f"{where}: {name!r} is outside {what} ({base}); paths must stay inside it")
    if not follow_symlinks and not (base / target).resolve().is_relative_to(base):
        raise DatasetError(f"{where}: {name!r} leads out of {what} ({base}); pass follow_symlinks=True to allow "
                           "symlinks out")


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
        self._read_categories()
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
        self._read_index(split)

    # ---- metadata
    def _read_categories(self) -> None:
        """category.csv's names in row order, each once and each with its c_<category>.csv (which gives its
        concepts their primary category: without it they would silently fall to the first category)."""
        path = self.root / "category.csv"
        _, rows = read_csv(path)
        lines: dict[str, int] = {}
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if row[0] in lines:
                raise DatasetError(f"{path}: category {row[0]!r} is listed twice, rows {lines[row[0]]} and {line}")
            if not (self.root / f"c_{row[0]}.csv").is_file():
                raise DatasetError(f"{path}, row {line}: category {row[0]!r} has no {self.root / f'c_{row[0]}.csv'} "
                                   "(file not found)")
            lines[row[0]] = line
        if not lines:
            raise DatasetError(f"{path}: no categories (a header and no rows)")
        self.category_names = list(lines)

    def _read_labels(self) -> None:
        path = self.root / "label.csv"
        header, rows = read_csv(path)
        names: dict[int, str] = {}
        seen: dict[int, int] = {}
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            try:
                number, name = int(row[0]), row[1]
            except (ValueError, IndexError):
                raise DatasetError(f"{path}, row {line}: expected 'number,name,...', got {row}") from None
            if number < 0:
                raise DatasetError(f"{path}, row {line}: label number {number} is negative")
            if number in seen:
                raise DatasetError(f"{path}: label {number} is listed twice, rows {seen[number]} "
                                   f"({names[number]!r}) and {line} ({name!r})")
            names[number], seen[number] = name, line
        self.num_concepts = max(names) + 1 if names else 1
        self.concept_names = [names.get(i, "") for i in range(self.num_concepts)]
        self.concept_names[0] = self.concept_names[0] or "-"
        self._known = np.zeros(self.num_concepts, dtype=bool)
        self._known[list(names)] = True
        self._known[0] = True
        # Primary category: largest coverage over c_<category>.csv; ties go to the later category.
        best = np.full(self.num_concepts, -np.inf)
        self.primary_category = np.full(self.num_concepts, -1, dtype=np.int64)
        for cat_index, cat in enumerate(self.category_names):
            cpath = self.root / f"c_{cat}.csv"
            _, crows = read_csv(cpath)
            for line, row in enumerate(crows, start=2):
                if not row:
                    continue
                try:
                    number, coverage = int(row[1]), float(row[4])
                except (ValueError, IndexError):
                    raise DatasetError(f"{cpath}, row {line}: expected 'code,number,name,frequency,coverage', "
                                       f"got {row}") from None
                if not 0 <= number < self.num_concepts or not self._known[number]:
                    raise DatasetError(f"{cpath}, row {line}: label {number} is not in label.csv")
                if coverage >= best[number]:
                    best[number], self.primary_category[number] = coverage, cat_index

    def _read_index(self, split: str | None) -> None:
        path = self.root / "index.csv"
        header, rows = read_csv(path)
        missing = [c for c in INDEX_COLUMNS if c not in header]
        if missing:
            raise DatasetError(f"{path}: header lacks columns {missing}")
        col = {name: i for i, name in enumerate(header)}
        absent = [c for c in self.categories if c not in col]
        if absent:
            raise DatasetError(f"{path}: no column for categories {absent}")
        self.records = []
        sizes = set()
        listed: dict[str, int] = {}
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DatasetError(f"{path}, row {line}: {len(row)} columns, the header has {len(header)}")
            self._check_listed_once(listed, row[col["image"]], line)
            if split is not None and row[col["split"]] != split:
                continue
            ih, iw, sh, sw = self._sizes(row, col, line)
            files, image_labels, plane_categories, image_label_categories = [], [], [], []
            for cat in self.categories:
                for token in filter(None, row[col[cat]].split(";")):
                    if token.lower().endswith(".png"):
                        files.append(token)
                        plane_categories.append(cat)
                        continue
                    try:
                        number = int(token)
                    except ValueError:
                        raise DatasetError(f"{path}, row {line}, column {cat}: {token!r} is neither a PNG "
                                           "name nor a label number") from None
                    if not 0 <= number < self.num_concepts or not self._known[number]:
                        raise DatasetError(f"{path}, row {line}, column {cat}: label {number} is not in "
                                           "label.csv")
                    if number != 0:
                        image_labels.append(number)
                        image_label_categories.append(cat)
            for name in [row[col["image"]], *files]:
                self._check_inside(name, f"{path}, row {line}")
            sizes.add((sh, sw))
            self.records.append({"line": line, "image": row[col["image"]], "ih": ih, "iw": iw, "sh": sh,
                                 "sw": sw, "files": files, "image_labels": image_labels,
                                 "plane_categories": plane_categories,
                                 "image_label_categories": image_label_categories})
        if not self.records:
            raise DatasetError(f"{path}: no images" + (f" in split {split!r}" if split else ""))
        if len(sizes) != 1:
            raise DatasetError(f"{path}: rows have different segmentation sizes {sorted(sizes)}")
        self.label_size = next(iter(sizes))
        self.num_planes = max(1, max(len(r["files"]) for r in self.records))
        self.primary_category[self.primary_category < 0] = 0  # label 0 and concepts no c_<cat>.csv lists

    def _check_listed_once(self, listed: dict, image: str, line: int) -> None:
        """An image listed twice would be counted twice (in every split it is listed in)."""
        key = os.path.normpath(image)
        if key in listed:
            raise DatasetError(f"{self.root / 'index.csv'}: image {image!r} is listed twice, rows {listed[key]} "
                               f"and {line}")
        listed[key] = line

    def _sizes(self, row, col, line: int) -> tuple[int, int, int, int]:
        where = f"{self.root / 'index.csv'}, row {line}"
        try:
            ih, iw, sh, sw = (int(row[col[c]]) for c in ("ih", "iw", "sh", "sw"))
        except ValueError:
            raise DatasetError(f"{where}: ih, iw, sh, sw must be integers") from None
        if min(ih, iw, sh, sw) < 1:
            raise DatasetError(f"{where}: ih, iw, sh, sw must be positive, got {ih}, {iw}, {sh}, {sw}")
        check_pixels(ih, iw, where, "the image (ih x iw)", self.max_pixels)
        check_pixels(sh, sw, where, "the segmentation (sh x sw)", self.max_pixels)
        return ih, iw, sh, sw

    def _check_inside(self, name: str, where: str) -> None:
        check_inside(self.root / "images", name, where, follow_symlinks=self.follow_symlinks)

    # ---- access
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self.records):
            raise IndexError(f"image {i} out of range for {len(self.records)} images")
        r = self.records[i]
        return Sample(self.image(i), self.labels(i), list(r["image_labels"]), i, list(r["plane_categories"]),
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

    def concepts_of(self, i: int) -> list[str]:
        """The names of the concepts image i holds (label planes and image-level labels), by id."""
        ids = set(np.unique(self.labels(i)).tolist()) | set(self.records[i]["image_labels"])
        return [self.concept_names[c] for c in sorted(ids - {0})]

    def images_with(self, concept, *, verbose: bool = True) -> list[int]:
        """The images holding `concept` (a name or an id). The first call decodes every image's labels
        once (a progress bar) and keeps an index of (image, concept) pairs for later calls; a packed
        store (fd.datasets.open_packed) answers from its entries without decoding."""
        c = self.concept_id(concept)
        if getattr(self, "_holders", None) is None:
            from tqdm.auto import tqdm

            holders: dict[int, list[int]] = {}
            for i in tqdm(range(len(self)), desc="indexing concepts", unit="img", disable=not verbose):
                for cid in set(np.unique(self.labels(i)).tolist()) | set(self.records[i]["image_labels"]):
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


def write_broden(root, samples, concept_names: Sequence[str], concept_categories: Sequence[Sequence[str]],
                 category_names: Sequence[str], *, split: str = "train", image_format: str = "png",
                 syns: Sequence[str] | None = None) -> Path:
    """Writes samples as a Broden-layout data set (used by the built-in set and custom adapters).

    samples: iterable of Sample carrying `plane_categories` (the category of each label plane) and
    `image_label_categories`; empty planes are not written.
    concept_names[c] / concept_categories[c]: name and categories of concept id c (id 0 = "-");
    syns[c]: label.csv's syns column (e.g. the name a concept had in its source data set).
    """
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    C = len(concept_names)
    cat_index = {c: i for i, c in enumerate(category_names)}
    frequency = np.zeros((len(category_names), C), dtype=np.int64)   # images holding the concept
    pixels = np.zeros((len(category_names), C), dtype=np.float64)    # pixels holding it
    index_rows = []
    for s in samples:
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
        index_rows.append([image_file, split, ih, iw, sh, sw] + [";".join(cells[c]) for c in category_names])
    n = max(len(index_rows), 1)
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(INDEX_COLUMNS) + list(category_names))
        w.writerows(index_rows)
    with open(root / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        w.writerow([0, "-", "", 0, 0, ""])
        for c in range(1, C):
            cats = ";".join(f"{k}({frequency[cat_index[k], c]})" for k in concept_categories[c])
            w.writerow([c, concept_names[c], cats, int(frequency[:, c].sum()), f"{pixels[:, c].sum() / n:.6g}",
                        syns[c] if syns is not None else ""])
    with open(root / "category.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "first", "last", "count", "frequency"])
        for k, cat in enumerate(category_names):
            ids = [c for c in range(1, C) if cat in concept_categories[c]]
            w.writerow([cat, min(ids, default=0), max(ids, default=0), len(ids), int(frequency[k].sum())])
            with open(root / f"c_{cat}.csv", "w", newline="") as g:
                cw = csv.writer(g)
                cw.writerow(["code", "number", "name", "frequency", "coverage"])
                for code, c in enumerate(ids, start=1):
                    cw.writerow([code, c, concept_names[c], int(frequency[k, c]), f"{pixels[k, c] / n:.6g}"])
    return root
