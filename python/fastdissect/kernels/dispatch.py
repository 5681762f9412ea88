"""The one kernel-call layer: chooses a backend and hands validated tensors to the extension.

No other module calls the extension. Each kernel has one function here taking tensors; each fills
the kernel's Params struct, whose fields are declared once in csrc/bindings.cpp. Accumulators
resolve their backend once (`resolve_backend`) and pass the result to every call.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

from . import ext, torch_backend
from ..core.codes import BACKENDS, DTYPE_CODES, GPU_BACKENDS, SCORE_BRANCHES, UNION_CODES
from ..core.validate import backend as check_backend
from ..core.validate import report_non_finite
from ..core.masks import ConceptMasks

__all__ = ["BACKENDS", "GPU_BACKENDS", "resolve_backend", "has_extension", "ControlTallies", "tally_batch", "union_and_iou",
           "unit_masks", "draw_tiles", "formula_counts", "pair_counts", "histogram_add_cpu", "histogram_add_gpu", "codes",
           "emu_shim_selftest", "emu_barrier_selftest", "emu_last_launches"]


def has_extension() -> bool:
    return ext.available()


def _rebuild_hint() -> str:
    return (f"fd.build_info() = {ext.build_info()}; rebuild on a machine with nvcc: "
            "FASTDISSECT_CUDA=ON pip install --no-build-isolation . (or use backend=\"torch\")")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ("cpu", "torch", "cuda" or "cuda_emu") for tensors on `device`."""
    check_backend(backend)
    if backend == "auto":
        if device.type == "cuda":
            backend = "cuda"
        elif device.type != "cpu":
            return "torch"
        elif not has_extension():
            warnings.warn(f"fastdissect's extension is not built ({ext.import_error()}); "
                          'using the slower backend="torch"', RuntimeWarning, stacklevel=3)
            return "torch"
        else:
            return "cpu"
    if backend in ("cpu", "cuda_emu"):
        ext.extension()
        if device.type != "cpu":
            raise ValueError(f'backend="{backend}" needs CPU tensors, got activations on {device}; '
                             'use backend="cuda" (or "auto") for CUDA tensors')
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f'backend="cuda" needs CUDA tensors, got activations on {device}')
        if not ext.build_info().get("cuda"):
            raise RuntimeError(f"activations are on {device} but fastdissect was built without CUDA kernels: "
                               + _rebuild_hint())
    return backend


def codes() -> dict:
    """The enumerations as the compiled kernels define them (for the consistency test)."""
    return dict(ext.extension().codes())


