"""`fd.dissect`: a model, its layers and a concept data set in; labeled units out.

One forward per batch reads every requested layer. By default (passes=1) each batch feeds the
layer's `TopQuantile` (exact thresholds), its `TopImages`, and a record of the maps that can still
exceed the thresholds (retained.py); once the thresholds are known the `Tally` reads the records, and
the images a downward drift may have cut are run again. With passes=2 a first pass finds the
thresholds and a second feeds the `Tally`. Either way a rare further pass refines a threshold when
the data drift. Accumulators are exact integer sums and exact order statistics, so results do not
depend on the batch size, the number of workers or the number of passes.
"""

from __future__ import annotations

import contextlib
import os
import time
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..files import atomic, tensorfile
from ..core import validate
from ..files.lock import locked
from ..datasets.broden import Broden, DatasetError
from ..datasets.mask_cache import broden_store, cache_dir_of
from ..datasets.packed import PackedMasks
from ..datasets.images import ImagesOnly, collate_images
from ..datasets.sample import IMAGENET_MEAN, IMAGENET_STD, Batch, collate, model_input
from .distributed import Comm
from .hooks import find_modules, run_until_traced, trace
from .results import Dissection, LayerResult
from ..files.identity import dataset_identity, differences, dissection_identity
from ..engine.scoring import Tally
from ..engine.top_images import TopImages
from ..engine.unit_masks import MaskLog, UnitMasks, concat_masks
from .retained import RetainedStore, needs_forward, rebuild, retain
from ..engine.top_quantile import TopQuantile

CHECKPOINT_VERSION = 3  # 3: tallies count images (coverage)


class CheckpointMismatch(ValueError):
    """A checkpoint written by a dissection of another identity (the message lists what differs)."""


CHECKPOINT_KIND = "checkpoint"
CHECKPOINT_FIELDS = ("identity", "stage", "images_done", "quantiles", "tallies", "top", "unit_masks",
                     "control_tallies", "mask_log", "kept")
