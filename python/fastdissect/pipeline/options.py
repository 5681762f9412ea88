"""`DissectOptions`: `fd.dissect`'s keyword arguments, validated once, as one frozen, typed record.

Every check happens in `DissectOptions.build`, before a data set is read or packed, and each error
names its argument; the run then reads attributes. `identity_options` are the options that change a
number (they enter `fd.identity`); `resume_identity` adds what a checkpoint must also share to resume.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..core import validate
from ..core.quantile import check_method
from ..datasets.mask_cache import cache_dir_of
from ..engine.compositional import search_settings
from ..engine.controls import check_controls
from .hooks import find_modules
from .results import check_metric

# union=None: NetDissect's per-category union wherever concept categories are known, which a data set
# always gives (fd.score applies the same rule).
DEFAULT_UNION = "netdissect"


@dataclass(frozen=True)
class DissectOptions:
    quantile: float
    method: str
    iou_threshold: float
    union: str
    batch_size: int
    num_workers: int
    device: torch.device
    device_from_model: bool  # device=None: the model's own, so a control model may differ
    cache: object            # None, "memory" or a directory
    cache_limit: int
    image_size: tuple | None
    mean: tuple
    std: tuple
    transform: dict | None
    views: dict              # {result name: (module name, callable or None)}
    top_k: int
    checkpoint: object       # None or a directory
    checkpoint_every: int
    restart: bool
    backend: str
    distributed: bool | None
    formulas: dict | None    # the search settings with formula_length, else None
    formula_layers: tuple | None  # the results searched for formulas; None: every one
    metric: str
    controls: tuple
    control_layers: tuple | None  # the results the controls apply to; None: every one
    control_seed: int
    stop_early: bool
    passes: int
    memory_limit: int
    spill_dir: object
    mask_cache: object
    verbose: bool

    @classmethod
    def build(cls, model, layers, *, quantile, method, iou_threshold, union, batch_size, num_workers, device, cache,
              cache_limit, image_size, mean, std, transform, views, top_k, checkpoint, checkpoint_every, restart,
              backend, distributed, formula_length, beam_size, search, penalty, metric, formula_layers, controls,
              control_layers, control_seed, stop_early, passes, memory_limit, spill_dir, mask_cache,
              verbose) -> "DissectOptions":
        """The options of `fd.dissect(model, layers, ...)`, each checked (errors name the argument)."""
        controls = _controls(controls)
        validate.module(model, "model")
        layers = validate.layer_names(layers)
        quantile = validate.quantile_level(quantile)
        method = check_method(method)
        iou_threshold = validate.number(iou_threshold, "iou_threshold", 0.0, 1.0)
        union = DEFAULT_UNION if union is None else validate.union_mode(union)
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
        cache_dir_of(mask_cache)
        view_specs = _views(layers, transform, views)
        formula_layers = _some_layers(formula_layers, "formula_layers", view_specs, formula_length is not None,
                                      "formula_length")
        control_layers = _some_layers(control_layers, "control_layers", view_specs, bool(controls), "controls")
        find_modules(model, list(dict.fromkeys(module for module, _ in view_specs.values())))
        checkpoint_every = _count(checkpoint_every, "checkpoint_every", "a non-negative int (0: only after each pass)")
        cache, passes = _cache_and_passes(cache, passes)
        memory_limit = _count(memory_limit, "memory_limit", "a non-negative number of bytes")
        return cls(quantile=quantile, method=method, iou_threshold=iou_threshold, union=union, batch_size=batch_size,
                   num_workers=num_workers, device=model_device(model) if device is None else torch.device(device),
                   device_from_model=device is None, cache=cache, cache_limit=cache_limit, image_size=image_size,
                   mean=mean, std=std, transform=transform, views=view_specs, top_k=top_k, checkpoint=checkpoint,
                   checkpoint_every=checkpoint_every, restart=restart, backend=backend, distributed=distributed,
                   formulas=searched if formula_length is not None else None, formula_layers=formula_layers,
                   metric=metric, controls=controls, control_layers=control_layers, control_seed=control_seed,
                   stop_early=stop_early, passes=passes, memory_limit=memory_limit, spill_dir=spill_dir,
                   mask_cache=mask_cache, verbose=verbose)

    def for_control(self, model) -> "DissectOptions":
        """The same settings for the random-weights copy, at control_layers only: its own checkpoint
        directory, no random_init."""
        views = {name: view for name, view in self.views.items() if self.controls_at(name)}
        searched = tuple(name for name in views if self.formulas_at(name))
        whole = len(searched) == len(views)
        return replace(self, checkpoint=Path(self.checkpoint) / "random_init" if self.checkpoint else None,
                       controls=tuple(c for c in self.controls if c != "random_init"), views=views,
                       control_layers=None, formulas=self.formulas if searched else None,
                       formula_layers=None if whole or not searched else searched,
                       device=model_device(model) if self.device_from_model else self.device)

    def formulas_at(self, name: str) -> bool:
        """Whether result `name` is searched for formulas."""
        return self.formulas is not None and (self.formula_layers is None or name in self.formula_layers)

    def controls_at(self, name: str) -> bool:
        """Whether the controls apply to result `name`."""
        return bool(self.controls) and (self.control_layers is None or name in self.control_layers)

    def permuted_at(self, name: str) -> bool:
        return self.permuted and self.controls_at(name)

    @property
    def layers(self) -> list[str]:
        """Every result's name: the layers, then the extra views."""
        return list(self.views)

    @property
    def permuted(self) -> bool:
        return "permuted" in self.controls

    @property
    def spill_to(self):
        """Where kept maps beyond memory_limit go: spill_dir, else the checkpoint directory (or None)."""
        return self.spill_dir if self.spill_dir is not None else self.checkpoint

    @property
    def keep_spill(self) -> bool:
        """Spilled kept maps stay when they are in the checkpoint directory: a checkpoint may name them."""
        return self.spill_dir is None and bool(self.checkpoint)

    def identity_options(self) -> dict:
        """The options that change a number, as `files.identity.dissection_identity` reads them."""
        return dict(transform=self.transform, views=self.views, image_size=self.image_size, mean=self.mean,
                    std=self.std, cache=self.cache, quantile=self.quantile, method=self.method, union=self.union,
                    top_k=self.top_k, formulas=self.formulas, controls=self.controls,
                    control_seed=self.control_seed if self.controls else None, stop_early=self.stop_early,
                    formula_layers=self.formula_layers, control_layers=self.control_layers)

    def resume_identity(self) -> dict:
        """What a checkpoint must also share beyond the dissection's identity (its shard aside)."""
        return {"passes": self.passes}