def _stream_of(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _addr(t: torch.Tensor | None) -> int:
    return t.data_ptr() if t is not None else 0


def _set_activations(params, act: torch.Tensor) -> None:
    """The (N, K, h, w) view of activations; (M, K) values are (M, K, 1, 1)."""
    sizes, strides = list(act.shape), list(act.stride())
    if act.dim() == 2:
        sizes, strides = sizes + [1, 1], strides + [0, 0]
    params.set_activations(_addr(act), DTYPE_CODES[act.dtype], sizes, strides)


# ---- score: upsample, threshold, bit-pack, popcount against the concept masks
class ControlTallies(NamedTuple):
    """A second mask set of the same N images and its accumulators (the permuted control's): counted
    against the same unit masks in the same kernel call (ScoreParams' ctl_ fields)."""

    masks: ConceptMasks
    intersection: torch.Tensor                # (K, C) int64
    unit_area: torch.Tensor                   # (K,) int64
    unit_category_area: torch.Tensor | None   # (K, G) int64, netdissect / lite unions
    image_hits: torch.Tensor | None = None    # (K, C) int64


def tally_batch(backend: str, act: torch.Tensor, masks: ConceptMasks, thresholds: torch.Tensor, union: str,
                categories: torch.Tensor | None, num_categories: int, intersection: torch.Tensor,
                unit_area: torch.Tensor, unit_category_area: torch.Tensor | None,
                non_finite: torch.Tensor | None = None, *, pillow=None, exhaustive: bool = False,
                branch_counts: torch.Tensor | None = None, mask_out: torch.Tensor | None = None,
                image_hits: torch.Tensor | None = None, control: ControlTallies | None = None) -> None:
    """Adds a validated batch into the accumulators (+=) with the resolved `backend`.

    pillow: (x_first, x_weights, y_first, y_weights) tensors: resample as Pillow's BILINEAR does
    (NetDissect-Lite's masks; CPU kernel only). exhaustive / branch_counts: the CPU kernel's testing
    switches (ScoreParams in csrc/common/score.h). mask_out: a zeroed (N, K, words per mask) int64
    tensor that receives every map's packed mask (not with the torch backend: see `unit_masks`).
    image_hits: (K, C) int64, += the entries whose concept mask the unit's mask meets.
    control: a `ControlTallies`, += what the same unit masks count against its masks (as if a second
    call had been made with them); the torch backend makes that second call.
    """
    if control is not None:
        _check_control(act, masks, control, image_hits)
    if backend == "torch":
        if pillow is not None or exhaustive or branch_counts is not None or mask_out is not None:
            raise ValueError('the torch backend has no Pillow resampling or testing switches: use backend="cpu"')
        torch_backend.tally_batch(act, masks, thresholds, union, categories, num_categories, intersection,
                                  unit_area, unit_category_area, image_hits)
        if control is not None:
            torch_backend.tally_batch(act, control.masks, thresholds, union, categories, num_categories,
                                      control.intersection, control.unit_area, control.unit_category_area,
                                      control.image_hits)
        return
    C = ext.extension()
    p = _score_params(C, act, masks, thresholds, union, categories, num_categories, intersection, unit_area,
                      unit_category_area, image_hits)
    if control is not None:
        _set_control(p, control)
    if mask_out is not None:
        if mask_out.shape != (act.shape[0], act.shape[1], masks.words_per_mask) or mask_out.dtype != torch.int64 \
                or not mask_out.is_contiguous() or mask_out.device != act.device:
            raise ValueError("mask_out must be a contiguous int64 tensor (N, K, words per mask) beside the activations")
        p.mask_out = _addr(mask_out)
    if backend in GPU_BACKENDS:
        if pillow is not None or exhaustive or branch_counts is not None:
            raise ValueError("the CUDA kernels have no Pillow resampling or testing switches: use backend=\"cpu\"")
        _score_gpu(C, p, backend, act, union, num_categories, non_finite, masks.concept_ids.shape[0] if
                   image_hits is not None else None, control)
        return
    if pillow is not None:
        x_first, x_weights, y_first, y_weights = pillow
        p.pil_x_first, p.pil_x_weights, p.pil_x_taps = _addr(x_first), _addr(x_weights), x_weights.shape[1]
        p.pil_y_first, p.pil_y_weights, p.pil_y_taps = _addr(y_first), _addr(y_weights), y_weights.shape[1]
    if branch_counts is not None:
        if branch_counts.shape != (len(SCORE_BRANCHES),) or branch_counts.dtype != torch.int64:
            raise ValueError(f"branch_counts must be an int64 tensor of shape ({len(SCORE_BRANCHES)},)")
        p.branch_counts = _addr(branch_counts)
    p.exhaustive = bool(exhaustive)
    C.score_cpu(p, torch.get_num_threads())


def _score_params(C, act, masks: ConceptMasks, thresholds, union: str, categories, num_categories: int,
                  intersection, unit_area, unit_category_area, image_hits):
    """The ScoreParams of one batch's labels and outputs (the options and the control set later)."""
    p = C.ScoreParams()
    _set_activations(p, act)
    p.thresholds = _addr(thresholds)
    p.H, p.W, p.C, p.words_per_mask = masks.height, masks.width, masks.num_concepts, masks.words_per_mask
    p.offsets, p.concept_ids = _addr(masks.offsets), _addr(masks.concept_ids)
    p.mask_rows, p.words = _addr(masks.mask_rows), _addr(masks.words)
    p.union_mode, p.categories, p.G = UNION_CODES[union], _addr(categories), num_categories
    p.intersection, p.unit_area, p.unit_category_area = _addr(intersection), _addr(unit_area), \
        _addr(unit_category_area)
    p.image_hits = _addr(image_hits)
    return p


def _check_control(act: torch.Tensor, masks: ConceptMasks, control: ControlTallies, image_hits) -> None:
    """The control's masks describe the same images at the same size as `masks`, beside the activations."""
    cm = control.masks
    if cm.num_images != act.shape[0]:
        raise ValueError(f"control masks: {cm.num_images} images, the activations {act.shape[0]}")
    if (cm.height, cm.width, cm.num_concepts) != (masks.height, masks.width, masks.num_concepts):
        raise ValueError(f"control masks: {cm.num_concepts} concepts at {cm.height}x{cm.width}, the masks "
                         f"{masks.num_concepts} at {masks.height}x{masks.width}")
    if cm.device != act.device:
        raise ValueError(f"control masks are on {cm.device}, the activations on {act.device}")
    if (control.image_hits is None) != (image_hits is None):
        raise ValueError("control.image_hits must be given exactly when image_hits is")


def _set_control(p, control: ControlTallies) -> None:
    cm = control.masks
    p.ctl_offsets, p.ctl_concept_ids = _addr(cm.offsets), _addr(cm.concept_ids)
    p.ctl_mask_rows, p.ctl_words = _addr(cm.mask_rows), _addr(cm.words)
    p.ctl_intersection, p.ctl_unit_area = _addr(control.intersection), _addr(control.unit_area)
    p.ctl_unit_category_area, p.ctl_image_hits = _addr(control.unit_category_area), _addr(control.image_hits)


def _score_gpu(C, p, backend: str, act: torch.Tensor, union: str, num_categories: int,
               non_finite: torch.Tensor | None, num_entries: int | None, control: ControlTallies | None = None) -> None:
    """The CUDA score kernels (on the GPU, or emulated on the CPU): asynchronous, no host sync."""
    n, k = act.shape[:2]
    dev = act.device
    hits = lambda: torch.zeros(n, k, max(num_categories, 1), dtype=torch.int32, device=dev)  # noqa: E731
    map_area = torch.zeros(n, k, dtype=torch.int64, device=dev) if union != "global" else None
    hit = hits() if union == "lite" else None
    s = C.ScoreScratch()
    # Written by the kernels before they are read: each map's scale, each output coordinate's taps.
    map_scale = torch.empty(n, k, dtype=torch.float64, device=dev)
    taps = torch.empty((p.H + p.W) * C.SCREEN_TAP_BYTES, dtype=torch.uint8, device=dev)
    s.map_area, s.hit, s.non_finite = _addr(map_area), _addr(hit), _addr(non_finite)
    s.map_scale, s.taps = _addr(map_scale), _addr(taps)
    entry_hit = ctl_hit = ctl_entry_hit = None
    if num_entries is not None:  # a flag per (unit, entry): a map's words are counted by many threads
        entry_hit = torch.zeros(k, max(num_entries, 1), dtype=torch.int32, device=dev)
        s.entry_hit, s.num_entries = _addr(entry_hit), num_entries
    if control is not None:
        ctl_hit = hits() if union == "lite" else None
        s.ctl_hit = _addr(ctl_hit)
        if control.image_hits is not None:
            ctl_entries = control.masks.concept_ids.shape[0]
            ctl_entry_hit = torch.zeros(k, max(ctl_entries, 1), dtype=torch.int32, device=dev)
            s.ctl_entry_hit, s.ctl_num_entries = _addr(ctl_entry_hit), ctl_entries
    C.score_gpu(p, s, backend == "cuda_emu", _stream_of(dev), torch.get_num_threads())


def union_and_iou(backend: str, intersection: torch.Tensor, unit_term: torch.Tensor,
                  categories: torch.Tensor | None, concept_area: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """union (K, C) int64 and iou (K, C) float64 from contiguous int64 tallies (torch_backend.union_and_iou
    defines them): one C++ pass for CPU tallies of the "auto" and "cpu" backends, torch ops otherwise.
    `backend` is the one asked for: tallies may have been loaded or merged onto another device."""
    if backend not in ("auto", "cpu") or intersection.device.type != "cpu" or not has_extension():
        return torch_backend.union_and_iou(intersection, unit_term, categories, concept_area)
    k, c = intersection.shape
    union = torch.empty_like(intersection)
    iou = torch.empty(k, c, dtype=torch.float64)
    C = ext.extension()
    p = C.UnionIouParams()
    p.K, p.C, p.G = k, c, unit_term.shape[1] if categories is not None else 0
    p.intersection, p.unit_term, p.categories = _addr(intersection), _addr(unit_term), _addr(categories)
    p.concept_area, p.union_out, p.iou_out = _addr(concept_area), _addr(union), _addr(iou)
    C.union_iou_cpu(p, torch.get_num_threads())
    return union, iou


# ---- label PNGs: scanline filters undone, R + 256 * G read (datasets/label_png.py parses the file)
def png_labels(raw: bytes, height: int, width: int, channels: int) -> tuple:
    """(height, width) int64 labels from a PNG's inflated scanlines (3 or 4 channels of 8 bits), and
    -1, or the first row whose filter type is unknown (the caller names the file and raises)."""
    source = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    scratch = torch.empty(2 * width * channels, dtype=torch.uint8)
    labels = torch.empty(height, width, dtype=torch.int64)
    C = ext.extension()
    p = C.PngLabelsParams()
    p.raw, p.height, p.width, p.channels = _addr(source), height, width, channels
    p.scratch, p.labels = _addr(scratch), _addr(labels)
    return labels.numpy(), C.png_labels_cpu(p)


# ---- unit masks and formula popcounts: the compositional search (explanations.py)
def unit_masks(backend: str, act: torch.Tensor, height: int, width: int, thresholds: torch.Tensor,
               pillow=None) -> torch.Tensor:
    """(N, K, words per mask) int64: the packed masks M_k(x_n) at height x width, as `tally_batch`
    defines them (the score kernel run against no concepts, writing its masks out); pillow: as in
    `tally_batch` (CPU only)."""
    n, k = act.shape[:2]
    if backend == "torch" and pillow is None:
        return torch_backend.unit_masks(act, height, width, thresholds)
    wpm = (height * width + 63) // 64
    dev = act.device
    none = ConceptMasks(1, height, width, torch.zeros(n + 1, dtype=torch.int64, device=dev),
                        *(torch.zeros(0, dtype=torch.int64, device=dev) for _ in range(2)),
                        torch.zeros(0, wpm, dtype=torch.int64, device=dev), torch.zeros(0, dtype=torch.int64, device=dev),
                        verified=True)
    out = torch.zeros(n, k, wpm, dtype=torch.int64, device=dev)
    non_finite = torch.zeros(k, dtype=torch.int64, device=dev)
    tally_batch(backend, act, none, thresholds, "global", None, 0, torch.zeros(k, 1, dtype=torch.int64, device=dev),
                torch.zeros(k, dtype=torch.int64, device=dev), None, non_finite, mask_out=out, pillow=pillow)
    if backend in GPU_BACKENDS:
        report_non_finite(non_finite, invalid="these unit masks")
    return out


def draw_tiles(backend: str, masks: torch.Tensor, second: torch.Tensor | None, bright: torch.Tensor,
               dim: torch.Tensor, thumbnail: torch.Tensor, out: torch.Tensor, corner: torch.Tensor,
               outline: tuple, second_outline: tuple) -> None:
    """Draws M report tiles into `out` (S, H', W') int32 RGBX pixels (Pillow's layout for RGB), tile
    m with its top-left pixel at corner[m] = (s, y, x): thumbnail[m] of `bright` (T, H, W) int32 RGBX
    inside packed mask m (masks (M, words), as `unit_masks` writes them), of `dim` outside, the
    mask's outline in the RGB `outline` over the outline of `second`'s mask m (when given) in
    `second_outline`. Report drawing is host work: every backend but "torch" draws on the CPU."""
    _check_tiles(masks, second, bright, dim, thumbnail, out, corner)
    colors = [rgbx(c) for c in (outline, second_outline)]
    if backend == "torch":
        return torch_backend.draw_tiles(masks, second, bright, dim, thumbnail, out, corner, *colors)
    offset = (corner * torch.tensor(out.stride(), dtype=torch.int64)).sum(dim=1).contiguous()
    C = ext.extension()
    p = C.TilesParams()
    p.M, (p.height, p.width), p.words_per_mask = len(masks), bright.shape[1:], masks.shape[1]
    p.masks, p.second, p.bright, p.dim = _addr(masks), _addr(second), _addr(bright), _addr(dim)
    p.thumbnail, p.out, p.out_row, p.offset = _addr(thumbnail), _addr(out), out.stride(1), _addr(offset)
    p.outline, p.second_outline = (c & 0xFFFFFFFF for c in colors)
    C.tiles_cpu(p, torch.get_num_threads())


def rgbx(color: tuple) -> int:
    """An (r, g, b) colour as the int32 value of its RGBX pixel (little-endian bytes r, g, b, 255)."""
    r, g, b = (int(c) for c in color)
    value = r | g << 8 | b << 16 | 255 << 24
    return value - (1 << 32) if value >= 1 << 31 else value


def _check_tiles(masks, second, bright, dim, thumbnail, out, corner) -> None:
    """The tiles' inputs, checked so that no tile reads or writes outside its tensors."""
    need = [(bright, torch.int32, "bright"), (dim, torch.int32, "dim"), (out, torch.int32, "out"),
            (masks, torch.int64, "masks"), (thumbnail, torch.int64, "thumbnail"), (corner, torch.int64, "corner")]
    for t, dtype, name in need + ([(second, torch.int64, "second")] if second is not None else []):
        if t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"draw_tiles: {name} must be a contiguous CPU {dtype} tensor, got {t.dtype} "
                             f"on {t.device}{'' if t.is_contiguous() else ', non-contiguous'}")
    if bright.dim() != 3 or dim.shape != bright.shape or min(bright.shape[1:]) < 1:
        raise ValueError(f"draw_tiles: bright and dim must be (T, H, W) of one shape, got "
                         f"{tuple(bright.shape)} and {tuple(dim.shape)}")
    m, (h, w) = len(masks), bright.shape[1:]
    if masks.shape != (m, (h * w + 63) // 64) or (second is not None and second.shape != masks.shape):
        raise ValueError(f"draw_tiles: masks must be ({m}, {(h * w + 63) // 64}) packed {h}x{w} masks, got "
                         f"{tuple(masks.shape)}" + (f" and {tuple(second.shape)}" if second is not None else ""))
    if thumbnail.shape != (m,) or (m and not (0 <= int(thumbnail.min()) and int(thumbnail.max()) < len(bright))):
        raise ValueError(f"draw_tiles: thumbnail must be ({m},) indices below {len(bright)}")
    if out.dim() != 3 or corner.shape != (m, 3):
        raise ValueError(f"draw_tiles: out must be (S, H', W') and corner ({m}, 3), got {tuple(out.shape)} "
                         f"and {tuple(corner.shape)}")
    if m and (int(corner.min()) < 0 or int(corner[:, 0].max()) >= out.shape[0] or
              int(corner[:, 1].max()) + h > out.shape[1] or int(corner[:, 2].max()) + w > out.shape[2]):
        raise ValueError(f"draw_tiles: a {h}x{w} tile leaves out {tuple(out.shape)} (corners "
                         f"{corner.tolist()[:4]}...)")


def formula_counts(backend: str, formulas, formula_unit_rows: torch.Tensor, unit_words: torch.Tensor,
                   masks: ConceptMasks) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, C) int64 |F & L| and |F & U & L| for each mask F of the MaskSet `formulas` and each concept
    L of `masks`; formula_unit_rows aligns each entry of `formulas` with its unit's row of
    `unit_words` (-1: the unit is off there). FormulaCountsParams in csrc/common/formula_counts.h."""
    S, C = len(formulas), masks.num_concepts
    dev = formulas.device
    fl = torch.zeros(S, C, dtype=torch.int64, device=dev)
    flu = torch.zeros(S, C, dtype=torch.int64, device=dev)
    if backend == "torch":
        torch_backend.formula_counts(formulas, formula_unit_rows, unit_words, masks, fl, flu)
        return fl, flu
    lib = ext.extension()
    p = lib.FormulaCountsParams()
    p.B, p.hw, p.words_per_mask = S, masks.height * masks.width, masks.words_per_mask
    p.f_offsets, p.f_images, p.f_rows = _addr(formulas.offsets), _addr(formulas.images), _addr(formulas.rows)
    p.f_unit_rows, p.f_words, p.u_words = _addr(formula_unit_rows), _addr(formulas.words), _addr(unit_words)
    p.C, p.offsets, p.concept_ids = C, _addr(masks.offsets), _addr(masks.concept_ids)
    p.mask_rows, p.words, p.fl, p.flu = _addr(masks.mask_rows), _addr(masks.words), _addr(fl), _addr(flu)
    if backend in GPU_BACKENDS:
        lib.formula_counts_gpu(p, int(formulas.images.shape[0]), backend == "cuda_emu", _stream_of(dev),
                               torch.get_num_threads())
    else:
        lib.formula_counts_cpu(p, torch.get_num_threads())
    return fl, flu


def pair_counts(backend: str, leaves, a: torch.Tensor, b: torch.Tensor, unit_rows: torch.Tensor,
                unit_words: torch.Tensor, masks: ConceptMasks, unit_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) int64 |A_i & B_i & L| and |A_i & B_i & U & L| for leaves A_i = leaves[a[i]], B_i =
    leaves[b[i]] of the MaskSet `leaves` (images increasing within each leaf) and each concept L of
    `masks`; unit_rows (N,): the row of the unit's mask on each image in `unit_words` (-1: off);
    unit_only: count on the unit's images only. PairCountsParams in csrc/common/pair_counts.h."""
    B, C, dev = a.shape[0], masks.num_concepts, leaves.device
    if b.shape != a.shape or unit_rows.shape != (leaves.num_images,):
        raise ValueError(f"pair_counts: a {tuple(a.shape)} and b {tuple(b.shape)} must match and unit_rows "
                         f"{tuple(unit_rows.shape)} must have one row per image ({leaves.num_images})")
    if B and (int(torch.minimum(a.min(), b.min())) < 0 or int(torch.maximum(a.max(), b.max())) >= len(leaves)):
        raise ValueError(f"pair_counts: leaf ids must lie in [0, {len(leaves)})")
    a, b = a.to(dev, torch.int64), b.to(dev, torch.int64)
    unit_rows = unit_rows.to(dev, torch.int64).contiguous()
    t = torch.zeros(B, C, dtype=torch.int64, device=dev)
    tu = torch.zeros(B, C, dtype=torch.int64, device=dev)
    if B == 0:
        return t, tu
    if backend == "torch":
        torch_backend.pair_counts(leaves, a, b, unit_rows, unit_words, masks, unit_only, t, tu)
        return t, tu
    # The kernel looks each image of a up in b: a is the leaf with fewer images.
    lengths = leaves.offsets.diff()
    swap = lengths[a] > lengths[b]
    a, b = torch.where(swap, b, a).contiguous(), torch.where(swap, a, b).contiguous()
    lib = ext.extension()
    p = lib.PairCountsParams()
    p.B, p.hw, p.words_per_mask = B, masks.height * masks.width, masks.words_per_mask
    p.pair_a, p.pair_b, p.P = _addr(a), _addr(b), len(leaves)
    p.leaf_offsets, p.leaf_images, p.leaf_rows = _addr(leaves.offsets), _addr(leaves.images), _addr(leaves.rows)
    p.leaf_words, p.N, p.unit_rows, p.u_words = _addr(leaves.words), leaves.num_images, _addr(unit_rows), _addr(unit_words)
    p.unit_only, p.C, p.offsets, p.concept_ids = int(unit_only), C, _addr(masks.offsets), _addr(masks.concept_ids)
    p.mask_rows, p.words, p.t, p.tu = _addr(masks.mask_rows), _addr(masks.words), _addr(t), _addr(tu)
    if backend in GPU_BACKENDS:
        items = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), torch.cumsum(lengths[a], 0)])
        lib.pair_counts_gpu(p, _addr(items), int(items[-1]), backend == "cuda_emu", _stream_of(dev),
                            torch.get_num_threads())
    else:
        lib.pair_counts_cpu(p, torch.get_num_threads())
    return t, tu


