"""`fd.sanity_check`: does a labelling metric pass Neuron_Eval's two sanity tests (Oikarinen et al.,
ICML 2025)?

A metric scores how well a unit's activations fit a concept's labels. For a unit whose true concept
is known, corrupting the concept's labels must lower the score:
- missing labels: a random `fraction` of the concept's positive images are relabelled negative;
- extra labels: as many random negative images as `fraction` x the positives are relabelled positive.
A metric passes a test when the true labels score strictly higher than the corrupted ones in at least
`pass_rate` of the (unit, trial) cases. Recall cannot see extra labels and precision cannot see missing
ones: a metric that ignores one kind of error passes one test only.

Without `activations` and `labels`, the units are planted: unit k's score on an image is its concept's
0/1 label plus `noise` x N(0, 1), concept k present on each image with probability `density`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import validate
from ..engine.image_metrics import METRICS, metric_table


@dataclass
class SanityCheck:
    metric: str
    missing_labels: float   # share of cases where the true labels score higher than with labels removed
    extra_labels: float     # ... than with labels added
    pass_rate: float

    @property
    def passed(self) -> bool:
        return self.missing_labels >= self.pass_rate and self.extra_labels >= self.pass_rate

    def __str__(self) -> str:
        verdict = "passes" if self.passed else "fails"
        return (f"{self.metric} {verdict} (missing labels {100 * self.missing_labels:.0f}%, extra labels "
                f"{100 * self.extra_labels:.0f}% of cases score the true labels higher; needed "
                f"{100 * self.pass_rate:.0f}%)")


def planted_units(num_images: int, num_units: int, density: float, noise: float, g: torch.Generator):
    labels = torch.rand(num_images, num_units, generator=g) < density
    return labels.to(torch.float64) + noise * torch.randn(num_images, num_units, generator=g, dtype=torch.float64), labels


def corrupted(labels: torch.Tensor, fraction: float, kind: str, g: torch.Generator) -> torch.Tensor:
    """Each column with a `fraction` of its positives removed (kind="missing") or as many negatives
    made positive (kind="extra"), chosen uniformly at random."""
    out = labels.clone()
    for k in range(labels.shape[1]):
        pos = torch.nonzero(labels[:, k]).flatten()
        neg = torch.nonzero(~labels[:, k]).flatten()
        count = max(1, round(fraction * len(pos)))
        pool, value = (pos, False) if kind == "missing" else (neg, True)
        chosen = pool[torch.randperm(len(pool), generator=g)[:min(count, len(pool))]]
        out[chosen, k] = value
    return out


def sanity_check(metric: str, activations: torch.Tensor | None = None, labels: torch.Tensor | None = None, *,
                 fraction: float = 0.5, trials: int = 5, pass_rate: float = 0.9, quantile: float | None = None,
                 num_images: int = 2000, num_units: int = 20, density: float = 0.1, noise: float = 0.5,
                 seed: int = 0) -> SanityCheck:
    """Runs both tests on `metric` (one of fd's image metrics). activations (N, K) and labels (N, K)
    bool pair unit k with its true concept k; without them the units are planted. quantile: the firing
    level of the binary metrics (default: the labels' mean density)."""
    validate.choice(metric, "metric", METRICS)
    validate.number(fraction, "fraction", 0.0, 1.0, low_open=True)
    validate.positive_int(trials, "trials")
    validate.number(pass_rate, "pass_rate", 0.0, 1.0)
    g = torch.Generator().manual_seed(validate.integer(seed, "seed"))
    if (activations is None) != (labels is None):
        raise ValueError("give both activations and labels (unit k's true concept is column k), or neither")
    if activations is None:
        activations, labels = planted_units(num_images, num_units, density, noise, g)
    elif activations.shape != labels.shape:
        raise ValueError(f"activations {tuple(activations.shape)} and labels {tuple(labels.shape)} must both be "
                         "(N images, K units): unit k is paired with concept column k")
    q = quantile if quantile is not None else float(labels.float().mean())
    q = min(max(q, 1e-6), 1 - 1e-6)
    true = torch.diagonal(metric_table(metric, activations, labels, quantile=q))
    rates = {}
    for kind in ("missing", "extra"):
        wins = 0
        for _ in range(trials):
            worse = torch.diagonal(metric_table(metric, activations, corrupted(labels, fraction, kind, g), quantile=q))
            wins += int((true > worse).sum())
        rates[kind] = wins / (trials * labels.shape[1])
    return SanityCheck(metric, rates["missing"], rates["extra"], pass_rate)
