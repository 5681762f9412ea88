"""Pack once, dissect many: a data set's concept masks bit-packed on disk, memory-mapped back.

Format (version 2), a directory:
  fastdissect-masks.json  {"format": "fastdissect-masks", "version": 2, "num_images", "height",
                           "width", "num_concepts", "words_per_mask", "num_entries", "num_rows",
                           "concept_names", "category_names", "primary_category", "images", "source",
                           "source_fingerprint", "checksums": {array: BLAKE2b-256 hex},
                           "header_checksum": BLAKE2b-256 of the header's other fields}
  offsets.i64      (num_images + 1) entries of image n are offsets[n]:offsets[n+1]
  concept_ids.i64  (num_entries)    concept id of each entry
  mask_rows.i64    (num_entries)    row of words.u64 holding the entry's mask, -1 for a whole image
  areas.i64        (num_entries)    pixels of each entry
  words.u64        (num_rows, words_per_mask) bit-packed masks, pixel y * W + x = bit p % 64 of word p // 64
  verified.json    written after the checksums were verified: each array's size, inode, mtime and
                   ctime then (not part of the format: deleting it costs one full verification)
All arrays are raw little-endian, so any language can memory-map them. Opening a store verifies
the header's fields and types and each entry's area against height * width, and every checksum
unless no array file changed since they were last verified (hashing a full Broden's gigabytes on
every open would cost seconds per layer); a dissection that reads a store's images from its source
checks the source's fingerprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..files import atomic
from ..core.masks import ConceptMasks
from .reading import DatasetError
from .sample import collate

FORMAT, VERSION = "fastdissect-masks", 2  # 2: checksums and the source's fingerprint
META = "fastdissect-masks.json"
VERIFIED = "verified.json"
ARRAYS = {"offsets": "offsets.i64", "concept_ids": "concept_ids.i64", "mask_rows": "mask_rows.i64",
          "areas": "areas.i64", "words": "words.u64"}


def pack(dataset, path, *, batch_size: int = 64, num_workers: int = 0, verbose: bool = True,
         extra_meta: dict | None = None) -> Path:
    """Decodes every image's labels once and writes their packed masks to the directory `path`.

    dataset: a `Broden`, `SegmentationDataset` or anything with __len__, __getitem__ -> Sample,
    `num_concepts`, `concept_names`, `category_names` and `primary_category`. extra_meta: further
    header fields (JSON values), covered by the header's checksum.
    """
    from tqdm.auto import tqdm

    if len(dataset) == 0:
        raise DatasetError("cannot pack an empty data set")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                                         collate_fn=partial(collate, num_concepts=dataset.num_concepts))
    writer = StoreWriter(path)
    with writer, tqdm(total=len(dataset), desc="packing masks", unit="img", disable=not verbose) as bar:
        for batch in loader:
            writer.add(batch.masks, first_image=int(batch.indices[0]))
            bar.update(batch.masks.num_images)
    images = [str(dataset.image_path(i).relative_to(dataset.root)) if hasattr(dataset, "image_path") else None
              for i in range(len(dataset))]
    return writer.finish(num_concepts=dataset.num_concepts, concept_names=list(dataset.concept_names),
                         category_names=list(dataset.category_names),
                         primary_category=[int(c) for c in dataset.primary_category], images=images,
                         source=str(Path(dataset.root).resolve()) if hasattr(dataset, "root") else None,
                         source_fingerprint=dataset.fingerprint() if hasattr(dataset, "fingerprint") else None,
                         **(extra_meta or {}))


class StoreWriter:
    """Writes a store batch by batch: `add` each batch's ConceptMasks in image order, then `finish`
    with the label metadata. The header is written last, so a store whose writing stopped never opens.
    Arrays are streamed into their files (each is written once, in order, and no header names them
    until the end, so they need no atomic rename); a full disk is reported by path and cause
    (atomic.describe), never as a bare [Errno 28]."""

    def __init__(self, path):
        self.path = atomic.make_dirs(path)
        try:
            (self.path / META).unlink(missing_ok=True)  # arrays being rewritten are never read under an old header
        except OSError as exc:
            raise atomic.describe(exc, self.path / META) from None
        self.offsets, self.n_entries, self.n_rows, self.size = [0], 0, 0, None
        self.files = {}
        for name in ARRAYS:
            if name != "offsets":
                self.files[name] = self._io(name, lambda path: open(path, "wb"))
        self.hashes = {name: _hasher() for name in ARRAYS}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
            return
        for f in self.files.values():  # the error on its way names the first failure, not a later one
            with contextlib.suppress(OSError):
                f.close()

    def close(self) -> None:
        for name, f in self.files.items():
            self._io(name, lambda path: f.close())  # closing flushes: a full disk may surface here

    def _io(self, name: str, operation):
        path = self.path / ARRAYS[name]
        try:
            return operation(path)
        except OSError as exc:
            raise atomic.describe(exc, path) from None

    def _write(self, name: str, array: np.ndarray) -> None:
        data = array.astype("<i8").tobytes()
        self._io(name, lambda path: self.files[name].write(data))
        self.hashes[name].update(data)

    def add(self, m: ConceptMasks, first_image: int) -> None:
        if self.size is None:
            self.size = (m.height, m.width)
        elif self.size != (m.height, m.width):
            raise DatasetError(f"image {first_image}: labels are {m.height}x{m.width}, earlier images "
                               f"{self.size[0]}x{self.size[1]}")
        rows = m.mask_rows.numpy()
        used = np.unique(rows[rows >= 0])  # a batch's words table may hold rows of other batches
        remap = np.full(m.words.shape[0] + 1, -1, dtype=np.int64)
        remap[used] = self.n_rows + np.arange(used.size)
        self._write("concept_ids", m.concept_ids.numpy())
        self._write("mask_rows", remap[rows])
        self._write("areas", m.areas.numpy())
        self._write("words", m.words.numpy()[used])
        self.offsets.extend((self.n_entries + m.offsets[1:].numpy()).tolist())
        self.n_entries += m.concept_ids.shape[0]
        self.n_rows += used.size

    def finish(self, **labels) -> Path:
        """labels: num_concepts, concept_names, category_names, primary_category, images (one per
        image, path relative to `source` or None), source, source_fingerprint."""
        self.close()
        if self.size is None:
            raise DatasetError("cannot pack an empty data set")
        offsets_bytes = np.asarray(self.offsets, dtype="<i8").tobytes()
        atomic.write_bytes(self.path / ARRAYS["offsets"], offsets_bytes)
        self.hashes["offsets"].update(offsets_bytes)
        h, w = self.size
        meta = {"format": FORMAT, "version": VERSION, "num_images": len(self.offsets) - 1, "height": h, "width": w,
                "words_per_mask": (h * w + 63) // 64, "num_entries": self.n_entries, "num_rows": self.n_rows,
                **labels, "checksums": {name: hh.hexdigest() for name, hh in self.hashes.items()}}
        meta["header_checksum"] = _header_checksum(meta)
        atomic.write_text(self.path / META, json.dumps(meta))  # last: the arrays are complete when it exists
        return self.path


def _hasher():
    return hashlib.blake2b(digest_size=32)


def _header_checksum(meta: dict) -> str:
    fields = {k: v for k, v in meta.items() if k != "header_checksum"}
    return atomic.digest(json.dumps(fields, sort_keys=True).encode())


# The header's fields and their types: a field that is missing or of another type is named.
HEADER_FIELDS = {"num_images": int, "height": int, "width": int, "num_concepts": int, "words_per_mask": int,
                 "num_entries": int, "num_rows": int, "concept_names": list, "category_names": list,
                 "primary_category": list, "images": list, "checksums": dict, "header_checksum": str}


def _check_header(meta, meta_path: Path) -> None:
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_path}: the header is not a JSON object")
    if meta.get("format") != FORMAT:
        raise DatasetError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise DatasetError(f"{meta_path}: field 'version' is {meta.get('version')!r}; this fastdissect reads "
                           f"version {VERSION} (the integer): re-pack the data set with fd.datasets.pack")
    for key, kind in HEADER_FIELDS.items():
        if key not in meta:
            raise DatasetError(f"{meta_path}: field {key!r} is missing")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise DatasetError(f"{meta_path}: field {key!r} must be a {kind.__name__}, got {meta[key]!r:.40}")
    if meta["header_checksum"] != _header_checksum(meta):
        raise DatasetError(f"{meta_path}: the header was changed after packing (its checksum does not match); "
                           "re-pack the data set with fd.datasets.pack")
    if meta["words_per_mask"] != (meta["height"] * meta["width"] + 63) // 64:
        raise DatasetError(f"{meta_path}: words_per_mask {meta['words_per_mask']} does not fit "
                           f"{meta['height']}x{meta['width']} masks")


class PackedMasks:
    """A packed store opened for reading: `masks` (all images, memory-mapped) and the label metadata.

    `store.masks[i:j]` is a `ConceptMasks` that feeds `fd.Tally.add` directly; nothing is decoded or
    copied until the kernel reads the words it needs.
    """

    def __init__(self, path):
        self.path = Path(path)
        meta_path = self.path / META
        if not meta_path.is_file():
            raise DatasetError(f"{self.path}: not a packed mask store ({META} not found)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{meta_path}: corrupt ({exc})") from None
        _check_header(meta, meta_path)
        self.meta = meta
        arrays = _map_arrays(self.path, meta)
        try:
            self.masks = ConceptMasks(meta["num_concepts"], meta["height"], meta["width"], **arrays)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{self.path}: inconsistent arrays ({exc})") from None
        if meta["num_entries"] and int(arrays["areas"].max()) > meta["height"] * meta["width"]:
            raise DatasetError(f"{self.path / ARRAYS['areas']}: an area exceeds {meta['height']}x{meta['width']} "
                               "pixels")
        self.num_concepts = meta["num_concepts"]
        self.concept_names = meta["concept_names"]
        self.category_names = meta["category_names"]
        self.primary_category = np.asarray(meta["primary_category"], dtype=np.int64)
        self.label_size = (meta["height"], meta["width"])

    def __len__(self) -> int:
        return self.meta["num_images"]

    def fingerprint(self) -> dict:
        """The store's header and array sizes/times, and its source's path."""
        from ..files.identity import file_hash, files_fingerprint

        return {"store": str(self.path.resolve()), "header": file_hash(self.path / META),
                "arrays": files_fingerprint(self.path, sorted(ARRAYS.values())), "source": self.meta.get("source")}

    def images_with(self, concept, **_) -> list[int]:
        """The images holding `concept` (a name or an id), from the store's entries."""
        from .broden import concept_id

        c = concept_id(self.concept_names, concept)
        entries = torch.nonzero(self.masks.concept_ids == c).flatten()
        images = torch.searchsorted(self.masks.offsets, entries, right=True) - 1
        return torch.unique(images).tolist()

    def concept_ids_of(self, i: int) -> list[int]:
        """The ids of the concepts image i holds, ascending, 0 left out (from its entries: nothing decoded)."""
        ids, _ = self.masks.entries(i)
        return sorted(set(ids.tolist()) - {0})

    def concepts_of(self, i: int) -> list[str]:
        return [self.concept_names[c] for c in self.concept_ids_of(i)]

    def check_source(self, dataset) -> None:
        """The data set its images are read from must be the one it was packed from: the same CSV
        contents (the path may differ: a moved copy is fine)."""
        recorded = self.meta.get("source_fingerprint") or {}
        now = dataset.fingerprint() if hasattr(dataset, "fingerprint") else {}
        changed = sorted(name for name in set(recorded.get("csv", {})) | set(now.get("csv", {}))
                         if recorded.get("csv", {}).get(name) != now.get("csv", {}).get(name))
        if changed or recorded.get("categories") != now.get("categories"):
            raise DatasetError(f"{self.path}: its source {getattr(dataset, 'root', '?')} is not the data set it was "
                               f"packed from ({', '.join(changed) or 'categories'} differ); re-pack with "
                               "fd.datasets.pack")

    def image_path(self, i: int) -> Path | None:
        rel, source = self.meta["images"][i], self.meta["source"]
        return Path(source) / rel if rel is not None and source is not None else None


