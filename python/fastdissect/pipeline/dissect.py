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
import time
from typing import Sequence

import torch

from ..bases.basis import with_bases
from ..core import validate
from ..datasets.sample import IMAGENET_MEAN, IMAGENET_STD
from ..engine.controls import derangement
from ..engine.unit_masks import MaskLog
from ..files.lock import locked
from .bundle import FIELDS, LayerBundle
from .checkpoint import (CHECKPOINT_FIELDS, CHECKPOINT_KIND, CHECKPOINT_VERSION, Checkpoint,  # noqa: F401
                         CheckpointMismatch, checkpoint_identity, describe_progress, legacy_checkpoint,
                         read_checkpoint)
from .distributed import Comm
from .forward import Forward
from .merge import combine, merge_quantiles
from .options import DissectOptions
from .passes import Passes
from .results import Dissection, LayerResult
from .retained import RetainedStore
from .source import Source


def dissect(model: torch.nn.Module, layers: Sequence[str], dataset, *, quantile: float = 0.005,
            method: str = "linear", iou_threshold: float = 0.04, union: str | None = None, batch_size: int = 32,
            num_workers: int = 0, device=None, cache=None, cache_limit: int = 4 << 30, image_size=None,
            mean=IMAGENET_MEAN, std=IMAGENET_STD, transform: dict | None = None, views: dict | None = None,
            top_k: int = 8, checkpoint=None, checkpoint_every: int = 50, restart: bool = False,
            backend: str = "auto", distributed: bool | None = None, formula_length: int | None = None,
            beam_size: int = 5, search: str = "beam", penalty: float = 1.0, metric: str = "iou",
            formula_layers: Sequence[str] | None = None, controls=(), control_layers: Sequence[str] | None = None,
            control_seed: int = 0, control_model: torch.nn.Module | None = None, stop_early: bool = True,
            passes: int | None = None, memory_limit: int = 2 << 30, spill_dir=None, mask_cache=True,
            basis: dict | None = None, verbose: bool = True) -> Dissection:
    """Dissects `layers` of `model` on a concept data set (see the README for a complete example).

    dataset: a `fd.datasets.Broden`, `SegmentationDataset`, a packed store (`fd.datasets.open_packed`,
    whose masks are then read instead of decoded), or anything yielding `Sample`s with
    `num_concepts`, `concept_names`, `category_names`, `primary_category`.
    quantile / method: each unit's threshold T_k (exact; `fd.NETDISSECT_QUANTILE` with "hazen" for
    NetDissect's level). union: "netdissect", "lite" or "global"; None (the default) is "netdissect"
    wherever concept categories are known, which a data set always gives (`fd.score` follows the same
    rule), so both default to NetDissect's per-category union. iou_threshold: a unit whose
    best IoU exceeds it is a detector. metric: what ranks each unit's labels and meets iou_threshold,
    "iou" (default, NetDissect's), "f1", "precision", "recall" or "coverage" (the same exact counts).
    image_size: (h, w) the images are resized to for the model (default: as stored); mean/std: the
    model's input normalisation. transform: {layer: callable} applied to that layer's output, e.g.
    `fd.token_grid()` for transformer blocks.
    basis: {layer: B}: the layer read in a basis (fastdissect/bases/basis.py; docs/bases.md): a (F, C)
    tensor of directions, an `fd.SparseAutoencoder` (its features) or a callable (N, C, h, w) ->
    (N, F, h, w), applied after the layer's transform; its features are dissected exactly as units
    are, and the basis, hashed by its weights, is part of the checkpoint identity.
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
    results, identical bit for bit to one process (fastdissect/pipeline/distributed.py).
    formula_length: also label each unit with a compositional formula of at most this many concepts
    (`fd.compositional`: beam_size, search "beam" or "optimal", penalty), found from the unit masks
    collected in the tally pass (no further forward pass). They cost 8 * ceil(H * W / 64) bytes per
    (image, unit) map that fires, plus the concept masks of the data set, until the search is done.
    formula_layers: the layers (or views) searched for formulas, default every one.
    controls: chance baselines (fastdissect/engine/controls.py). "permuted" also tallies each unit against
    the masks of other images (a derangement seeded by control_seed) in the same tally pass, and
    marks the detectors that beat chance; it holds every image's packed concept masks (read once more
    without a store). "random_init" dissects, with the same settings, the same architecture with
    random weights (a copy of `model` re-initialised under control_seed, or `control_model`), into
    `result.random_init`. control_layers: the layers (or views) the controls apply to, default every one
    (the random-weights copy is then dissected at those only).
    stop_early: end each forward pass once every requested layer has its output (the later layers
    are never run; a module called twice in one forward is then read at its first call).
    passes: 1 (the default without a cache) runs the model once per image: the thresholds are found
    while each layer keeps the maps, or the cells of large maps, that can still reach them
    (fastdissect/pipeline/retained.py), and the tally reads what was kept; results are identical bit for bit
    to passes=2, which reads every image twice (thresholds, then tally). Images whose kept maps may
    miss a value above the final threshold (the data drifted downwards) are run again, only those.
    The kept maps stay in memory up to `memory_limit` bytes, the rest goes to files in `spill_dir`
    (default: the checkpoint directory, else a temporary directory), removed when the run ends.
    mask_cache: a Broden's labels are decoded once, packed into a cache directory on first use and
    read from there by every later run and layer (fastdissect/datasets/mask_cache.py; True: the
    default directory, $FASTDISSECT_CACHE or ~/.cache/fastdissect; a path; False: decode every run).
    Not used under torch.distributed, where every rank decodes its own shard.
    """
    if control_model is not None:
        validate.module(control_model, "control_model")
    transform, bases = with_bases(validate.layer_names(layers), transform, basis)
    opts = DissectOptions.build(
        model, layers, quantile=quantile, method=method, iou_threshold=iou_threshold, union=union,
        batch_size=batch_size, num_workers=num_workers, device=device, cache=cache, cache_limit=cache_limit,
        image_size=image_size, mean=mean, std=std, transform=transform, views=views, top_k=top_k,
        checkpoint=checkpoint, checkpoint_every=checkpoint_every, restart=restart, backend=backend,
        distributed=distributed, formula_length=formula_length, beam_size=beam_size, search=search,
        penalty=penalty, metric=metric, controls=controls, control_seed=control_seed, stop_early=stop_early,
        passes=passes, memory_limit=memory_limit, spill_dir=spill_dir, mask_cache=mask_cache, verbose=verbose,
        formula_layers=formula_layers, control_layers=control_layers)
    result = _dissect(model, dataset, opts)
    for name, described in bases.items():
        result[name].basis = described
    if "random_init" in opts.controls:
        from ..engine.controls import random_weights

        control = control_model if control_model is not None else random_weights(model, control_seed)
        if verbose:
            print(f"fastdissect: random-init control: the same layers of {type(control).__name__} with random "
                  f"weights (seed {control_seed}), same settings")
        # The same settings; its own checkpoint directory; the other controls, not itself again.
        result.random_init = _dissect(control, dataset, opts.for_control(control))
        for name, random in result.random_init.items():
            _warn_if_random_weights_match(result[name], random)
    return result


