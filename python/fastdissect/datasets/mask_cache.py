"""Labels decoded once per data directory: packed stores (fd.datasets.pack's format) kept in a cache
directory and reused by every later layer and run.

A store is found by what was read (the reader, the directory, the categories, the images selected)
and is valid only while the directory's fingerprint (CSV bytes, the sizes, inodes, mtimes and ctimes
of the files its index lists: a same-size rewrite whose mtime was set back still changes the ctime)
is the one recorded when it was packed; otherwise it is packed again. A store is
written into a temporary directory and moved into place complete, so an interrupted packing never
leaves one that opens.

Location: `cache_dir=` where a function takes it, else $FASTDISSECT_CACHE, else
$XDG_CACHE_HOME/fastdissect, else ~/.cache/fastdissect; stores live under `<root>/masks/`. A store
costs about what the packed masks cost in memory (README, Memory); delete the directory to reclaim it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..files import atomic
from .reading import DatasetError
from ..files.identity import kept_while_unchanged
from .packed import ARRAYS, META, PackedMasks, open_packed, pack
from .sample import Sample

ENV = "FASTDISSECT_CACHE"


def cache_root(cache_dir=None) -> Path:
    """The cache directory in use (see the module docstring for the order it is chosen in)."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastdissect"


def cache_dir_of(mask_cache):
    """The `cache_dir` a `mask_cache=` argument names: None (the default directory) for True, else the
    directory; False (no cache) is the caller's to handle. Anything else is refused by name."""
    if not isinstance(mask_cache, (bool, str, os.PathLike)):
        raise ValueError(f"mask_cache must be True, False or a directory, got {mask_cache!r}")
    return None if isinstance(mask_cache, bool) else mask_cache


def _json(value):
    return json.loads(json.dumps(value))  # tuples become lists: compared as they are stored


def cached_store(key: dict, fingerprint: dict, build: Callable[[Path], None], cache_dir=None) -> PackedMasks:
    """The store for `key` whose recorded fingerprint is `fingerprint`; on a miss (or a damaged or
    outdated store) `build(directory)` packs one, which must record meta fields `cache_key` = key and
    `source_fingerprint` = fingerprint."""
    key, fingerprint = _json(key), _json(fingerprint)
    root = cache_root(cache_dir) / "masks"
    path = root / atomic.digest(json.dumps(key, sort_keys=True).encode())[:24]
    if (path / META).is_file():
        try:
            store = _open(path)
            if store.meta.get("cache_key") == key and store.meta.get("source_fingerprint") == fingerprint:
                return store
        except DatasetError:
            pass  # damaged: packed again below
    with atomic.directory_in_place(path) as fresh:
        build(fresh)
    return _open(path)


_OPENED: dict[str, tuple] = {}  # store path -> (its files' stamps, the opened store)


def _open(path: Path) -> PackedMasks:
    """open_packed(path), once per process while none of the store's files changes (a store replaced
    by a new packing has new inodes). Stores of the cache are read, never written, by their users."""
    return kept_while_unchanged(_OPENED, str(path), [path / name for name in (META, *ARRAYS.values())],
                                lambda: open_packed(path))


class _BrodenLabels:
    """A Broden data set whose samples carry no image: packing decodes label files only."""

    def __init__(self, dataset):
        self._dataset = dataset

    def __getattr__(self, name):
        if name.startswith("_"):  # unpickling (DataLoader workers) looks attributes up before __dict__ is set
            raise AttributeError(name)
        return getattr(self._dataset, name)

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, i: int) -> Sample:
        r = self._dataset.records[i]
        return Sample(np.zeros((1, 1, 3), np.uint8), self._dataset.labels(i), list(r["image_labels"]), i)


def broden_store(dataset, cache_dir=None, *, verbose: bool = True, num_workers: int = 0) -> PackedMasks:
    """The packed masks of a `fd.datasets.Broden`, decoded on first use and cached."""
    images = atomic.digest("\0".join(r["image"] for r in dataset.records).encode())
    key = {"reader": "fastdissect.Broden", "root": str(Path(dataset.root).resolve()),
           "categories": list(dataset.categories), "images": images}
    fingerprint = dataset.fingerprint()

    def build(directory: Path) -> None:
        pack(_BrodenLabels(dataset), directory, verbose=verbose, num_workers=num_workers,
             extra_meta={"cache_key": _json(key)})

    return cached_store(key, fingerprint, build, cache_dir)
