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


class _Rule(torch.autograd.Function):
    """Identity on the ReLU's output y whose backward sends the rule's gradient straight to the
    ReLU's input x (the ReLU's own backward, which would mask deconvnet's signal, never runs)."""

    @staticmethod
    def forward(ctx, x, y, guided: bool):
        ctx.guided = guided
        # the mask, not y, is kept: a later inplace op on y must not invalidate it
        ctx.save_for_backward(y > 0 if guided else None)
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        (positive,) = ctx.saved_tensors
        if ctx.guided:
            g = g.masked_fill(~positive, 0)
        return torch.relu(g), None, None


@contextlib.contextmanager
def relu_rule(model: torch.nn.Module, rule: str) -> Iterator[None]:
    """Inside the block, every nn.ReLU of `model` backpropagates by `rule`; the hooks are removed
    however the block ends. An inplace ReLU runs on a copy of its input while hooked (as in Captum),
    so that the input the rule's gradient goes to is not overwritten."""
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    if not relus:
        raise ValueError(f'method="{rule}" changes the backward pass of the model\'s nn.ReLU modules and this model '
                         'has none (a functional relu such as torch.relu or F.relu cannot be hooked): use nn.ReLU '
                         'modules, or method="gradient"')
    guided = rule == "guided_backprop"
    inputs: dict[torch.nn.Module, list[torch.Tensor]] = {m: [] for m in relus}

    def before(module, args):
        inputs[module].append(args[0])
        return (args[0].clone(),) if module.inplace else None

    def after(module, args, output):
        return _Rule.apply(inputs[module].pop(), output, guided)

    handles = []
    try:
        for m in relus:
            handles.append(m.register_forward_pre_hook(before))
            handles.append(m.register_forward_hook(after))
        yield
    finally:
        for h in handles:
            h.remove()


__all__ = ["RULES", "relu_rule"]
