"""Every check on user input lives here; the C++ kernels trust what passes.

Messages name the argument, what was expected and what was given.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ._codes import BACKENDS, FLOAT_DTYPES, UNION_MODES


def as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        import numpy as np

        if isinstance(x, np.ndarray):
            return torch.from_numpy(x)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def activations(x, name: str = "activations", num_units: int | None = None, check_finite: bool = True) -> torch.Tensor:
    """(N, K, h, w) floating point, non-empty, finite (the GPU backends count NaN/inf on the device
    instead, without a host sync, and report them when results are read)."""
    x = as_tensor(x, name)
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape [N, K, h, w], got {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")
    if num_units is not None and x.shape[1] != num_units:
        raise ValueError(f"{name} must have {num_units} units (dim 1), got shape {tuple(x.shape)}")
    if check_finite:
        finite(x, name)
    return x


def finite(x: torch.Tensor, name: str) -> None:
    """Rejects NaN and +-inf, naming the units (dim 1) that hold them."""
    # One sum is much cheaper than an isfinite mask: NaN and inf propagate through it, so a finite
    # sum proves every value finite; a non-finite one (possibly a mere overflow) pays for the full check.
    total = x.sum(dtype=torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x.sum()
    if bool(torch.isfinite(total)):
        return
    ok = torch.isfinite(x)
    if bool(ok.all()):
        return
    per_unit = ok.transpose(0, 1).reshape(x.shape[1], -1).all(dim=1)
    bad = torch.nonzero(~per_unit).flatten().tolist()
    kinds = []
    if bool(torch.isnan(x).any()):
        kinds.append("NaN")
    if bool(torch.isinf(x).any()):
        kinds.append("inf")
    shown = ", ".join(str(u) for u in bad[:10]) + (f", ... ({len(bad)} units)" if len(bad) > 10 else "")
    raise ValueError(f"{name} contains {' and '.join(kinds)} in unit(s) {shown}; "
                     "dissection needs finite activations")


def report_non_finite(counts: torch.Tensor | None, name: str = "activations") -> None:
    """Raises for units whose device-side NaN/inf counter (GPU backends) is non-zero."""
    if counts is None or not bool((counts != 0).any()):
        return
    bad = torch.nonzero(counts).flatten().tolist()
    shown = ", ".join(str(u) for u in bad[:10]) + (f", ... ({len(bad)} units)" if len(bad) > 10 else "")
    raise ValueError(f"{name} contained NaN or inf in unit(s) {shown} (counted on the device); "
                     "dissection needs finite activations: these results are invalid")


def thresholds(t, num_units: int) -> torch.Tensor:
    t = as_tensor(t, "thresholds") if not isinstance(t, (list, tuple)) else torch.tensor(t)
    if not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"thresholds must be a float tensor, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != num_units:
        raise ValueError(f"thresholds must have shape ({num_units},) (one per unit), got {tuple(t.shape)}")
    t = t.detach().to(device="cpu", dtype=torch.float64).contiguous()
    if not bool(torch.isfinite(t).all()):
        bad = torch.nonzero(~torch.isfinite(t)).flatten().tolist()[:10]
        raise ValueError(f"thresholds must be finite, got non-finite values for unit(s) {bad}")
    return t


def union_and_categories(union: str, categories, num_concepts: int):
    """Returns (union, categories as (C,) int64 CPU tensor or None, number of categories)."""
    if union not in UNION_MODES:
        raise ValueError(f"union must be one of {UNION_MODES}, got {union!r}")
    if categories is None:
        if union != "global":
            raise ValueError(f'union="{union}" needs categories: the primary category id of each of the '
                             f"{num_concepts} concepts")
        return union, None, 0
    if isinstance(categories, (list, tuple)):
        categories = torch.tensor(categories)
    categories = as_tensor(categories, "categories")
    if categories.dtype.is_floating_point or categories.dtype == torch.bool:
        raise TypeError(f"categories must be integer category ids, got {categories.dtype}")
    if categories.dim() != 1 or categories.shape[0] != num_concepts:
        raise ValueError(f"categories must have shape ({num_concepts},) (one per concept), "
                         f"got {tuple(categories.shape)}")
    categories = categories.detach().to(device="cpu", dtype=torch.int64).contiguous()
    if num_concepts and int(categories.min()) < 0:
        raise ValueError(f"categories must be >= 0, got {int(categories.min())} "
                         f"for concept {int(categories.argmin())}")
    num_categories = int(categories.max()) + 1 if num_concepts else 1
    return union, categories, num_categories


def backend(name) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def quantile_level(q) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not (0.0 < float(q) < 1.0):
        raise ValueError(f"quantile must be a float in (0, 1) (the top fraction kept), got {q!r}")
    return float(q)


def same_images(n_act: int, n_masks: int) -> None:
    if n_act != n_masks:
        raise ValueError(f"activations and masks must hold the same images: activations have N={n_act}, "
                         f"masks have N={n_masks}")


def label_ids(ids: Sequence[int] | torch.Tensor, num_concepts: int, where: str) -> None:
    t = torch.as_tensor(ids)
    if t.numel() == 0:
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= num_concepts:
        bad = lo if lo < 0 else hi
        raise ValueError(f"label id {bad} in {where} is out of range: ids must be in [0, {num_concepts}) "
                         f"(num_concepts={num_concepts}; 0 = unlabeled)")
