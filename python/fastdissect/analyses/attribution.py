"""Pixel attribution: which input pixels moved one class's logit, as Captum defines it.

For the model's input x (N, C, H, W), class t and its logit y_t(x), per image:
  "gradient"              dy_t/dx, signed (Captum Saliency with abs=False; Simonyan et al. show |dy_t/dx|)
  "smoothgrad"            1/S sum_s dy_t/dx (x + e_s),  e_s ~ N(0, sigma^2),  sigma = noise * (max x - min x)
                          (Smilkov et al. 2017; Captum NoiseTunnel(Saliency), nt_type="smoothgrad", abs=False)
  "deconvnet"             dy_t/dx with every nn.ReLU's backward replaced by g -> max(g, 0)  (Deconvolution)
  "guided_backprop"       dy_t/dx with every nn.ReLU's backward g -> max(g [x > 0], 0)      (GuidedBackprop)
  "gradcam"               up(max(sum_k a_k A_k, 0)),  a_k = mean_ij dy_t/dA_kij,  A = `layer`'s output
                          (Selvaraju et al.; LayerGradCam(relu_attributions=True)), up = bilinear to H x W
                          (F.interpolate, align_corners=False: LayerAttribution.interpolate(mode="bilinear"))
  "guided_gradcam"        guided_backprop * gradcam  (GuidedGradCam(interpolate_mode="bilinear"))
  "integrated_gradients"  x * sum_m w_m dy_t/dx (alpha_m x): zero baseline, Gauss-Legendre nodes alpha_m and
                          weights w_m on [0, 1] with `steps` nodes (Sundararajan et al.; Captum's default)
"gradcam" gives (N, 1, H, W), the others (N, C, H, W), in the input's dtype.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..core import validate
from ..pipeline.hooks import find_modules
from .relu_hooks import relu_rule

# Noisy or scaled copies per forward and backward: a batch of 50 copies of a 224 px image keeps GBs of
# activations for the backward, and past the caches each copy costs several times what it does in
# batches of 8.
COPIES_PER_BATCH = 8

METHODS = ("gradient", "smoothgrad", "deconvnet", "guided_backprop", "guided_gradcam", "gradcam",
           "integrated_gradients")
LAYER_METHODS = ("gradcam", "guided_gradcam")


def attribute(model: torch.nn.Module, images: torch.Tensor, target, *, method: str = "gradient", layer=None,
              samples: int = 50, noise: float = 0.15, steps: int = 50, seed: int = 0,
              verbose: bool = False) -> torch.Tensor:
    """The pixel attribution of class `target` on each image by `method` (the module's docstring
    has each formula).

    images: the model's input, a float (N, C, H, W) tensor already normalised. target: one class for
    all images, one per image, or None (the predicted class). layer: the module name Grad-CAM reads
    ("gradcam", "guided_gradcam" only). samples, noise, seed: SmoothGrad's noisy copies, the noise's
    scale (a share of each image's value range) and the seed of its generator. steps: the integrated
    gradients' quadrature nodes. verbose: a progress bar over the images for the two methods that run
    the model `samples` or `steps` times per image. The model runs in eval mode, gradients are taken
    with respect to the images only (no parameter's .grad is touched), and the model is left as it
    was: its modes, its hooks (ReLU rules are hooked for this call only), its parameters.

    >>> import torch, fastdissect as fd
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
    ...                           torch.nn.Linear(144, 2))
    >>> fd.attribute(net, torch.rand(2, 3, 8, 8), 1, method="guided_backprop").shape
    torch.Size([2, 3, 8, 8])
    """
    validate.module(model, "model")
    x = _images(images, model)
    target = validate.targets(target)
    validate.choice(method, "method", METHODS)
    layer = _layer(model, layer, method)
    samples = validate.positive_int(samples, "samples")
    steps = validate.positive_int(steps, "steps")
    noise = validate.number(noise, "noise", low=0.0)
    seed = validate.integer(seed, "seed")
    verbose = validate.boolean(verbose, "verbose")
    with evaluated(model), torch.enable_grad():
        if method == "gradient":
            return input_gradient(model, x, target)
        if method in ("smoothgrad", "integrated_gradients"):
            t = class_targets(target, logits_of(model, x, grad=False))  # the class at the image itself
            return smoothgrad(model, x, t, samples, noise, seed, verbose) if method == "smoothgrad" else \
                integrated_gradients(model, x, t, steps, verbose)
        cam = upsampled(gradcam(model, layer, x, target), x.shape[2:]) if layer is not None else None
        if method == "gradcam":
            return cam
        with relu_rule(model, "guided_backprop" if method == "guided_gradcam" else method):
            grads = input_gradient(model, x, target)
        return grads if cam is None else grads * cam


def _images(images, model: torch.nn.Module) -> torch.Tensor:
    """A detached, contiguous copy of the model's input (an inplace first layer cannot write into the caller's)."""
    if not isinstance(images, torch.Tensor):
        raise validate.ArgumentTypeError(
            f"images must be the model's input, a float (N, C, H, W) tensor already normalised, got "
            f"{type(images).__name__}: for (H, W, 3) uint8 images stack them, permute to (N, 3, H, W), divide by "
            "255 and normalise them as the model expects (fd.explain_prediction does this for a dissection)")
    if images.dim() != 4 or min(images.shape) < 1:
        raise ValueError(f"images must be (N, C, H, W) with every size at least 1, got shape {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise validate.ArgumentTypeError(f"images must be floating point (the normalised input), got {images.dtype}")
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is not None and (param.dtype != images.dtype or param.device != images.device):
        raise ValueError(f"images are {images.dtype} on {images.device} and the model's parameters {param.dtype} on "
                         f"{param.device}: convert one to the other (e.g. images.to(torch.float32))")
    finite = torch.isfinite(images).flatten(1).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(f"images: image {int((~finite).nonzero()[0])} holds NaN or inf")
    return images.detach().clone(memory_format=torch.contiguous_format)


def _layer(model, layer, method: str):
    if method not in LAYER_METHODS:
        if layer is not None:
            raise ValueError(f'layer is read by method="gradcam" and "guided_gradcam" only; method="{method}" '
                             f"attributes to the input: drop layer={layer!r}")
        return None
    if layer is None:
        raise ValueError(f'method="{method}" needs layer=, the module whose maps Grad-CAM weighs (typically the '
                         "last convolutional block)")
    validate.layer_name(layer)
    find_modules(model, [layer])
    return layer


@contextlib.contextmanager
def evaluated(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode inside the block; every module's own mode restored after it."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def logits_of(model, x: torch.Tensor, *, grad: bool = True) -> torch.Tensor:
    with torch.set_grad_enabled(grad):
        logits = model(x)
    return checked_logits(logits, len(x))


def checked_logits(logits, n: int) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != n:
        raise ValueError(f"the model must return ({n}, classes) logits, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    return logits


def class_targets(target, logits: torch.Tensor) -> torch.Tensor:
    """(N,) int64 classes: the checked `target` (one for all or one per image), or the predicted ones."""
    n, classes = logits.shape
    if target is None:
        return logits.detach().argmax(dim=1)
    t = torch.as_tensor(target, dtype=torch.int64).flatten().to(logits.device)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"target must be one class or one per image ({n}), got {t.numel()}")
    bad = [(i, int(v)) for i, v in enumerate(t.tolist()) if not 0 <= v < classes]
    if bad:
        where = f" (image {bad[0][0]})" if isinstance(target, (torch.Tensor, np.ndarray, list, tuple)) and n > 1 else ""
        raise ValueError(f"target {bad[0][1]}{where} is outside the model's {classes} classes")
    return t


def input_gradient(model, x: torch.Tensor, target) -> torch.Tensor:
    """dy_t/dx for each image's class t (`target` as `class_targets` takes it), by one backward pass of
    sum_n y_{n, t_n}."""
    x = x.detach().requires_grad_(True)
    logits = logits_of(model, x)
    t = class_targets(target, logits)
    return torch.autograd.grad(logits.gather(1, t[:, None]).sum(), x)[0]


def copies_gradient(model, copies: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dy_t/dx of each of one image's copies, COPIES_PER_BATCH at a time (each copy's gradient is its
    own: the model runs in eval mode, so the batch it is in changes nothing but the memory)."""
    return torch.cat([input_gradient(model, part, t.repeat(len(part))) for part in copies.split(COPIES_PER_BATCH)])