_RESTART = "remove it, or pass restart=True (--restart) to start afresh"


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's state after its checksum is verified; nothing in it can run code when read
    (CheckpointMismatch names the path if it is not a checkpoint this version wrote)."""
    try:
        state = tensorfile.read(path, kind=CHECKPOINT_KIND)
        return tensorfile.check_fields(state, path, required=CHECKPOINT_FIELDS)
    except tensorfile.UnsafeFileError as exc:
        raise CheckpointMismatch(f"{exc}; {_RESTART}") from None


def legacy_checkpoint(directory: Path) -> Path | None:
    """A checkpoint of fastdissect before checkpoints were safetensors files: a pickle, never read."""
    old = [p for p in Path(directory).glob("checkpoint*.pt") if p.is_file()]
    return old[0] if old else None


class _Run:
    """State of one dissection: models, accumulators, cache, checkpoints."""

    def __init__(self, model, layers, dataset, opts, identity: dict, store=None, comm: Comm | None = None):
        self.model, self.layers, self.dataset, self.o = model, list(layers), dataset, opts
        self.run_identity = identity
        self.store = store  # a PackedMasks: masks are sliced from it instead of decoded
        self.comm = comm or Comm(False)
        self.lo, self.hi = self.comm.shard(len(dataset))  # this rank's images
        self.device = opts["device"]
        param = next((p for p in model.parameters() if p.is_floating_point()), None)
        self.input_dtype = param.dtype if param is not None else torch.float32
        self.quantiles: dict[str, TopQuantile] = {}
        self.tallies: dict[str, Tally] = {}
        self.top: dict[str, TopImages] = {name: TopImages(opts["top_k"]) for name in self.layers}
        # With formula_length: every firing unit mask and the concept masks, for the formula search.
        self.unit_masks: dict[str, UnitMasks] = {}
        self.mask_log = MaskLog() if opts["formulas"] else None
        self.collected_masks = None  # the log's masks as one ConceptMasks, once the tally pass is done
        # With controls=("permuted",): a Tally per layer against the masks of deranged images.
        self.control_tallies: dict[str, Tally] = {}
        self.all_masks = None  # every image's masks, which the derangement reads in any order
        self.saved: tuple[int, int] | None = None  # (stage, images done) of the last checkpoint written
        self.cache: dict[str, torch.Tensor] | None = None
        # With a cache, both passes see float16-rounded activations, cached or recomputed alike.
        self.round_f16 = opts["cache"] is not None
        self.cache_off = opts["cache"] is None
        self.single = opts["passes"] == 1
        spill = opts["spill_dir"] if opts["spill_dir"] is not None else opts["checkpoint"]
        self.kept = RetainedStore(opts["memory_limit"], spill, f"kept-rank{self.comm.rank}")
        self.keep_spill = opts["spill_dir"] is None and bool(opts["checkpoint"])  # a checkpoint may name them

    # ---- data
    def loader(self, with_masks: bool, start: int, every_shard: bool = False, indices=None):
        if indices is None:
            indices = range(start, len(self.dataset)) if every_shard else range(max(start, self.lo), self.hi)
        ds = torch.utils.data.Subset(self.dataset if with_masks else ImagesOnly(self.dataset), indices)
        if with_masks:
            fn = partial(collate, num_concepts=self.dataset.num_concepts)
        else:
            fn = collate_images
        return torch.utils.data.DataLoader(ds, batch_size=self.o["batch_size"], num_workers=self.o["num_workers"],
                                           shuffle=False, collate_fn=fn)

    def activations(self, indices: torch.Tensor, images: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Each layer's (B, K, h, w) activations of these images: from the cache, or a forward pass."""
        if self.cache is not None and images is None:
            lo, hi = int(indices[0]) - self.lo, int(indices[-1]) + 1 - self.lo
            return {name: c[lo:hi].to(self.device) for name, c in self.cache.items()}
        x = model_input(images, self.o["mean"], self.o["std"], self.o["image_size"], self.device)
        x = x.to(self.input_dtype)  # a model in half precision takes half-precision inputs
        modules = list(dict.fromkeys(module for module, _ in self.o["views"].values()))
        with torch.no_grad(), trace(self.model, modules, self.o["transform"], stop=self.o["stop_early"]) as acts:
            run_until_traced(self.model, x)
        out = {}
        for name, (module, view) in self.o["views"].items():
            if module not in acts:
                raise RuntimeError(f"layer {module!r} was not called by the model's forward pass")
            a = acts[module] if view is None else view(acts[module])
            if a.dim() == 2:  # (N, C) from a Linear layer: 1x1 maps (a warning follows the results)
                a = a[:, :, None, None]
            if a.dim() != 4:
                raise ValueError(f"layer {name!r} outputs shape {tuple(a.shape)}, not (N, K, h, w) maps or (N, K) "
                                 f"values; for token outputs pass transform={{{module!r}: fd.token_grid()}} (CLI "
                                 "--tokens N)")
            out[name] = a.to(torch.float16) if self.round_f16 else a
        self.check_finite(out, indices)
        return out

    def check_finite(self, acts: dict, indices: torch.Tensor) -> None:
        """NaN or inf anywhere is named by layer, images and units (one host sync per batch)."""
        bad = {name: ~torch.isfinite(a).flatten(2).all(dim=2) for name, a in acts.items()}  # (B, K) each
        if not bool(torch.stack([b.any() for b in bad.values()]).any()):
            return
        name, b = next((n, b) for n, b in bad.items() if bool(b.any()))
        images = indices.to(b.device)[b.any(dim=1)].tolist()
        units = torch.nonzero(b.any(dim=0)).flatten().tolist()
        raise ValueError(f"layer {name!r} gives NaN or inf activations on images {images[:10]}"
                         f"{' ...' if len(images) > 10 else ''} (units {units[:10]}{' ...' if len(units) > 10 else ''}): "
                         "check the model's weights, its precision and the input normalisation")

    def store_in_cache(self, indices, acts) -> None:
        if self.cache_off:
            return
        if self.cache is None:
            n = self.hi - self.lo
            need = sum(n * a[0].numel() * 2 for a in acts.values())
            if need > self.o["cache_limit"]:
                self.cache_off = True
                print(f"fastdissect: the activation cache would need {need / 2**30:.2f} GiB, more than "
                      f"cache_limit={self.o['cache_limit'] / 2**30:.2f} GiB: the second pass re-runs the model")
                return
            self.cache = {}
            for name, a in acts.items():
                shape = (n,) + tuple(a.shape[1:])
                if self.o["cache"] == "memory":
                    self.cache[name] = torch.empty(shape, dtype=torch.float16)
                else:
                    path = Path(self.o["cache"]) / f"{name}.rank{self.comm.rank}.f16"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self.cache[name] = torch.from_numpy(np.memmap(path, dtype=np.float16, mode="w+", shape=shape))
        lo, hi = int(indices[0]) - self.lo, int(indices[-1]) + 1 - self.lo
        for name, a in acts.items():
            self.cache[name][lo:hi] = a.cpu()

    # ---- checkpoints
    def checkpoint_path(self) -> Path | None:
        if not self.o["checkpoint"]:
            return None
        name = "checkpoint" if self.comm.world == 1 else f"checkpoint-rank{self.comm.rank}"
        return Path(self.o["checkpoint"]) / f"{name}{tensorfile.SUFFIX}"

    def identity(self) -> dict:
        return {**self.run_identity, "shard": [self.lo, self.hi], "world": self.comm.world,
                "checkpoint_version": CHECKPOINT_VERSION, "passes": self.o["passes"]}

    def save(self, stage: int, images_done: int) -> None:
        path = self.checkpoint_path()
        if path is None:
            return
        atomic.make_dirs(path.parent)
        state = {"identity": self.identity(), "stage": stage, "images_done": images_done,
                 "quantiles": {k: q.state_dict() for k, q in self.quantiles.items()} if stage == 1 else {},
                 "tallies": {k: t.state_dict() for k, t in self.tallies.items()},
                 "top": {k: t.state_dict() for k, t in self.top.items()},
                 "unit_masks": {k: u.state_dict() for k, u in self.unit_masks.items()},
                 "control_tallies": {k: t.state_dict() for k, t in self.control_tallies.items()},
                 "mask_log": self.mask_log.state_dict() if self.mask_log is not None else None,
                 "kept": self.kept.persist(path.parent) if stage == 1 and self.single else []}
        # The file's checksum: a flipped bit in a counter must not resume as a wrong count.
        atomic.write_bytes(path, tensorfile.dumps(state, kind=CHECKPOINT_KIND))
        self.saved = (stage, images_done)

    def describe_progress(self, stage: int, images_done: int) -> str:
        if stage >= 3:
            return "complete"
        return f"pass {stage}, {images_done - self.lo}/{self.hi - self.lo} images"

    def resume(self):
        path = self.checkpoint_path()
        old = legacy_checkpoint(path.parent) if path is not None and not path.is_file() else None
        if old is not None:
            if not self.o["restart"]:
                raise CheckpointMismatch(f"{old}: a checkpoint of an older fastdissect, a pickle (reading one can "
                                         f"run code), which this version never reads; {_RESTART}")
            self.log(f"{old} is a checkpoint of an older fastdissect, never read: starting afresh")
        if path is None or not path.is_file():
            return 1, self.lo
        try:
            state = read_checkpoint(path)
        except CheckpointMismatch as exc:
            if not self.o["restart"]:
                raise
            self.log(f"{exc.args[0].split(':')[0]} is unreadable: starting afresh")
            return 1, self.lo
        recorded = state["identity"] if isinstance(state["identity"], dict) else {}
        diff = differences(recorded, tensorfile.as_stored(self.identity()))
        if diff:
            if self.o["restart"]:
                self.log(f"{path} belongs to another dissection ({diff[0]}): starting afresh")
                return 1, self.lo
            shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
            raise CheckpointMismatch(f"{path} belongs to another dissection: {shown}. Use another checkpoint "
                                     "directory, or restart=True (CLI --restart) to discard it and start afresh")
        for k, s in state["quantiles"].items():
            self.quantiles[k] = TopQuantile(s["num_units"], s["quantile"], s["method"], backend=self.o["backend"])
            self.quantiles[k].load_state_dict(s, self.device)
        for k, s in state["tallies"].items():
            self.tallies[k] = self.tally_from_state(s)
        for k, s in state["top"].items():
            self.top[k].load_state_dict(s, self.device)
        for k, s in state["control_tallies"].items():
            self.control_tallies[k] = self.tally_from_state(s)
        for k, s in state["unit_masks"].items():
            self.unit_masks[k] = UnitMasks(s["thresholds"], s["height"], s["width"], backend=self.o["backend"],
                                           device=self.device)
            self.unit_masks[k].load_state_dict(s)
        self.kept.load_refs(path.parent, state["kept"])
        if self.mask_log is not None and state["mask_log"] is not None:
            self.mask_log.load_state_dict(state["mask_log"], self.device)
        if state["stage"] > 1 or state["images_done"] > self.lo:
            self.cache_off = True  # the cache of the interrupted run is incomplete: re-run the model
        self.saved = (state["stage"], state["images_done"])
        self.log(f"resuming from {self.o['checkpoint']}: {self.describe_progress(*self.saved)}")
        return state["stage"], state["images_done"]

    def tally_from_state(self, s: dict) -> Tally:
        tally = Tally(s["num_units"], s["num_concepts"], s["thresholds"], union=s["union"], categories=s["categories"],
                      backend=self.o["backend"], device=self.device)
        tally.load_state_dict(s)
        return tally

    def log(self, message: str) -> None:
        if self.o["verbose"] and self.comm.rank == 0:
            print(f"fastdissect: {message}")

    # ---- passes
    def progress(self, desc: str, start: int):
        from tqdm.auto import tqdm

        return tqdm(total=self.hi - self.lo, initial=max(start, self.lo) - self.lo, desc=desc, unit="img",
                    disable=not self.o["verbose"] or self.comm.rank != 0, dynamic_ncols=True)

    def thresholds_pass(self, start: int) -> None:
        every = self.o["checkpoint_every"]
        with self.progress("pass 1/2 thresholds", start) as bar:
            for b, (indices, images) in enumerate(self.loader(False, start)):
                acts = self.activations(indices, images)
                self.store_in_cache(indices, acts)
                for name, a in acts.items():
                    if name not in self.quantiles:
                        self.quantiles[name] = TopQuantile(a.shape[1], self.o["quantile"], self.o["method"],
                                                           backend=self.o["backend"],
                                                           total_values=len(self.dataset) * a.shape[2] * a.shape[3])
                    self.quantiles[name].add(a)
                bar.update(len(indices))
                if every and (b + 1) % every == 0:
                    self.save(1, int(indices[-1]) + 1)

    def labelled_batches(self, start: int, indices=None):
        """Batches with masks: from the packed store when there is one, else decoded."""
        loader = self.loader(self.store is None, start, indices=indices)
        for batch in loader:
            if self.store is not None:
                idx, images = batch
                # Consecutive images share the store's arrays; chosen ones (indices) are gathered.
                masks = (self.store.masks[int(idx[0]):int(idx[-1]) + 1] if indices is None
                         else self.store.masks.take(idx))
                batch = Batch(images, masks, idx)
            yield batch

    def single_pass(self, start: int) -> None:
        """Thresholds, top images and each layer's kept maps (retained.py) from one forward per batch."""
        every = self.o["checkpoint_every"]
        with self.progress("pass 1/1 thresholds and kept maps", start) as bar:
            for b, batch in enumerate(self.labelled_batches(start)):
                acts = self.activations(batch.indices, batch.images)
                if self.mask_log is not None:
                    self.mask_log.add(batch.masks.to(self.device))
                kept = {}
                for name, a in acts.items():
                    if name not in self.quantiles:
                        self.quantiles[name] = TopQuantile(a.shape[1], self.o["quantile"], self.o["method"],
                                                           backend=self.o["backend"],
                                                           total_values=len(self.dataset) * a.shape[2] * a.shape[3])
                    self.quantiles[name].add(a)
                    self.top[name].add(a, batch.indices)
                    kept[name] = retain(a, self.quantiles[name].floor_values())
                self.kept.add(int(batch.indices[0]), len(batch.indices),
                              batch.masks if self.store is None else None, kept)
                bar.update(len(batch.indices))
                if every and (b + 1) % every == 0:
                    self.save(1, int(batch.indices[-1]) + 1)

    def tally_kept(self) -> None:
        """Every layer's tally from the kept maps; the images whose kept maps may miss a value that is
        hot under the final thresholds (the data drifted) are run through the model again."""
        thresholds = {name: t.thresholds for name, t in self.tallies.items()}
        again: list[int] = []
        with self.progress("tally of the kept maps", self.lo) as bar:
            for first, count, masks, layers in self.kept.records():
                if masks is None:
                    masks = self.store.masks[first:first + count]
                masks = masks.to(self.device)
                redo = torch.zeros(count, dtype=torch.bool)
                for name, record in layers.items():
                    redo |= needs_forward(record, thresholds[name])
                again += (torch.nonzero(redo).flatten() + first).tolist()
                rows = torch.nonzero(~redo).flatten().tolist()
                for name, record in layers.items():
                    maps = rebuild(record, thresholds[name]).to(self.device)
                    for i, j in _runs(rows):
                        lo, hi = rows[i], rows[j - 1] + 1
                        self.add_to_tallies(name, maps[lo:hi], masks[lo:hi], first + lo)
                bar.update(count)
        self.kept.close(keep_files=self.keep_spill)
        if again:
            self.log(f"{len(again)} images may hold values above a floor the data fell below: running them "
                     "through the model again")
            for batch in self.labelled_batches(0, indices=again):
                acts = self.activations(batch.indices, batch.images)
                masks = batch.masks.to(self.device)
                for i, j in _runs(batch.indices.tolist()):
                    for name, a in acts.items():
                        self.add_to_tallies(name, a[i:j], masks[i:j], int(batch.indices[i]))

    def add_to_tallies(self, name: str, act: torch.Tensor, masks, first_image: int) -> None:
        """The tallies that depend on the thresholds, for images first_image.. (consecutive)."""
        self.tallies[name].add(act, masks)
        if self.mask_log is not None:
            self.collect_unit_masks(name, act, masks, first_image)
        if self.control_tallies:
            indices = torch.arange(first_image, first_image + act.shape[0])
            self.control_tallies[name].add(act, self.all_masks.take(self.o["derangement"][indices]).to(self.device))

    def merge_quantiles(self) -> None:
        """Every rank ends with the same TopQuantile per layer: all shards merged in rank order."""
        if self.comm.world == 1:
            return
        # A rank without images has seen no layer: it learns the layers' widths from the others.
        widths = {}
        for shard in self.comm.gather({name: q.num_units for name, q in self.quantiles.items()}):
            widths.update(shard)
        for name in self.layers:
            if name not in self.quantiles:
                self.quantiles[name] = TopQuantile(widths[name], self.o["quantile"], self.o["method"],
                                                   backend=self.o["backend"])
            self.quantiles[name].all_reduce(self.comm)

    def refine_thresholds(self) -> None:
        """Further passes for order statistics the first pass could not read (the data drifted)."""
        while any(q.needs_pass for q in self.quantiles.values()):
            pending = {name: q for name, q in self.quantiles.items() if q.needs_pass}
            for q in pending.values():
                q.new_pass()
            self.comm.run(self.refine_pass, pending)
            for q in pending.values():
                q.all_reduce(self.comm)

    def start_tallies(self) -> None:
        ds = self.dataset
        cats = torch.as_tensor(ds.primary_category, dtype=torch.int64)
        for name, q in self.quantiles.items():
            tally = lambda: Tally(q.num_units, ds.num_concepts, q.thresholds(), union=self.o["union"],  # noqa: E731
                                  categories=None if self.o["union"] == "global" else cats,
                                  backend=self.o["backend"], device=self.device)
            self.tallies[name] = tally()
            if self.o["permuted"]:
                self.control_tallies[name] = tally()

    def collect_all_masks(self) -> None:
        """Every image's concept masks, for the permuted control: from the packed store, or one pass
        over the data set's labels (images are decoded too, not fed to the model)."""
        if self.store is not None:
            self.all_masks = self.store.masks
            return
        if self.single and self.comm.world == 1:  # the kept records hold every image's masks
            self.all_masks = concat_masks([masks for _, _, masks, _ in self.kept.records()])
            return
        log = MaskLog()  # every shard's: the derangement pairs this rank's images with any image
        with self.progress("masks for the permuted control", 0) as bar:
            bar.reset(total=len(self.dataset))
            for batch in self.loader(True, 0, every_shard=True):
                log.add(batch.masks)
                bar.update(len(batch.indices))
        self.all_masks = log.masks()

    def refine_pass(self, pending: dict) -> None:
        with self.progress("pass 1b/2 thresholds (exact refinement)", 0) as bar:
            for indices, images in self.loader(False, 0):
                acts = self.activations(indices, None if self.cache is not None else images)
                for name, q in pending.items():
                    q.add(acts[name].to(q.device))  # merged shards hold their state on the CPU
                bar.update(len(indices))

    def combine_tallies(self) -> None:
        """Sums every rank's tallies (int64 all-reduce) and merges the top-k lists in rank order."""
        for name in self.layers:
            self.tallies[name].all_reduce(self.comm)
            if name in self.control_tallies:
                self.control_tallies[name].all_reduce(self.comm)
            self.top[name].all_reduce(self.comm)
            if name in self.unit_masks:
                self.unit_masks[name].all_reduce(self.comm)
        if self.mask_log is not None:
            self.mask_log.all_reduce(self.comm)

    def explain(self, name: str):
        """The layer's compositional formulas, from the masks collected in the tally pass."""
        from ..engine.compositional import SetSource, explain

        acc = self.unit_masks[name]
        if self.collected_masks is None:  # concatenated once, shared by every layer's search
            self.collected_masks = self.mask_log.masks()
        masks = self.collected_masks
        source = SetSource(acc.mask_set(len(self.dataset)), masks, acc.thresholds, self.o["backend"])
        self.log(f"{name}: formulas of {len(masks)} images, {acc.nbytes() / 2**20:.1f} MiB of unit masks")
        return explain(source, self.o["formulas"], self.o["quantile"], progress=self.o["verbose"])

    def tally_pass(self, start: int) -> None:
        every = self.o["checkpoint_every"]
        with self.progress("pass 2/2 tally", start) as bar:
            for b, batch in enumerate(self.labelled_batches(start)):
                acts = self.activations(batch.indices, None if self.cache is not None else batch.images)
                masks = batch.masks.to(self.device)
                if self.mask_log is not None:
                    self.mask_log.add(masks)
                for name, a in acts.items():
                    self.top[name].add(a, batch.indices)
                    self.add_to_tallies(name, a, masks, int(batch.indices[0]))
                bar.update(len(batch.indices))
                if every and (b + 1) % every == 0:
                    self.save(2, int(batch.indices[-1]) + 1)


    def collect_unit_masks(self, name: str, act: torch.Tensor, masks, first_image: int) -> None:
        if name not in self.unit_masks:
            self.unit_masks[name] = UnitMasks(self.tallies[name].thresholds, masks.height, masks.width,
                                              backend=self.o["backend"], device=self.device)
        self.unit_masks[name].add(act, first_image)


