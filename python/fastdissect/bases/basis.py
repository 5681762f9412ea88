"""A basis of a layer: what `fd.dissect(basis={layer: B})` and `fd.compare_bases` read a layer in.

A basis turns the layer's (N, C, h, w) output into (N, F, h, w) *features*, which are then dissected
exactly as units are. It is given as
- a (F, C) tensor of directions: feature f = sum_c B[f, c] a_c at every position (rotations, probes,
  concept vectors), computed in float64 and returned in the output's dtype;
- a module or callable mapping (N, C, h, w) -> (N, F, h, w) (a sparse autoencoder's `encode`, or an
  `fd.SparseAutoencoder` itself, which encodes);
- None: the units themselves.
A dissection's identity records the basis by its weights (a tensor's bytes, a module's state), never
by its code, so a checkpoint of another basis is refused.
"""

from __future__ import annotations

import torch

from ..core import validate
from ..files.atomic import digest
from ..files.identity import tensor_bytes, transform_identity


class LinearBasis:
    """Features = B a at every position, B a (F, C) matrix of directions."""

    def __init__(self, matrix: torch.Tensor, name: str = "basis"):
        if matrix.dim() != 2 or min(matrix.shape) < 1:
            raise ValueError(f"{name} must be a (features, channels) matrix, got shape {tuple(matrix.shape)}")
        if not bool(torch.isfinite(matrix).all()):
            raise ValueError(f"{name} holds NaN or inf entries")
        self.matrix = matrix.detach().to(torch.float64).cpu().contiguous()
        self.name = name

    @property
    def num_features(self) -> int:
        return self.matrix.shape[0]

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if output.dim() < 2 or output.shape[1] != self.matrix.shape[1]:
            f, c = self.matrix.shape
            got = output.shape[1] if output.dim() >= 2 else "no"
            raise ValueError(f"{self.name} is a ({f}, {c}) basis over {c} channels, but the layer gives outputs of "
                             f"shape {tuple(output.shape)}, with {got} channels in dim 1")
        out = torch.einsum("fc,nc...->nf...", self.matrix.to(output.device), output.to(torch.float64))
        return out.to(output.dtype)

    def fingerprint(self) -> str:
        return f"linear_basis:{digest(tensor_bytes(self.matrix))}"


class CallableBasis:
    """A module or function used as a basis, run without gradients, its output shape checked."""

    def __init__(self, fn, name: str = "basis"):
        self.fn, self.name = fn, name

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.fn(output)
        if not isinstance(out, torch.Tensor) or out.dim() != output.dim() or out.shape[0] != output.shape[0] \
                or out.shape[2:] != output.shape[2:]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{self.name} must map the layer's {tuple(output.shape)} output to (N, features, "
                             f"{', '.join(map(str, output.shape[2:]))}) maps, got {shape}")
        return out.detach()

    def fingerprint(self) -> str:
        return str(transform_identity(self.fn))


def as_basis(basis, name: str = "basis"):
    """The layer transform a basis stands for (None for the units themselves)."""
    if basis is None:
        return None
    if isinstance(basis, torch.Tensor):
        return LinearBasis(basis, name)
    if isinstance(basis, (LinearBasis, CallableBasis)):
        return basis
    if isinstance(basis, torch.nn.Module) and hasattr(basis, "encode"):
        return CallableBasis(_Encoder(basis), name)
    if callable(basis):
        return CallableBasis(basis, name)
    raise validate.ArgumentTypeError(f"{name} must be a (features, channels) tensor, a module or callable mapping "
                                     f"(N, C, h, w) to (N, F, h, w), or None, got {type(basis).__name__}")


class _Encoder:
    """An autoencoder's `encode`, identified by the autoencoder's own fingerprint."""

    def __init__(self, module):
        self.module = module

    def __call__(self, x):
        return self.module.encode(x)

    def fingerprint(self) -> str:
        own = getattr(self.module, "fingerprint", None)
        return str(own()) if callable(own) else f"encode of {transform_identity(self.module)}"


class Composed:
    """A layer's own transform, then a basis (e.g. fd.token_grid(), then an autoencoder)."""

    def __init__(self, first, then):
        self.first, self.then = first, then

    def __call__(self, output):
        return self.then(self.first(output))

    def fingerprint(self) -> str:
        return f"{transform_identity(self.first)} then {self.then.fingerprint()}"


def with_bases(layers, transform: dict | None, basis: dict | None) -> tuple[dict | None, dict]:
    """(transform, {layer: basis description}): each layer's transform followed by its basis."""
    if basis is None:
        return transform, {}
    validate.mapping(basis, "basis", "{layer: (F, C) tensor, module or callable}")
    unknown = [name for name in basis if name not in layers]
    if unknown:
        raise LookupError(f"basis names layers that are not dissected: {unknown} (layers: {list(layers)})")
    out, described = dict(transform or {}), {}
    for name, b in basis.items():
        t = as_basis(b, f"basis[{name!r}]")
        if t is None:
            continue
        out[name] = t if out.get(name) is None else Composed(out[name], t)
        described[name] = t.fingerprint()
    return out, described