def model_device(model) -> torch.device:
    """Where the model's first parameter lives (the CPU for a model without parameters): the device
    its inputs go to."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _controls(controls) -> tuple:
    if isinstance(controls, str):  # a str would be read as its letters, none of them a control
        raise validate.ArgumentTypeError(f"controls must be a tuple of control names, not a str: did you mean "
                                          f"controls=({controls!r},)?")
    return check_controls(controls)


def _some_layers(value, name: str, views: dict, used: bool, needs: str) -> tuple | None:
    """None (every result) or the named results, each one of the dissection's; refused where the
    option it restricts is off, which would silently do nothing."""
    if value is None:
        return None
    chosen = validate.layer_names(value, name)
    unknown = [layer for layer in chosen if layer not in views]
    if unknown:
        raise ValueError(f"{name} names {unknown}, which are not among the dissected layers {list(views)}")
    if not used:
        raise ValueError(f"{name} restricts {needs}, which is not set: pass {needs} too, or drop {name}")
    return tuple(layer for layer in views if layer in chosen)  # the dissection's order, whatever the option's


def _count(value, name: str, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def _cache_and_passes(cache, passes) -> tuple:
    if cache not in (None, "memory") and not isinstance(cache, (str, os.PathLike)):
        raise ValueError(f'cache must be None, "memory" or a directory, got {cache!r}')
    if passes is None:
        passes = 1 if cache is None else 2
    if passes not in (1, 2) or isinstance(passes, bool):
        raise ValueError(f"passes must be 1 or 2 (or None: 1, 2 with a cache), got {passes!r}")
    if passes == 1 and cache is not None:
        raise ValueError("cache= keeps activations for a second pass: use it with passes=2 (or leave passes unset)")
    return cache, passes


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