def _map_arrays(path: Path, meta: dict) -> dict:
    """The store's arrays memory-mapped (copy-on-write) as int64 tensors, each file's size checked
    against the header and its checksum verified, unless verified.json shows that no array file
    changed since the last full verification (which writes it)."""
    n, e, r, wpm = meta["num_images"], meta["num_entries"], meta["num_rows"], meta["words_per_mask"]
    shapes = {"offsets": (n + 1,), "concept_ids": (e,), "mask_rows": (e,), "areas": (e,), "words": (r, wpm)}
    stamp = _file_stamps(path, meta)
    verified = _read_json(path / VERIFIED) == stamp
    arrays = {}
    for name, shape in shapes.items():
        file = path / ARRAYS[name]
        expected = int(np.prod(shape)) * 8
        if not file.is_file() or file.stat().st_size != expected:
            found = file.stat().st_size if file.is_file() else "missing"
            raise DatasetError(f"{file}: expected {expected} bytes for shape {shape}, found {found}")
        if expected == 0:
            arrays[name] = torch.zeros(shape, dtype=torch.int64)
            continue
        if not verified and atomic.file_digest(file) != meta["checksums"].get(name):
            raise DatasetError(f"{file}: damaged (its checksum does not match the one recorded when packing); "
                               "re-pack the data set with fd.datasets.pack")
        array = np.memmap(file, dtype="<i8", mode="c", shape=shape)
        if sys.byteorder != "little":  # pragma: no cover - torch takes native byte order only
            array = array.astype(np.int64)
        arrays[name] = torch.from_numpy(array)
    if not verified:
        with contextlib.suppress(OSError):  # a read-only store is verified on every open instead
            atomic.write_text(path / VERIFIED, json.dumps(stamp), durable=False)
    return arrays


def _file_stamps(path: Path, meta: dict) -> dict:
    """What verified.json records: the checksums verified and each array file's size, inode, mtime
    and ctime (ctime changes with every write and cannot be set back)."""
    from ..files.identity import stat_stamp

    stamps = {name: stat_stamp(path / name) for name in ARRAYS.values()}
    return {"checksums": meta.get("checksums"),
            "files": {name: list(st) if st else None for name, st in stamps.items()}}  # as JSON holds them


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def open_packed(path) -> PackedMasks:
    """Opens a store written by `pack` (raises DatasetError naming the file if it is not one)."""
    return PackedMasks(path)
