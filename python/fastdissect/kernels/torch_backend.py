"""backend="torch": the scoring formulas in plain torch, on any device.

It evaluates the same bilinear expression in the same float64 order as the C++ kernels
(csrc/common/upsample.h), so its masks agree with them bit for bit. Upsampled maps are materialized
in chunks of at most `CHUNK_BYTES`, never for a whole batch.
"""

from __future__ import annotations

import functools

import torch

from ..core.masks import ConceptMasks, expand_ranges

CHUNK_BYTES = 64 << 20


def linear_taps(in_size: int, out_size: int, device) -> tuple[torch.Tensor, ...]:
    """(i0, i1, l0, l1) per output coordinate, as csrc/common/upsample.h `linear_tap` (computed once
    per sizes and device: the report upsamples thousands of maps of one size)."""
    return _taps(int(in_size), int(out_size), str(torch.device(device)))


@functools.lru_cache(maxsize=64)
def _taps(in_size: int, out_size: int, device: str) -> tuple[torch.Tensor, ...]:
    scale = float(in_size) / float(out_size)
    i0s, i1s, l0s, l1s = [], [], [], []
    for d in range(out_size):
        src = max(scale * (d + 0.5) - 0.5, 0.0)
        i0 = min(int(src), in_size - 1)
        l1 = min(max(src - i0, 0.0), 1.0)
        i0s.append(i0)
        i1s.append(i0 + (1 if i0 < in_size - 1 else 0))
        l1s.append(l1)
        l0s.append(1.0 - l1)
    as_t = lambda xs, dt: torch.tensor(xs, dtype=dt, device=device)  # noqa: E731
    return as_t(i0s, torch.int64), as_t(i1s, torch.int64), as_t(l0s, torch.float64), as_t(l1s, torch.float64)


