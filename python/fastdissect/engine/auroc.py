"""Exact AUROC of every unit for every image-level label, from one sort per unit: `auroc`.

For unit k and label c, with n1 positive and n0 negative images, the Mann-Whitney statistic is

    U_kc = sum over positive i of rank_k(i) - n1 (n1 + 1) / 2,     AUROC_kc = U_kc / (n1 n0),

rank_k the 1-based rank of image i's score among unit k's N scores, tied scores sharing the mean of
their ranks. That is exactly the share of (positive, negative) pairs the unit orders correctly, a tie
counting half. The ranks need one sort per unit; the rank sums of all labels at once are one product
(N, K)^T x (N, C). Mid-ranks are multiples of 1/2 and every sum stays below 2**53 for N < 2**25, so
the product in float64 is exact. A C++ kernel would not pay: the sort is torch's, the rank sums one
BLAS call, the rest a few vector operations.

The p-value of "unit k scores label c's images higher" is the one-sided normal approximation of U
with the tie correction (no continuity correction), as scipy's mannwhitneyu(method="asymptotic",
use_continuity=False, alternative="greater") computes it.

>>> import torch, fastdissect as fd
>>> scores = torch.tensor([[0.1], [0.4], [0.4], [0.9]])
>>> labels = torch.tensor([[False], [True], [False], [True]])
>>> fd.auroc(scores, labels).tolist()          # pairs (0.4, 0.1), (0.4, 0.4) tie, (0.9, 0.1), (0.9, 0.4)
[[0.875]]
"""

from __future__ import annotations

import math

import torch

from ..core import validate

MAX_IMAGES = 1 << 25  # float64 rank sums are exact below this


def checked(scores, labels) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise validate.ArgumentTypeError(f"scores must be an (N images, K units) tensor, got "
                                         f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or labels.dtype != torch.bool:
        raise validate.ArgumentTypeError("labels must be an (N images, C labels) bool tensor, got "
                                         + (f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor)
                                            else type(labels).__name__))
    if scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores has {scores.shape[0]} images but labels has {labels.shape[0]}")
    if scores.shape[0] > MAX_IMAGES:
        raise ValueError(f"{scores.shape[0]} images: auroc is exact up to {MAX_IMAGES}; score a sample")
    if scores.is_floating_point():
        bad = ~torch.isfinite(scores)
        if bool(bad.any()):
            units = torch.nonzero(bad.any(0)).flatten().tolist()
            raise ValueError(f"scores hold NaN or inf (units {units[:10]}): a rank needs a real score")
    return scores, labels


def midranks(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) 1-based ranks of each unit's scores, ties sharing their mean rank (float64), and per unit
    the tie term sum(t**3 - t) over groups of t equal scores."""
    n, k = scores.shape
    values, order = scores.t().contiguous().sort(dim=1, stable=True)  # unit-major: rows sort 4x faster
    new = torch.ones(k, n, dtype=torch.bool, device=scores.device)
    new[:, 1:] = values[:, 1:] != values[:, :-1]
    # Group ids of equal scores, numbered per unit and offset by unit, so one bincount sizes them all.
    group = (new.cumsum(1) - 1) + torch.arange(k, device=scores.device)[:, None] * n       # (K, N)
    size = torch.bincount(group.flatten(), minlength=k * n).reshape(k, n).to(torch.float64)
    first = size.cumsum(1) - size                                                          # 0-based starts
    mid = (first + (size + 1) / 2).flatten()[group.flatten()].reshape(k, n)                # in sorted order
    ranks = torch.empty(k, n, dtype=torch.float64, device=scores.device).scatter_(1, order, mid).t()
    ties = (size ** 3 - size).sum(1)
    return ranks, ties


def rank_sums(scores, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    scores, labels = checked(scores, labels)
    ranks, ties = midranks(scores)
    pos = labels.to(torch.float64)
    return ranks.t() @ pos, pos.sum(0), ties, torch.tensor(float(scores.shape[0]), dtype=torch.float64)


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(K, C) float64 AUROC of scores (N, K) for labels (N, C) bool; NaN where a label has no positive
    or no negative image."""
    sums, n1, _, n = rank_sums(scores, labels)
    n0 = n - n1
    u = sums - (n1 * (n1 + 1) / 2)[None, :]
    out = u / (n1 * n0)[None, :]
    return torch.where(((n1 > 0) & (n0 > 0))[None, :], out, torch.full_like(out, float("nan")))


def mann_whitney_p(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(K, C) one-sided p-values that the positives' scores are stochastically larger (normal
    approximation with tie correction); NaN where undefined."""
    sums, n1, ties, n = rank_sums(scores, labels)
    n0 = n - n1
    u = sums - (n1 * (n1 + 1) / 2)[None, :]
    mean = (n1 * n0 / 2)[None, :]
    var = (n1 * n0 / 12)[None, :] * ((n + 1) - ties[:, None] / (n * (n - 1)))
    z = (u - mean) / var.sqrt()
    p = torch.special.erfc(z / math.sqrt(2)) / 2
    return torch.where(var > 0, p, torch.full_like(p, float("nan")))
