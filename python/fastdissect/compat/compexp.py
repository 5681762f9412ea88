"""compexp's compositional explanations (Mu & Andreas 2020, its vision/ code) on a Broden directory.

    from fastdissect.compat import compexp, netdissect_lite as lite
    thresholds = lite.quantile_threshold(features)           # features: (N, K, h, w), index order
    rows = compexp.tally(features, thresholds, "dataset/broden1_224", index="index_ade20k.csv",
                         output_csv="tally_layer4.csv")

Semantics, as compexp's NeuronOperator.tally defines them:
- images: the rows of `index` (compexp's INDEX_FILE, e.g. index_ade20k.csv for its ADE20K subset)
  with data in at least one of `categories`, in file order; every label mask at the images' label size;
- a label's mask in an image: the union over the image's label planes of the pixels holding it; an
  image-level label (a scene) covers every pixel; label 0 is never a concept;
- a unit's mask: where its map's max exceeds T, Pillow's BILINEAR resize of the map (float32) > T;
- formulas by compexp's beam search (fd.compositional, search="beam"), scored by the global IoU.
  compexp adds 1e-10 to each IoU's denominator; fastdissect's IoU is exact, which can only reorder
  candidates whose IoUs are equal as fractions (compexp then favours the one with larger counts).
Rows: unit, category, label, score, length, label_noncomp, category_noncomp, score_noncomp, in unit
order; a unit that never fires or meets no label reads NONE, as in compexp.
"""

from __future__ import annotations

import csv
from typing import Sequence

import numpy as np
import torch

from ..engine.compositional import SetSource, find_formulas, search_settings
from ..core.masks import MaskBuilder
from ..engine.unit_masks import UnitMasks
from . import pillow
from ..datasets.mask_cache import cache_dir_of
from .netdissect_lite import LiteData, as_features, lite_data, packed_labels

COMPEXP_CATEGORIES = ("object", "part", "scene", "texture", "color")  # compexp's settings.CATEGORIES


def concept_masks(data: LiteData, start: int = 0, stop: int | None = None):
    """The ConceptMasks of images start..stop, compexp's way (union over planes, scenes whole)."""
    stop = len(data.rows) if stop is None else stop
    sh, sw = data.rows[start][1:3] if stop > start else (1, 1)
    builder = MaskBuilder(data.num_labels, sh, sw)
    for n in range(start, stop):
        planes, scalars, size = data.labels(n)
        if size != (sh, sw):
            raise ValueError(f"{data.root / data.index}: image {n} has labels of {size[0]}x{size[1]}, the first "
                             f"{sh}x{sw}; compexp needs one label size")
        pixel = np.unique(planes[planes > 0]) if planes.size else np.zeros(0, np.int64)
        whole_ids = np.unique([s for s in scalars if s != 0]).astype(np.int64)
        ids = np.union1d(pixel, whole_ids)
        whole = np.isin(ids, whole_ids)
        masks = np.zeros((ids.shape[0], sh * sw), dtype=bool)
        flat = planes.reshape(planes.shape[0], -1)
        for j in np.nonzero(~whole)[0]:
            masks[j] = (flat == ids[j]).any(axis=0)
        builder.add_images(1, np.zeros(ids.shape[0], np.int64), ids, masks, whole)
    return builder.build()


def tally(features, thresholds, data_directory, *, categories: Sequence[str] | None = COMPEXP_CATEGORIES,
          index: str = "index.csv", length: int = 3, beam_size: int = 5, penalty: float = 1.0,
          search: str = "beam", output_csv=None, progress: bool = True, chunk: int = 64,
          mask_cache=True) -> list[dict]:
    """compexp's tally: one row per unit (its best formula and best single label) and, with
    `output_csv`, the same columns as its tally_<layer>.csv. mask_cache: as in
    `netdissect_lite.tally` (the labels packed once per directory, index and categories)."""
    settings = search_settings(length, beam_size, search, penalty)
    data = lite_data(data_directory, list(categories) if categories is not None else None, index=index)
    features = as_features(features)
    if features.ndim != 4:
        raise ValueError(f"features must have shape (N, K, h, w), got {features.shape}")
    N, K, h, w = features.shape
    if N != len(data.rows):
        raise ValueError(f"features hold {N} images but {data.root / index} has {len(data.rows)} images with data "
                         f"in {data.categories}: the features' first axis must follow its order")
    thresholds = torch.from_numpy(np.ascontiguousarray(thresholds, dtype=np.float64))
    if thresholds.shape != (K,):
        raise ValueError(f"thresholds must have shape ({K},), got {tuple(thresholds.shape)}")
    cache_dir = cache_dir_of(mask_cache)
    if mask_cache is False:
        masks = concept_masks(data)
    else:
        masks = packed_labels(data, concept_masks, "fastdissect.compat.compexp", cache_dir, progress).masks
    sh, sw = masks.height, masks.width
    if h > sh or w > sw:
        raise ValueError(f"features maps of {h}x{w} are larger than the {sh}x{sw} labels: compexp upsamples maps")
    tables = pillow.kernel_tables(h, w, sh, sw)
    acc = UnitMasks(thresholds, sh, sw, backend="cpu", pillow=tables)
    for start in range(0, N, chunk):
        act = torch.from_numpy(np.ascontiguousarray(features[start:start + chunk], dtype=np.float32))
        acc.add(act, start)
    ex = find_formulas(SetSource(acc.mask_set(N), masks, thresholds, "cpu"), settings, None, verbose=progress)
    rows = _rows(ex, data)
    if output_csv:
        with open(output_csv, "w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


def _rows(ex, data: LiteData) -> list[dict]:
    names = lambda c: data.names[c]  # noqa: E731
    cats = lambda c: data.categories[data.primary[c]]  # noqa: E731
    rows = []
    for k in range(len(ex)):
        f, s = ex.formulas[k], ex.single[k]
        rows.append({"unit": k, "category": f.to_str(cats) if f else "NONE", "label": f.to_str(names) if f else "NONE",
                     "score": float(ex.iou[k]), "length": len(f) if f else 1,
                     "label_noncomp": s.to_str(names) if s else "NONE",
                     "category_noncomp": s.to_str(cats) if s else "NONE", "score_noncomp": float(ex.single_iou[k])})
    return rows


__all__ = ["tally", "concept_masks", "COMPEXP_CATEGORIES"]
