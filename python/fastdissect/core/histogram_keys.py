"""Order-preserving keys and histogram bins of float64 values, in torch and in plain Python.

`bins` mirrors csrc/common/histogram_key.h exactly (tests compare them on every dtype's edge cases).
Keys are signed int64 with key(a) < key(b) iff a < b, for every non-NaN double; -0.0 maps to key(0.0).
"""

from __future__ import annotations

import struct

import torch

HIST_BINS = 4096
ZERO_BIN = 2048
_MAGNITUDE = 0x7FFF_FFFF_FFFF_FFFF


def bins(values: torch.Tensor) -> torch.Tensor:
    """float64 values -> int64 histogram bins in [1, HIST_BINS)."""
    bits = values.view(torch.int64)
    exponent = (bits >> 52) & 0x7FF
    top3 = (bits >> 49) & 7
    magnitude = ((exponent - 1023 + 128) * 8 + top3).clamp(1, ZERO_BIN - 1)
    signed = torch.where(bits < 0, ZERO_BIN - magnitude, ZERO_BIN + magnitude)
    return torch.where(values == 0, torch.full_like(signed, ZERO_BIN), signed)


def keys(values: torch.Tensor) -> torch.Tensor:
    """float64 values -> order-preserving int64 keys."""
    bits = (values + 0.0).view(torch.int64)  # x + 0.0 turns -0.0 into +0.0
    return torch.where(bits < 0, bits ^ _MAGNITUDE, bits)


def key_of(value: float) -> int:
    bits = struct.unpack("<q", struct.pack("<d", value + 0.0))[0]
    return bits ^ _MAGNITUDE if bits < 0 else bits


def value_of(key: int) -> float:
    bits = key ^ _MAGNITUDE if key < 0 else key
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def values_of(k: torch.Tensor) -> torch.Tensor:
    """Inverse of `keys` (int64 tensor -> float64 tensor)."""
    return torch.where(k < 0, k ^ _MAGNITUDE, k).view(torch.float64)


def bin_of(value: float) -> int:
    return int(bins(torch.tensor([value], dtype=torch.float64))[0])


def bin_key_range(b: int) -> tuple[int, int]:
    """The keys [lo, hi] of all finite values in bin b (a contiguous range: bins are monotone)."""
    return _first_key_at_least(b), _first_key_at_least(b + 1) - 1


def _first_key_at_least(b: int) -> int:
    lo, hi = key_of(float("-inf")), key_of(float("inf")) + 1  # answer in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if bin_of(value_of(mid)) >= b:
            hi = mid
        else:
            lo = mid + 1
    return lo


def bin_floor_values(device=None) -> torch.Tensor:
    """(HIST_BINS,) float64: the least value of each histogram bin (bins 0 and 1: -inf)."""
    lo = torch.full((HIST_BINS,), key_of(float("-inf")), dtype=torch.int64)
    hi = torch.full((HIST_BINS,), key_of(float("inf")), dtype=torch.int64)
    want = torch.arange(HIST_BINS, dtype=torch.int64)
    while bool((lo < hi).any()):  # smallest key whose bin is >= b; 64 halvings of the key range
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)
        up = bins(values_of(mid)) >= want
        hi, lo = torch.where(up, mid, hi), torch.where(up, lo, mid + 1)
    return values_of(lo).to(device)