class _Run:
    """The stages of one dissection on this rank, wired together: data, forward, bundles, checkpoint."""

    def __init__(self, model, source: Source, opts: DissectOptions, identity: dict, comm: Comm):
        self.opts, self.source, self.comm = opts, source, comm
        source.shard(*comm.shard(len(source)))
        self.lo, self.hi = source.lo, source.hi
        perm = derangement(len(source), opts.control_seed) if opts.permuted else None
        self.bundles = {name: LayerBundle(opts, perm if opts.permuted_at(name) else None) for name in opts.layers}
        # With formula_length: the concept masks of every image, for the formula search.
        self.mask_log = MaskLog() if opts.formulas else None
        self.kept = RetainedStore(opts.memory_limit, opts.spill_to, f"kept-rank{comm.rank}")
        self.forward = Forward(model, opts, self.lo, self.hi, comm.rank)
        self.checkpoint = Checkpoint(opts.checkpoint, checkpoint_identity(identity, (self.lo, self.hi), comm.world,
                                                                          opts.resume_identity()),
                                     rank=comm.rank, world=comm.world, restart=opts.restart, log=self.log)
        self.passes = Passes(opts, source, self.forward, self.bundles, self.kept, self.mask_log, comm, self.save,
                             self.log)

    def log(self, message: str) -> None:
        if self.opts.verbose and self.comm.rank == 0:
            print(f"fastdissect: {message}")

    def save(self, stage: int, images_done: int) -> None:
        """A checkpoint: the thresholds' state only in pass 1 (the tallies hold them afterwards)."""
        if self.checkpoint.path is None:
            return
        states = {name: b.state_dict([kind for kind in FIELDS if stage == 1 or kind != "quantile"])
                  for name, b in self.bundles.items()}
        fields = {field: {name: s[kind] for name, s in states.items() if kind in s} for kind, field in FIELDS.items()}
        fields["mask_log"] = self.mask_log.state_dict() if self.mask_log is not None else None
        fields["kept"] = self.kept.persist(self.checkpoint.path.parent) if stage == 1 and self.opts.passes == 1 else []
        self.checkpoint.save(stage, images_done, {key: fields[key] for key in CHECKPOINT_FIELDS[3:]})

    def resume(self) -> tuple[int, int]:
        """(stage, first image) to run from: the checkpoint's, its accumulators restored, or (1, lo)."""
        state = self.checkpoint.load()
        if state is None:
            return 1, self.lo
        for name, bundle in self.bundles.items():
            bundle.load_state_dict({kind: state[field][name] for kind, field in FIELDS.items() if name in state[field]})
        self.kept.load_refs(self.checkpoint.path.parent, state["kept"])
        if self.mask_log is not None and state["mask_log"] is not None:
            self.mask_log = self.passes.mask_log = MaskLog.from_state_dict(state["mask_log"], self.opts.device)
        if state["stage"] > 1 or state["images_done"] > self.lo:
            self.forward.disable_cache()  # the cache of the interrupted run is incomplete: re-run the model
        self.log(f"resuming from {self.opts.checkpoint}: {self.progress(*self.checkpoint.saved)}")
        return state["stage"], state["images_done"]

    def progress(self, stage: int, images_done: int) -> str:
        return describe_progress(stage, images_done, self.lo, self.hi)

    def run(self) -> None:
        """The passes from where the checkpoint left off, each followed by its checkpoint."""
        p, comm, single = self.passes, self.comm, self.opts.passes == 1
        stage, done = self.resume()
        if stage == 1:
            comm.run(p.single_pass if single else p.thresholds_pass, done)
            if single:
                self.save(1, self.hi)
            merge_quantiles(self.bundles, comm)
            p.refine_thresholds()
            p.start_tallies()
            if single:
                if self.opts.permuted:
                    p.collect_all_masks()
                comm.run(p.tally_kept)
                combine(self.bundles, self.mask_log, comm)
                self.save(3, self.hi)
                if self.checkpoint.path is not None:  # complete: the checkpoint names no record now
                    self.kept.remove_files(self.checkpoint.path.parent)
                return
            self.save(2, self.lo)
            stage, done = 2, self.lo
        if stage == 2:
            if self.opts.permuted:
                p.collect_all_masks()
            comm.run(p.tally_pass, done)
            combine(self.bundles, self.mask_log, comm)
            self.save(3, self.hi)

    def interrupted(self) -> None:
        """Says what an interrupted run left for the next one to resume from."""
        where = self.opts.checkpoint
        if self.checkpoint.path is None:
            self.log("interrupted: no checkpoint was written (pass checkpoint=DIR, CLI --checkpoint DIR, to "
                     "resume an interrupted run)")
        elif self.checkpoint.saved is None:
            self.log(f"interrupted before the first checkpoint: nothing was written to {where}")
        else:
            self.log(f"interrupted: the checkpoint in {where} holds {self.progress(*self.checkpoint.saved)}; "
                     "run the same command again to resume")


