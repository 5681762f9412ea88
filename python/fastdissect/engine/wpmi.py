"""CLIP-Dissect's similarity functions between units and words (Oikarinen & Weng 2023): `soft_wpmi`,
`wpmi` and `cos_cubed`, each (N images) x (K units) activations against (N, C) image-word similarities.

soft-WPMI, per unit k and word c:

    P = softmax over words of (a * similarity)                       (N, C), each image a distribution
    S_kc = sum_{i < top_k} log(1 + p_i (P[t_k(i), c] - 1) + 1e-7),   t_k(i): unit k's i-th top image,
           p_i = p_start - i / top_k * (p_start - p_end)              weights falling linearly
    soft_wpmi_kc = S_kc - lam * (logsumexp_k S_kc - log K)           minus lam x the log mean over units

(each top image belongs to the unit's "concept set" with probability p_i). `wpmi` is the hard
version: S_kc = sum_i log(P[t_k(i), c] + 1e-7). `cos_cubed`: cosine similarity of the centred, cubed
columns. Top images are taken by activation, highest first, ties to the lower image index.

>>> import torch, fastdissect as fd
>>> sim = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])    # 3 images, words "dog", "sky"
>>> acts = torch.tensor([[5.0], [4.0], [0.0]])                  # one unit firing on images 0 and 1
>>> fd.soft_wpmi(sim, acts, top_k=2).argmax(dim=1).tolist()     # the unit's word: "dog"
[0]
"""

from __future__ import annotations

import math

import torch

from ..core import validate

MIN_PROB = 1e-7
CHUNK_BYTES = 1 << 28


def _checked(similarities, activations, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    for t, name, what in ((similarities, "similarities", "(N images, C words)"),
                          (activations, "activations", "(N images, K units)")):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise validate.ArgumentTypeError(f"{name} must be an {what} tensor, got "
                                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} hold NaN or inf")
    if similarities.shape[0] != activations.shape[0]:
        raise ValueError(f"similarities has {similarities.shape[0]} images but activations has "
                         f"{activations.shape[0]}")
    validate.integer(top_k, "top_k", low=1, high=activations.shape[0], what=f"at most the {activations.shape[0]} images")
    return similarities.double(), activations.double()


def top_images(activations: torch.Tensor, top_k: int) -> torch.Tensor:
    """(K, top_k) image indices of each unit, highest activation first, ties to the lower index."""
    return activations.t().argsort(dim=1, descending=True, stable=True)[:, :top_k]


def _summed_logs(prob: torch.Tensor, top: torch.Tensor, term) -> torch.Tensor:
    """(K, C) sum over each unit's top images of term(P[image], i), a few units at a time: the
    (units, top_k, C) block is capped at CHUNK_BYTES (all at once it would be K x top_k x C x 8 bytes,
    32 GB for 2,048 units, 100 images and 20,000 words)."""
    per_unit = top.shape[1] * prob.shape[1] * 8
    step = max(1, CHUNK_BYTES // per_unit)
    return torch.cat([term(prob[rows]).sum(dim=1) for rows in top.split(step)])


def _log_mean_over_units(s: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(s, dim=0, keepdim=True) - math.log(s.shape[0])


def soft_wpmi(similarities: torch.Tensor, activations: torch.Tensor, *, top_k: int = 100, a: float = 10,
              lam: float = 1, p_start: float = 0.998, p_end: float = 0.97) -> torch.Tensor:
    """(K, C) float64 soft-WPMI of every unit and word (CLIP-Dissect's default labeling score)."""
    sim, act = _checked(similarities, activations, top_k)
    for v, name in ((a, "a"), (lam, "lam")):
        validate.number(v, name)
    validate.number(p_start, "p_start", 0.0, 1.0)
    validate.number(p_end, "p_end", 0.0, 1.0)
    prob = torch.softmax(a * sim, dim=1)
    p = p_start - torch.arange(top_k, dtype=torch.float64) / top_k * (p_start - p_end)      # (top_k,)
    s = _summed_logs(prob, top_images(act, top_k), lambda chosen: torch.log(1 + p[None, :, None] * (chosen - 1) + MIN_PROB))
    return s - lam * _log_mean_over_units(s)


def wpmi(similarities: torch.Tensor, activations: torch.Tensor, *, top_k: int = 28, a: float = 2,
         lam: float = 0.6) -> torch.Tensor:
    """(K, C) float64 WPMI: the hard version of soft_wpmi (CLIP-Dissect's defaults)."""
    sim, act = _checked(similarities, activations, top_k)
    prob = torch.softmax(a * sim, dim=1)
    s = _summed_logs(prob, top_images(act, top_k), lambda chosen: torch.log(chosen + MIN_PROB))
    return s - lam * _log_mean_over_units(s)


def cos_cubed(similarities: torch.Tensor, activations: torch.Tensor, *, min_norm: float = 1e-3) -> torch.Tensor:
    """(K, C) float64 cosine similarity of each unit's and word's columns, centred then cubed."""
    sim, act = _checked(similarities, activations, 1)

    def prepared(x):
        x = (x - x.mean(dim=0, keepdim=True)) ** 3
        return x / x.norm(dim=0, keepdim=True).clamp_min(min_norm)

    return prepared(act).t() @ prepared(sim)
