"""`fd.visualize`: feature visualisation by gradient ascent (Olah et al. 2017, Distill's recipe).

For each image b (unit u_b), with parameters p_b (params.py), image x_b = sigmoid(C(P(p_b))) in
[0, 1], a transform T_t drawn at step t (transforms.py) and the model's input normalisation,
Adam (learning rate lr) maximises objective(u_b, layer(normalise(T_t(x_b)))) (objectives.py),
minus `diversity` times the diversity penalty of each unit's images, for `steps` steps.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch

from ...bases.basis import as_basis
from ...core import validate
from ...datasets.sample import IMAGENET_MEAN, IMAGENET_STD
from ...files.identity import model_identity
from ...pipeline.hooks import StopForward, find_modules
from ...pipeline.options import model_device
from . import objectives, params, transforms as transforming
from .result import Visualization


def visualize(model, layer, units=None, *, objective: str = "channel", steps: int = 256, size: int = 128,
              param: str = "fourier", decorrelate: bool = True, transforms="standard", lr: float = 0.05,
              seed: int = 0, batch_size: int = 16, verbose: bool = True, diversity: float = 0.0,
              images_per_unit: int = 1, basis=None, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Visualization:
    """The images that maximise `objective` for each of `units` of `layer` (module docstring).

    units: unit ids (None: all; with `basis`, feature ids; with objective "class", class ids;
    ignored by "layer", which makes one image, recorded as unit 0). objective: "channel",
    "neuron", "layer" or "class" (objectives.py). param: "fourier" or "pixel"; decorrelate: the
    parameters are decorrelated colours. transforms: "standard" (lucent's), None, or a list of
    callables t(images, generator). basis: a (F, C) tensor of directions, an `fd.SparseAutoencoder`
    or any basis `fd.dissect(basis=...)` takes: "channel"/"neuron" then read its features' maps.
    mean/std: the model's input normalisation (the dissection's). Up to `batch_size` images are
    optimised together; all randomness comes from CPU generators seeded by `seed` (the transforms'
    draws) and by (seed, unit, image) (the initial parameters), so the result is the same on every
    run and a unit's image does not depend on which units share its batch.
    """
    s = _settings(model, layer, units, objective, steps, size, param, decorrelate, transforms, lr, seed, batch_size,
                  verbose, diversity, images_per_unit, basis, mean, std)
    module = find_modules(model, [s["layer"]])[s["layer"]]
    with _frozen(model):
        chosen = _units(model, module, s)
        return _run(model, module, chosen, s)


@contextlib.contextmanager
def _frozen(model):
    """The model in eval mode with no parameter asking for a gradient (the weights' gradients,
    never used, would cost about as much as the image's), as it was afterwards."""
    modes = [(m, m.training) for m in model.modules()]  # each module's own: a frozen BatchNorm stays frozen
    asked = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        for p, _ in asked:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in asked:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def _settings(model, layer, units, objective, steps, size, param, decorrelate, transforms, lr, seed, batch_size,
              verbose, diversity, images_per_unit, basis, mean, std) -> dict:
    """Every argument checked, by name, before any work."""
    validate.module(model)
    objective = validate.choice(objective, "objective", objectives.OBJECTIVES)
    b = as_basis(basis)
    if b is not None and objective not in ("channel", "neuron"):
        raise ValueError(f"basis= reads a feature's map: it goes with objective 'channel' or 'neuron', not {objective!r}")
    return {"model": model, "layer": validate.layer_name(layer), "objective": objective,
            "units": None if units is None or objective == "layer" else validate.int_list(units, "units"),
            "steps": validate.integer(steps, "steps", low=1), "size": validate.integer(size, "size", low=8),
            "param": validate.choice(param, "param", params.PARAMS),
            "decorrelate": validate.boolean(decorrelate, "decorrelate"),
            "transforms": transforming.resolve(transforms), "lr": validate.number(lr, "lr", 0.0, low_open=True),
            "seed": validate.integer(seed, "seed"), "batch_size": validate.integer(batch_size, "batch_size", low=1),
            "verbose": validate.boolean(verbose, "verbose"), "diversity": validate.number(diversity, "diversity", 0.0),
            "images_per_unit": validate.integer(images_per_unit, "images_per_unit", low=1), "basis": b,
            "mean": validate.channel_stats(mean, "mean"), "std": validate.channel_stats(std, "std", positive=True)}


@contextlib.contextmanager
def _reading(module):
    """Captures `module`'s output, with its graph, and stops the forward pass there."""
    captured: dict = {}

    def hook(mod, inputs, output):
        captured["out"] = output[0] if isinstance(output, (tuple, list)) else output
        raise StopForward
    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _layer_output(model, reading: dict, images: torch.Tensor, s: dict) -> torch.Tensor:
    """The layer's output on (B, 3, H, W) [0, 1] images, normalised by the model's mean and std."""
    mean = torch.tensor(s["mean"], dtype=images.dtype, device=images.device)[None, :, None, None]
    std = torch.tensor(s["std"], dtype=images.dtype, device=images.device)[None, :, None, None]
    reading.clear()
    try:
        model((images - mean) / std)
    except StopForward:
        pass
    if "out" not in reading or not isinstance(reading["out"], torch.Tensor):
        raise ValueError(f"layer {s['layer']!r} was not called on the model's forward pass, or gave no tensor")
    return reading["out"]


def _units(model, module, s: dict) -> list[int]:
    """The unit ids to visualise, each checked against what the layer (or basis) offers."""
    with _reading(module) as reading, torch.no_grad():
        grey = torch.full((1, 3, s["size"], s["size"]), 0.5, device=model_device(model))
        out = _layer_output(model, reading, grey, s)
    objectives.check_shape(out, s["objective"], s["layer"])
    count = objectives.num_units(out, s["objective"], s["basis"])
    if count is None:
        return [0]
    if s["units"] is None:
        return list(range(count))
    what = "features in its basis" if s["basis"] is not None else "classes" if s["objective"] == "class" else "units"
    for i, u in enumerate(s["units"]):
        if u >= count:
            raise ValueError(f"units[{i}] = {u} is out of range: layer {s['layer']!r} has {count} {what} "
                             f"(0..{count - 1})")
    return s["units"]


def image_seed(seed: int, unit: int, index: int) -> int:
    """The seed of one image's initial parameters: a hash of (seed, unit, image index)."""
    text = f"fastdissect.visualize:{seed}:{unit}:{index}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def _initial(units: list[int], s: dict, device) -> torch.Tensor:
    n = s["images_per_unit"]
    start = [params.initial(s["param"], s["size"], torch.Generator().manual_seed(image_seed(s["seed"], u, j)))
             for u in units for j in range(n)]
    return torch.stack(start).to(device).requires_grad_(True)


def _optimise(model, module, units: list[int], s: dict, bar) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, S, S, 3) uint8 images, (B, steps) float64 traces and (B,) float64 final values of the
    `units`' images (each repeated images_per_unit times), optimised together."""
    device = model_device(model)
    p = _initial(units, s, device)
    index = torch.tensor(units, device=device).repeat_interleave(s["images_per_unit"])
    optimizer = torch.optim.Adam([p], lr=s["lr"])
    draws = torch.Generator().manual_seed(s["seed"])  # the same draws for every batch
    trace = torch.empty(len(index), s["steps"], dtype=torch.float64)
    with _reading(module) as reading:
        for t in range(s["steps"]):
            image = transforming.apply(s["transforms"], params.to_rgb(p, s["param"], s["size"], s["decorrelate"]), draws)
            out = _layer_output(model, reading, image, s)
            values = objectives.values(out, index, s["objective"], s["basis"])
            loss = -values.sum()
            if s["diversity"] > 0:
                loss = loss + s["diversity"] * objectives.diversity(out, s["images_per_unit"])
            (p.grad,) = torch.autograd.grad(loss, [p])
            optimizer.step()
            trace[:, t] = values.detach().to(torch.float64).cpu()
            bar.update(1)
        with torch.no_grad():
            images = params.to_uint8(params.to_rgb(p, s["param"], s["size"], s["decorrelate"]))
            out = _layer_output(model, reading, images.permute(0, 3, 1, 2).to(torch.float32) / 255.0, s)
            final = objectives.values(out, index, s["objective"], s["basis"]).to(torch.float64).cpu()
    return images.cpu(), trace, final