def upsample(a: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(..., h, w) -> (..., H, W) float64 bilinear, half-pixel centres, edge clamp."""
    a = a.to(torch.float64)
    x0, x1, wl0, wl1 = linear_taps(a.shape[-1], width, a.device)
    y0, y1, hl0, hl1 = linear_taps(a.shape[-2], height, a.device)
    rows = wl0 * a[..., x0] + wl1 * a[..., x1]
    return hl0[:, None] * rows[..., y0, :] + hl1[:, None] * rows[..., y1, :]


def tally_batch(act: torch.Tensor, masks: ConceptMasks, thresholds: torch.Tensor, union: str,
                categories: torch.Tensor | None, num_categories: int, intersection: torch.Tensor,
                unit_area: torch.Tensor, unit_category_area: torch.Tensor | None,
                image_hits: torch.Tensor | None = None) -> None:
    """Adds one batch into the accumulators (all on act.device)."""
    n_images, n_units = act.shape[:2]
    hw = masks.height * masks.width
    count_dtype = torch.float32 if hw < (1 << 24) else torch.float64  # counts stay exact
    units_per_chunk = max(1, min(n_units, CHUNK_BYTES // (hw * 8)))
    images_per_chunk = max(1, CHUNK_BYTES // (units_per_chunk * hw * 8))
    for k0 in range(0, n_units, units_per_chunk):
        k1 = min(n_units, k0 + units_per_chunk)
        thr = thresholds[k0:k1, None]
        for n0 in range(0, n_images, images_per_chunk):
            n1 = min(n_images, n0 + images_per_chunk)
            on = upsample(act[n0:n1, k0:k1], masks.height, masks.width).reshape(n1 - n0, k1 - k0, hw) > thr
            for i, n in enumerate(range(n0, n1)):
                m = on[i]
                area = m.sum(dim=1)
                unit_area[k0:k1] += area
                ids, rows = masks.entries(n)
                if ids.numel() == 0:
                    continue
                labels = masks.unpack_rows(rows)
                inter = (m.to(count_dtype) @ labels.to(count_dtype).T).to(torch.int64)
                intersection[k0:k1].index_add_(1, ids, inter)
                if image_hits is not None:
                    image_hits[k0:k1].index_add_(1, ids, (inter > 0).to(torch.int64))
                if union == "netdissect":
                    labeled = torch.zeros(num_categories, dtype=torch.int64, device=act.device)
                    labeled[categories[ids]] = 1
                    unit_category_area[k0:k1] += area[:, None] * labeled[None, :]
                elif union == "lite":
                    hits = torch.zeros(k1 - k0, num_categories, dtype=torch.int64, device=act.device)
                    hits.index_add_(1, categories[ids], (inter > 0).to(torch.int64))
                    unit_category_area[k0:k1] += area[:, None] * (hits > 0)


def pack_bits(on: torch.Tensor) -> torch.Tensor:
    """(..., P) bool -> (..., ceil(P / 64)) int64 words, pixel p at bit p % 64 of word p // 64."""
    pixels = on.shape[-1]
    words = (pixels + 63) // 64
    padded = torch.zeros(*on.shape[:-1], words * 64, dtype=torch.uint8, device=on.device)
    padded[..., :pixels] = on
    shifts = torch.arange(8, dtype=torch.uint8, device=on.device)
    # Bytes from 8 bits each (distinct bits: the sum is their or), 8 little-endian bytes per word.
    packed = (padded.reshape(*on.shape[:-1], words * 8, 8) << shifts).sum(dim=-1, dtype=torch.uint8)
    return packed.view(torch.int64)


def unit_masks(act: torch.Tensor, height: int, width: int, thresholds: torch.Tensor) -> torch.Tensor:
    """(N, K, words) int64 packed masks M_k(x_n), a chunk of maps at a time."""
    n, k = act.shape[:2]
    hw = height * width
    per_chunk = max(1, CHUNK_BYTES // (hw * 8))
    out = []
    flat = act.reshape(n * k, *act.shape[2:])
    thr = thresholds.repeat(n)
    for i in range(0, n * k, per_chunk):
        on = upsample(flat[i:i + per_chunk], height, width).reshape(-1, hw) > thr[i:i + per_chunk, None]
        out.append(pack_bits(on))
    return torch.cat(out).reshape(n, k, -1)


def unpack_bits(words: torch.Tensor, pixels: int) -> torch.Tensor:
    """(..., words) int64 -> (..., pixels) bool, the inverse of `pack_bits`."""
    shifts = torch.arange(8, dtype=torch.uint8, device=words.device)
    bits = (words.contiguous().view(torch.uint8)[..., None] >> shifts) & 1
    return bits.flatten(-2)[..., :pixels].bool()


def _outline(mask: torch.Tensor) -> torch.Tensor:
    """(M, H, W) bool: pixels of the mask with a 4-neighbour outside it or beyond the frame."""
    inner = torch.nn.functional.pad(mask, (1, 1, 1, 1))
    kept = inner[:, :-2, 1:-1] & inner[:, 2:, 1:-1] & inner[:, 1:-1, :-2] & inner[:, 1:-1, 2:]
    return mask & ~kept


def draw_tiles(masks, second, bright, dim, thumbnail, out, corner, outline: int, second_outline: int) -> None:
    """The report's tiles (see dispatch.draw_tiles) in torch; outlines as int32 RGBX values."""
    h, w = bright.shape[1:]
    mask = unpack_bits(masks, h * w).reshape(-1, h, w)
    tiles = torch.where(mask, bright[thumbnail], dim[thumbnail])
    if second is not None:
        tiles[_outline(unpack_bits(second, h * w).reshape(-1, h, w))] = second_outline
    tiles[_outline(mask)] = outline
    for tile, (s, y, x) in zip(tiles, corner.tolist()):
        out[s, y:y + h, x:x + w] = tile


def formula_counts(formulas, formula_unit_rows: torch.Tensor, unit_words: torch.Tensor, masks: ConceptMasks,
                   fl: torch.Tensor, flu: torch.Tensor) -> None:
    """FormulaCountsParams' popcounts: every (formula entry, concept entry of its image) pair."""
    from ..core.formula_masks import popcount_words

    owner = formulas.owners()
    per_image = masks.offsets.diff()
    step = max(1, CHUNK_BYTES // (max(1, int(per_image.max()) if per_image.numel() else 1) * 8 * masks.words_per_mask))
    for j0 in range(0, owner.shape[0], step):
        j = torch.arange(j0, min(owner.shape[0], j0 + step), device=owner.device)
        img = formulas.images[j]
        entry, pair = expand_ranges(masks.offsets[img], per_image[img])  # every concept entry of each image
        pair_j = j[pair]
        f = formulas.entry_words(pair_j)
        lab_rows = masks.mask_rows[entry]
        lab = masks.unpack_rows(lab_rows)  # whole-image labels come out all on
        both = f & pack_bits(lab)
        u_rows = formula_unit_rows[pair_j]
        u = torch.zeros_like(both)
        on = u_rows >= 0
        u[on] = unit_words[u_rows[on]]
        b, c = owner[pair_j], masks.concept_ids[entry]
        fl.index_put_((b, c), popcount_words(both).sum(dim=1), accumulate=True)
        flu.index_put_((b, c), popcount_words(both & u).sum(dim=1), accumulate=True)


def pair_counts(leaves, a: torch.Tensor, b: torch.Tensor, unit_rows: torch.Tensor, unit_words: torch.Tensor,
                masks: ConceptMasks, unit_only: bool, t: torch.Tensor, tu: torch.Tensor) -> None:
    """PairCountsParams' counts, from the masks A_i AND B_i built explicitly."""
    from ..core.formula_masks import AND, MaskSet, combine
    from ..core.masks import offsets_of_groups

    both = combine(leaves, a, leaves, b, AND)
    rows = unit_rows[both.images]
    if unit_only:
        on = rows >= 0
        both = MaskSet(both.num_images, both.num_pixels, offsets_of_groups(both.owners()[on], len(both)),
                       both.images[on], both.rows[on], both.words)
        rows = rows[on]
    formula_counts(both, rows, unit_words, masks, t, tu)


def union_and_iou(intersection: torch.Tensor, unit_term: torch.Tensor, categories: torch.Tensor | None,
                  concept_area: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """union (K, C) int64 and iou (K, C) float64 from the tallies; unit_term is (K,) for the global
    union, else (K, G) read at each concept's category."""
    unit_term = unit_term[:, None] if categories is None else unit_term[:, categories]
    union = unit_term + concept_area[None, :] - intersection
    # union == 0 implies intersection == 0: 0 / 0 is the only NaN, and it means IoU 0
    iou = intersection.to(torch.float64).div_(union.to(torch.float64)).nan_to_num_(nan=0.0)
    return union, iou
