"""NetDissect-Lite's `quantile_threshold` and `tally`, same numbers, streamed and vectorised.

    from fastdissect.compat import netdissect_lite as lite
    thresholds = lite.quantile_threshold(features)                 # features: Lite's (N, K, h, w) memmap
    rows = lite.tally(features, thresholds, "dataset/broden1_224", categories=[...], output_csv="tally.csv")

Semantics, as NetDissect-Lite defines them (its FeatureOperator.tally on a Broden directory):
- images: index.csv rows with data in at least one selected category, in file order (the features'
  first axis follows this order, as Lite's feature extraction does);
- per image, a category whose cells are all integers gives image-level labels (label 0 included:
  it is counted as a concept, as Lite does), otherwise label planes (an integer there fills a plane);
- truth[c] = pixels of c over every plane (a pixel counts once per plane) + sh * sw per image-level c;
- a unit takes part in an image when its map's max exceeds T; its mask is Pillow's BILINEAR resize
  of the map (as float32) to sh x sw, > T; intersect[k, c] counts mask pixels per plane, plus the
  mask's area for each image-level c; the unit's union term for a category counts the mask's area
  where it meets a label of that category or the image has an image-level label of it ("lite" union);
- primary category of each label: largest coverage in c_<category>.csv, ties (and labels in none,
  label 0 among them) to the later category; the label -> category one-hot is built correctly (Lite
  on NumPy >= 1.23 builds it as all ones, silently);
- iou = intersect / (union term + truth - intersect + 1e-10); per unit, the best label of each
  category (first on ties), then the best category (the last of equal ones, as Lite's argsort
  order gives); rows by score, descending, with numpy's own ordering of ties.
One deliberate difference: an image without label planes contributes only its image-level labels
to a unit's categories (Lite reuses the previous unit's categories there, a bug).
"""

from __future__ import annotations

import csv
import functools
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..kernels import dispatch
from ..core import validate
from ..core.codes import DTYPE_CODES
from ..datasets.broden import DatasetError, decode_label_png, read_csv
from ..datasets.mask_cache import cache_dir_of, cached_store
from ..datasets.packed import StoreWriter
from ..files.identity import broden_fingerprint, kept_while_unchanged
from ..core.masks import ConceptMasks, MaskBuilder
from ..engine.top_quantile import TopQuantile
from . import pillow
from .pillow import resize_bilinear


def quantile_threshold(features, quantile: float = 0.005, *, chunk: int = 256) -> np.ndarray:
    """(K,) the threshold NetDissect-Lite reads: level (int(1000 * (1 - quantile)) - 1) / 999 (994/999
    for 0.005), numpy's "hazen" method, computed exactly over (N, K, h, w) or (N, K) features, streamed
    `chunk` images at a time (a memmap larger than memory is fine)."""
    features = as_features(features)
    level = (int(1000 * (1 - quantile) - 1)) / 999
    q = TopQuantile(features.shape[1], 1 - level, "hazen")

    def chunks():
        for start in range(0, features.shape[0], chunk):
            yield torch.from_numpy(np.ascontiguousarray(features[start:start + chunk]))

    for batch in chunks():
        q.add(batch)
    return q.finish(chunks).numpy()


