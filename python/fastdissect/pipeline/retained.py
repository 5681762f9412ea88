"""What the single pass keeps of each layer's maps, so that the tally can run once the thresholds
are known: `retain`, `rebuild`, `needs_forward` and the `RetainedStore` that holds the records.

A map adds to unit k's tally only where an upsampled pixel exceeds T_k, and a pixel can exceed
T_k only if a source of its 2x2 cell is *hot*, above hot_floor(T_k) (csrc/common/upsample.h, (1)).
T_k is unknown during the pass, but `TopQuantile`'s floor trails it from below and only rises, so
a value under the floor when it is seen is, unless the data drift, under T_k too. Per batch and
layer `retain` keeps

- small maps (h * w <= DENSE_MAX_PIXELS) whole when their maximum is at or above the unit's floor;
- of larger maps, the values at or above the floor ("seeds") with their 3x3 neighbourhoods, which
  hold every source of every cell that contains a seed;

and records per (image, unit) the histogram bin of the largest value that was not a seed ("lost";
0 when every value was kept as a seed). `rebuild` returns dense float64 maps in which every value
not kept is hot_floor(T_k): cells holding a hot value read only kept, exact values, and every other
cell has all its sources at most hot_floor(T_k) before and after, so it stays off. The tally of a
rebuilt map therefore equals the tally of the original whenever its lost value is at most
hot_floor(T_k); `needs_forward` names the images where that is not certain (the lost bin reaches the
bin of hot_floor(T_k)), and those images are run through the model again.

Memory: a seed was at or above its unit's floor when seen, and the floor trails the top
1.5 * q * n + 64 values of the n seen so far (top_quantile.py), so a unit keeps about
1.5 * q * N * h * w + 64 * (1 + ln batches) seeds plus the share of one histogram bin (1/8 octave)
above its final floor. Small maps cost at most min(N, seeds) maps of h * w values; larger maps at
most 9 values (and a 4-byte position) per seed; both plus 2 bytes of lost bin per (image, unit).
Records past `memory_limit` bytes are written to a directory and read back once.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from ..files import atomic, tensorfile
from ..core.histogram_keys import bins
from ..core.masks import masks_from_state, masks_state

DENSE_MAX_PIXELS = 64  # maps up to 8x8 are kept whole: positions would cost more than the values
KEPT_KIND = "kept maps"
NOTHING_LOST = 0       # below every histogram bin (bins start at 1)


def hot_floor(thresholds: torch.Tensor) -> torch.Tensor:
    """csrc/common/upsample.h hot_floor, elementwise on float64: sources at most this never light a pixel."""
    t = thresholds.to(torch.float64)
    margin = 8.0 * 2.220446049250313e-16 * t.abs() + 16.0 * 5e-324
    return torch.where(t >= 0, (t - margin).clamp(min=0.0), t - margin)


def retain(act: torch.Tensor, floor_values: torch.Tensor) -> dict:
    """The record of one layer's batch: act (B, K, h, w), floor_values (K,) float64 on its device."""
    B, K, h, w = act.shape
    peak = act.amax(dim=(2, 3)).to(torch.float64)
    hot = peak >= floor_values.view(1, K)
    lost = torch.where(hot, NOTHING_LOST, bins(peak))
    record = {"shape": (B, K, h, w), "dtype": act.dtype}
    if h * w <= DENSE_MAX_PIXELS:
        maps = torch.nonzero(hot.flatten()).flatten()
        record.update(maps=maps.cpu(), map_values=act.flatten(0, 1)[maps].cpu())
    else:
        b, k = torch.nonzero(hot, as_tuple=True)
        sub = act[b, k]  # (n, h, w): the hot maps only, a small share of the batch
        seed = sub.to(torch.float64) >= floor_values[k].view(-1, 1, 1)
        near = _dilated(seed)
        where = torch.nonzero(near.flatten(1))
        positions = (b * K + k)[where[:, 0]] * (h * w) + where[:, 1]
        if B * K * h * w < 2**31:  # half the bytes of int64 positions for every usual batch
            positions = positions.to(torch.int32)
        record.update(positions=positions.cpu(),
                      values=sub.flatten(1)[where[:, 0], where[:, 1]].cpu())
        non_seed = sub.masked_fill(seed, float("-inf")).amax(dim=(1, 2)).to(torch.float64)
        lost[b, k] = torch.where(torch.isinf(non_seed), NOTHING_LOST, bins(non_seed))
    record["lost"] = lost.to(torch.int16).cpu()
    return record


def _dilated(seed: torch.Tensor) -> torch.Tensor:
    """(n, h, w) bool: True within one pixel (3x3) of a True of `seed`. The same as a 3x3 max pool,
    done as a row pass and a column pass of byte ORs, an order of magnitude less work than pooling
    floats (the pool was half of retain's time on 56x56 maps)."""
    rows = seed.clone()
    rows[:, :, 1:] |= seed[:, :, :-1]
    rows[:, :, :-1] |= seed[:, :, 1:]
    near = rows.clone()
    near[:, 1:] |= rows[:, :-1]
    near[:, :-1] |= rows[:, 1:]
    return near


