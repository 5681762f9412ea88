"""Reading a model's hidden layers with forward hooks: `trace`, and `token_grid` for transformers."""

from __future__ import annotations

import contextlib
import difflib
import math
from typing import Callable, Iterator, Sequence

import torch


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
    stop: raise `StopForward` as soon as every layer has an output (the rest of the forward pass
    is skipped: catch it around the model call, as `run_until_traced` does); a layer called twice
    then keeps its first call's output.
    """
    transform = transform or {}
    unknown = [t for t in transform if t not in layers]
    if unknown:
        raise LookupError(f"transform names layers that are not traced: {unknown}")
    outputs: dict[str, torch.Tensor] = {}
    wanted = set(layers)
    handles = []

    def hook_for(name):
        def hook(module, inputs, output):
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
        for name, module in find_modules(model, layers).items():
            handles.append(module.register_forward_hook(hook_for(name)))
        yield outputs
    finally:
        for h in handles:
            h.remove()


def run_until_traced(model: torch.nn.Module, x: torch.Tensor) -> None:
    """model(x) inside `trace(..., stop=True)`: returns once the traced layers have their outputs."""
    try:
        model(x)
    except StopForward:
        pass