def smoothgrad(model, x: torch.Tensor, t: torch.Tensor, samples: int, noise: float, seed: int,
               verbose: bool = False) -> torch.Tensor:
    """Per image, the mean gradient over `samples` noisy copies, drawn in one batch, image after image,
    from one generator seeded `seed` (as Captum draws from the global one after torch.manual_seed)."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    out = []
    for i in _images_bar(len(x), "smoothgrad", verbose):
        sigma = noise * (x[i].max() - x[i].min())
        e = torch.randn((samples, *x.shape[1:]), generator=g, dtype=x.dtype, device=x.device) * sigma
        grads = copies_gradient(model, x[i:i + 1].repeat_interleave(samples, dim=0) + e, t[i])
        out.append(grads.view(1, samples, *x.shape[1:]).sum(dim=1) * 1 / samples)
    return torch.cat(out)


def integrated_gradients(model, x: torch.Tensor, t: torch.Tensor, steps: int, verbose: bool = False) -> torch.Tensor:
    """x * sum_m w_m dy_t/dx(alpha_m x), one batch of `steps` scaled copies per image."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas, sizes = (0.5 * (1 + nodes)).tolist(), (0.5 * weights).tolist()
    w = torch.tensor(sizes).to(x.dtype).view(steps, 1).to(x.device)
    out = []
    for i in _images_bar(len(x), "integrated gradients", verbose):
        xi = x[i:i + 1]
        scaled = torch.cat([0 + a * (xi - 0) for a in alphas])
        grads = copies_gradient(model, scaled, t[i])
        out.append((grads.contiguous().view(steps, -1) * w).reshape(steps, *xi.shape).sum(dim=0) * (xi - 0))
    return torch.cat(out)


