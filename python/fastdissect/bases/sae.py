"""A TopK sparse autoencoder over a layer's channels: `SparseAutoencoder`.

Every spatial position of a layer's (N, C, h, w) output is one C-vector x. The autoencoder (Gao et
al. 2024, "Scaling and evaluating sparse autoencoders") writes it as a sparse sum of F unit-norm
directions, the decoder's columns:

    pre = W_enc (s x - b_pre) + b_enc          (F,)  s: a fixed input scale, b_pre: the pre-encoder bias
    z   = ReLU(TopK_k(pre))                      the k largest pre-activations kept, the rest 0
    x^  = (W_dec z + b_pre) / s                 (C,)  ||W_dec[:, f]|| = 1 for every feature f

so at most k features are non-zero at any position (ReLU can only remove more). `encode` gives the
features as (N, F, h, w) maps, which is what `fd.dissect(basis=...)` dissects like units.

The scale s makes the mean squared norm of s x equal to C on the data it was fitted to, so one
learning rate suits layers of any magnitude; it is a buffer, stored with the weights, and `decode`
undoes it. Saved files are tensor files (files/tensorfile.py): weights and numbers, no code.

>>> import torch, fastdissect as fd
>>> sae = fd.SparseAutoencoder(num_channels=8, num_features=32, k=4, seed=0)
>>> z = sae.encode(torch.randn(2, 8, 5, 5))
>>> tuple(z.shape), int((z != 0).sum(dim=1).max()) <= 4
((2, 32, 5, 5), True)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core import validate
from ..files import atomic, tensorfile
from ..files.identity import state_hash

KIND = "sparse-autoencoder"
FORMAT_VERSION = 1


def unit_columns(w: torch.Tensor) -> torch.Tensor:
    """`w` with each column scaled to norm 1 (a zero column stays zero rather than becoming NaN)."""
    norms = w.norm(dim=0, keepdim=True)
    return w / torch.where(norms > 0, norms, torch.ones_like(norms))


def top_k_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """(M, F) pre-activations -> the k largest of each row kept through a ReLU, every other entry 0."""
    values, index = pre.topk(k, dim=1)
    return torch.zeros_like(pre).scatter_(1, index, values.clamp_min(0))


def as_positions(x: torch.Tensor, num_channels: int, what: str = "x") -> tuple[torch.Tensor, tuple | None]:
    """(N, C, h, w) maps or (M, C) vectors -> (M, C) rows, and the map shape to restore (None: rows)."""
    if not isinstance(x, torch.Tensor):
        raise validate.ArgumentTypeError(f"{what} must be a tensor, got {type(x).__name__}")
    if x.dim() not in (2, 4) or x.shape[1] != num_channels:
        raise ValueError(f"{what} must be (N, {num_channels}, h, w) maps or (M, {num_channels}) vectors, "
                         f"got shape {tuple(x.shape)}")
    if x.dim() == 2:
        return x, None
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n * h * w, c), (n, h, w)


def as_maps(rows: torch.Tensor, shape: tuple | None) -> torch.Tensor:
    if shape is None:
        return rows
    n, h, w = shape
    return rows.reshape(n, h, w, rows.shape[1]).permute(0, 3, 1, 2)


class SparseAutoencoder(torch.nn.Module):
    """A TopK sparse autoencoder of `num_features` directions over `num_channels` channels."""

    def __init__(self, num_channels: int, num_features: int, k: int, *, seed: int = 0):
        super().__init__()
        self.num_channels = validate.positive_int(num_channels, "num_channels")
        self.num_features = validate.positive_int(num_features, "num_features")
        self.k = validate.integer(k, "k", low=1, high=self.num_features,
                                  what=f"at most num_features={self.num_features}")
        self.seed = validate.integer(seed, "seed")
        g = torch.Generator().manual_seed(self.seed)
        decoder = unit_columns(torch.randn(self.num_channels, self.num_features, generator=g))
        # The encoder starts as the decoder's transpose (Gao et al.): every feature first reads its own direction.
        self.decoder = torch.nn.Parameter(decoder)
        self.encoder = torch.nn.Parameter(decoder.t().clone())
        self.encoder_bias = torch.nn.Parameter(torch.zeros(self.num_features))
        self.pre_bias = torch.nn.Parameter(torch.zeros(self.num_channels))
        self.register_buffer("input_scale", torch.ones(()))
        self.metrics: dict = {}
        self.settings: dict = {}

    # ---- the model
    def pre_activations(self, rows: torch.Tensor) -> torch.Tensor:
        """(M, C) inputs -> (M, F) encoder pre-activations."""
        x = rows.to(self.encoder.dtype) * self.input_scale - self.pre_bias
        return x @ self.encoder.t() + self.encoder_bias

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) maps -> (N, F, h, w) feature maps ((M, C) -> (M, F) too), at most k non-zero per
        position."""
        rows, shape = as_positions(x, self.num_channels)
        return as_maps(top_k_relu(self.pre_activations(rows), self.k), shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, F, h, w) features -> (N, C, h, w) reconstructions, in the input's units."""
        rows, shape = as_positions(z, self.num_features, "z")
        return as_maps((rows.to(self.decoder.dtype) @ self.decoder.t() + self.pre_bias) / self.input_scale, shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def fingerprint(self) -> str:
        """What a dissection's identity records of this basis: its shape, k and a hash of its weights."""
        return (f"SparseAutoencoder(num_channels={self.num_channels}, num_features={self.num_features}, "
                f"k={self.k}, weights={state_hash(self)})")

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, num_features={self.num_features}, k={self.k}"

    # ---- files
    def to_tree(self) -> dict:
        return {"version": FORMAT_VERSION, "num_channels": self.num_channels, "num_features": self.num_features,
                "k": self.k, "seed": self.seed, "state": {n: t.detach().cpu() for n, t in self.state_dict().items()},
                "metrics": dict(self.metrics), "settings": dict(self.settings)}

    @classmethod
    def from_tree(cls, tree, where) -> "SparseAutoencoder":
        tensorfile.check_fields(tree, where, required=("version", "num_channels", "num_features", "k", "seed",
                                                       "state", "metrics", "settings"))
        if tree["version"] != FORMAT_VERSION:
            raise tensorfile.UnsafeFileError(f"{where}: sparse autoencoder format {tree['version']!r}, this "
                                             f"version of fastdissect reads {FORMAT_VERSION}")
        sae = cls(tree["num_channels"], tree["num_features"], tree["k"], seed=tree["seed"])
        names = tuple(sae.state_dict())
        state = tensorfile.check_fields(tree["state"], where, required=names, tensors=names)
        for name, t in sae.state_dict().items():
            if tuple(state[name].shape) != tuple(t.shape):
                raise tensorfile.UnsafeFileError(f"{where}: {name} has shape {tuple(state[name].shape)}, "
                                                 f"expected {tuple(t.shape)}")
        sae.load_state_dict(state)
        sae.metrics, sae.settings = dict(tree["metrics"]), dict(tree["settings"])
        return sae

    def save(self, path) -> Path:
        """Writes the autoencoder (weights, k, metrics, training settings) to a safetensors file, atomically."""
        path = Path(path)
        atomic.write_bytes(path, tensorfile.dumps(self.to_tree(), kind=KIND))
        return path

    @classmethod
    def load(cls, path) -> "SparseAutoencoder":
        """Reads a file `save` wrote (nothing in it can run code)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no sparse autoencoder file at {path}")
        return cls.from_tree(tensorfile.read(path, kind=KIND), path)
