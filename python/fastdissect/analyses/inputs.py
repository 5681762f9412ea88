"""What the analyses of a saved dissection share: its input settings, checked images, one layer.

explain_prediction, segment and ablate run the model on new images (or on the data set again) and
must feed it as the dissection did: the same normalisation and image size, recorded in the
dissection's identity.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..core import validate
from ..datasets.sample import IMAGENET_MEAN, IMAGENET_STD, model_input, stack_images
from ..pipeline.hooks import find_modules, trace
from ..pipeline.options import model_device  # noqa: F401 (the analyses' inputs.model_device)
from ..pipeline.results import Dissection


def input_settings(dissection) -> dict:
    """mean, std and image size (None: as stored) the dissection fed its model."""
    ident = getattr(dissection, "identity", {}) or {}
    size = ident.get("image_size")
    return {"mean": tuple(ident.get("mean", IMAGENET_MEAN)), "std": tuple(ident.get("std", IMAGENET_STD)),
            "image_size": tuple(size) if isinstance(size, (list, tuple)) else None}


def layer_of(dissection, layer: str, model: torch.nn.Module):
    """The dissection's LayerResult of `layer`, which must also be a module of `model`."""
    if layer not in dissection:
        raise KeyError(f"the dissection holds no layer {layer!r}; it holds {list(dissection)}")
    find_modules(model, [layer])
    return dissection[layer]


def as_images(images) -> list[np.ndarray]:
    """(H, W, 3) uint8 images: one array, a (N, H, W, 3) stack, or a list of them; paths are read."""
    from PIL import Image

    if isinstance(images, torch.Tensor):
        images = images.cpu().numpy()
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    elif isinstance(images, (np.ndarray, str)) or hasattr(images, "__fspath__"):
        images = [images]
    out = []
    for i, im in enumerate(images):
        if isinstance(im, str) or hasattr(im, "__fspath__"):
            try:
                with Image.open(im) as f:
                    im = np.asarray(f.convert("RGB"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"image {im}: cannot read it ({exc})") from None
        im = np.asarray(im)
        if im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"image {i}: expected (height, width, 3) RGB, got shape {im.shape}")
        if im.dtype != np.uint8:
            raise ValueError(f"image {i}: expected uint8 pixels (0-255), got {im.dtype}")
        if min(im.shape[:2]) < 1:
            raise ValueError(f"image {i}: empty ({im.shape[0]}x{im.shape[1]})")
        out.append(np.array(im))  # a writable copy: decoded images may be read-only
    if not out:
        raise ValueError("no images given")
    return out


def feed(images, settings: dict, device) -> torch.Tensor:
    """(N, 3, h, w) model input from a batch as the loaders give it ((N, H, W, 3) uint8, or a list of
    images of different sizes), normalised and resized as the dissection fed its data."""
    return model_input(images, settings["mean"], settings["std"], settings["image_size"], device)


def model_batch(images: list[np.ndarray], settings: dict, device) -> torch.Tensor:
    """`feed` for a list of (H, W, 3) uint8 arrays."""
    return feed(stack_images(images), settings, device)


def layer_output(model: torch.nn.Module, layer: str, x: torch.Tensor, transform=None) -> torch.Tensor:
    """The layer's output on x, the model in eval mode and without gradients (its mode restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), trace(model, [layer], {layer: transform} if transform is not None else None) as acts:
            model(x)
    finally:
        model.train(was_training)
    if layer not in acts:
        raise RuntimeError(f"layer {layer!r} was not called by the model's forward pass")
    return acts[layer]


def check_map_size(layer, act: torch.Tensor, name: str) -> None:
    """The layer's maps on these images must have the size the dissection labeled them at."""
    if layer.top_maps is not None and tuple(act.shape[2:]) != tuple(layer.top_maps.shape[2:]):
        h, w = layer.top_maps.shape[2:]
        raise ValueError(f"these images give {act.shape[2]}x{act.shape[3]} maps at {name}, the dissection's are "
                         f"{h}x{w}: the images are of the wrong size for it (pass image_size=, or resize them "
                         "as the data set's images)")


def dissection(d, name: str = "dissection"):
    if not isinstance(d, Dissection):
        hint = f": load a saved one with fd.load({str(d)!r})" if isinstance(d, (str, os.PathLike)) else ""
        raise validate.ArgumentTypeError(f"{name} must be the Dissection fd.dissect returned (or fd.load read), "
                                         f"got {type(d).__name__}{hint}")
    return d