def _images_bar(n: int, desc: str, verbose: bool):
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc, unit="img", disable=not verbose)


def layer_forward(model, layer: str, x: torch.Tensor):
    """(logits, A): the model's logits on x and `layer`'s output A kept in the graph (its first call);
    the hook is removed however the forward ends. The rest of the model gets a copy of A (as in
    Captum), so that an inplace op after the layer (an inplace ReLU) cannot overwrite the maps read."""
    held = {}

    def hook(module, args, output):
        if "a" in held:
            return None
        if isinstance(output, torch.Tensor):
            held["a"] = output
            return output.clone()
        held["a"] = output[0] if isinstance(output, (tuple, list)) else output  # a block's (maps, extras)
        return None
    handle = find_modules(model, [layer])[layer].register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    if "a" not in held:
        raise RuntimeError(f"layer {layer!r} was not called by the model's forward pass")
    return checked_logits(logits, len(x)), held["a"]


def gradcam(model, layer: str, x: torch.Tensor, target) -> torch.Tensor:
    """(N, 1, h, w) max(sum_k a_k A_k, 0) at `layer`'s resolution, a_k the mean of dy_t/dA_k."""
    # x requires grad so that gradients reach the layer even when every weight before it is frozen
    logits, act = layer_forward(model, layer, x.detach().requires_grad_(True))
    t = class_targets(target, logits)
    if not isinstance(act, torch.Tensor) or act.dim() != 4:
        raise ValueError(f"Grad-CAM needs (N, K, h, w) maps at layer {layer!r}, it gives "
                         f"{tuple(act.shape) if isinstance(act, torch.Tensor) else type(act).__name__}")
    if not act.requires_grad:
        raise ValueError(f"Grad-CAM needs gradients through layer {layer!r}, and the model computes it without "
                         "(torch.no_grad, or detached, or no parameter before it requires grad)")
    grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), act)[0]
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * act.detach()).sum(dim=1, keepdim=True))


def upsampled(cam: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(cam, tuple(size), mode="bilinear")


__all__ = ["LAYER_METHODS", "METHODS", "attribute", "class_targets", "evaluated", "gradcam", "input_gradient",
           "integrated_gradients", "layer_forward", "smoothgrad"]