# ---- histogram: the first pass of the exact streaming quantile (top_quantile.py)
def _histogram_params(C, act: torch.Tensor, floor: torch.Tensor, keep_top: int, counts: torch.Tensor,
                      min_max: torch.Tensor):
    p = C.HistogramParams()
    _set_activations(p, act)
    p.floor_bin, p.keep_top, p.counts, p.min_max = _addr(floor), keep_top, _addr(counts), _addr(min_max)
    return p


def histogram_add_cpu(act: torch.Tensor, floor: torch.Tensor, keep_top: int, counts: torch.Tensor,
                      min_max: torch.Tensor):
    """Adds (N, K, h, w) or (M, K) values into the histograms (in place) and returns the values kept
    from each raised floor up: (values, count per unit), or None when the batch is not finite (the
    state is then unchanged)."""
    C = ext.extension()
    values, per_unit = C.histogram_cpu(_histogram_params(C, act, floor, keep_top, counts, min_max),
                                       torch.get_num_threads())
    if values is None:
        return None
    return torch.from_numpy(values), torch.from_numpy(per_unit)


def histogram_add_gpu(backend: str, act: torch.Tensor, floor: torch.Tensor, keep_top: int, counts: torch.Tensor,
                      min_max: torch.Tensor, non_finite: torch.Tensor, overflow: torch.Tensor, capacity: int):
    """The CUDA histogram kernels, asynchronous on the current stream. Returns device tensors
    (kept values, their units, the number kept, which may exceed `capacity`); units whose kept
    values did not fit are flagged in `overflow`."""
    C = ext.extension()
    K, dev = counts.shape[0], act.device
    i64 = torch.iinfo(torch.int64)
    min_max_key = torch.tensor([[i64.max, i64.min]], dtype=torch.int64, device=dev).repeat(K, 1)
    floor_value = torch.empty(K, dtype=torch.float64, device=dev)
    values = torch.empty(capacity, dtype=torch.float64, device=dev)
    units = torch.empty(capacity, dtype=torch.int64, device=dev)
    count = torch.zeros(1, dtype=torch.int64, device=dev)
    s = C.HistogramScratch()
    s.min_max_key, s.non_finite, s.floor_value = _addr(min_max_key), _addr(non_finite), _addr(floor_value)
    s.kept_values, s.kept_units, s.kept_count = _addr(values), _addr(units), _addr(count)
    s.capacity, s.overflow = capacity, _addr(overflow)
    C.histogram_gpu(_histogram_params(C, act, floor, keep_top, counts, min_max), s, backend == "cuda_emu",
                    _stream_of(dev), torch.get_num_threads())
    return values, units, count


