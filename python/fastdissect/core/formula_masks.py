"""Bit-packed masks of formulas, kept only on the images where they are non-empty.

A `MaskSet` holds S masks over the same N images, each as a CSR list of (image, row of `words`),
images increasing; row -1 is the whole image (the concept masks' image-level labels). The set
algebra below works on whole batches of masks at once in torch (any device), and never builds a
dense N x H x W array: combining two masks touches only the images where they are present.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .masks import WHOLE_IMAGE, ConceptMasks, as_concept_masks, expand_ranges, offsets_of, offsets_of_groups, words_per_mask

OR, AND, AND_NOT = 0, 1, 2  # the expansion ops, in compexp's order
OP_NAMES = ("OR", "AND", "AND NOT")

def popcount_words(x: torch.Tensor) -> torch.Tensor:
    """Set bits of each int64 word (SWAR: pairs, nibbles, bytes, then one multiply sums the bytes).
    Arithmetic shifts are harmless: every shifted value is masked, and the final byte sum is < 128."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56


def popcount_rows(words: torch.Tensor) -> torch.Tensor:
    """(R, W) int64 words -> (R,) int64 set bits per row."""
    return popcount_words(words).sum(dim=1)


def full_row(num_pixels: int, device) -> torch.Tensor:
    """(W,) int64: every pixel of an image on, the bits past the last pixel off."""
    wpm = words_per_mask(1, num_pixels)
    row = torch.full((wpm,), -1, dtype=torch.int64, device=device)
    tail = num_pixels - (wpm - 1) * 64
    if tail < 64:
        row[-1] = (1 << tail) - 1
    return row


