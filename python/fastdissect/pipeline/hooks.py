"""Reading a model's hidden layers with forward hooks: `trace`, and `token_grid` for transformers."""

from __future__ import annotations

import contextlib
import difflib
import math
import warnings
import weakref
from typing import Callable, Iterator, Sequence

import torch

from ..core import validate


def find_modules(model: torch.nn.Module, names: Sequence[str]) -> dict[str, torch.nn.Module]:
    """Modules by dotted name (as `named_modules()` spells them); a LookupError suggests close names."""
    modules = dict(model.named_modules())
    found = {}
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.4)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise LookupError(f"the model has no layer {name!r}{hint} (layer names are those of "
                              "model.named_modules())")
        found[name] = modules[name]
    return found


def token_grid(num_prefix_tokens: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
    """A transform for transformer outputs: (N, T, C) tokens -> (N, C, h, w) maps.

    Drops the first `num_prefix_tokens` tokens (class and register tokens) and lays the remaining
    h * w patch tokens out row by row on a square grid, as ViTs number their patches.
    """
    num_prefix_tokens = validate.integer(num_prefix_tokens, "num_prefix_tokens", low=0)
    def to_maps(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"token_grid expects (N, tokens, channels) outputs, got {tuple(x.shape)}")
        patches = x.shape[1] - num_prefix_tokens
        side = math.isqrt(max(patches, 0))
        if patches <= 0 or side * side != patches:
            raise ValueError(f"{x.shape[1]} tokens minus {num_prefix_tokens} prefix tokens = {patches} is not a "
                             "square grid of patches; set num_prefix_tokens to the number of class/register tokens")
        return x[:, num_prefix_tokens:].transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
    return to_maps


class StopForward(Exception):
    """Raised inside a traced forward pass once every traced layer has produced its output."""


_warned: "weakref.WeakKeyDictionary[torch.nn.Module, set]" = weakref.WeakKeyDictionary()  # model -> layers


@contextlib.contextmanager
def trace(model: torch.nn.Module, layers: Sequence[str], transform: dict | None = None, *, stop: bool = False
          ) -> Iterator[dict[str, torch.Tensor]]:
    """Records the outputs of `layers` on every forward call inside the block.

    >>> import torch, fastdissect as fd
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    >>> with fd.trace(net, ["0"]) as acts:
    ...     _ = net(torch.rand(2, 3, 8, 8))
    >>> acts["0"].shape
    torch.Size([2, 4, 6, 6])

    Outputs are detached and stay on their device. transform: {layer: callable} applied to that
    layer's output (e.g. `fd.token_grid()` for transformer blocks). Hooks are always removed.
    A layer called more than once in one forward pass of `model` (a module reused, e.g. one
    activation module after every block) is read at its FIRST call, with or without `stop`, and
    a warning names it and its number of calls, once per model and layer.
    stop: raise `StopForward` as soon as every layer has an output (the rest of the forward pass
    is skipped: catch it around the model call, as `run_until_traced` does); calls after that
    point are never run, so they are neither read nor counted.
    """
    validate.module(model)
    layers = validate.layer_names(layers)
    transform = validate.callable_map(transform, "transform") or {}
    unknown = [t for t in transform if t not in layers]
    if unknown:
        raise LookupError(f"transform names layers that are not traced: {unknown}")
    outputs: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}  # of each layer in the current forward pass
    most: dict[str, int] = {}   # the most calls of each layer in one pass of the block
    wanted = set(layers)
    handles = []

    def new_pass(module, inputs):
        # Each forward pass of the model reads its layers afresh: "first call" is per pass.
        outputs.clear()
        calls.clear()

    def hook_for(name):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1:  # the first call's output is the one kept: later calls are only counted
                most[name] = max(most.get(name, 0), calls[name])
                return
            if isinstance(output, (tuple, list)):
                output = output[0]
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {name!r} returned {type(output).__name__}, not a tensor")
            output = output.detach()
            outputs[name] = transform[name](output) if name in transform else output
            if stop and len(outputs) == len(wanted):
                raise StopForward
        return hook

    try:
        modules = find_modules(model, layers)
        handles.append(model.register_forward_pre_hook(new_pass))
        for name, module in modules.items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield outputs
        _warn_repeated(model, modules, most, stop)
    finally:
        for h in handles:
            h.remove()


def _warn_repeated(model: torch.nn.Module, modules: dict, most: dict, stop: bool) -> None:
    if not most:
        return
    try:
        warned = _warned.setdefault(model, set())
    except TypeError:  # a model that cannot be weakly referenced: warned about every time
        warned = set()
    for name, n in most.items():
        if name in warned:
            continue
        warned.add(name)
        seen = f"at least {n} times in one forward pass (counted until it stopped early)" if stop else \
            f"{n} times in one forward pass"
        warnings.warn(f"layer {name!r} ({type(modules[name]).__name__}) is called {seen}: its first call's output is "
                      "the one read; to read another call, trace a module used only there", RuntimeWarning,
                      stacklevel=3)


def run_until_traced(model: torch.nn.Module, x: torch.Tensor) -> None:
    """model(x) inside `trace(..., stop=True)`: returns once the traced layers have their outputs."""
    try:
        model(x)
    except StopForward:
        pass
