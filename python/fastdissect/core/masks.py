"""Bit-packed concept masks: packed once, scored many times.

A `ConceptMasks` holds, for N images at label resolution H x W, the concepts present in each image
as a CSR list. Pixel-level concepts keep a bit-packed mask (pixel p = y * W + x is bit p % 64 of
word p // 64); image-level concepts (and masks covering the whole image) keep no bits at all.
Memory: 8 * ceil(H * W / 64) bytes per (image, pixel-level concept present) + 24 bytes per entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from . import validate

WHOLE_IMAGE = -1  # mask_rows value of an image-level label
PACK_BLOCK_BYTES = 64 << 20  # dense masks are packed in blocks of images of about this size


def words_per_mask(height: int, width: int) -> int:
    return (height * width + 63) // 64


# CSR helpers shared by every list-of-entries structure (ConceptMasks here, MaskSet in formula_masks.py).
def offsets_of(lengths: torch.Tensor) -> torch.Tensor:
    """(G + 1,) int64 CSR offsets of groups of these lengths."""
    out = torch.zeros(lengths.shape[0] + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths, 0, out=out[1:])
    return out


def offsets_of_groups(groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """CSR offsets of entries sorted by group id (each in [0, num_groups))."""
    return offsets_of(torch.bincount(groups, minlength=num_groups))


def expand_ranges(starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated aranges [starts[j], starts[j] + lengths[j]) and the j of each element."""
    owner = torch.repeat_interleave(torch.arange(starts.shape[0], device=starts.device), lengths)
    if owner.numel() == 0:
        return owner, owner
    first = torch.cumsum(lengths, 0) - lengths
    return starts[owner] + torch.arange(owner.shape[0], device=owner.device) - first[owner], owner