@dataclass(frozen=True)
class MaskSet:
    num_images: int
    num_pixels: int            # H * W
    offsets: torch.Tensor      # (S + 1,) int64
    images: torch.Tensor       # (nnz,) int64, increasing within each mask
    rows: torch.Tensor         # (nnz,) int64 row of `words`, or -1: the whole image
    words: torch.Tensor        # (R, words per mask) int64 holding uint64 bit patterns

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def device(self) -> torch.device:
        return self.offsets.device

    def owners(self) -> torch.Tensor:
        """(nnz,) the mask of each entry."""
        return torch.repeat_interleave(torch.arange(len(self), device=self.device), self.offsets.diff())

    def keys(self, mask_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(nnz,) sortable entry keys: (mask id) * N + image, increasing over the set."""
        ids = self.owners() if mask_ids is None else mask_ids
        return ids * self.num_images + self.images

    def entry_words(self, entries: torch.Tensor) -> torch.Tensor:
        """(E, W) words of the given entries, whole-image entries materialised."""
        rows = self.rows[entries]
        out = torch.empty(entries.shape[0], self.words.shape[1], dtype=torch.int64, device=self.device)
        packed = rows >= 0
        out[packed] = self.words[rows[packed]]
        out[~packed] = full_row(self.num_pixels, self.device)
        return out

    def select(self, ids: torch.Tensor) -> "MaskSet":
        """The masks `ids` (any order, repeats allowed), sharing `words`."""
        ids = ids.to(self.device, torch.int64)
        starts, lengths = self.offsets[ids], self.offsets[ids + 1] - self.offsets[ids]
        entries, _ = expand_ranges(starts, lengths)
        return MaskSet(self.num_images, self.num_pixels, offsets_of(lengths), self.images[entries],
                       self.rows[entries], self.words)

    def areas(self) -> torch.Tensor:
        """(S,) int64 pixels of each mask over the data set."""
        per_entry = torch.full((self.images.shape[0],), self.num_pixels, dtype=torch.int64, device=self.device)
        packed = self.rows >= 0
        if bool(packed.any()):
            per_entry[packed] = popcount_rows(self.words[self.rows[packed]])
        return torch.zeros(len(self), dtype=torch.int64, device=self.device).index_add_(0, self.owners(), per_entry)


def find_keys(sorted_keys: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each key: its position in `sorted_keys` and whether it is there."""
    pos = torch.searchsorted(sorted_keys, keys)
    found = torch.zeros_like(keys, dtype=torch.bool)
    inside = pos < sorted_keys.shape[0]
    found[inside] = sorted_keys[pos[inside]] == keys[inside]
    return pos, found


def _explicit(num_images: int, num_pixels: int, owner: torch.Tensor, images: torch.Tensor, words: torch.Tensor,
              num_masks: int, drop_empty: bool) -> MaskSet:
    """A MaskSet whose every entry has its own row; entries sorted by (owner, image)."""
    if drop_empty and words.shape[0]:
        keep = words.ne(0).any(dim=1)
        owner, images, words = owner[keep], images[keep], words[keep]
    rows = torch.arange(words.shape[0], device=owner.device)
    return MaskSet(num_images, num_pixels, offsets_of_groups(owner, num_masks), images, rows, words.contiguous())


def combine(a: MaskSet, a_ids: torch.Tensor, b: MaskSet, b_ids: torch.Tensor, op: int) -> MaskSet:
    """Masks a[a_ids[j]] `op` b[b_ids[j]] for every j (OR, AND, AND_NOT), empty images dropped."""
    a_sel, b_sel = a.select(a_ids), b.select(b_ids)
    a_key, b_key = a_sel.keys(), b_sel.keys()
    n_out = a_ids.shape[0]
    pos, hit = find_keys(b_key, a_key)
    a_entries = torch.arange(a_key.shape[0], device=a.device)
    if op == AND:
        words = a_sel.entry_words(a_entries[hit]) & b_sel.entry_words(pos[hit])
        keys = a_key[hit]
    else:
        words = a_sel.entry_words(a_entries)
        if op == AND_NOT:
            words[hit] &= ~b_sel.entry_words(pos[hit])
        else:
            words[hit] |= b_sel.entry_words(pos[hit])
        keys = a_key
        if op == OR:
            b_hit = torch.zeros(b_key.shape[0], dtype=torch.bool, device=a.device)
            b_hit[pos[hit]] = True
            only_b = torch.nonzero(~b_hit).flatten()
            keys = torch.cat([a_key, b_key[only_b]])
            words = torch.cat([words, b_sel.entry_words(only_b)])
            order = torch.argsort(keys, stable=True)
            keys, words = keys[order], words[order]
    return _explicit(a.num_images, a.num_pixels, keys // a.num_images, keys % a.num_images, words, n_out,
                     drop_empty=op != OR)


def concat(sets: list[MaskSet]) -> MaskSet:
    """The masks of every set, in order (rows renumbered into one words table)."""
    row_base, rows, words, lengths = 0, [], [], []
    for s in sets:
        rows.append(torch.where(s.rows >= 0, s.rows + row_base, s.rows))
        words.append(s.words)
        row_base += s.words.shape[0]
        lengths.append(s.offsets.diff())
    first = sets[0]
    return MaskSet(first.num_images, first.num_pixels, offsets_of(torch.cat(lengths)),
                   torch.cat([s.images for s in sets]), torch.cat(rows), torch.cat(words))


def concept_set(masks: ConceptMasks) -> MaskSet:
    """Mask c of the set is concept c's mask (rows into masks.words; image-level labels stay -1)."""
    image = torch.repeat_interleave(torch.arange(masks.num_images, device=masks.device), masks.offsets.diff())
    order = torch.argsort(masks.concept_ids, stable=True)  # stable: images stay increasing per concept
    return MaskSet(masks.num_images, masks.height * masks.width,
                   offsets_of_groups(masks.concept_ids[order], masks.num_concepts), image[order],
                   masks.mask_rows[order], masks.words)


def whole_set(num_images: int, num_pixels: int, device) -> MaskSet:
    """One mask: every pixel of every image."""
    return MaskSet(num_images, num_pixels, torch.tensor([0, num_images], dtype=torch.int64, device=device),
                   torch.arange(num_images, device=device),
                   torch.full((num_images,), WHOLE_IMAGE, dtype=torch.int64, device=device),
                   torch.zeros(0, words_per_mask(1, num_pixels), dtype=torch.int64, device=device))


def evaluate(formula, concepts: MaskSet) -> MaskSet:
    """The one-mask set of `formula` (a fd.Formula) over the concept masks."""
    from .formula import And, Leaf, Not, Or

    one = torch.zeros(1, dtype=torch.int64, device=concepts.device)
    if isinstance(formula, Leaf):
        if formula.concept >= len(concepts):
            raise ValueError(f"formula {formula} names concept {formula.concept}, but the masks have "
                             f"{len(concepts)} concepts")
        return concepts.select(one + formula.concept)
    if isinstance(formula, Not):
        whole = whole_set(concepts.num_images, concepts.num_pixels, concepts.device)
        return combine(whole, one, evaluate(formula.operand, concepts), one, AND_NOT)
    if isinstance(formula, (And, Or)):
        op = AND if isinstance(formula, And) else OR
        return combine(evaluate(formula.left, concepts), one, evaluate(formula.right, concepts), one, op)
    raise TypeError(f"expected a fd.Formula, got {type(formula).__name__}")


def formula_mask(formula, masks) -> ConceptMasks:
    """The formula's mask over the data set, bit-packed, as a one-concept `ConceptMasks` (images
    where it is empty hold no entry). `masks`: a ConceptMasks or dense (N, C, H, W) masks.

    >>> import torch, fastdissect as fd
    >>> dense = torch.zeros(1, 2, 2, 2, dtype=torch.bool); dense[0, 0, 0] = True; dense[0, 1, :, 0] = True
    >>> fd.formula_mask(fd.Leaf(0) & ~fd.Leaf(1), dense).to_dense()[0, 0].tolist()
    [[False, True], [False, False]]
    """
    m = as_concept_masks(masks)
    s = evaluate(formula, concept_set(m))
    words = s.entry_words(torch.arange(s.images.shape[0], device=s.device))
    return ConceptMasks(1, m.height, m.width, offsets_of_groups(s.images, m.num_images), torch.zeros_like(s.images),
                        torch.arange(s.images.shape[0], device=s.device), words.contiguous(),
                        popcount_rows(words), verified=True)


def unit_rows(formulas: MaskSet, units_of: torch.Tensor, units: MaskSet) -> torch.Tensor:
    """(nnz,) for each entry of `formulas` (mask j belongs to unit units_of[j]): the row of that
    unit's mask on the entry's image in units.words, or -1 where the unit is off."""
    key = units_of[formulas.owners()] * units.num_images + formulas.images
    pos, hit = find_keys(units.keys(), key)
    out = torch.full_like(key, -1)
    out[hit] = units.rows[pos[hit]]
    return out


__all__ = ["MaskSet", "OR", "AND", "AND_NOT", "OP_NAMES", "combine", "concat", "concept_set", "evaluate",
           "formula_mask", "unit_rows", "popcount_rows", "whole_set"]