def _runs(values: list[int]) -> list[tuple[int, int]]:
    """(start, stop) positions of each maximal run of consecutive integers in `values`."""
    runs, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[i - 1] + 1:
            runs.append((start, i))
            start = i
    return runs if values else []


def dissect(model: torch.nn.Module, layers: Sequence[str], dataset, *, quantile: float = 0.005,
            method: str = "linear", iou_threshold: float = 0.04, union: str = "netdissect", batch_size: int = 32,
            num_workers: int = 0, device=None, cache=None, cache_limit: int = 4 << 30, image_size=None,
            mean=IMAGENET_MEAN, std=IMAGENET_STD, transform: dict | None = None, views: dict | None = None,
            top_k: int = 8, checkpoint=None, checkpoint_every: int = 50, restart: bool = False,
            backend: str = "auto", distributed: bool | None = None, formula_length: int | None = None,
            beam_size: int = 5, search: str = "beam", penalty: float = 1.0, metric: str = "iou", controls=(),
            control_seed: int = 0, control_model: torch.nn.Module | None = None, stop_early: bool = True,
            passes: int | None = None, memory_limit: int = 2 << 30, spill_dir=None, mask_cache=True,
            verbose: bool = True) -> Dissection:
    """Dissects `layers` of `model` on a concept data set (see the README for a complete example).

    dataset: a `fd.datasets.Broden`, `SegmentationDataset`, a packed store (`fd.datasets.open_packed`,
    whose masks are then read instead of decoded), or anything yielding `Sample`s with
    `num_concepts`, `concept_names`, `category_names`, `primary_category`.
    quantile / method: each unit's threshold T_k (exact; `fd.NETDISSECT_QUANTILE` with "hazen" for
    NetDissect's level). union: "netdissect" (default), "lite" or "global". iou_threshold: a unit whose
    best IoU exceeds it is a detector. metric: what ranks each unit's labels and meets iou_threshold,
    "iou" (default, NetDissect's), "f1", "precision", "recall" or "coverage" (the same exact counts).
    image_size: (h, w) the images are resized to for the model (default: as stored); mean/std: the
    model's input normalisation. transform: {layer: callable} applied to that layer's output, e.g.
    `fd.token_grid()` for transformer blocks.
    views: {name: (layer, callable)}: more results from the same forward pass, each the callable
    applied to a layer's output (e.g. one `fd.random_rotation` per power: the axis-alignment test).
    cache: None (the second pass re-runs the model), "memory" or a directory: activations are kept
    in float16 (so both passes see the float16-rounded values) when they need at most `cache_limit`
    bytes (N * sum over layers of K * h * w * 2), else the second pass re-runs the model.
    checkpoint: a directory; accumulators are saved every `checkpoint_every` batches and after each
    pass, and a run of the same identity (`fd.identity`: model weights, architecture, layers and
    transforms, data set, image size, mean/std, quantile, method, union, top_k) resumes from it with
    identical results. A checkpoint of another identity is refused with the differences named, or,
    with restart=True, discarded.
    distributed: None uses torch.distributed when a process group is initialized; each rank then reads
    its own contiguous shard, accumulators are combined exactly, and every rank returns the same
    results, identical bit for bit to one process (fastdissect/distributed.py).
    formula_length: also label each unit with a compositional formula of at most this many concepts
    (`fd.compositional`: beam_size, search "beam" or "optimal", penalty), found from the unit masks
    collected in the tally pass (no further forward pass). They cost 8 * ceil(H * W / 64) bytes per
    (image, unit) map that fires, plus the concept masks of the data set, until the search is done.
    controls: chance baselines (fastdissect/controls.py). "permuted" also tallies each unit against
    the masks of other images (a derangement seeded by control_seed) in the same tally pass, and
    marks the detectors that beat chance; it holds every image's packed concept masks (read once more
    without a store). "random_init" dissects, with the same settings, the same architecture with
    random weights (a copy of `model` re-initialised under control_seed, or `control_model`), into
    `result.random_init`.
    stop_early: end each forward pass once every requested layer has its output (the later layers
    are never run; a module called twice in one forward is then read at its first call).
    passes: 1 (the default without a cache) runs the model once per image: the thresholds are found
    while each layer keeps the maps, or the cells of large maps, that can still reach them
    (fastdissect/retained.py), and the tally reads what was kept; results are identical bit for bit
    to passes=2, which reads every image twice (thresholds, then tally). Images whose kept maps may
    miss a value above the final threshold (the data drifted downwards) are run again, only those.
    The kept maps stay in memory up to `memory_limit` bytes, the rest goes to files in `spill_dir`
    (default: the checkpoint directory, else a temporary directory), removed when the run ends.
    mask_cache: a Broden's labels are decoded once, packed into a cache directory on first use and
    read from there by every later run and layer (fastdissect/datasets/mask_cache.py; True: the
    default directory, $FASTDISSECT_CACHE or ~/.cache/fastdissect; a path; False: decode every run).
    Not used under torch.distributed, where every rank decodes its own shard.
    """
    from ..engine.controls import check_controls

    if isinstance(controls, str):  # a str would be read as its letters, none of them a control
        raise validate.ArgumentTypeError(f"controls must be a tuple of control names, not a str: did you mean "
                                          f"controls=({controls!r},)?")
    controls = check_controls(controls)
    if control_model is not None:
        validate.module(control_model, "control_model")
    options = dict(quantile=quantile, method=method, iou_threshold=iou_threshold, union=union,
                   batch_size=batch_size, num_workers=num_workers, device=device, cache=cache,
                   cache_limit=cache_limit, image_size=image_size, mean=mean, std=std, transform=transform,
                   views=views, top_k=top_k, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                   restart=restart, backend=backend, distributed=distributed, formula_length=formula_length,
                   beam_size=beam_size, search=search, penalty=penalty, metric=metric, controls=controls,
                   control_seed=control_seed, stop_early=stop_early, passes=passes, memory_limit=memory_limit,
                   spill_dir=spill_dir, mask_cache=mask_cache, verbose=verbose)
    result = _dissect(model, layers, dataset, **options)
    if "random_init" in controls:
        from ..engine.controls import random_weights

        control = control_model if control_model is not None else random_weights(model, control_seed)
        if verbose:
            print(f"fastdissect: random-init control: the same layers of {type(control).__name__} with random "
                  f"weights (seed {control_seed}), same settings")
        # The same settings; its own checkpoint directory; the other controls, not itself again.
        result.random_init = _dissect(control, layers, dataset, **{
            **options, "checkpoint": Path(checkpoint) / "random_init" if checkpoint else None,
            "controls": tuple(c for c in controls if c != "random_init")})
        for name, layer in result.items():
            _warn_if_random_weights_match(layer, result.random_init[name])
    return result