@dataclass(frozen=True)
class ConceptMasks:
    """Concept masks of N images, bit-packed. Build with `fastdissect.pack_masks`.

    >>> import torch, fastdissect as fd
    >>> dense = torch.zeros(2, 3, 4, 4, dtype=torch.bool); dense[0, 1, :2] = True
    >>> m = fd.pack_masks(dense)
    >>> len(m), m.num_concepts, m.concept_area().tolist()
    (2, 3, [0, 8, 0])
    """

    num_concepts: int
    height: int
    width: int
    offsets: torch.Tensor      # (N + 1,) int64: entries of image n are offsets[n]:offsets[n+1]
    concept_ids: torch.Tensor  # (nnz,) int64
    mask_rows: torch.Tensor    # (nnz,) int64 row of `words`, or -1 for the whole image
    words: torch.Tensor        # (rows, words_per_mask) int64 holding uint64 bit patterns
    areas: torch.Tensor        # (nnz,) int64 pixels of each entry
    # Set by `to` and slicing, which derive from a verified instance: the value checks below read
    # the tensors, a host sync on a GPU, and need not run again.
    verified: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self):
        # The kernels index through these arrays without bounds checks: verify the structure once.
        for name in ("offsets", "concept_ids", "mask_rows", "words", "areas"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or not t.is_contiguous():
                raise TypeError(f"ConceptMasks.{name} must be a contiguous int64 tensor")
        nnz = self.concept_ids.shape[0]
        if self.offsets.dim() != 1 or self.offsets.shape[0] < 1:
            raise ValueError("ConceptMasks.offsets must be a 1-D tensor of N + 1 entries")
        if self.mask_rows.shape != (nnz,) or self.areas.shape != (nnz,):
            raise ValueError("ConceptMasks.mask_rows and areas must have one entry per concept id")
        if self.words.dim() != 2 or self.words.shape[1] != self.words_per_mask:
            raise ValueError(f"ConceptMasks.words must have shape (rows, {self.words_per_mask}), "
                             f"got {tuple(self.words.shape)}")
        if not self.verified:
            self._verify_values(nnz)

    def _verify_values(self, nnz: int) -> None:
        if (int(self.offsets[0]) != 0 or int(self.offsets[-1]) != nnz or bool((self.offsets.diff() < 0).any())):
            raise ValueError("ConceptMasks.offsets must start at 0, never decrease and end at len(concept_ids)")
        if nnz and (int(self.concept_ids.min()) < 0 or int(self.concept_ids.max()) >= self.num_concepts):
            raise ValueError(f"ConceptMasks.concept_ids must be in [0, {self.num_concepts})")
        if nnz and (int(self.mask_rows.min()) < WHOLE_IMAGE or int(self.mask_rows.max()) >= self.words.shape[0]):
            raise ValueError(f"ConceptMasks.mask_rows must be in [-1, {self.words.shape[0]})")

    @property
    def num_images(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def words_per_mask(self) -> int:
        return words_per_mask(self.height, self.width)

    @property
    def device(self) -> torch.device:
        return self.offsets.device

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: slice) -> "ConceptMasks":
        """Images `index` (a slice with step 1). Shares the packed words; copies nothing large."""
        if not isinstance(index, slice):
            raise TypeError(f"ConceptMasks can be indexed by a slice of images, got {type(index).__name__}")
        start, stop, step = index.indices(self.num_images)
        if step != 1:
            raise ValueError(f"ConceptMasks slices must have step 1, got {step}")
        stop = max(start, stop)
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        return ConceptMasks(self.num_concepts, self.height, self.width, self.offsets[start:stop + 1] - lo,
                            self.concept_ids[lo:hi], self.mask_rows[lo:hi], self.words, self.areas[lo:hi],
                            verified=self.verified)

    def take(self, images: torch.Tensor) -> "ConceptMasks":
        """The given images (any order, repeats allowed), sharing the packed words."""
        images = torch.as_tensor(images, dtype=torch.int64, device=self.device)
        starts = self.offsets[images]
        lengths = self.offsets[images + 1] - starts
        entries, _ = expand_ranges(starts, lengths)
        return ConceptMasks(self.num_concepts, self.height, self.width, offsets_of(lengths), self.concept_ids[entries],
                            self.mask_rows[entries], self.words, self.areas[entries], verified=self.verified)

    def to(self, device) -> "ConceptMasks":
        device = torch.device(device)
        return ConceptMasks(self.num_concepts, self.height, self.width,
                            *(getattr(self, f).to(device) for f in ("offsets", "concept_ids", "mask_rows", "words",
                                                                   "areas")), verified=True)

    def concept_area(self) -> torch.Tensor:
        """(C,) int64: sum over images of |L_c(x)|."""
        out = torch.zeros(self.num_concepts, dtype=torch.int64, device=self.device)
        return out.index_add_(0, self.concept_ids, self.areas)

    def concept_images(self) -> torch.Tensor:
        """(C,) int64: the images (entries) where L_c is not empty."""
        out = torch.zeros(self.num_concepts, dtype=torch.int64, device=self.device)
        return out.index_add_(0, self.concept_ids, (self.areas > 0).to(torch.int64))

    def entries(self, n: int):
        """(concept_ids, mask_rows) of image n."""
        lo, hi = int(self.offsets[n]), int(self.offsets[n + 1])
        return self.concept_ids[lo:hi], self.mask_rows[lo:hi]

    def unpack_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), H * W) bool masks of the given entries' rows; -1 rows are whole images."""
        hw = self.height * self.width
        out = torch.ones(rows.shape[0], hw, dtype=torch.bool, device=self.device)
        packed = rows >= 0
        if bool(packed.any()):
            shifts = torch.arange(64, device=self.device, dtype=torch.int64)
            bits = (self.words[rows[packed]].unsqueeze(-1) >> shifts) & 1
            out[packed] = bits.reshape(bits.shape[0], -1)[:, :hw].bool()
        return out

    def to_dense(self) -> torch.Tensor:
        """(N, C, H, W) bool. For inspection and tests: this is the memory packing avoids."""
        dense = torch.zeros(self.num_images, self.num_concepts, self.height * self.width, dtype=torch.bool,
                            device=self.device)
        image_of_entry = torch.repeat_interleave(torch.arange(self.num_images, device=self.device),
                                                 self.offsets.diff())
        dense[image_of_entry, self.concept_ids] = self.unpack_rows(self.mask_rows)
        return dense.reshape(self.num_images, self.num_concepts, self.height, self.width)


def _pack_bits(rows: np.ndarray, hw: int) -> np.ndarray:
    """(R, hw) bool -> (R, words) uint64, pixel p at bit p % 64 of word p // 64."""
    wpm = (hw + 63) // 64
    padded = np.zeros((rows.shape[0], wpm * 64), dtype=bool)
    padded[:, :hw] = rows
    return np.packbits(padded, axis=1, bitorder="little").view("<u8")


