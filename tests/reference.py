"""Independent reference: the dissection formulas in plain numpy, one image and one unit at a time.

Imports nothing from fastdissect. Written from the definitions (README, "What the numbers mean"):
  S = bilinear upsample with half-pixel centres and edge clamp, in float64, as
      S[y, x] = hl0 * (wl0 * A[y0, x0] + wl1 * A[y0, x1]) + hl1 * (wl0 * A[y1, x0] + wl1 * A[y1, x1])
  M = S > T (strict); I = sum |M & L|; unions as defined per mode.
"""

from __future__ import annotations

import numpy as np


def taps(n_in: int, n_out: int):
    """Source indices and weights along one axis, as numpy arrays."""
    d = np.arange(n_out, dtype=np.float64)
    src = (n_in / n_out) * (d + 0.5) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    l1 = np.clip(src - i0, 0.0, 1.0)
    return i0, i1, 1.0 - l1, l1


def upsample(a: np.ndarray, H: int, W: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    y0, y1, hl0, hl1 = taps(a.shape[0], H)
    x0, x1, wl0, wl1 = taps(a.shape[1], W)
    out = np.empty((H, W))
    for y in range(H):
        r0 = wl0 * a[y0[y], x0] + wl1 * a[y0[y], x1]
        r1 = wl0 * a[y1[y], x0] + wl1 * a[y1[y], x1]
        out[y] = hl0[y] * r0 + hl1[y] * r1
    return out


def tally(acts, masks, thresholds, union="global", categories=None):
    """acts (N, K, h, w) any float; masks (N, C, H, W) bool. Returns a dict of numpy arrays."""
    acts = np.asarray(acts, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    N, K = acts.shape[:2]
    C, H, W = masks.shape[1:]
    G = int(np.max(categories)) + 1 if categories is not None else 0
    inter = np.zeros((K, C), np.int64)
    unit_area = np.zeros(K, np.int64)
    unit_cat = np.zeros((K, max(G, 1)), np.int64)
    concept_area = masks.reshape(N, C, -1).sum(axis=(0, 2)).astype(np.int64)
    concept_images = masks.reshape(N, C, -1).any(axis=2).sum(axis=0).astype(np.int64)
    image_hits = np.zeros((K, C), np.int64)
    for n in range(N):
        present = masks[n].reshape(C, -1).any(axis=1)
        for k in range(K):
            m = upsample(acts[n, k], H, W) > thresholds[k]
            area = int(m.sum())
            unit_area[k] += area
            hit = np.zeros(max(G, 1), bool)
            labeled = np.zeros(max(G, 1), bool)
            for c in range(C):
                i = int((m & masks[n, c]).sum())
                inter[k, c] += i
                image_hits[k, c] += i > 0
                if present[c] and categories is not None:
                    labeled[categories[c]] = True
                    if i > 0:
                        hit[categories[c]] = True
            if union == "netdissect":
                unit_cat[k] += area * labeled
            elif union == "lite":
                unit_cat[k] += area * hit
    if union == "global":
        u = unit_area[:, None] + concept_area[None, :] - inter
    else:
        u = unit_cat[:, np.asarray(categories)] + concept_area[None, :] - inter
    iou = np.where(u > 0, inter / np.maximum(u, 1), 0.0)
    return {"intersection": inter, "union": u, "iou": iou, "unit_area": unit_area, "concept_area": concept_area,
            "image_hits": image_hits, "concept_images": concept_images}


def dense_from_labels(labels, image_labels, num_concepts):
    """Label planes (N, P, H, W) + image-level ids per image -> (N, C, H, W) bool."""
    labels = np.asarray(labels)
    N, P, H, W = labels.shape
    out = np.zeros((N, num_concepts, H, W), bool)
    for n in range(N):
        for p in range(P):
            for c in np.unique(labels[n, p]):
                if c != 0:
                    out[n, c] |= labels[n, p] == c
        for c in (image_labels[n] if image_labels is not None else []):
            if c != 0:
                out[n, c] = True
    return out


def quantile(values, level, method="linear"):
    return np.quantile(np.asarray(values, dtype=np.float64), level, method=method)


# ---- compositional explanations: dense numpy, formulas as nested tuples
# A formula is ("leaf", c), ("or", f, c), ("and", f, c) or ("andnot", f, c): left-deep, as compexp's
# beam builds them. Its text is compexp's: "(f OR c)", "(f AND c)", "(f AND (NOT c))".

def formula_text(f) -> str:
    if f[0] == "leaf":
        return str(f[1])
    left = formula_text(f[1])
    return {"or": f"({left} OR {f[2]})", "and": f"({left} AND {f[2]})", "andnot": f"({left} AND (NOT {f[2]}))"}[f[0]]


def formula_len(f) -> int:
    """compexp's len: leaves, plus one per NOT."""
    if f[0] == "leaf":
        return 1
    return formula_len(f[1]) + (2 if f[0] == "andnot" else 1)


def formula_dense(f, masks):
    """(N, H, W) bool mask of f over dense concept masks (N, C, H, W)."""
    if f[0] == "leaf":
        return masks[:, f[1]]
    left = formula_dense(f[1], masks)
    leaf = masks[:, f[2]]
    return {"or": left | leaf, "and": left & leaf, "andnot": left & ~leaf}[f[0]]


def dense_iou(f_mask, unit):
    inter = int(np.logical_and(f_mask, unit).sum())
    union = int(f_mask.sum()) + int(unit.sum()) - inter
    return (inter / union if union else 0.0), inter, int(f_mask.sum())


def beam_search(unit, masks, length, beam_size, penalty=1.0):
    """compexp's compute_best_iou (vision/dissection/neuron.py) over dense masks, with the exact IoU:
    the beam starts with the beam_size labels of highest IoU > 0 (ties: lower label first), each step
    expands every beam formula with every label present in the data set by OR, AND, AND NOT, scores
    IoU * penalty ** (len - 1), and keeps the best beam_size of old beam + candidates (stable).
    Returns (best formula, score, best single, single score), or None when nothing overlaps."""
    unit = np.asarray(unit, dtype=bool)
    masks = np.asarray(masks, dtype=bool)
    labels = [c for c in range(masks.shape[1]) if masks[:, c].any()]
    ious = {c: dense_iou(masks[:, c], unit)[0] for c in labels}
    positive = [(c, v) for c, v in ious.items() if v > 0]
    if not positive:
        return None
    positive.sort(key=lambda t: -t[1])  # stable: ties keep label order
    beam = [(("leaf", c), v) for c, v in positive[:beam_size]]
    single = beam[0]
    for _ in range(length - 1):
        candidates = []
        for f, _score in beam:
            for c in labels:
                for op in ("or", "and", "andnot"):
                    g = (op, f, c)
                    iou = dense_iou(formula_dense(g, masks), unit)[0]
                    candidates.append((g, penalty ** (formula_len(g) - 1) * iou))
        pool = beam + candidates
        pool.sort(key=lambda t: -t[1])
        beam = pool[:beam_size]
    return beam[0][0], beam[0][1], single[0], single[1]


def all_formulas(labels, length):
    """Every left-deep formula of at most `length` labels joined by OR / AND / AND NOT."""
    level = [("leaf", c) for c in labels]
    out = list(level)
    for _ in range(length - 1):
        level = [(op, f, c) for f in level for c in labels for op in ("or", "and", "andnot")]
        out += level
    return out


def brute_force_best(unit, masks, length, penalty=1.0):
    """The highest penalised IoU over all_formulas, by evaluating each one densely."""
    unit = np.asarray(unit, dtype=bool)
    masks = np.asarray(masks, dtype=bool)
    labels = [c for c in range(masks.shape[1]) if masks[:, c].any()]
    best = (None, 0.0)
    for f in all_formulas(labels, length):
        score = penalty ** (formula_len(f) - 1) * dense_iou(formula_dense(f, masks), unit)[0]
        if score > best[1]:
            best = (f, score)
    return best