def _views(layers, transform, views) -> dict:
    """{result name: (module name, callable or None)}: each layer as itself, then the extra views."""
    out = {name: (name, None) for name in layers}
    for name, spec in (views or {}).items():
        if not isinstance(name, str) or not isinstance(spec, tuple) or len(spec) != 2 or not callable(spec[1]):
            raise ValueError(f"views must map a name to (layer, callable), got {name!r}: {spec!r}")
        if name in out:
            raise ValueError(f"view {name!r} has the name of a layer or another view")
        out[name] = spec
    if not out:
        raise ValueError("layers must name at least one module (see model.named_modules())")
    unknown = [t for t in (transform or {}) if t not in {module for module, _ in out.values()}]
    if unknown:
        raise LookupError(f"transform names layers that are not dissected: {unknown}")
    return out


def _dissect(model, layers, dataset, *, quantile, method, iou_threshold, union, batch_size, num_workers, device,
             cache, cache_limit, image_size, mean, std, transform, views, top_k, checkpoint, checkpoint_every,
             restart, backend, distributed, formula_length, beam_size, search, penalty, metric, controls,
             control_seed, stop_early, passes, memory_limit, spill_dir, mask_cache, verbose) -> Dissection:
    from ..engine.controls import derangement
    from ..engine.compositional import search_settings
    from ..core.quantile import check_method
    from .results import check_metric

    # Every option is checked before a data set is read or packed, and each error names its argument.
    validate.module(model, "model")
    layers = validate.layer_names(layers)
    quantile = validate.quantile_level(quantile)
    check_method(method)
    iou_threshold = validate.number(iou_threshold, "iou_threshold", 0.0, 1.0)
    validate.union_mode(union)
    batch_size = validate.positive_int(batch_size, "batch_size")  # numpy ints become ints, as DataLoader needs
    num_workers = validate.integer(num_workers, "num_workers", low=0)
    device = validate.device(device)
    cache_limit = validate.integer(cache_limit, "cache_limit", low=0, what="bytes")
    image_size = validate.image_size(image_size)
    mean = validate.channel_stats(mean, "mean")
    std = validate.channel_stats(std, "std", positive=True)
    transform = validate.callable_map(transform, "transform")
    validate.mapping(views, "views", "{name: (layer, callable)}")
    top_k = validate.positive_int(top_k, "top_k")
    validate.optional_path(checkpoint, "checkpoint")
    validate.boolean(restart, "restart")
    validate.backend(backend)
    validate.optional_boolean(distributed, "distributed")
    # The search options are checked even without formula_length: a typo must not wait for the run that uses it.
    searched = search_settings(1 if formula_length is None else formula_length, beam_size, search, penalty,
                               "formula_length")
    check_metric(metric)
    control_seed = validate.integer(control_seed, "control_seed")
    validate.boolean(stop_early, "stop_early")
    validate.optional_path(spill_dir, "spill_dir")
    validate.boolean(verbose, "verbose")
    store = None
    if isinstance(dataset, PackedMasks):  # masks from the store, images from the data set it was packed from
        store = dataset
        source = store.meta.get("source")
        if source is None or not Path(source).is_dir():
            raise DatasetError(f"{store.path}: the packed store's source data set ({source}) is not available "
                               "for its images")
        dataset = Broden(source)
        if len(dataset) != len(store):
            raise DatasetError(f"{store.path} holds {len(store)} images but its source {source} has {len(dataset)}")
        store.check_source(dataset)
    comm = Comm.detect(distributed)
    cache_dir = cache_dir_of(mask_cache)
    cached_masks = store is None and mask_cache is not False and isinstance(dataset, Broden) and comm.world == 1
    view_specs = _views(layers, transform, views)
    find_modules(model, list(dict.fromkeys(module for module, _ in view_specs.values())))
    validate.concept_dataset(dataset)
    if not isinstance(checkpoint_every, int) or isinstance(checkpoint_every, bool) or checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be a non-negative int (0: only after each pass), "
                         f"got {checkpoint_every!r}")
    if cache not in (None, "memory") and not isinstance(cache, (str, os.PathLike)):
        raise ValueError(f'cache must be None, "memory" or a directory, got {cache!r}')
    if passes is None:
        passes = 1 if cache is None else 2
    if passes not in (1, 2) or isinstance(passes, bool):
        raise ValueError(f"passes must be 1 or 2 (or None: 1, 2 with a cache), got {passes!r}")
    if passes == 1 and cache is not None:
        raise ValueError("cache= keeps activations for a second pass: use it with passes=2 (or leave passes unset)")
    if not isinstance(memory_limit, int) or isinstance(memory_limit, bool) or memory_limit < 0:
        raise ValueError(f"memory_limit must be a non-negative number of bytes, got {memory_limit!r}")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    formulas = searched if formula_length is not None else None
    if cached_masks:  # the cache is how labels are read, not what is measured: the identity is the data set's
        store = broden_store(dataset, cache_dir, verbose=verbose, num_workers=num_workers)
    permuted = "permuted" in controls
    perm = derangement(len(dataset), control_seed) if permuted else None
    opts = dict(formulas=formulas, controls=controls, permuted=permuted, control_seed=control_seed if controls else None,
                derangement=perm, quantile=quantile, method=method, union=union, batch_size=batch_size,
                num_workers=num_workers, device=torch.device(device), cache=cache, cache_limit=cache_limit,
                image_size=image_size, mean=mean, std=std,
                transform=transform, views=view_specs, top_k=top_k, checkpoint=checkpoint,
                checkpoint_every=checkpoint_every, restart=restart, backend=backend, stop_early=stop_early,
                passes=passes, memory_limit=memory_limit, spill_dir=spill_dir, verbose=verbose)
    identity = dissection_identity(model, list(view_specs), dataset if store is None or cached_masks else store, opts)
    if store is not None and not cached_masks:
        identity["dataset"]["images_from"] = dataset_identity(dataset)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    run = _Run(model, list(view_specs), dataset, opts, identity, store, comm)
    hold = locked(checkpoint, "checkpoint directory", f".fastdissect-rank{comm.rank}.lock" if comm.world > 1 else None) \
        if checkpoint else contextlib.nullcontext()
    with hold:  # the checkpoint directory is this run's until it ends, however it ends
        try:
            stage, done = run.resume()
            if stage == 1:
                comm.run(run.single_pass if run.single else run.thresholds_pass, done)
                if run.single:
                    run.save(1, run.hi)
                run.merge_quantiles()
                run.refine_thresholds()
                run.start_tallies()
                if run.single:
                    if permuted:
                        run.collect_all_masks()
                    comm.run(run.tally_kept)
                    run.combine_tallies()
                    run.save(3, run.hi)
                    if run.checkpoint_path() is not None:  # complete: the checkpoint names no record now
                        run.kept.remove_files(run.checkpoint_path().parent)
                    stage = 3
                else:
                    run.save(2, run.lo)
                    done = run.lo
            if stage == 2 or (stage == 1 and not run.single):
                if permuted:
                    run.collect_all_masks()
                comm.run(run.tally_pass, done)
                run.combine_tallies()
                run.save(3, run.hi)
        except KeyboardInterrupt:
            if run.checkpoint_path() is None:
                run.log("interrupted: no checkpoint was written (pass checkpoint=DIR, CLI --checkpoint DIR, to "
                        "resume an interrupted run)")
            elif run.saved is None:
                run.log(f"interrupted before the first checkpoint: nothing was written to {checkpoint}")
            else:
                run.log(f"interrupted: the checkpoint in {checkpoint} holds {run.describe_progress(*run.saved)}; "
                        "run the same command again to resume")
            raise
        finally:
            run.kept.close(keep_files=run.keep_spill)
            model.train(was_training)
    result = Dissection()
    cats = torch.as_tensor(dataset.primary_category, dtype=torch.int64)
    for name in view_specs:
        top = run.top[name].to("cpu")
        result[name] = LayerResult(name, run.tallies[name].scores(), list(dataset.concept_names),
                                   list(dataset.category_names), cats, iou_threshold, top.images, top.values,
                                   top.maps, run.explain(name) if formulas is not None else None,
                                   run.control_tallies[name].scores() if permuted else None, metric)
        _warn_if_chance_explains(result[name], run.log)
        _warn_if_whole_image_maps(result[name], run.log)
    result.dataset = dataset
    result.identity = {**identity, "iou_threshold": iou_threshold, "metric": metric}
    result.run_seconds = time.perf_counter() - started
    return result