class MaskBuilder:
    """Accumulates per-image entries into a ConceptMasks (for readers of other label formats)."""

    def __init__(self, num_concepts: int, height: int, width: int):
        self.num_concepts, self.height, self.width = num_concepts, height, width
        self.hw = height * width
        self.counts: list[int] = []
        self.ids: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.areas: list[np.ndarray] = []
        self.words: list[np.ndarray] = []
        self.num_rows = 0

    def add_images(self, num_images: int, image: np.ndarray, ids: np.ndarray, masks: np.ndarray,
                   whole: np.ndarray) -> None:
        """Entries of `num_images` consecutive images, sorted by image then id: image (E,) index in
        the block, ids (E,), masks (E, hw) bool, whole (E,) bool marks image-level labels."""
        areas = masks.sum(axis=1, dtype=np.int64)
        whole = whole | (areas == self.hw)
        keep = whole | (areas > 0)
        image, ids, masks, whole, areas = image[keep], ids[keep], masks[keep], whole[keep], areas[keep]
        areas[whole] = self.hw
        rows = np.full(ids.shape[0], WHOLE_IMAGE, dtype=np.int64)
        packed = ~whole
        rows[packed] = self.num_rows + np.arange(int(packed.sum()))
        self.num_rows += int(packed.sum())
        if packed.any():
            self.words.append(_pack_bits(masks[packed], self.hw))
        self.counts.extend(np.bincount(image, minlength=num_images).tolist())
        self.ids.append(ids.astype(np.int64))
        self.rows.append(rows)
        self.areas.append(areas)

    def build(self) -> ConceptMasks:
        wpm = words_per_mask(self.height, self.width)
        offsets = np.zeros(len(self.counts) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=offsets[1:])
        cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64))
        words = np.concatenate(self.words) if self.words else np.zeros((0, wpm), dtype=np.uint64)
        return ConceptMasks(self.num_concepts, self.height, self.width, torch.from_numpy(offsets),
                            torch.from_numpy(cat(self.ids)), torch.from_numpy(cat(self.rows)),
                            torch.from_numpy(words.view(np.int64)), torch.from_numpy(cat(self.areas)), verified=True)


def pack_masks(masks=None, *, labels=None, image_labels=None, num_concepts: int | None = None) -> ConceptMasks:
    """Packs concept masks once, for any number of `score` / `Tally.add` calls.

    Two inputs are accepted:

    * ``masks``: dense (N, C, H, W) bool or uint8 (0/1) masks, one channel per concept.
    * ``labels``: Broden-style label planes (N, P, H, W) of integer concept ids, 0 = unlabeled (a
      pixel may carry one concept per plane), plus optional ``image_labels``: per image, a sequence
      of image-level concept ids (or an (N, Q) integer array padded with 0). Concept c is label id c,
      so ``num_concepts`` (default: largest id + 1) counts id 0, which is never scored.

    >>> import torch, fastdissect as fd
    >>> planes = torch.tensor([[[[0, 2], [2, 1]]]])           # one image, one plane, 2x2
    >>> m = fd.pack_masks(labels=planes, image_labels=[[3]], num_concepts=4)
    >>> m.concept_area().tolist()                              # id 3 labels the whole image
    [0, 1, 2, 4]
    """
    if (masks is None) == (labels is None):
        raise ValueError("pack_masks takes exactly one of `masks` (dense (N, C, H, W) masks) or `labels` "
                         "(label planes (N, P, H, W))")
    if masks is not None:
        if image_labels is not None:
            raise ValueError("image_labels goes with labels=..., not with dense masks "
                             "(set the whole channel of an image-level concept instead)")
        return _pack_dense(masks, num_concepts)
    return _pack_labels(labels, image_labels, num_concepts)


