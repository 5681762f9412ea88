"""Training a `SparseAutoencoder` on a stream of activation vectors: `SAETrainer`.

The loss of one mini-batch of B positions x (Gao et al. 2024), both terms normalised by the batch's
variance so that 1.0 means "no better than predicting the mean":

    L = ||s x - s x^||^2 / V  +  aux_coef * ||e - W_dec z_aux||^2 / V,    e = (s x - s x^) detached

z_aux keeps the aux_k largest pre-activations among *dead* features only (those not active on any of
the last `dead_after` positions): their gradient pulls dead directions towards what the live ones
miss, which revives them without resampling (AuxK). After each Adam step the decoder's gradient
component along its own columns has been removed and the columns are renormalised, so the
constraint ||W_dec[:, f]|| = 1 holds exactly between steps (the parallel component would only change
a column's norm, which the renormalisation undoes: removing it keeps Adam's moments on the part of the
gradient that moves the direction).

Data arrive in chunks (the positions of some images); `fit_chunk` shuffles a chunk with the trainer's
own seeded generator and steps through it once. Between chunks the whole state is `state_dict()`:
weights, Adam's moments, the generator, counters; resuming from it continues bit for bit.
"""

from __future__ import annotations

import dataclasses

import torch

from ..core import validate
from .sae import SparseAutoencoder, top_k_relu, unit_columns


@dataclasses.dataclass(frozen=True)
class SAESettings:
    """How an autoencoder is trained; recorded in its file (`settings`) and in its checkpoints."""
    lr: float = 4e-4
    batch_size: int = 4096        # positions per Adam step
    aux_k: int | None = None      # default: min(2 k, num_features), at least k
    aux_coef: float = 1 / 32      # Gao et al.'s alpha
    dead_after: int = 1 << 18     # positions without activation after which a feature counts as dead

    def checked(self) -> "SAESettings":
        validate.number(self.lr, "lr", 0.0, low_open=True)
        validate.positive_int(self.batch_size, "batch_size")
        if self.aux_k is not None:
            validate.integer(self.aux_k, "aux_k", low=0)
        validate.number(self.aux_coef, "aux_coef", 0.0)
        validate.positive_int(self.dead_after, "dead_after")
        return self


class SAETrainer:
    """Adam on a `SparseAutoencoder`, fed chunks of (M, C) activation vectors."""

    def __init__(self, sae: SparseAutoencoder, settings: SAESettings, seed: int = 0):
        self.sae, self.settings = sae, settings.checked()
        self.aux_k = min(sae.num_features, settings.aux_k if settings.aux_k is not None else 2 * sae.k)
        self.generator = torch.Generator().manual_seed(validate.integer(seed, "seed"))
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=settings.lr)
        self.positions = 0                                   # positions trained on so far
        self.steps = 0
        self.last_active = torch.zeros(sae.num_features, dtype=torch.int64)  # self.positions when last active
        self.initialised = False
        self.last_loss = float("nan")

    def initialise(self, rows: torch.Tensor) -> None:
        """The input scale and pre-encoder bias from the first chunk: s such that E||s x||^2 = C, and
        b_pre = the mean of s x (Gao et al. use the geometric median; the mean is its cheap stand-in and
        only an initial value: b_pre is learned)."""
        x = rows.to(torch.float64)
        mean_sq = x.pow(2).sum(1).mean()
        scale = (self.sae.num_channels / mean_sq).sqrt() if mean_sq > 0 else torch.tensor(1.0, dtype=torch.float64)
        with torch.no_grad():
            self.sae.input_scale.fill_(float(scale))
            self.sae.pre_bias.copy_((x * scale).mean(0).to(self.sae.pre_bias.dtype))
        self.initialised = True

    def fit_chunk(self, rows: torch.Tensor) -> float:
        """One shuffled pass over `rows` (M, C), in mini-batches; returns the mean loss."""
        if not self.initialised:
            self.initialise(rows)
        order = torch.randperm(rows.shape[0], generator=self.generator)
        losses = [self.step(rows[i]) for i in order.split(self.settings.batch_size)]
        self.last_loss = sum(losses) / max(len(losses), 1)
        return self.last_loss

    def step(self, rows: torch.Tensor) -> float:
        sae = self.sae
        x = rows.to(sae.encoder.dtype) * sae.input_scale
        pre = (x - sae.pre_bias) @ sae.encoder.t() + sae.encoder_bias
        z = top_k_relu(pre, sae.k)
        error = x - (z @ sae.decoder.t() + sae.pre_bias)
        variance = (x - x.mean(0)).pow(2).sum(1).mean().clamp_min(1e-12)
        loss = error.pow(2).sum(1).mean() / variance
        dead = (self.positions - self.last_active) >= self.settings.dead_after
        if self.aux_k and self.settings.aux_coef and bool(dead.any()):
            loss = loss + self.settings.aux_coef * self._aux_loss(pre, dead, error.detach(), variance)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._step_on_sphere()
        self.positions += rows.shape[0]
        self.last_active[(z > 0).any(0)] = self.positions
        self.steps += 1
        return float(loss.detach())

    def _aux_loss(self, pre, dead, error, variance) -> torch.Tensor:
        k = min(self.aux_k, int(dead.sum()))
        masked = pre.masked_fill(~dead, float("-inf"))
        z_aux = top_k_relu(masked, k)
        return (error - z_aux @ self.sae.decoder.t()).pow(2).sum(1).mean() / variance

    def _step_on_sphere(self) -> None:
        w = self.sae.decoder
        if w.grad is not None:  # the gradient along each unit column only changes its norm
            w.grad -= (w.grad * w).sum(0, keepdim=True) * w
        self.optimizer.step()
        with torch.no_grad():
            w.copy_(unit_columns(w))

    # ---- checkpoints
    def state_dict(self) -> dict:
        return {"sae": {n: t.detach().clone() for n, t in self.sae.state_dict().items()},
                "optimizer": _optimizer_tree(self.optimizer), "generator": self.generator.get_state(),
                "positions": self.positions, "steps": self.steps, "last_active": self.last_active.clone(),
                "initialised": self.initialised, "aux_k": self.aux_k,
                "settings": dataclasses.asdict(self.settings)}

    def load_state_dict(self, state: dict) -> None:
        if state["settings"] != dataclasses.asdict(self.settings) or state["aux_k"] != self.aux_k:
            raise ValueError(f"the checkpoint was trained with {state['settings']} (aux_k={state['aux_k']}), "
                             f"this run asks for {dataclasses.asdict(self.settings)} (aux_k={self.aux_k})")
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(_optimizer_state(state["optimizer"]))
        self.generator.set_state(state["generator"])
        self.positions, self.steps = int(state["positions"]), int(state["steps"])
        self.last_active = state["last_active"].clone()
        self.initialised = bool(state["initialised"])


def _optimizer_tree(opt: torch.optim.Optimizer) -> dict:
    """Adam's state with str keys (a tensor file's dicts are keyed by str)."""
    sd = opt.state_dict()
    return {"state": {str(i): {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
                      for i, s in sd["state"].items()},
            "param_groups": sd["param_groups"]}


def _optimizer_state(tree: dict) -> dict:
    return {"state": {int(i): dict(s) for i, s in tree["state"].items()}, "param_groups": tree["param_groups"]}
