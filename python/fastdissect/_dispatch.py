"""Chooses a backend and hands validated tensors to it. The only module that calls the kernels."""

from __future__ import annotations

import warnings

import torch

from . import _ext, torch_backend
from ._validate import DTYPE_CODES
from .masks import ConceptMasks

BACKENDS = ("auto", "cpu", "torch")
UNION_CODES = {"global": 0, "netdissect": 1, "lite": 2}


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type != "cpu":
            return "torch"
        if _ext._C is None:
            warnings.warn(f"fastdissect's extension is not built ({_ext._IMPORT_ERROR}); "
                          'using the slower backend="torch"', RuntimeWarning, stacklevel=3)
            return "torch"
        return "cpu"
    if backend == "cpu":
        _ext.extension()
        if device.type != "cpu":
            raise ValueError(f'backend="cpu" needs CPU tensors, got activations on {device}; '
                             'use backend="torch" (or "auto") for other devices')
    return backend


def _addr(t: torch.Tensor) -> int:
    return t.data_ptr() if t is not None else 0


def tally_batch(backend: str, act: torch.Tensor, masks: ConceptMasks, thresholds: torch.Tensor, union: str,
                categories: torch.Tensor | None, num_categories: int, intersection: torch.Tensor,
                unit_area: torch.Tensor, unit_category_area: torch.Tensor | None) -> None:
    """Adds a validated batch into the accumulators with `backend` ("cpu" or "torch")."""
    if backend == "torch":
        torch_backend.tally_batch(act, masks, thresholds, union, categories, num_categories, intersection,
                                  unit_area, unit_category_area)
        return
    _ext.extension().score_cpu(
        act=_addr(act), dtype=DTYPE_CODES[act.dtype], sizes=list(act.shape), strides=list(act.stride()),
        thresholds=_addr(thresholds), H=masks.height, W=masks.width, C=masks.num_concepts,
        words_per_mask=masks.words_per_mask, offsets=_addr(masks.offsets), concept_ids=_addr(masks.concept_ids),
        mask_rows=_addr(masks.mask_rows), words=_addr(masks.words), union_mode=UNION_CODES[union],
        categories=_addr(categories), G=num_categories, intersection=_addr(intersection),
        unit_area=_addr(unit_area), unit_category_area=_addr(unit_category_area),
        n_threads=torch.get_num_threads())
