"""`fd.train_sae`: a sparse autoencoder trained on one layer's activations, streamed from a data set.

Every spatial position of the layer's maps is a sample. A seeded tenth of the images (at least one)
is held out and never trained on; the metrics are measured on it. Training images are visited in a
seeded order each epoch, `chunk_positions` positions at a time: a chunk is read (one forward pass
of its images, stopped at the layer), shuffled and trained on once. Memory is one chunk of
chunk_positions x C float32 values (64 MB for the default 2**16 positions at C = 256, 2**16 x C x 4
bytes in general) plus the autoencoder and Adam's two moments (3 x 2 x F x C floats).

A checkpoint (a tensor file, written atomically after every chunk) holds the trainer's whole state
and where the epoch stands; a run given the same checkpoint path resumes from it and ends with the
same weights as an uninterrupted run. The checkpoint records the run's settings (layer, data set
size, model weights' hash, F, k, seed, ...) and is refused by a run with other settings.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from ..bases.sae import SparseAutoencoder, as_positions
from ..bases.sae_training import SAESettings, SAETrainer
from ..core import validate
from ..datasets.sample import IMAGENET_MEAN, IMAGENET_STD
from ..files import atomic, tensorfile
from ..files.identity import dataset_identity, state_hash
from .forward import image_batches, layer_outputs
from .hooks import find_modules

CHECKPOINT_KIND = "sae-checkpoint"


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Which images train and which are held out, and in what order each epoch visits them."""
    train: torch.Tensor
    held_out: torch.Tensor
    seed: int

    @classmethod
    def of(cls, num_images: int, holdout: float, seed: int) -> "_Plan":
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(num_images, generator=g)
        n_out = min(num_images - 1, max(1, math.ceil(holdout * num_images))) if holdout > 0 else 0
        return cls(order[n_out:].sort().values, order[:n_out].sort().values, seed)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 1)
        return self.train[torch.randperm(len(self.train), generator=g)]


class _Reader:
    """The layer's activations for a list of image indices, as (M, C) rows."""

    def __init__(self, model, layer, dataset, batch_size, image_size, mean, std):
        self.model, self.layer, self.dataset = model, layer, dataset
        self.batch_size, self.image_size, self.mean, self.std = batch_size, image_size, mean, std

    def maps(self, indices: torch.Tensor):
        for idx, images in image_batches(self.dataset, self.batch_size, indices):
            a = layer_outputs(self.model, [self.layer], images, idx, image_size=self.image_size, mean=self.mean,
                              std=self.std)[self.layer]
            if a.dim() != 4:
                raise ValueError(f"layer {self.layer!r} gives outputs of shape {tuple(a.shape)}; train_sae needs "
                                 "(N, C, h, w) maps (for tokens, dissect a transform such as fd.token_grid())")
            yield a.float()

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.cat([as_positions(a, a.shape[1])[0].cpu() for a in self.maps(indices)])


def train_sae(model: torch.nn.Module, layer: str, dataset, num_features: int, k: int, *, epochs: int = 1,
              batch_size: int = 32, positions_per_step: int = 4096, lr: float = 4e-4, image_size=None,
              mean=IMAGENET_MEAN, std=IMAGENET_STD, holdout: float = 0.1, chunk_positions: int = 1 << 16,
              aux_k: int | None = None, dead_after: int = 1 << 16, seed: int = 0, checkpoint=None,
              verbose: bool = True) -> SparseAutoencoder:
    """Trains a TopK sparse autoencoder of `num_features` features, `k` active per position, on the
    activations of `layer` over `dataset`; returns it with `metrics` measured on held-out images.

    >>> import torch, fastdissect as fd
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    >>> import tempfile
    >>> data = fd.datasets.Broden(fd.datasets.builtin(tempfile.mkdtemp(), n_images=12, image_size=32))
    >>> sae = fd.train_sae(net, "1", data, num_features=16, k=2, verbose=False)
    >>> sorted(sae.metrics)
    ['dead_fraction', 'explained_variance', 'held_out_images', 'held_out_positions', 'l0']

    batch_size: images per forward pass of the model; positions_per_step: positions per Adam step.
    holdout: the share of images held out for the metrics. aux_k / dead_after: the dead-feature
    revival (fastdissect.bases.sae_training). checkpoint: a path to save the state to after every
    chunk and resume from.
    """
    args = _checked(model, layer, dataset, num_features, k, epochs, batch_size, positions_per_step, lr,
                    holdout, chunk_positions, seed, image_size)
    settings = SAESettings(lr=lr, batch_size=positions_per_step, aux_k=aux_k, dead_after=dead_after)
    reader = _Reader(model, layer, dataset, batch_size, args["image_size"], tuple(mean), tuple(std))
    plan = _Plan.of(len(dataset), holdout, seed)
    was_training = model.training
    model.eval()
    try:
        first = reader.rows(plan.train[:1])
        sae = SparseAutoencoder(first.shape[1], num_features, k, seed=seed)
        trainer = SAETrainer(sae, settings, seed)
        identity = _identity(model, layer, dataset, sae, settings, plan, epochs, chunk_positions, args)
        _train(trainer, reader, plan, epochs, chunk_positions, first.shape[0], identity, checkpoint, verbose)
        sae.metrics = measure(sae, reader, plan.held_out)
    finally:
        model.train(was_training)
    sae.settings = identity
    return sae


