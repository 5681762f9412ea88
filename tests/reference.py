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
    return {"intersection": inter, "union": u, "iou": iou, "unit_area": unit_area, "concept_area": concept_area}


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