def _run(model, module, units: list[int], s: dict) -> Visualization:
    from tqdm.auto import tqdm

    n = s["images_per_unit"]
    per_batch = max(1, s["batch_size"] // n)
    batches = [units[i:i + per_batch] for i in range(0, len(units), per_batch)]
    parts = []
    with tqdm(total=len(batches) * s["steps"], desc=f"visualize {s['layer']}", unit="step",
              disable=not s["verbose"]) as bar:
        for batch in batches:
            parts.append(_optimise(model, module, batch, s, bar))
    images, traces, values = (torch.cat([part[i] for part in parts]) for i in range(3))
    size = s["size"]
    return Visualization(s["layer"], s["objective"], units, images.reshape(len(units), n, size, size, 3).numpy(),
                         traces.reshape(len(units), n, -1).numpy(), values.reshape(len(units), n).numpy(),
                         _recorded(s))


def _recorded(s: dict) -> dict:
    """The settings a Visualization keeps (JSON-able)."""
    basis = s["basis"]
    return {"steps": s["steps"], "size": s["size"], "param": s["param"], "decorrelate": s["decorrelate"],
            "transforms": transforming.names(s["transforms"]), "lr": s["lr"], "seed": s["seed"],
            "batch_size": s["batch_size"], "diversity": s["diversity"], "images_per_unit": s["images_per_unit"],
            "basis": basis.fingerprint() if basis is not None else None, "mean": list(s["mean"]),
            "std": list(s["std"]), "model": model_identity(s["model"])}