class LiteData:
    """A Broden directory read the way NetDissect-Lite's SegmentationData reads it."""

    def __init__(self, directory, categories: Sequence[str] | None = None, index: str = "index.csv"):
        root = Path(directory)
        _, cat_rows = read_csv(root / "category.csv")
        names = [r[0] for r in cat_rows if r]
        self.categories = [c for c in names if categories is None or c in categories]
        if not self.categories:
            raise DatasetError(f"{root / 'category.csv'}: none of the categories {categories} is listed ({names})")
        self._read_labels(root)
        self.index = index
        self.root, self.rows = root, self._read_rows(root, index)

    def _read_labels(self, root: Path) -> None:
        """label.csv's names and each label's primary category, with Lite's label -> category one-hot."""
        header, label_rows = read_csv(root / "label.csv")
        labels = {int(r[0]): r[1] for r in label_rows if r}
        self.num_labels = max(labels) + 1
        self.names = [labels.get(i, "") for i in range(self.num_labels)]
        # primary category: max over categories of (coverage if the label is listed else 0, category index)
        best = [(0.0, -1)] * self.num_labels
        for ic, cat in enumerate(self.categories):
            coverage = {}
            _, c_rows = read_csv(root / f"c_{cat}.csv")
            for r in c_rows:
                if r:
                    coverage[int(r[1])] = float(r[4])
            for i in range(self.num_labels):
                best[i] = max(best[i], (coverage.get(i, 0.0) if i in coverage and i != 0 else 0, ic))
        self.primary = np.array([ic for _, ic in best], dtype=np.int64)
        self.labelcat = np.zeros((self.num_labels, len(self.categories)))
        self.labelcat[np.arange(self.num_labels), self.primary] = 1.0

    def _read_rows(self, root: Path, index: str) -> list[tuple]:
        """(row, sh, sw, {category: tokens}) of each index row with data in a selected category."""
        header, rows = read_csv(root / index)
        col = {h: i for i, h in enumerate(header)}
        kept = []
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DatasetError(f"{root / index}, row {line}: {len(row)} columns, the header has {len(header)}")
            cells = {c: [t for t in row[col[c]].split(";") if t] for c in self.categories if c in col}
            if any(cells.values()):  # Lite keeps images with data in any selected category
                kept.append((line, int(row[col["sh"]]), int(row[col["sw"]]), cells))
        return kept

    @functools.cached_property
    def label_files(self) -> list[str]:
        """The label PNGs its rows name (under images/), sorted."""
        return sorted({t for _, _, _, cells in self.rows for tokens in cells.values() for t in tokens
                       if not re.fullmatch(r"\d+", t)})

    @property
    def csv_names(self) -> list[str]:
        """The CSV files it read."""
        return [self.index, "label.csv", "category.csv"] + [f"c_{c}.csv" for c in self.categories]

    def labels(self, n: int):
        """(planes (P, sh, sw) int64, image-level labels) of image n."""
        line, sh, sw, cells = self.rows[n]
        where = f"{self.root / self.index}, row {line}"
        planes, scalars = [], []
        for cat in self.categories:
            tokens = cells.get(cat, [])
            if all(re.fullmatch(r"\d+", t) for t in tokens):
                scalars += [int(t) for t in tokens]
                continue
            for t in tokens:
                plane = np.full((sh, sw), int(t), np.int64) if re.fullmatch(r"\d+", t) else \
                    decode_label_png(self.root / "images" / t, where)
                if plane.shape != (sh, sw):
                    raise DatasetError(f"{where}: label file {t} is {plane.shape[0]}x{plane.shape[1]}, index.csv says "
                                       f"{sh}x{sw}")
                if plane.max() >= self.num_labels:
                    raise DatasetError(f"{where}: label file {t} holds label {int(plane.max())}, not in label.csv")
                planes.append(plane)
        for s in scalars:
            if s >= self.num_labels:
                raise DatasetError(f"{where}: label {s} is not in label.csv")
        return (np.stack(planes) if planes else np.zeros((0, sh, sw), np.int64)), scalars, (sh, sw)


