"""Each layer's activations of a batch: one forward pass of the model (read by hooks), or the
float16 activation cache of an earlier pass over the same images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core import validate
from ..datasets.images import ImagesOnly, collate_images
from ..datasets.sample import model_input
from .hooks import run_until_traced, trace
from .options import DissectOptions, model_device


def image_batches(dataset, batch_size: int, indices=None):
    """(indices, (B, H, W, 3) uint8 images) batches of a data set's images (all, or `indices`), in order."""
    items = ImagesOnly(dataset)
    if indices is not None:
        items = torch.utils.data.Subset(items, [int(i) for i in indices])
    return torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=collate_images)


def layer_outputs(model, layers, images, indices, *, image_size, mean, std, transform=None) -> dict:
    """{layer: output} of one forward pass of a batch of uint8 images, stopped at the last of `layers`
    to be called (for the analyses that read a few layers; fd.dissect's own reader is `Forward`).
    NaN or inf is named by layer, images and units, as in fd.dissect."""
    x = model_input(images, mean, std, image_size, model_device(model))
    with torch.no_grad(), trace(model, list(layers), transform, stop=True) as acts:
        run_until_traced(model, x)
    check_finite({name: a if a.dim() > 2 else a[..., None] for name, a in acts.items()}, torch.as_tensor(indices))
    return acts


class Forward:
    """The model's activations of this rank's images [lo, hi), optionally cached for a second pass."""

    def __init__(self, model, opts: DissectOptions, lo: int, hi: int, rank: int):
        self.model, self.opts, self.lo, self.hi, self.rank = model, opts, lo, hi, rank
        param = next((p for p in model.parameters() if p.is_floating_point()), None)
        self.input_dtype = param.dtype if param is not None else torch.float32
        self.cache: dict[str, torch.Tensor] | None = None
        # With a cache, both passes see float16-rounded activations, cached or recomputed alike.
        self.round_f16 = opts.cache is not None
        self.cache_off = opts.cache is None

    def activations(self, indices: torch.Tensor, images: torch.Tensor | None,
                    names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Each layer's (B, K, h, w) activations of these images (of `names`, default every layer):
        from the cache, or a forward pass, which stops early at the last of them."""
        o = self.opts
        views = o.views if names is None else {name: o.views[name] for name in names}
        if self.cache is not None and images is None:
            lo, hi = int(indices[0]) - self.lo, int(indices[-1]) + 1 - self.lo
            return {name: self.cache[name][lo:hi].to(o.device) for name in views}
        x = model_input(images, o.mean, o.std, o.image_size, o.device)
        x = x.to(self.input_dtype)  # a model in half precision takes half-precision inputs
        modules = list(dict.fromkeys(module for module, _ in views.values()))
        transform = {m: t for m, t in o.transform.items() if m in modules} if o.transform else o.transform
        with torch.no_grad(), trace(self.model, modules, transform, stop=o.stop_early) as acts:
            run_until_traced(self.model, x)
        out = {}
        for name, (module, view) in views.items():
            if module not in acts:
                raise RuntimeError(f"layer {module!r} was not called by the model's forward pass")
            a = acts[module] if view is None else view(acts[module])
            if a.dim() == 2:  # (N, C) from a Linear layer: 1x1 maps (a warning follows the results)
                a = a[:, :, None, None]
            if a.dim() != 4:
                raise ValueError(f"layer {name!r} outputs shape {tuple(a.shape)}, not (N, K, h, w) maps or (N, K) "
                                 f"values; for token outputs pass transform={{{module!r}: fd.token_grid()}} (CLI "
                                 "--tokens N)")
            out[name] = a.to(torch.float16) if self.round_f16 else a
        check_finite(out, indices)
        return out

    def cached(self) -> bool:
        """Whether a later pass reads the cache (and so needs no images)."""
        return self.cache is not None

    def disable_cache(self) -> None:
        """An interrupted run's cache is incomplete: the model runs again."""
        self.cache_off = True

    def store_in_cache(self, indices, acts) -> None:
        if self.cache_off:
            return
        if self.cache is None:
            n = self.hi - self.lo
            need = sum(n * a[0].numel() * 2 for a in acts.values())
            if need > self.opts.cache_limit:
                self.cache_off = True
                print(f"fastdissect: the activation cache would need {need / 2**30:.2f} GiB, more than "
                      f"cache_limit={self.opts.cache_limit / 2**30:.2f} GiB: the second pass re-runs the model")
                return
            self.cache = {name: self._cache_array(name, (n,) + tuple(a.shape[1:])) for name, a in acts.items()}
        lo, hi = int(indices[0]) - self.lo, int(indices[-1]) + 1 - self.lo
        for name, a in acts.items():
            self.cache[name][lo:hi] = a.cpu()

    def _cache_array(self, name: str, shape: tuple) -> torch.Tensor:
        if self.opts.cache == "memory":
            return torch.empty(shape, dtype=torch.float16)
        path = Path(self.opts.cache) / f"{name}.rank{self.rank}.f16"
        path.parent.mkdir(parents=True, exist_ok=True)
        return torch.from_numpy(np.memmap(path, dtype=np.float16, mode="w+", shape=shape))


def check_finite(acts: dict, indices: torch.Tensor) -> None:
    """NaN or inf anywhere is named by layer, images and units (one host sync per batch)."""
    sums = torch.stack([validate.proving_sum(a).to(torch.float64) for a in acts.values()])
    if bool(torch.isfinite(sums).all()):  # every value finite: no isfinite masks needed
        return
    bad = {name: ~torch.isfinite(a).flatten(2).all(dim=2) for name, a in acts.items()}  # (B, K) each
    if not bool(torch.stack([b.any() for b in bad.values()]).any()):
        return
    name, b = next((n, b) for n, b in bad.items() if bool(b.any()))
    images = indices.to(b.device)[b.any(dim=1)].tolist()
    units = torch.nonzero(b.any(dim=0)).flatten().tolist()
    raise ValueError(f"layer {name!r} gives NaN or inf activations on images {images[:10]}"
                     f"{' ...' if len(images) > 10 else ''} (units {units[:10]}{' ...' if len(units) > 10 else ''}): "
                     "check the model's weights, its precision and the input normalisation")
