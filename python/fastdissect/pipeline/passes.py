"""The passes over this rank's images. Each batch's activations feed every layer's bundle: the
thresholds pass (passes=2) or the single pass with its kept maps (retained.py), then the tally, from
the kept maps or from a second pass; a further pass refines a threshold when the data drifted."""

from __future__ import annotations

import math

import torch

from ..engine.unit_masks import MaskLog, concat_masks
from .bundle import LayerBundle
from .forward import Forward
from .options import DissectOptions
from .retained import RetainedStore, needs_forward, rebuild, retain
from .source import Source


class Passes:
    """One rank's passes; `save(stage, images_done)` writes a checkpoint, `log` prints on rank 0."""

    def __init__(self, opts: DissectOptions, source: Source, forward: Forward, bundles: dict[str, LayerBundle],
                 kept: RetainedStore, mask_log: MaskLog | None, comm, save, log):
        self.opts, self.source, self.forward, self.bundles = opts, source, forward, bundles
        self.kept, self.mask_log, self.comm, self.save, self.log = kept, mask_log, comm, save, log
        self.lo, self.hi = source.lo, source.hi

    def progress(self, desc: str, start: int):
        from tqdm.auto import tqdm

        return tqdm(total=self.hi - self.lo, initial=max(start, self.lo) - self.lo, desc=desc, unit="img",
                    disable=not self.opts.verbose or self.comm.rank != 0, dynamic_ncols=True)

    def _checkpoint_due(self, b: int) -> bool:
        every = self.opts.checkpoint_every
        return bool(every) and (b + 1) % every == 0

    def _total(self, a) -> int:
        """Values per unit over the whole data set (all shards): images x the map's positions."""
        return len(self.source) * math.prod(a.shape[2:])

    def thresholds_pass(self, start: int) -> None:
        with self.progress("pass 1/2 thresholds", start) as bar:
            for b, (indices, images) in enumerate(self.source.loader(False, start)):
                acts = self.forward.activations(indices, images)
                self.forward.store_in_cache(indices, acts)
                for name, a in acts.items():
                    self.bundles[name].quantile(a.shape[1], self._total(a)).add(a)
                bar.update(len(indices))
                if self._checkpoint_due(b):
                    self.save(1, int(indices[-1]) + 1)

    def single_pass(self, start: int) -> None:
        """Thresholds, top images and each layer's kept maps (retained.py) from one forward per batch."""
        with self.progress("pass 1/1 thresholds and kept maps", start) as bar:
            for b, batch in enumerate(self.source.labelled_batches(start)):
                acts = self.forward.activations(batch.indices, batch.images)
                if self.mask_log is not None:
                    self.mask_log.add(batch.masks.to(self.opts.device))
                kept = {}
                for name, a in acts.items():
                    q = self.bundles[name].quantile(a.shape[1], self._total(a))
                    q.add(a)
                    self.bundles[name].top.add(a, batch.indices)
                    kept[name] = retain(a, q.floor_values())
                self.kept.add(int(batch.indices[0]), len(batch.indices),
                              batch.masks if self.source.store is None else None, kept)
                bar.update(len(batch.indices))
                if self._checkpoint_due(b):
                    self.save(1, int(batch.indices[-1]) + 1)

    def tally_kept(self) -> None:
        """Every layer's tally from the kept maps; the images whose kept maps may miss a value that is
        hot under the final thresholds (the data drifted) are run through the model again."""
        thresholds = {name: b.tally.thresholds for name, b in self.bundles.items()}
        again: dict[str, set[int]] = {}  # per layer, the images its kept maps cannot stand for
        with self.progress("tally of the kept maps", self.lo) as bar:
            for first, count, masks, layers in self.kept.records():
                if masks is None:
                    masks = self.source.store.masks[first:first + count]
                masks = masks.to(self.opts.device)
                for name, record in layers.items():
                    redo = needs_forward(record, thresholds[name])
                    again.setdefault(name, set()).update((torch.nonzero(redo).flatten() + first).tolist())
                    maps = rebuild(record, thresholds[name]).to(self.opts.device)
                    self._tally_rows(name, maps, masks, torch.nonzero(~redo).flatten().tolist(),
                                     range(first, first + count))
                bar.update(count)
        self.kept.close(keep_files=self.opts.keep_spill)
        self.tally_again({name: images for name, images in again.items() if images})

    def tally_again(self, again: dict[str, set[int]]) -> None:
        """Runs the images whose kept maps may miss a hot value through the model again, traced at
        (and stopped after) only the layers that need them, and tallies each (image, layer) once."""
        if not again:
            return
        images = sorted(set().union(*again.values()))
        self.log(f"{len(images)} images may hold values above a floor the data fell below "
                 f"({', '.join(f'{name}: {len(i)}' for name, i in again.items())}): running them through the "
                 "model again")
        for batch in self.source.labelled_batches(0, indices=images):
            acts = self.forward.activations(batch.indices, batch.images, list(again))
            masks = batch.masks.to(self.opts.device)
            ids = batch.indices.tolist()
            for name, a in acts.items():
                self._tally_rows(name, a, masks, [r for r, i in enumerate(ids) if i in again[name]], ids)

    def _tally_rows(self, name: str, maps, masks, rows: list[int], ids) -> None:
        """Tallies `rows` (ascending) of a batch whose row r is image ids[r], one call per run of
        consecutive images (the batch's ids ascend, so such a run is a run of rows too)."""
        for i, j in runs([ids[r] for r in rows]):
            lo, hi = rows[i], rows[j - 1] + 1
            self.add_to_tallies(name, maps[lo:hi], masks[lo:hi], ids[lo])

    def add_to_tallies(self, name: str, act: torch.Tensor, masks, first_image: int) -> None:
        self.bundles[name].add_to_tallies(act, masks, first_image, formulas=self.opts.formulas_at(name))

    def refine_thresholds(self) -> None:
        """Further passes for order statistics the first pass could not read (the data drifted)."""
        quantiles = {name: b.quantile() for name, b in self.bundles.items()}
        while any(q.needs_pass for q in quantiles.values()):
            pending = {name: q for name, q in quantiles.items() if q.needs_pass}
            units = {name: len(q.pending_units) for name, q in pending.items()}
            self.log(f"a further pass for {sum(units.values())} unit(s) whose order statistic lies below a floor "
                     f"raised earlier in the data ({', '.join(f'{n}: {c}' for n, c in units.items())}); it runs "
                     "only these layers")
            for q in pending.values():
                q.new_pass()
            self.comm.run(self.refine_pass, pending)
            for q in pending.values():
                q.all_reduce(self.comm)

    def refine_pass(self, pending: dict) -> None:
        with self.progress("pass 1b/2 thresholds (exact refinement)", 0) as bar:
            for indices, images in self.source.loader(False, 0):
                acts = self.forward.activations(indices, None if self.forward.cached() else images, list(pending))
                for name, q in pending.items():
                    q.add(acts[name].to(q.device))  # merged shards hold their state on the CPU
                bar.update(len(indices))

    def start_tallies(self) -> None:
        ds = self.source.dataset
        cats = torch.as_tensor(ds.primary_category, dtype=torch.int64)
        for bundle in self.bundles.values():
            bundle.start_tallies(ds.num_concepts, cats)

    def collect_all_masks(self) -> None:
        """Every image's concept masks, for the permuted control: from the packed store, or one pass
        over the data set's labels (images are decoded too, not fed to the model)."""
        if self.source.store is not None:
            masks = self.source.store.masks
        elif self.opts.passes == 1 and self.comm.world == 1:  # the kept records hold every image's masks
            masks = concat_masks([m for _, _, m, _ in self.kept.records()])
        else:
            log = MaskLog()  # every shard's: the derangement pairs this rank's images with any image
            with self.progress("masks for the permuted control", 0) as bar:
                bar.reset(total=len(self.source))
                for batch in self.source.loader(True, 0, every_shard=True):
                    log.add(batch.masks)
                    bar.update(len(batch.indices))
            masks = log.masks()
        for bundle in self.bundles.values():
            bundle.set_control_masks(masks)

    def tally_pass(self, start: int) -> None:
        with self.progress("pass 2/2 tally", start) as bar:
            for b, batch in enumerate(self.source.labelled_batches(start)):
                acts = self.forward.activations(batch.indices, None if self.forward.cached() else batch.images)
                masks = batch.masks.to(self.opts.device)
                if self.mask_log is not None:
                    self.mask_log.add(masks)
                for name, a in acts.items():
                    self.bundles[name].top.add(a, batch.indices)
                    self.add_to_tallies(name, a, masks, int(batch.indices[0]))
                bar.update(len(batch.indices))
                if self._checkpoint_due(b):
                    self.save(2, int(batch.indices[-1]) + 1)


def runs(values: list[int]) -> list[tuple[int, int]]:
    """(start, stop) positions of each maximal run of consecutive integers in `values`."""
    out, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[i - 1] + 1:
            out.append((start, i))
            start = i
    return out if values else []
