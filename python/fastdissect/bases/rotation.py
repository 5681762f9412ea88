"""Random rotations of a layer's unit axes: Network Dissection's axis-alignment test reads the
layer in the basis Q ** power of a Haar-random rotation Q (analyses/rotation.py runs the test)."""

from __future__ import annotations

import functools

import torch

from ..core import validate
from .basis import LinearBasis


def haar_orthogonal(n: int, seed: int) -> torch.Tensor:
    """(n, n) float64 orthogonal matrix drawn from the Haar measure, with determinant +1.

    QR of a Gaussian matrix, the signs of R's diagonal moved into Q (Mezzadri 2007: without that
    step Q is not uniformly distributed); one column flipped if needed so that Q is a rotation,
    whose fractional powers are then real."""
    return _haar(n, seed).clone()


@functools.lru_cache(maxsize=4)
def _haar(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None, :]
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@functools.lru_cache(maxsize=4)
def _eigen(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q's eigendecomposition (w, V, V^-1), once per (n, seed): every power of one Q reuses it (the
    decomposition of a 1,280-unit layer costs seconds, each power then one complex product)."""
    w, v = torch.linalg.eig(_haar(n, seed))
    return w, v, torch.linalg.inv(v)


def matrix_power(q: torch.Tensor, power: float) -> torch.Tensor:
    """Q ** power for a rotation Q, through its eigendecomposition (eigenvalues e^{i theta} become
    e^{i power theta}); real up to rounding, which is dropped."""
    w, v = torch.linalg.eig(q)
    return _power(w, v, torch.linalg.inv(v), power)


def _power(w: torch.Tensor, v: torch.Tensor, v_inv: torch.Tensor, power: float) -> torch.Tensor:
    return ((v * (w ** power)[None, :]) @ v_inv).real.contiguous()


class RandomRotation(LinearBasis):
    """A basis of the layer (`fd.dissect(basis={layer: ...})`, or a transform): unit k of the output
    becomes sum_j R[k, j] a_j, R = Q ** power, computed in float64 and returned in the output's dtype."""

    def __init__(self, num_units: int, seed: int = 0, power: float = 1.0):
        self.num_units = validate.positive_int(num_units, "num_units")
        self.power = validate.number(power, "power", 0.0, 1.0)
        self.seed = validate.integer(seed, "seed")
        if self.power == 0.0:
            matrix = torch.eye(self.num_units, dtype=torch.float64)
        elif self.power == 1.0:
            matrix = haar_orthogonal(self.num_units, seed)
        else:
            matrix = _power(*_eigen(self.num_units, seed), self.power)
        super().__init__(matrix, f"random_rotation({self.num_units})")

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.dim() < 2 or output.shape[1] != self.num_units:
            raise ValueError(f"random_rotation({self.num_units}) needs outputs with {self.num_units} units in "
                             f"dim 1, got shape {tuple(output.shape)}")
        return output if self.power == 0.0 else super().__call__(output)

    def fingerprint(self) -> str:
        return f"random_rotation(num_units={self.num_units}, seed={self.seed}, power={self.power!r})"

    __repr__ = fingerprint


def random_rotation(num_units: int, seed: int = 0, power: float = 1.0) -> RandomRotation:
    """A seeded random rotation of `num_units` unit axes, Q ** power (0 <= power <= 1)."""
    return RandomRotation(num_units, seed, power)


def random_rotation(num_units: int, seed: int = 0, power: float = 1.0) -> RandomRotation:
    """A seeded random rotation of `num_units` unit axes, Q ** power (0 <= power <= 1)."""
    return RandomRotation(num_units, seed, power)
