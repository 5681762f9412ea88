"""The axis-alignment test of Network Dissection: rotate a layer's unit axes at random and dissect
again. A rotation keeps everything a linear read-out can use, so the number of detectors that
survives says whether interpretable units are aligned with the axes by training or by chance.

>>> import torch, fastdissect as fd
>>> r = fd.random_rotation(4, seed=0, power=0.5)
>>> q = fd.random_rotation(4, seed=0).matrix
>>> torch.allclose(r.matrix @ r.matrix, q, atol=1e-12)          # two half rotations make Q
True
>>> x = torch.rand(2, 4, 3, 3)
>>> fd.random_rotation(4, power=0.0)(x) is x                      # power 0: the activations as they are
True
"""

from __future__ import annotations

import torch

from . import _validate


def haar_orthogonal(n: int, seed: int) -> torch.Tensor:
    """(n, n) float64 orthogonal matrix drawn from the Haar measure, with determinant +1.

    QR of a Gaussian matrix, the signs of R's diagonal moved into Q (Mezzadri 2007: without that
    step Q is not uniformly distributed); one column flipped if needed so that Q is a rotation,
    whose fractional powers are then real."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None, :]
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def matrix_power(q: torch.Tensor, power: float) -> torch.Tensor:
    """Q ** power for a rotation Q, through its eigendecomposition (eigenvalues e^{i theta} become
    e^{i power theta}); real up to rounding, which is dropped."""
    w, v = torch.linalg.eig(q)
    powered = v @ torch.diag(w ** power) @ torch.linalg.inv(v)
    return powered.real.contiguous()


class RandomRotation:
    """A layer transform (`fd.dissect(transform={layer: ...})`): unit k of the output becomes
    sum_j R[k, j] a_j, R = Q ** power, computed in float64 and returned in the output's dtype."""

    def __init__(self, num_units: int, seed: int = 0, power: float = 1.0):
        self.num_units = _validate.positive_int(num_units, "num_units")
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0.0 <= power <= 1.0:
            raise ValueError(f"power must be a number in [0, 1], got {power!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed, self.power = seed, float(power)
        q = haar_orthogonal(self.num_units, seed)
        if self.power == 0.0:
            self.matrix = torch.eye(self.num_units, dtype=torch.float64)
        elif self.power == 1.0:
            self.matrix = q
        else:
            self.matrix = matrix_power(q, self.power)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.dim() < 2 or output.shape[1] != self.num_units:
            raise ValueError(f"random_rotation({self.num_units}) needs outputs with {self.num_units} units in "
                             f"dim 1, got shape {tuple(output.shape)}")
        if self.power == 0.0:
            return output
        r = self.matrix.to(output.device)
        rotated = torch.einsum("kj,nj...->nk...", r, output.to(torch.float64))
        return rotated.to(output.dtype)

    def fingerprint(self) -> str:
        return f"random_rotation(num_units={self.num_units}, seed={self.seed}, power={self.power!r})"

    __repr__ = fingerprint


def random_rotation(num_units: int, seed: int = 0, power: float = 1.0) -> RandomRotation:
    """A seeded random rotation of `num_units` unit axes, Q ** power (0 <= power <= 1)."""
    return RandomRotation(num_units, seed, power)


__all__ = ["RandomRotation", "random_rotation", "haar_orthogonal"]