def _pack_dense(masks, num_concepts) -> ConceptMasks:
    masks = validate.as_tensor(masks, "masks")
    num_concepts = validate.optional_positive_int(num_concepts, "num_concepts")
    if masks.dim() != 4:
        raise ValueError(f"masks must have shape [N, C, H, W], got {tuple(masks.shape)}")
    if masks.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"masks must be bool or uint8 (0/1), got {masks.dtype}; "
                        "for integer label planes use pack_masks(labels=...)")
    n, c, h, w = masks.shape
    if n == 0 or h == 0 or w == 0:
        raise ValueError(f"masks must be non-empty, got shape {tuple(masks.shape)}")
    if num_concepts is not None and num_concepts != c:
        raise ValueError(f"num_concepts={num_concepts} does not match masks' {c} concept channels")
    if masks.dtype == torch.uint8:
        big = masks > 1
        if bool(big.any()):
            where = torch.nonzero(big)[0].tolist()
            raise ValueError(f"masks of dtype uint8 must hold only 0 and 1, got {int(masks[tuple(where)])} "
                             f"at image {where[0]}, concept {where[1]}")
    builder = MaskBuilder(c, h, w)
    block = max(1, PACK_BLOCK_BYTES // max(1, c * h * w))
    for i in range(0, n, block):
        b = min(block, n - i)
        m = masks[i:i + b].detach().to("cpu").reshape(b * c, h * w).numpy().astype(bool, copy=False)
        present = np.nonzero(m.any(axis=1))[0]
        builder.add_images(b, present // c, present % c, m[present], np.zeros(present.shape[0], dtype=bool))
    return builder.build()


def _image_label_lists(image_labels, n: int) -> list[np.ndarray]:
    if image_labels is None:
        return [np.zeros(0, dtype=np.int64)] * n
    if isinstance(image_labels, (str, bytes)) or not isinstance(image_labels, (torch.Tensor, np.ndarray, Iterable)):
        raise validate.ArgumentTypeError(f"image_labels must be a sequence of image-level concept ids per image "
                                          f"or an (N, Q) integer array, got {type(image_labels).__name__}")
    if isinstance(image_labels, (torch.Tensor, np.ndarray)):
        arr = np.asarray(image_labels.cpu() if isinstance(image_labels, torch.Tensor) else image_labels)
        if arr.ndim != 2 or arr.shape[0] != n or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"image_labels as an array must be integer with shape (N={n}, Q), "
                             f"got {arr.dtype} {arr.shape}")
        rows: Iterable = arr
    else:
        rows = list(image_labels)
        if len(rows) != n:
            raise ValueError(f"image_labels must have one entry per image (N={n}), got {len(rows)}")
    out = []
    for r in rows:
        r = np.asarray(r, dtype=np.int64).reshape(-1)
        out.append(r[r != 0])
    return out


def _pack_labels(labels, image_labels, num_concepts) -> ConceptMasks:
    labels = validate.as_tensor(labels, "labels")
    if labels.dim() != 4:
        raise ValueError(f"labels must have shape [N, P, H, W] (label planes), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer concept ids, got {labels.dtype}")
    n, p, h, w = labels.shape
    if n == 0 or h == 0 or w == 0:
        raise ValueError(f"labels must be non-empty, got shape {tuple(labels.shape)}")
    lab = labels.detach().to("cpu").to(torch.int64).reshape(n, p, h * w).numpy()
    img = _image_label_lists(image_labels, n)
    if num_concepts is None:
        num_concepts = max(int(lab.max()) if lab.size else 0,
                           max((int(r.max()) for r in img if r.size), default=0)) + 1
    validate.positive_int(num_concepts, "num_concepts")
    out_of_range = (lab < 0) | (lab >= num_concepts)
    if out_of_range.any():
        i = int(np.argwhere(out_of_range)[0][0])
        validate.label_ids(lab[i], num_concepts, f"labels of image {i}")
    for i, r in enumerate(img):
        validate.label_ids(r, num_concepts, f"image_labels of image {i}")

    builder = MaskBuilder(num_concepts, h, w)
    for i in range(n):
        planes = lab[i]
        pixel_ids = np.unique(planes)
        pixel_ids = pixel_ids[pixel_ids != 0]
        whole_ids = np.unique(img[i])
        ids = np.union1d(pixel_ids, whole_ids)
        whole = np.isin(ids, whole_ids)
        m = np.zeros((ids.shape[0], h * w), dtype=bool)
        for j in np.nonzero(~whole)[0]:
            m[j] = (planes == ids[j]).any(axis=0)
        builder.add_images(1, np.zeros(ids.shape[0], dtype=np.int64), ids, m, whole)
    return builder.build()


def as_concept_masks(masks, num_concepts: int | None = None) -> ConceptMasks:
    """A ConceptMasks as is, or dense (N, C, H, W) masks packed now."""
    if isinstance(masks, ConceptMasks):
        if num_concepts is not None and masks.num_concepts != num_concepts:
            raise ValueError(f"masks have {masks.num_concepts} concepts, expected {num_concepts}")
        return masks
    return pack_masks(masks, num_concepts=num_concepts)




def masks_state(m: ConceptMasks) -> dict:
    """A ConceptMasks as plain tensors and sizes (checkpoints, kept-maps files, gathers)."""
    fields = ("offsets", "concept_ids", "mask_rows", "words", "areas")
    return {"shape": (m.num_concepts, m.height, m.width), **{f: getattr(m, f).cpu() for f in fields}}


def masks_from_state(s: dict, device) -> ConceptMasks:
    """What `masks_state` wrote, checked again by ConceptMasks (a file may hold anything)."""
    c, h, w = s["shape"]
    m = ConceptMasks(c, h, w, s["offsets"], s["concept_ids"], s["mask_rows"], s["words"], s["areas"])
    return m.to(device) if device is not None else m


__all__ = ["ConceptMasks", "MaskBuilder", "pack_masks", "as_concept_masks", "masks_state", "masks_from_state"]