def emu_shim_selftest(items: int, blocks: int, threads: int, n_threads: int, visits: torch.Tensor,
                      total: torch.Tensor, bits: torch.Tensor, lo_hi: torch.Tensor, last: torch.Tensor) -> None:
    """Runs the kernel that exercises every emulated CUDA built-in (csrc/emu/emu_selftest.cpp)."""
    ext.extension().emu_shim_selftest(items=items, blocks=blocks, threads=threads, n_threads=n_threads,
                                       visits=_addr(visits), sum=_addr(total), bits=_addr(bits),
                                       lo_hi=_addr(lo_hi), last_index=_addr(last))


def emu_barrier_selftest(blocks: int, threads: int, n_threads: int, out: torch.Tensor, barriers: bool = True) -> None:
    """Runs the kernel that checks the emulation's __syncthreads (csrc/emu/emu_selftest.cpp) into
    `out` (blocks * threads int64); barriers=False launches it without them, which must raise."""
    ext.extension().emu_barrier_selftest(blocks=blocks, threads=threads, n_threads=n_threads, out=_addr(out),
                                          barriers=barriers)


def emu_last_launches() -> dict:
    """The launches of the last emulated op call: {"planned": [...], "launched": [...]}, each a list of
    {"kernel", "grid", "block", "shared_bytes"}: the op's launch plan (the GPU's geometry) and what the
    emulation ran (csrc/emu/cuda_emu.h)."""
    return dict(ext.extension().emu_last_launches())
