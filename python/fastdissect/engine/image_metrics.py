"""How well each unit's per-image score ranks or predicts each image-level label: (K, C) tables of
AUROC, AUPRC, correlation or F1, exact, from (N, K) scores and (N, C) bool labels.

- auroc: engine/auroc.py (Mann-Whitney, ties count half).
- auprc: average precision, sum over thresholds of (recall step) x precision, tied scores forming one
  threshold (scikit-learn's average_precision_score). One sort per unit; O(N C) per unit.
- correlation: Pearson's r between the score and the 0/1 label (NaN where either is constant).
- f1, iou, precision, recall: of "the unit fires on the image", score > T_k with T_k the unit's
  (1 - quantile) quantile of its N scores (linear interpolation, as fd.thresholds), against the label.
- cosine: of the score vector and the 0/1 label vector (uncentred).
Higher is better for every metric; NaN marks a label with no positive or no negative image.
"""

from __future__ import annotations

import torch

from ..core import validate
from ..core.quantile import interpolate, order_statistics
from .auroc import auroc, checked

METRICS = ("auroc", "auprc", "correlation", "f1", "iou", "precision", "recall", "cosine")


def auprc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    scores, labels = checked(scores, labels)
    n_pos = labels.sum(0).to(torch.float64)
    out = torch.empty(scores.shape[1], labels.shape[1], dtype=torch.float64)
    y_all = labels.to(torch.float64)
    for k in range(scores.shape[1]):
        values, order = scores[:, k].sort(descending=True, stable=True)
        ends = torch.nonzero(torch.cat([values[1:] != values[:-1], torch.tensor([True])])).flatten()
        tp = y_all[order].cumsum(0)[ends]                                      # (G, C) at each threshold
        precision = tp / (ends + 1).to(torch.float64)[:, None]
        recall_step = torch.diff(tp, dim=0, prepend=torch.zeros(1, tp.shape[1], dtype=torch.float64))
        out[k] = (recall_step * precision).sum(0) / n_pos
    return _undefined_where_constant(out, labels)


def correlation(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    scores, labels = checked(scores, labels)
    s = scores.to(torch.float64)
    y = labels.to(torch.float64)
    s, y = s - s.mean(0), y - y.mean(0)
    norm = s.norm(dim=0)[:, None] * y.norm(dim=0)[None, :]
    r = (s.t() @ y) / norm
    return torch.where(norm > 0, r, torch.full_like(r, float("nan")))


def fires(scores: torch.Tensor, quantile: float) -> torch.Tensor:
    """(N, K) bool: score > the unit's (1 - quantile) quantile over the N images."""
    s = scores.to(torch.float64)
    i, j, gamma = order_statistics(s.shape[0], 1 - quantile, "linear")
    ordered = s.sort(dim=0).values
    return s > interpolate(ordered[i], ordered[j], gamma)[None, :]


def confusion(scores, labels, quantile: float):
    """(tp, fired, positives): (K, C), (K, 1), (1, C) float64 counts of the firing rule."""
    scores, labels = checked(scores, labels)
    validate.number(quantile, "quantile", 0.0, 1.0, low_open=True, high_open=True)
    m = fires(scores, quantile).to(torch.float64)
    y = labels.to(torch.float64)
    return m.t() @ y, m.sum(0)[:, None], y.sum(0)[None, :]


def _ratio(num, den):
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(num, float("nan")))


def f1(scores: torch.Tensor, labels: torch.Tensor, quantile: float = 0.05) -> torch.Tensor:
    tp, fired, pos = confusion(scores, labels, quantile)
    return _undefined_where_constant(_ratio(2 * tp, fired + pos), labels)


def iou(scores, labels, quantile: float = 0.05) -> torch.Tensor:
    tp, fired, pos = confusion(scores, labels, quantile)
    return _undefined_where_constant(_ratio(tp, fired + pos - tp), labels)


def precision(scores, labels, quantile: float = 0.05) -> torch.Tensor:
    tp, fired, pos = confusion(scores, labels, quantile)
    return _undefined_where_constant(_ratio(tp, fired.expand_as(tp)), labels)


def recall(scores, labels, quantile: float = 0.05) -> torch.Tensor:
    tp, fired, pos = confusion(scores, labels, quantile)
    return _undefined_where_constant(_ratio(tp, pos.expand_as(tp)), labels)


def cosine(scores, labels) -> torch.Tensor:
    scores, labels = checked(scores, labels)
    s, y = scores.to(torch.float64), labels.to(torch.float64)
    norm = s.norm(dim=0)[:, None] * y.norm(dim=0)[None, :]
    return _ratio(s.t() @ y, norm)


def _undefined_where_constant(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    n1 = labels.sum(0)
    ok = (n1 > 0) & (n1 < labels.shape[0])
    return torch.where(ok[None, :], out, torch.full_like(out, float("nan")))


def metric_table(metric: str, scores: torch.Tensor, labels: torch.Tensor, *, quantile: float = 0.05) -> torch.Tensor:
    """(K, C) values of `metric` (one of METRICS)."""
    validate.choice(metric, "metric", METRICS)
    if metric in ("f1", "iou", "precision", "recall"):
        return {"f1": f1, "iou": iou, "precision": precision, "recall": recall}[metric](scores, labels, quantile)
    return {"auroc": auroc, "auprc": auprc, "correlation": correlation, "cosine": cosine}[metric](scores, labels)