def _dissect(model, dataset, opts: DissectOptions) -> Dissection:
    comm = Comm.detect(opts.distributed)
    source = Source(dataset, opts, comm.world)
    source.open_cache()
    identity = source.identity(model, opts)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    run = _Run(model, source, opts, identity, comm)
    hold = locked(opts.checkpoint, "checkpoint directory",
                  f".fastdissect-rank{comm.rank}.lock" if comm.world > 1 else None) \
        if opts.checkpoint else contextlib.nullcontext()
    with hold:  # the checkpoint directory is this run's until it ends, however it ends
        try:
            run.run()
        except KeyboardInterrupt:
            run.interrupted()
            raise
        finally:
            run.kept.close(keep_files=opts.keep_spill)
            model.train(was_training)
    result = _results(run, source.dataset, opts)
    result.identity = {**identity, "iou_threshold": opts.iou_threshold, "metric": opts.metric}
    result.run_seconds = time.perf_counter() - started
    return result


def _results(run: _Run, dataset, opts: DissectOptions) -> Dissection:
    result = Dissection()
    cats = torch.as_tensor(dataset.primary_category, dtype=torch.int64)
    collected = run.mask_log.masks() if opts.formulas is not None else None  # shared by every layer's search
    for name, bundle in run.bundles.items():
        top = bundle.top.to("cpu")
        control = bundle.get("control")
        result[name] = LayerResult(name, bundle.tally.scores(), list(dataset.concept_names),
                                   list(dataset.category_names), cats, opts.iou_threshold, top.images, top.values,
                                   top.maps, _explain(run, name, collected) if opts.formulas_at(name) else None,
                                   control.scores() if control is not None else None, opts.metric)
        _warn_if_chance_explains(result[name], run.log)
        _warn_if_whole_image_maps(result[name], run.log)
    result.dataset = dataset
    return result


def _explain(run: _Run, name: str, masks):
    """The layer's compositional formulas, from the masks collected in the tally pass."""
    from ..engine.compositional import SetSource, find_formulas

    acc, o = run.bundles[name].get("unit_masks"), run.opts
    source = SetSource(acc.mask_set(len(run.source)), masks, acc.thresholds, o.backend)
    run.log(f"{name}: formulas of {len(masks)} images, {acc.nbytes() / 2**20:.1f} MiB of unit masks")
    return find_formulas(source, o.formulas, o.quantile, verbose=o.verbose)


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