def tally(features, thresholds, data_directory, categories: Sequence[str] | None = None, output_csv=None,
          *, progress: bool = True, mask_cache=True) -> list[dict]:
    """NetDissect-Lite's FeatureOperator.tally: the list of row dicts (same keys, values and order) and,
    with `output_csv`, the same tally.csv. features: (N, K, h, w) array-like (a memmap is streamed).

    mask_cache: the directory's labels are decoded and packed once, on the first call, into a cache
    directory (True: the default one, see fastdissect/datasets/mask_cache.py; a path; False: decode
    every call); later calls (another layer, another run) read the packed masks and decode nothing,
    until a file of the directory changes."""
    cache_dir = cache_dir_of(mask_cache)
    data = lite_data(data_directory, categories)
    features = as_features(features)
    if features.ndim != 4:
        raise ValueError(f"features must have shape (N, K, h, w), got {features.shape}")
    N, K = features.shape[:2]
    if N != len(data.rows):
        raise ValueError(f"features hold {N} images but {data_directory} has {len(data.rows)} images with data in "
                         f"{data.categories}: the features' first axis must follow index.csv's order")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (K,):
        raise ValueError(f"thresholds must have shape ({K},), got {thresholds.shape}")
    sizes = {(sh, sw) for _, sh, sw, _ in data.rows}
    if dispatch.has_extension() and len(sizes) == 1:
        sh, sw = next(iter(sizes))
        if features.shape[2] <= sh and features.shape[3] <= sw:  # upsampling: the fused C++ kernel
            store = packed_labels(data, _lite_masks, "fastdissect.compat.netdissect_lite", cache_dir, progress) \
                if mask_cache is not False else None
            both, units_cat, truth = _tally_kernel(data, store, features, thresholds, sh, sw, progress)
            return _rows(data, both, units_cat, truth, output_csv)
    return _rows(data, *_tally_numpy(data, features, thresholds, progress), output_csv)


