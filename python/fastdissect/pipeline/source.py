"""The images and masks a dissection reads: the data set as given (or the one a packed store was
packed from, its masks then sliced from the store), and this rank's batches of it in image order."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from ..core import validate
from ..datasets.broden import Broden, DatasetError
from ..datasets.images import ImagesOnly, collate_images
from ..datasets.mask_cache import broden_store, cache_dir_of
from ..datasets.packed import PackedMasks
from ..datasets.sample import Batch, collate
from ..files.identity import dataset_identity, dissection_identity
from .options import DissectOptions


class Source:
    """The data set of a dissection and, when there is one, the packed store its masks come from."""

    def __init__(self, dataset, opts: DissectOptions, world: int):
        """A PackedMasks `dataset` gives the masks, the data set it was packed from the images; a Broden
        is read through the mask cache (one process only: under torch.distributed each rank decodes)."""
        self.store = None
        self.opts = opts
        if isinstance(dataset, PackedMasks):
            self.store, dataset = dataset, _packed_source(dataset)
        self.dataset = dataset
        self.cached_masks = (self.store is None and opts.mask_cache is not False and isinstance(dataset, Broden)
                             and world == 1)
        validate.concept_dataset(dataset)
        self.lo, self.hi = 0, len(dataset)

    def open_cache(self) -> None:
        """Packs (or finds) the Broden's labels in the mask cache: how labels are read, not what is measured."""
        if self.cached_masks:
            self.store = broden_store(self.dataset, cache_dir_of(self.opts.mask_cache), verbose=self.opts.verbose,
                                      num_workers=self.opts.num_workers)

    def identity(self, model, opts: DissectOptions) -> dict:
        """The dissection's identity: with a packed store given, its masks and the images' data set."""
        packed = self.store is not None and not self.cached_masks
        identity = dissection_identity(model, opts.layers, self.store if packed else self.dataset,
                                       opts.identity_options())
        if packed:
            identity["dataset"]["images_from"] = dataset_identity(self.dataset)
        return identity

    def __len__(self) -> int:
        return len(self.dataset)

    def shard(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def loader(self, with_masks: bool, start: int, every_shard: bool = False, indices=None):
        """Batches of images (with their decoded masks) from `start`, of this shard unless every_shard."""
        if indices is None:
            indices = range(start, len(self.dataset)) if every_shard else range(max(start, self.lo), self.hi)
        ds = torch.utils.data.Subset(self.dataset if with_masks else ImagesOnly(self.dataset), indices)
        fn = partial(collate, num_concepts=self.dataset.num_concepts) if with_masks else collate_images
        return torch.utils.data.DataLoader(ds, batch_size=self.opts.batch_size, num_workers=self.opts.num_workers,
                                           shuffle=False, collate_fn=fn)

    def labelled_batches(self, start: int, indices=None):
        """Batches with masks: from the packed store when there is one, else decoded."""
        for batch in self.loader(self.store is None, start, indices=indices):
            if self.store is not None:
                idx, images = batch
                # Consecutive images share the store's arrays; chosen ones (indices) are gathered.
                masks = (self.store.masks[int(idx[0]):int(idx[-1]) + 1] if indices is None
                         else self.store.masks.take(idx))
                batch = Batch(images, masks, idx)
            yield batch


def _packed_source(store: PackedMasks):
    """The data set a packed store was packed from, for its images; it must still hold as many."""
    source = store.meta.get("source")
    if source is None or not Path(source).is_dir():
        raise DatasetError(f"{store.path}: the packed store's source data set ({source}) is not available "
                           "for its images")
    dataset = Broden(source)
    if len(dataset) != len(store):
        raise DatasetError(f"{store.path} holds {len(store)} images but its source {source} has {len(dataset)}")
    store.check_source(dataset)
    return dataset
