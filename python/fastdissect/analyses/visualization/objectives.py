"""What the optimisation maximises, on the traced layer's output `out` (B images, one unit each).

- "channel": mean_{y,x} out[b, u_b, y, x] (lucent's `channel`; out[b, u_b] for (N, units) outputs);
- "neuron":  out[b, u_b, h // 2, w // 2], the centre position (lucent's `neuron`);
- "layer":   mean_{c,y,x} out[b, c, y, x]^2 (DeepDream; lucent's `deepdream`), units ignored;
- "class":   out[b, u_b] of an (N, classes) output: a logit of the model's head;
with a basis, the unit's map out[b, u_b] is the feature's map sum_c B[u_b, c] out[b, c] (or the
encoder's feature u_b), and "channel"/"neuron" read it instead.
diversity (lucent's `diversity`, to be subtracted, weighted): for the n images of one unit, their
Gram matrices G_i = A_i A_i^T of the layer's (C, h*w) maps, flattened and L2-normalised, give
sum_{i != j} <G_i, G_j> / n.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OBJECTIVES = ("channel", "neuron", "layer", "class")


def num_units(out: torch.Tensor, objective: str, basis) -> int | None:
    """How many units (or features, or classes) `out` offers the objective; None for "layer"."""
    if objective == "layer":
        return None
    if basis is not None:
        return int(basis(out).shape[1])  # the basis checks its channels against the layer's
    return int(out.shape[1])


def check_shape(out: torch.Tensor, objective: str, layer: str) -> None:
    """Refuses an output the objective cannot read, naming the layer and the shape."""
    if objective == "class" and out.dim() != 2:
        raise ValueError(f"objective 'class' reads a logit of an (N, classes) output, but layer {layer!r} gives "
                         f"{tuple(out.shape)}: name the model's head (its last Linear)")
    if objective == "neuron" and out.dim() != 4:
        raise ValueError(f"objective 'neuron' reads the centre of (N, units, h, w) maps, but layer {layer!r} gives "
                         f"{tuple(out.shape)}" + (": use objective='channel' or 'class'" if out.dim() == 2 else ""))
    if objective == "channel" and out.dim() not in (2, 4):
        raise ValueError(f"objective 'channel' reads (N, units, h, w) maps or (N, units) values, but layer {layer!r} "
                         f"gives {tuple(out.shape)} (transformer tokens? visualise a layer with maps)")


def unit_maps(out: torch.Tensor, units: torch.Tensor, basis) -> torch.Tensor:
    """(B, h, w): image b's map of its unit units[b], or of its basis feature."""
    rows = torch.arange(out.shape[0])
    if basis is None:
        return out[rows, units]
    if hasattr(basis, "matrix"):  # a LinearBasis: only the rows asked for, in float64 as the basis computes
        directions = basis.matrix[units].to(out.device)
        return torch.einsum("bc,bc...->b...", directions, out.to(torch.float64)).to(out.dtype)
    return basis.fn(out)[rows, units]


def values(out: torch.Tensor, units: torch.Tensor, objective: str, basis=None) -> torch.Tensor:
    """(B,) the objective of each image (differentiable), as the module docstring defines it."""
    if objective == "layer":
        return out.pow(2).flatten(1).mean(dim=1)
    if objective == "class":
        return out[torch.arange(out.shape[0]), units]
    maps = unit_maps(out, units, basis)
    if objective == "neuron":
        return maps[:, maps.shape[1] // 2, maps.shape[2] // 2]
    return maps.reshape(maps.shape[0], -1).mean(dim=1)


def diversity(out: torch.Tensor, per_unit: int) -> torch.Tensor:
    """() the summed diversity penalty of each unit's `per_unit` consecutive images (0 if one)."""
    if per_unit < 2:
        return out.new_zeros(())
    flat = out.flatten(2) if out.dim() > 2 else out[:, :, None]
    grams = F.normalize(torch.bmm(flat, flat.transpose(1, 2)).flatten(1), p=2, dim=1)
    groups = grams.reshape(-1, per_unit, grams.shape[1])
    similarity = torch.bmm(groups, groups.transpose(1, 2))
    off_diagonal = similarity.sum(dim=(1, 2)) - similarity.diagonal(dim1=1, dim2=2).sum(dim=1)
    return (off_diagonal / per_unit).sum()
