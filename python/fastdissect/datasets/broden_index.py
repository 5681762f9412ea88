"""The Broden layout's file lists, read and checked: category.csv, label.csv, c_<category>.csv, index.csv.

index.csv: image, split, ih, iw, sh, sw, then one column per category; cells are ';'-separated lists
of label PNG names (pixel categories, under images/) or integer label numbers (image-level ones).
label.csv: number, name, category, frequency, coverage, syns. category.csv: name, first, last,
count, frequency (row order = category order). c_<category>.csv: code, number, name, frequency,
coverage. Every error is a DatasetError naming the file and row.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .reading import DatasetError, check_inside, check_pixels, read_csv

INDEX_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")


def read_categories(root: Path) -> list[str]:
    """category.csv's names in row order, each once and each with its c_<category>.csv (which gives its
    concepts their primary category: without it they would silently fall to the first category)."""
    path = root / "category.csv"
    _, rows = read_csv(path)
    lines: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        if row[0] in lines:
            raise DatasetError(f"{path}: category {row[0]!r} is listed twice, rows {lines[row[0]]} and {line}")
        if not (root / f"c_{row[0]}.csv").is_file():
            raise DatasetError(f"{path}, row {line}: category {row[0]!r} has no {root / f'c_{row[0]}.csv'} "
                               "(file not found)")
        lines[row[0]] = line
    if not lines:
        raise DatasetError(f"{path}: no categories (a header and no rows)")
    return list(lines)


def read_label_names(root: Path) -> dict[int, str]:
    """label.csv's names by label number (numbers not negative, each listed once)."""
    path = root / "label.csv"
    _, rows = read_csv(path)
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
    return names


def primary_categories(root: Path, category_names: Sequence[str], known: np.ndarray) -> np.ndarray:
    """(num_concepts,) int64 index into category_names of each concept's primary category: its largest
    coverage over the c_<category>.csv files, ties to the later category; label 0 and concepts no
    c_<category>.csv lists fall to category 0. known[c]: label.csv lists label c."""
    best = np.full(len(known), -np.inf)
    primary = np.full(len(known), -1, dtype=np.int64)
    for cat_index, cat in enumerate(category_names):
        cpath = root / f"c_{cat}.csv"
        _, crows = read_csv(cpath)
        for line, row in enumerate(crows, start=2):
            if not row:
                continue
            try:
                number, coverage = int(row[1]), float(row[4])
            except (ValueError, IndexError):
                raise DatasetError(f"{cpath}, row {line}: expected 'code,number,name,frequency,coverage', "
                                   f"got {row}") from None
            if not 0 <= number < len(known) or not known[number]:
                raise DatasetError(f"{cpath}, row {line}: label {number} is not in label.csv")
            if coverage >= best[number]:
                best[number], primary[number] = coverage, cat_index
    primary[primary < 0] = 0
    return primary


def read_index(root: Path, categories: Sequence[str], known: np.ndarray, split: str | None, *,
               follow_symlinks: bool, max_pixels: int | None) -> tuple[list[dict], tuple[int, int], int]:
    """(records, label size (sh, sw), number of label planes) of index.csv's rows in `split` (None: all):
    a record per image with its row, image, sizes, label files and image-level labels of `categories`
    (label 0 dropped), each with its category. Every row is checked, in the split or not: its columns,
    its image listed once; the records' rows: sizes, tokens, labels known (known[c]: label.csv lists
    c), paths inside images/; all records one segmentation size."""
    path = root / "index.csv"
    header, rows = read_csv(path)
    missing = [c for c in INDEX_COLUMNS if c not in header]
    if missing:
        raise DatasetError(f"{path}: header lacks columns {missing}")
    col = {name: i for i, name in enumerate(header)}
    absent = [c for c in categories if c not in col]
    if absent:
        raise DatasetError(f"{path}: no column for categories {absent}")
    records = []
    listed: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DatasetError(f"{path}, row {line}: {len(row)} columns, the header has {len(header)}")
        _check_listed_once(path, listed, row[col["image"]], line)
        if split is not None and row[col["split"]] != split:
            continue
        ih, iw, sh, sw = _sizes(row, col, f"{path}, row {line}", max_pixels)
        record = {"line": line, "image": row[col["image"]], "ih": ih, "iw": iw, "sh": sh, "sw": sw,
                  **_cells(row, col, categories, known, f"{path}, row {line}")}
        for name in [record["image"], *record["files"]]:
            check_inside(root / "images", name, f"{path}, row {line}", follow_symlinks=follow_symlinks)
        records.append(record)
    if not records:
        raise DatasetError(f"{path}: no images" + (f" in split {split!r}" if split else ""))
    sizes = {(r["sh"], r["sw"]) for r in records}
    if len(sizes) != 1:
        raise DatasetError(f"{path}: rows have different segmentation sizes {sorted(sizes)}")
    return records, next(iter(sizes)), max(1, max(len(r["files"]) for r in records))


def _cells(row, col, categories: Sequence[str], known: np.ndarray, where: str) -> dict:
    """A row's label files and image-level labels (0 dropped) over `categories`, each with its category."""
    files, image_labels, plane_categories, image_label_categories = [], [], [], []
    for cat in categories:
        for token in filter(None, row[col[cat]].split(";")):
            if token.lower().endswith(".png"):
                files.append(token)
                plane_categories.append(cat)
                continue
            try:
                number = int(token)
            except ValueError:
                raise DatasetError(f"{where}, column {cat}: {token!r} is neither a PNG name nor a label "
                                   "number") from None
            if not 0 <= number < len(known) or not known[number]:
                raise DatasetError(f"{where}, column {cat}: label {number} is not in label.csv")
            if number != 0:
                image_labels.append(number)
                image_label_categories.append(cat)
    return {"files": files, "image_labels": image_labels, "plane_categories": plane_categories,
            "image_label_categories": image_label_categories}


def _check_listed_once(path: Path, listed: dict, image: str, line: int) -> None:
    """An image listed twice would be counted twice (in every split it is listed in)."""
    key = os.path.normpath(image)
    if key in listed:
        raise DatasetError(f"{path}: image {image!r} is listed twice, rows {listed[key]} and {line}")
    listed[key] = line


def _sizes(row, col, where: str, max_pixels: int | None) -> tuple[int, int, int, int]:
    try:
        ih, iw, sh, sw = (int(row[col[c]]) for c in ("ih", "iw", "sh", "sw"))
    except ValueError:
        raise DatasetError(f"{where}: ih, iw, sh, sw must be integers") from None
    if min(ih, iw, sh, sw) < 1:
        raise DatasetError(f"{where}: ih, iw, sh, sw must be positive, got {ih}, {iw}, {sh}, {sw}")
    check_pixels(ih, iw, where, "the image (ih x iw)", max_pixels)
    check_pixels(sh, sw, where, "the segmentation (sh x sw)", max_pixels)
    return ih, iw, sh, sw
