"""Exact per-unit quantiles with numpy.quantile's interpolation methods.

The quantile of n sorted values is read from at most two order statistics x[i] <= x[j]; which ones
and the interpolation between them follow numpy exactly (`order_statistics`, `interpolate`), so the
result equals numpy.quantile(values.astype(float64), level, method=...) bit for bit. The order
statistics themselves come from the streaming `TopQuantile` (top_quantile.py).
"""

from __future__ import annotations

import math

import torch

# numpy's continuous methods as (alpha, beta) plotting positions; "linear" has its own formula there.
_CONTINUOUS = {"hazen": (0.5, 0.5), "weibull": (0.0, 0.0), "median_unbiased": (1 / 3.0, 1 / 3.0),
               "normal_unbiased": (3 / 8.0, 3 / 8.0)}
METHODS = ("linear", "lower", "higher", "nearest", "midpoint") + tuple(_CONTINUOUS)

# NetDissect and NetDissect-Lite read their sketch at this level; on exact data their threshold is
# numpy.quantile(x, NETDISSECT_LEVEL, method="hazen"), i.e. quantile=NETDISSECT_QUANTILE below.
NETDISSECT_LEVEL = 994 / 999
NETDISSECT_QUANTILE = 1 - NETDISSECT_LEVEL


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def order_statistics(n: int, level: float, method: str) -> tuple[int, int, float]:
    """(i, j, gamma): the quantile is interpolate(x[i], x[j], gamma) over n sorted values.

    >>> order_statistics(1000, 0.995, "linear")[:2], order_statistics(999, 994 / 999, "hazen")
    ((994, 995), (993, 994, 0.5))
    """
    if method == "lower":
        i = int(math.floor((n - 1) * level))
        return i, i, 0.0
    if method == "higher":
        i = int(math.ceil((n - 1) * level))
        return i, i, 0.0
    if method == "nearest":
        i = int(round((n - 1) * level))  # round half to even, as numpy.around
        return i, i, 0.0
    if method in ("linear", "midpoint"):
        virtual = (n - 1) * level
    else:
        alpha, beta = _CONTINUOUS[method]
        virtual = n * level + (alpha + level * (1 - alpha - beta)) - 1
    if math.isnan(virtual):
        raise ValueError("quantile level is NaN")
    if virtual >= n - 1:
        return n - 1, n - 1, 0.0
    if virtual < 0:
        return 0, 0, 0.0
    i = int(math.floor(virtual))
    gamma = virtual - i
    if method == "midpoint":
        gamma = 0.0 if virtual % 1 == 0 else 0.5
    return i, i + 1, gamma


def interpolate(lo: torch.Tensor, hi: torch.Tensor, gamma: float) -> torch.Tensor:
    """numpy's _lerp, which is exact at both ends: a + (b - a) * t, or b - (b - a) * (1 - t) for t >= 0.5."""
    diff = hi - lo
    if gamma >= 0.5:
        return hi - diff * (1 - gamma)
    return lo + diff * gamma
