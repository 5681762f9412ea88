"""Robustness transforms (Olah et al. 2017; lucent's `standard_transforms`): small random
translations, scalings and rotations applied to the image at every step, so that the optimum is an
image that activates the unit wherever it is shifted a few pixels, not an adversarial pattern of
single pixels.

A transform is a callable `t(images, generator) -> images` on a (B, 3, H, W) batch; its random
draws come from `generator` (a CPU torch.Generator), one draw per step shared by the batch, so a
unit's image does not depend on which other units are optimised beside it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _pick(options, generator: torch.Generator):
    return options[int(torch.randint(len(options), (1,), generator=generator))]


class Transform:
    """A named transform (its name is what a Visualization records)."""

    def __init__(self, name: str, fn):
        self.name, self.fn = name, fn

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.fn(images, generator)

    def __repr__(self) -> str:
        return self.name


def pad(width: int, value: float = 0.5) -> Transform:
    """A constant border of `width` px (grey by default), so jitter and rotation pull in no edge."""
    return Transform(f"pad({width}, {value:g})", lambda x, g: F.pad(x, [width] * 4, mode="constant", value=value))


def jitter(d: int) -> Transform:
    """A random (H - d) x (W - d) crop: a shift by 0..d-1 px in each direction (Lucid's jitter)."""
    def crop(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        dy, dx = _pick(range(d), g), _pick(range(d), g)
        return x[:, :, dy:dy + x.shape[2] - d, dx:dx + x.shape[3] - d]
    return Transform(f"jitter({d})", crop)


def random_scale(scales) -> Transform:
    """Bilinear resizing by a factor drawn from `scales` (sides rounded up, as lucent)."""
    scales = tuple(float(s) for s in scales)

    def scale(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = _pick(scales, g)
        size = [math.ceil(s * d) for d in x.shape[2:]]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    return Transform(f"random_scale({len(scales)} scales {min(scales):g}..{max(scales):g})", scale)


def random_rotate(angles) -> Transform:
    """A rotation about the centre by an angle (degrees) drawn from `angles`, bilinear, borders
    filled by the nearest pixel."""
    angles = tuple(float(a) for a in angles)

    def rotate(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        theta = math.radians(_pick(angles, g))
        c, s = math.cos(theta), math.sin(theta)
        matrix = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(matrix, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return Transform(f"random_rotate({len(angles)} angles {min(angles):g}..{max(angles):g})", rotate)


def standard() -> list[Transform]:
    """lucent's `standard_transforms`: pad 12 (grey), jitter 8, scale 0.9..1.1, rotate -10..10
    degrees (0 five times more often), jitter 4."""
    return [pad(12, 0.5), jitter(8), random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
            random_rotate(list(range(-10, 11)) + 5 * [0]), jitter(4)]


def resolve(transforms) -> list:
    """The list of callables `transforms` names: "standard", None (no transform) or a list."""
    if transforms is None:
        return []
    if isinstance(transforms, str):
        if transforms != "standard":
            raise ValueError(f"transforms must be 'standard', None or a list of callables t(images, generator), "
                             f"got {transforms!r}")
        return standard()
    if not isinstance(transforms, (list, tuple)) or not all(callable(t) for t in transforms):
        raise ValueError("transforms must be 'standard', None or a list of callables t(images, generator), got "
                         f"{type(transforms).__name__} {transforms!r:.80}")
    return list(transforms)


def names(transforms: list) -> list[str]:
    """What the result records of each transform: its name, else its qualified name."""
    return [repr(t) if isinstance(t, Transform) else getattr(t, "__qualname__", type(t).__qualname__)
            for t in transforms]


def apply(transforms: list, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    for t in transforms:
        images = t(images, generator)
    return images