def _checked(model, layer, dataset, num_features, k, epochs, batch_size, positions_per_step, lr, holdout,
             chunk_positions, seed, image_size) -> dict:
    validate.module(model)
    if not isinstance(layer, str):
        raise validate.ArgumentTypeError(f"layer must be one layer name (a str), got {type(layer).__name__}")
    find_modules(model, [layer])
    validate.positive_int(num_features, "num_features")
    validate.integer(k, "k", low=1, high=num_features, what=f"at most num_features={num_features}")
    for value, name in ((epochs, "epochs"), (batch_size, "batch_size"), (positions_per_step, "positions_per_step"),
                        (chunk_positions, "chunk_positions")):
        validate.positive_int(value, name)
    validate.number(lr, "lr", 0.0, low_open=True)
    validate.number(holdout, "holdout", 0.0, 1.0, high_open=True)
    validate.integer(seed, "seed")
    if not hasattr(dataset, "__len__") or len(dataset) < 2:
        raise ValueError("train_sae needs a data set of at least 2 images (one is held out for the metrics)")
    return {"image_size": validate.image_size(image_size)}


def _identity(model, layer, dataset, sae, settings, plan, epochs, chunk_positions, args) -> dict:
    """What the result depends on: a checkpoint of other settings must not be resumed."""
    return {"layer": layer, "model_weights": state_hash(model), "num_images": len(dataset),
            "dataset": _dataset_identity(dataset), "num_channels": sae.num_channels, "num_features": sae.num_features,
            "k": sae.k, "seed": plan.seed, "epochs": epochs, "chunk_positions": chunk_positions,
            "held_out_images": len(plan.held_out),
            "image_size": list(args["image_size"]) if args["image_size"] else None,
            **{f"train_{k}": v for k, v in dataclasses.asdict(settings).items()}}


def _dataset_identity(dataset) -> dict:
    if hasattr(dataset, "concept_names"):
        return dataset_identity(dataset)
    return {"kind": f"{type(dataset).__module__}.{type(dataset).__qualname__}", "images": len(dataset)}


def _chunks(order: torch.Tensor, per_image: int, chunk_positions: int) -> list[torch.Tensor]:
    images = max(1, chunk_positions // max(per_image, 1))
    return list(order.split(images))


def _train(trainer, reader, plan, epochs, chunk_positions, per_image, identity, checkpoint, verbose) -> None:
    from tqdm.auto import tqdm

    path = Path(checkpoint) if checkpoint is not None else None
    epoch, chunk = _resume(trainer, path, identity)
    total = epochs * len(plan.train)
    with tqdm(total=total, desc="train sae", unit="img", disable=not verbose) as bar:
        while epoch < epochs:
            chunks = _chunks(plan.epoch_order(epoch), per_image, chunk_positions)
            bar.n = epoch * len(plan.train) + sum(len(c) for c in chunks[:chunk])
            bar.refresh()
            for i in range(chunk, len(chunks)):
                loss = trainer.fit_chunk(reader.rows(chunks[i]))
                bar.update(len(chunks[i]))
                bar.set_postfix(loss=f"{loss:.4f}")
                next_epoch, next_chunk = (epoch + 1, 0) if i + 1 == len(chunks) else (epoch, i + 1)
                if path is not None:
                    _save(path, trainer, identity, next_epoch, next_chunk)
            epoch, chunk = epoch + 1, 0


def _save(path: Path, trainer, identity, epoch: int, chunk: int) -> None:
    tree = {"identity": identity, "epoch": epoch, "chunk": chunk, "trainer": trainer.state_dict()}
    atomic.write_bytes(path, tensorfile.dumps(tree, kind=CHECKPOINT_KIND))


def _resume(trainer, path: Path | None, identity) -> tuple[int, int]:
    if path is None or not path.exists():
        return 0, 0
    tree = tensorfile.check_fields(tensorfile.read(path, kind=CHECKPOINT_KIND), path,
                                   required=("identity", "epoch", "chunk", "trainer"))
    stored = tensorfile.as_stored(identity)
    if tree["identity"] != stored:
        diff = sorted(key for key in set(stored) | set(tree["identity"])
                      if tree["identity"].get(key) != stored.get(key))
        raise ValueError(f"checkpoint {path} was written by a run with other settings ({', '.join(diff)} "
                         "differ): pass another checkpoint path, or delete it to start again")
    trainer.load_state_dict(tree["trainer"])
    return int(tree["epoch"]), int(tree["chunk"])


@torch.no_grad()
def measure(sae: SparseAutoencoder, reader, indices: torch.Tensor) -> dict:
    """explained_variance = 1 - sum ||x - x^||^2 / sum ||x - mean x||^2 over the held-out positions;
    l0 = mean number of active features per position; dead_fraction = share of features active at no
    held-out position. Two passes over the maps (the mean first) keep the memory to one batch."""
    n, total = 0, torch.zeros(sae.num_channels, dtype=torch.float64)
    for a in reader.maps(indices):
        rows = as_positions(a, a.shape[1])[0].double()
        n, total = n + rows.shape[0], total + rows.sum(0).cpu()
    mean = total / max(n, 1)
    err = var = active = 0.0
    ever = torch.zeros(sae.num_features, dtype=torch.bool)
    for a in reader.maps(indices):
        rows = as_positions(a, a.shape[1])[0]
        z = sae.encode(rows)
        err += float((rows.double() - sae.decode(z).double()).pow(2).sum())
        var += float((rows.double().cpu() - mean).pow(2).sum())
        nz = (z != 0).cpu()
        active += float(nz.sum())
        ever |= nz.any(0)
    return {"explained_variance": 1.0 - err / var if var > 0 else float("nan"), "l0": active / max(n, 1),
            "dead_fraction": 1.0 - float(ever.float().mean()), "held_out_images": len(indices),
            "held_out_positions": n}