def _tally_numpy(data: LiteData, features, thresholds, progress: bool):
    """(intersections (K, L), union terms (K, G), truth (L,)) image by image in numpy: any label sizes,
    downsampling included, where the fused kernel does not apply."""
    from tqdm.auto import tqdm

    N, K = features.shape[:2]
    L, G = data.num_labels, len(data.categories)
    both = np.zeros((K, L))
    units_cat = np.zeros((K, G))
    truth = np.zeros(L)
    for n in tqdm(range(N), desc="lite tally", unit="img", disable=not progress):
        planes, scalars, (sh, sw) = data.labels(n)
        for s in scalars:
            truth[s] += sh * sw
        if planes.shape[0]:
            counts = np.bincount(planes.ravel(), minlength=L)
            counts[0] = 0
            truth += counts
        maps = np.asarray(features[n], dtype=np.float64)
        hot = np.nonzero(maps.reshape(K, -1).max(axis=1) > thresholds)[0]
        if hot.size == 0:
            continue
        masks = resize_bilinear(maps[hot].astype(np.float32), sh, sw) > thresholds[hot][:, None, None]
        area = masks.reshape(hot.size, -1).sum(axis=1).astype(np.float64)
        cat_hit = np.zeros((hot.size, G))
        if planes.shape[0]:
            unit_of, y, x = np.nonzero(masks)
            for plane in planes:
                label = plane[y, x]
                keep = label > 0
                keys = unit_of[keep] * L + label[keep]
                uniq, cnt = np.unique(keys, return_counts=True)
                np.add.at(both, (hot[uniq // L], uniq % L), cnt)
                np.add.at(cat_hit, (uniq // L, data.primary[uniq % L]), cnt)
        for s in scalars:
            cat_hit[:, data.primary[s]] += 1
            both[hot, s] += area
        units_cat[hot] += area[:, None] * (cat_hit > 0)
    return both, units_cat, truth


def _tally_kernel(data: LiteData, store, features, thresholds, sh: int, sw: int, progress: bool,
                  chunk_bytes: int = 32 << 20):
    """The same tallies with fastdissect's CPU kernel in Pillow mode, on masks with one entry per
    (plane, concept), so a pixel counts once per plane, plus whole-image entries for image-level
    labels (label 0 too): read from `store` (a packed store of them), else packed chunk by chunk.
    A chunk holds chunk_bytes of float64 activations (64 images when its masks are packed here:
    packing memory grows with the chunk; from the store, as many as fit, each call's set-up paid once)."""
    from tqdm.auto import tqdm

    N, K, h, w = features.shape
    chunk = max(1, chunk_bytes // (K * h * w * 8)) if store is not None else 64
    G = len(data.categories)
    tables = pillow.kernel_tables(h, w, sh, sw)
    inter = torch.zeros(K, data.num_labels, dtype=torch.int64)
    area = torch.zeros(K, dtype=torch.int64)
    unit_cat = torch.zeros(K, G, dtype=torch.int64)
    truth = torch.zeros(data.num_labels, dtype=torch.int64)
    thresholds_t = torch.from_numpy(np.ascontiguousarray(thresholds, dtype=np.float64))
    categories = torch.from_numpy(data.primary)
    with tqdm(total=N, desc="lite tally", unit="img", disable=not progress) as bar:
        for start in range(0, N, chunk):
            stop = min(start + chunk, N)
            m = store.masks[start:stop] if store is not None else _lite_masks(data, start, stop)
            truth += m.concept_area()
            act = torch.from_numpy(np.ascontiguousarray(features[start:stop]))
            if act.dtype not in DTYPE_CODES:
                act = act.double()
            validate.finite(act, "features")
            dispatch.tally_batch("cpu", act, m, thresholds_t, "lite", categories, G, inter, area, unit_cat,
                                  pillow=tables)
            bar.update(stop - start)
    return inter.double().numpy(), unit_cat.double().numpy(), truth.double().numpy()


def _lite_masks(data: LiteData, start: int, stop: int) -> ConceptMasks:
    """Images start..stop-1 (one label size) as Lite counts them: an entry per (plane, label > 0)
    present, then a whole-image entry per image-level label. Vectorised over the chunk: each pixel's
    key (plane, label) is counted in one dense table of planes x labels, whose non-zero cells are the
    entries in (image, plane, label) order."""
    L = data.num_labels
    _, sh, sw, _ = data.rows[start]
    hw = sh * sw
    planes, plane_image, scalar_ids, scalar_image = [], [], [], []
    for n in range(start, stop):
        p, scalars, _ = data.labels(n)
        planes.append(p.reshape(p.shape[0], hw))
        plane_image += [n - start] * p.shape[0]
        scalar_ids += scalars
        scalar_image += [n - start] * len(scalars)
    stacked = np.concatenate(planes) if planes else np.zeros((0, hw), np.int64)
    plane_of, pixel = np.nonzero(stacked)
    keys = plane_of * L + stacked[plane_of, pixel]
    present = np.flatnonzero(np.bincount(keys, minlength=stacked.shape[0] * L))
    rank = np.full(stacked.shape[0] * L, -1, dtype=np.int64)
    rank[present] = np.arange(present.size)
    masks = np.zeros((present.size + len(scalar_ids), hw), dtype=bool)
    masks[rank[keys], pixel] = True
    masks[present.size:] = True
    image = np.concatenate([np.asarray(plane_image, np.int64)[present // L], np.asarray(scalar_image, np.int64)])
    ids = np.concatenate([present % L, np.asarray(scalar_ids, np.int64)])
    whole = np.arange(image.size) >= present.size
    order = np.argsort(image, kind="stable")
    builder = MaskBuilder(L, sh, sw)
    builder.add_images(stop - start, image[order], ids[order], masks[order], whole[order])
    return builder.build()


_PARSED: dict = {}  # (root, categories, index) -> (CSV stamps, LiteData)


def lite_data(directory, categories: Sequence[str] | None = None, index: str = "index.csv") -> LiteData:
    """LiteData(directory, categories, index), parsed once per process and reused while the CSV
    files it may read (the index, label.csv, category.csv, every c_*.csv) keep their stat stamps
    (a second layer's call parses nothing)."""
    root = Path(directory)
    key = (str(root.resolve()), tuple(categories) if categories is not None else None, index)
    csvs = [root / index, root / "label.csv", root / "category.csv"] + sorted(root.glob("c_*.csv"))
    return kept_while_unchanged(_PARSED, key, csvs, lambda: LiteData(root, categories, index))


def packed_labels(data: LiteData, masks_of, reader: str, cache_dir, progress: bool):
    """The packed store of masks_of(data, start, stop) over every image, from the mask cache
    (packed on a miss); `reader` names the semantics (Lite's planes, compexp's unions) in the key."""
    from tqdm.auto import tqdm

    files, csvs = data.label_files, data.csv_names
    key = {"reader": reader, "root": str(data.root.resolve()), "categories": list(data.categories),
           "index": data.index}
    fingerprint = {**broden_fingerprint(data.root, csvs, files), "categories": list(data.categories)}

    def build(directory):
        writer = StoreWriter(directory)
        with writer, tqdm(total=len(data.rows), desc="packing labels", unit="img", disable=not progress) as bar:
            for start in range(0, len(data.rows), 64):
                stop = min(start + 64, len(data.rows))
                writer.add(masks_of(data, start, stop), start)
                bar.update(stop - start)
        writer.finish(num_concepts=data.num_labels, concept_names=list(data.names),
                      category_names=list(data.categories), primary_category=data.primary.tolist(),
                      images=[None] * len(data.rows), source=str(data.root.resolve()),
                      source_fingerprint=fingerprint, cache_key=key)

    return cached_store(key, fingerprint, build, cache_dir)


def _best_per_category(data: LiteData, iou):
    """(G, K) label and score of each unit's best label in each category: Lite's argmax over the row
    of iou masked to the category's labels (zeros elsewhere), taken over the category's columns
    only. Equal where the category's best is positive (the other columns are 0, and both argmaxes
    take the first of equal maxima); where it is 0, the masked row is all zeros and Lite's argmax
    gives label 0 with score 0 (iou is never negative)."""
    G, K = len(data.categories), iou.shape[0]
    label, score = np.zeros((G, K), dtype=np.int64), np.zeros((G, K))
    units = np.arange(K)
    for ci in range(G):
        cols = np.flatnonzero(data.primary == ci)
        if cols.size == 0:
            continue
        at = iou[:, cols].argmax(axis=1)
        best = iou[units, cols[at]]
        positive = best > 0
        label[ci, positive], score[ci, positive] = cols[at[positive]], best[positive]
    return label, score


def _rows(data: LiteData, both, units_cat, truth, output_csv):
    units_label = units_cat @ data.labelcat.T
    iou = both / (units_label + truth[None, :] - both + 1e-10)
    label, score = _best_per_category(data, iou)                       # (G, K)
    bestcat = score.argsort(axis=0)[::-1]                                # numpy's order, ties included
    ordering = score.max(axis=0).argsort()[::-1]
    # Columns in row order, as lists of numpy scalars (the types Lite's rows hold).
    names = np.asarray(data.names, dtype=object)
    best = bestcat[0][ordering]
    keys, columns = ["unit", "category", "label", "score"], [
        list(ordering + 1), list(np.asarray(data.categories, dtype=object)[best]),
        list(names[label[best, ordering]]), list(score[best, ordering])]
    for ci, cat in enumerate(data.categories):
        labels = label[ci, ordering]
        keys += [f"{cat}-{f}" for f in ("label", "truth", "activation", "intersect", "iou")]
        columns += [list(names[labels]), list(truth[labels]), list(units_label[ordering, labels]),
                    list(both[ordering, labels]), list(score[ci, ordering])]
    rows = [dict(zip(keys, values)) for values in zip(*columns)]
    if output_csv:
        fields = ["unit", "category", "label", "score"] + [f"{cat}-{f}" for cat in data.categories
                                                            for f in ("label", "truth", "activation", "intersect",
                                                                      "iou")]
        with open(output_csv, "w") as f:  # as Lite opens it (csv's \r\n line ends)
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(rows)
    return rows


def as_features(features) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    features = np.asarray(features) if not isinstance(features, np.ndarray) else features
    if features.ndim not in (2, 4) or features.size == 0:
        raise ValueError(f"features must be a non-empty (N, K, h, w) or (N, K) array, got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        raise TypeError(f"features must be floats, got {features.dtype}")
    return features