def _warn_if_chance_explains(layer: LayerResult, log) -> None:
    """Most units pass the plain rule but few beat their control: the labels are not evidence."""
    if layer.control is None:
        return
    s = layer.summary
    if s["interpretable"] <= s["units"] // 2:
        return
    if s["beyond_chance"] < s["interpretable"] / 4:
        import warnings

        message = (f"{layer.layer}: {s['interpretable']}/{s['units']} units pass IoU > {layer.iou_threshold}, but "
                   f"only {s['beyond_chance']} beat the permuted control ({s['chance_detectors']} units are "
                   "'detectors' by chance alone): these labels say little about the units")
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        log(message)


def _warn_if_whole_image_maps(layer: LayerResult, log) -> None:
    """1x1 maps (a pooled layer) upsample to a constant: every mask is all or nothing of an image."""
    if layer.top_maps is None or tuple(layer.top_maps.shape[2:]) != (1, 1) or not layer.summary["interpretable"]:
        return
    import warnings

    message = (f"{layer.layer} has 1x1 maps: each unit's mask is either the whole image or nothing, so its IoU "
               "measures image-level agreement, not localisation; a random-weights copy "
               "(controls=(\"random_init\",)) shows how much of it training added")
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log(message)


def _warn_if_random_weights_match(layer: LayerResult, random: LayerResult) -> None:
    """The trained layer has no more detectors than the same layer with random weights."""
    trained, control = layer.summary["interpretable"], random.summary["interpretable"]
    if trained > 0 and control >= trained:
        import warnings

        message = (f"{layer.layer}: {trained}/{layer.num_units} units pass IoU > {layer.iou_threshold}, and "
                   f"{control} do with random weights: the count of detectors does not show what training added "
                   "(compare the labels and IoUs of both)")
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        print(f"fastdissect: {message}")
