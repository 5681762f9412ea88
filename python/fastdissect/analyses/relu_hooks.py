"""Backward rules on a model's ReLUs for DeconvNet and guided backpropagation, hooked for one block.

For a ReLU y = max(x, 0) and g = dL/dy arriving from above, the gradient passed down to x is
  plain autograd     g * [x > 0]
  "deconvnet"        max(g, 0)              (Zeiler & Fergus 2014: the ReLU applied to the signal)
  "guided_backprop"  max(g * [x > 0], 0)    (Springenberg et al. 2015: both masks)
as Captum's Deconvolution and GuidedBackprop define them. Only nn.ReLU modules can be hooked: a
functional relu (torch.relu, F.relu) in a forward keeps its plain gradient.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

RULES = ("deconvnet", "guided_backprop")


class _Deconv(torch.autograd.Function):
    """Identity on the ReLU's output y whose backward sends max(g, 0) straight to the ReLU's input x:
    the ReLU's own backward, which would mask the signal by [x > 0], never runs."""

    @staticmethod
    def forward(ctx, x, y):
        return y.clone()  # a new tensor: an inplace op after the ReLU must not write into its input's graph

    @staticmethod
    def backward(ctx, g):
        return torch.relu(g), None


def _positive(g: torch.Tensor) -> torch.Tensor:
    return torch.relu(g)


@contextlib.contextmanager
def relu_rule(model: torch.nn.Module, rule: str) -> Iterator[None]:
    """Inside the block, every nn.ReLU of `model` backpropagates by `rule`; the hooks are removed
    however the block ends.

    guided_backprop: a hook on each ReLU's output replaces g by max(g, 0) before the ReLU's own
    backward multiplies it by [x > 0] (max(g, 0) [x > 0] = max(g [x > 0], 0)); the model's forward
    is untouched. deconvnet: the ReLU's output is passed through `_Deconv`, which bypasses the
    ReLU's backward; an inplace ReLU then runs on a copy of its input (as in Captum), so that the
    input the gradient goes to is not overwritten.
    """
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    if not relus:
        raise ValueError(f'method="{rule}" changes the backward pass of the model\'s nn.ReLU modules and this model '
                         'has none (a functional relu such as torch.relu or F.relu cannot be hooked): use nn.ReLU '
                         'modules, or method="gradient"')
    inputs: dict[torch.nn.Module, list[torch.Tensor]] = {m: [] for m in relus}

    def before(module, args):
        inputs[module].append(args[0])
        return (args[0].clone(),) if module.inplace else None

    def deconv(module, args, output):
        return _Deconv.apply(inputs[module].pop(), output)

    def guided(module, args, output):
        if output.requires_grad:
            output.register_hook(_positive)

    handles = []
    try:
        for m in relus:
            if rule == "deconvnet":
                handles.append(m.register_forward_pre_hook(before))
            handles.append(m.register_forward_hook(deconv if rule == "deconvnet" else guided))
        yield
    finally:
        for h in handles:
            h.remove()


__all__ = ["RULES", "relu_rule"]
