"""Chooses a backend and hands validated tensors to it. The only module that calls the kernels."""

from __future__ import annotations

import warnings

import torch

from . import _ext, torch_backend
from ._validate import DTYPE_CODES
from .masks import ConceptMasks

BACKENDS = ("auto", "cpu", "torch", "cuda", "cuda_emu")
GPU_BACKENDS = ("cuda", "cuda_emu")  # the CUDA kernels, on a GPU or emulated on the CPU
UNION_CODES = {"global": 0, "netdissect": 1, "lite": 2}


def _rebuild_hint() -> str:
    return (f"fd.build_info() = {_ext.build_info()}; rebuild on a machine with nvcc: "
            "FASTDISSECT_CUDA=ON pip install --no-build-isolation . (or use backend=\"torch\")")


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            backend = "cuda"
        elif device.type != "cpu":
            return "torch"
        elif _ext._C is None:
            warnings.warn(f"fastdissect's extension is not built ({_ext._IMPORT_ERROR}); "
                          'using the slower backend="torch"', RuntimeWarning, stacklevel=3)
            return "torch"
        else:
            return "cpu"
    if backend in ("cpu", "cuda_emu"):
        _ext.extension()
        if device.type != "cpu":
            raise ValueError(f'backend="{backend}" needs CPU tensors, got activations on {device}; '
                             'use backend="cuda" (or "auto") for CUDA tensors')
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f'backend="cuda" needs CUDA tensors, got activations on {device}')
        if not _ext.build_info().get("cuda"):
            raise RuntimeError(f"activations are on {device} but fastdissect was built without CUDA kernels: "
                               + _rebuild_hint())
    return backend


def stream_of(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _addr(t: torch.Tensor) -> int:
    return t.data_ptr() if t is not None else 0


def tally_batch(backend: str, act: torch.Tensor, masks: ConceptMasks, thresholds: torch.Tensor, union: str,
                categories: torch.Tensor | None, num_categories: int, intersection: torch.Tensor,
                unit_area: torch.Tensor, unit_category_area: torch.Tensor | None,
                non_finite: torch.Tensor | None = None) -> None:
    """Adds a validated batch into the accumulators with `backend`."""
    if backend in GPU_BACKENDS:
        _score_gpu(backend, act, masks, thresholds, union, categories, num_categories, intersection, unit_area,
                   unit_category_area, non_finite)
        return
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


def _score_gpu(backend, act, masks, thresholds, union, categories, num_categories, intersection, unit_area,
               unit_category_area, non_finite) -> None:
    """The CUDA score kernels (on the GPU, or emulated on the CPU): asynchronous, no host sync."""
    n, k = act.shape[:2]
    dev = act.device
    map_area = torch.zeros(n, k, dtype=torch.int64, device=dev) if union != "global" else None
    hit = torch.zeros(n, k, max(num_categories, 1), dtype=torch.int32, device=dev) if union == "lite" else None
    _ext.extension().score_gpu(
        emulate=backend == "cuda_emu", act=_addr(act), dtype=DTYPE_CODES[act.dtype], sizes=list(act.shape),
        strides=list(act.stride()), thresholds=_addr(thresholds), H=masks.height, W=masks.width,
        C=masks.num_concepts, words_per_mask=masks.words_per_mask, offsets=_addr(masks.offsets),
        concept_ids=_addr(masks.concept_ids), mask_rows=_addr(masks.mask_rows), words=_addr(masks.words),
        union_mode=UNION_CODES[union], categories=_addr(categories), G=num_categories,
        intersection=_addr(intersection), unit_area=_addr(unit_area), unit_category_area=_addr(unit_category_area),
        map_area=_addr(map_area), hit=_addr(hit), non_finite=_addr(non_finite), stream=stream_of(dev),
        n_threads=torch.get_num_threads())


def union_and_iou(backend: str, intersection: torch.Tensor, unit_term: torch.Tensor,
                  categories: torch.Tensor | None, concept_area: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """union (K, C) int64 and iou (K, C) float64 from contiguous int64 tallies (torch_backend.union_and_iou
    defines them): one C++ pass for CPU tallies of the "auto" and "cpu" backends, torch ops otherwise.
    `backend` is the one asked for: tallies may have been loaded or merged onto another device."""
    if backend not in ("auto", "cpu") or intersection.device.type != "cpu" or _ext._C is None:
        return torch_backend.union_and_iou(intersection, unit_term, categories, concept_area)
    k, c = intersection.shape
    union = torch.empty_like(intersection)
    iou = torch.empty(k, c, dtype=torch.float64)
    _ext.extension().union_iou_cpu(
        K=k, C=c, G=unit_term.shape[1] if categories is not None else 0, intersection=_addr(intersection),
        unit_term=_addr(unit_term), categories=_addr(categories), concept_area=_addr(concept_area),
        union_out=_addr(union), iou_out=_addr(iou), n_threads=torch.get_num_threads())
    return union, iou