def rebuild(record: dict, thresholds: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) float64: the kept values, hot_floor(T_k) everywhere else."""
    B, K, h, w = record["shape"]
    out = hot_floor(thresholds).view(1, K, 1, 1).expand(B, K, h, w).contiguous()
    if "maps" in record:
        out.view(B * K, h * w)[record["maps"]] = record["map_values"].to(torch.float64).reshape(-1, h * w)
    else:
        out.view(-1)[record["positions"].to(torch.int64)] = record["values"].to(torch.float64)
    return out


def needs_forward(record: dict, thresholds: torch.Tensor) -> torch.Tensor:
    """(B,) bool: images of which a value that may be hot under these thresholds was not kept."""
    limit = bins(hot_floor(thresholds)).view(1, -1)
    return (record["lost"].to(torch.int64) >= limit).any(dim=1)


def record_bytes(record: dict) -> int:
    return sum(t.numel() * t.element_size() for t in record.values() if isinstance(t, torch.Tensor))


def kept_values(record: dict) -> int:
    """Values the record keeps (whole maps count h * w each)."""
    return record["map_values"].numel() if "maps" in record else record["values"].numel()


class RetainedStore:
    """Batch records of one rank, in image order: in memory up to `memory_limit` bytes, the rest in
    files under `spill_dir` (a temporary directory when None), each read back once by `records()`.

    A batch record is {"first": image index, "count": images, "masks": packed masks or None (read
    from a store), "layers": {layer: retain(...)}}.
    """

    def __init__(self, memory_limit: int, spill_dir=None, prefix: str = "kept"):
        self.memory_limit, self.prefix = memory_limit, prefix
        self.spill_root = Path(spill_dir) if spill_dir is not None else None
        self._spill: Path | None = None  # created at the first spill
        self.entries: list[dict] = []    # {"record": dict | None, "path": Path | None, "digest": str | None}
        self.in_memory = 0
        # What the run kept, read after it: close() drops the records but not these counts.
        self.peak_bytes = 0     # the most bytes held in memory at once
        self.spilled_bytes = 0  # bytes of the records written to spill files

    def add(self, first: int, count: int, masks, layers: dict) -> None:
        record = {"first": first, "count": count, "masks": masks_state(masks) if masks is not None else None,
                  "layers": layers}
        size = self._bytes(record)
        if self.in_memory + size > self.memory_limit:
            self.entries.append(self._write(record, self._spill_dir()))
            self.spilled_bytes += size
            return
        self.entries.append({"record": record, "path": None, "digest": None, "bytes": size})
        self.in_memory += size
        self.peak_bytes = max(self.peak_bytes, self.in_memory)

    def records(self):
        """Yields (first, count, masks, layers) of every batch in order, loading spilled ones."""
        for entry in self.entries:
            record = entry["record"] if entry["record"] is not None else _read(entry["path"], entry["digest"])
            masks = masks_from_state(record["masks"], None) if record["masks"] is not None else None
            yield record["first"], record["count"], masks, record["layers"]

    def persist(self, directory: Path) -> list[dict]:
        """Writes every record not yet in `directory` there (a checkpoint); returns the references
        `load_refs` restores. Records stay in memory as well."""
        refs = []
        for entry in self.entries:
            path = entry["path"]
            if path is None or path.parent != directory:
                record = entry["record"] if entry["record"] is not None else _read(path, entry["digest"])
                written = self._write(record, directory, durable=True)
                entry.update(path=written["path"], digest=written["digest"])
            refs.append({"file": entry["path"].name, "digest": entry["digest"], "bytes": entry["bytes"]})
        return refs

    def load_refs(self, directory: Path, refs: list[dict]) -> None:
        for ref in refs:
            path = directory / ref["file"]
            if not path.is_file():
                raise FileNotFoundError(f"{path}: a kept-maps file of the checkpoint is missing")
            self.entries.append({"record": None, "path": path, "digest": ref["digest"], "bytes": ref["bytes"]})

    def close(self, keep_files: bool = False) -> None:
        """Drops every record and removes the files spilled (kept_files: those a checkpoint may name)."""
        if not keep_files and self._spill is not None:
            if self.spill_root is None:
                shutil.rmtree(self._spill, ignore_errors=True)
            else:
                self.remove_files(self._spill)
        self.entries, self.in_memory, self._spill = [], 0, None

    def remove_files(self, directory: Path) -> None:
        """Removes this store's record files from `directory` (a spill or checkpoint directory)."""
        for f in Path(directory).glob(f"{self.prefix}-*{tensorfile.SUFFIX}"):
            f.unlink(missing_ok=True)

    # ---- internals
    @staticmethod
    def _bytes(record: dict) -> int:
        total = sum(record_bytes(rec) for rec in record["layers"].values())
        if record["masks"] is not None:
            total += sum(t.numel() * t.element_size() for t in record["masks"].values() if isinstance(t, torch.Tensor))
        return total

    def _spill_dir(self) -> Path:
        if self._spill is None:
            if self.spill_root is not None:
                self._spill = atomic.make_dirs(self.spill_root)
            else:
                self._spill = Path(tempfile.mkdtemp(prefix="fastdissect-kept-"))
        return self._spill

    def _write(self, record: dict, directory: Path, durable: bool = False) -> dict:
        atomic.make_dirs(directory)
        path = directory / f"{self.prefix}-{record['first']:010d}{tensorfile.SUFFIX}"
        payload = tensorfile.dumps(record, kind=KEPT_KIND)
        atomic.write_bytes(path, payload, durable=durable)
        return {"record": None, "path": path, "digest": atomic.digest(payload), "bytes": self._bytes(record)}


def _read(path: Path, digest: str) -> dict:
    """A spilled record, checked against the digest its reference holds; nothing in it runs when read."""
    payload = path.read_bytes()
    if atomic.digest(payload) != digest:
        raise ValueError(f"{path}: a kept-maps file is damaged (its checksum does not match); rerun with "
                         "restart=True (--restart)")
    try:
        record = tensorfile.loads(payload, kind=KEPT_KIND, where=path)
        return tensorfile.check_fields(record, path, required=("first", "count", "masks", "layers"))
    except tensorfile.UnsafeFileError as exc:
        raise ValueError(f"{exc}; rerun with restart=True (--restart)") from None
