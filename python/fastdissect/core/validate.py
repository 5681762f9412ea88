"""Every check on user input lives here; the C++ kernels trust what passes.

Messages name the argument, what was expected and what was given.
"""

from __future__ import annotations

import numbers
import os
from typing import Mapping, Sequence

import torch

from .codes import BACKENDS, FLOAT_DTYPES, GPU_BACKENDS, UNION_MODES


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. Also a ValueError: these checks raised ValueError before, and
    callers that catch it for any bad option keep working."""


def _shown(v, limit: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:
        import numpy as np

        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
        try:
            t = torch.from_numpy(x)
        except TypeError:  # object, string and other dtypes torch has no counterpart for
            raise TypeError(f"{name} must be a numeric array, got a numpy array of dtype {x.dtype}") from None
    # Neither reaches the kernels: a meta tensor has no values to read (its .item() fails deep inside),
    # and a sparse one has no dense storage they could index.
    if t.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (shape {tuple(t.shape)} but no values): pass a tensor that holds "
                         "data (a model on the meta device computes none: load its weights first)")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {t.layout}: call .to_dense() first")
    return t


def activations(x, name: str = "activations", num_units: int | None = None, check_finite: bool = True) -> torch.Tensor:
    """(N, K, h, w) floating point, non-empty, finite (the GPU backends count NaN/inf on the device
    instead, without a host sync, and report them when results are read)."""
    x = as_tensor(x, name)
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape [N, K, h, w], got {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")
    if num_units is not None and x.shape[1] != num_units:
        raise ValueError(f"{name} must have {num_units} units (dim 1), got shape {tuple(x.shape)}")
    if check_finite:
        finite(x, name)
    return x


# ---- finiteness: the one policy for NaN and inf in activations. The CPU backends check a batch on
# the host before their kernels see it (`finite`, `finite_on_host`); the GPU backends count NaN/inf
# per unit on the device instead, without a host sync, and the counts are reported where results
# are read (`report_non_finite`). Either way the error names the units and says why it is one.

def proving_sum(x: torch.Tensor) -> torch.Tensor:
    """x's sum (float32 for half types), 0-dim on x's device. One sum is much cheaper than an isfinite
    mask: NaN and inf propagate through it, so a finite sum proves every value finite; a non-finite
    one (possibly a mere overflow) calls for the full check."""
    return x.sum(dtype=torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x.sum()


def finite(x: torch.Tensor, name: str) -> None:
    """Rejects NaN and +-inf, naming the units (dim 1) that hold them."""
    if bool(torch.isfinite(proving_sum(x))):
        return
    ok = torch.isfinite(x)
    if bool(ok.all()):
        return
    per_unit = ok.transpose(0, 1).reshape(x.shape[1], -1).all(dim=1)
    kinds = []
    if bool(torch.isnan(x).any()):
        kinds.append("NaN")
    if bool(torch.isinf(x).any()):
        kinds.append("inf")
    raise ValueError(f"{name} contains {' and '.join(kinds)} in unit(s) {_units_shown(~per_unit)}; "
                     "dissection needs finite activations")


def finite_on_host(x: torch.Tensor, name: str, backend: str) -> None:
    """`finite` where the resolved `backend` checks on the host; the GPU backends count on the device."""
    if backend not in GPU_BACKENDS:
        finite(x, name)


def report_non_finite(counts: torch.Tensor | None, name: str = "activations", invalid: str = "these results") -> None:
    """Raises for units whose device-side NaN/inf counter (GPU backends) is non-zero; `invalid` names
    what was computed from them."""
    if counts is None or not bool((counts != 0).any()):
        return
    raise ValueError(f"{name} contained NaN or inf in unit(s) {_units_shown(counts != 0)} (counted on the device); "
                     f"dissection needs finite activations: {invalid} are invalid")


def _units_shown(bad: torch.Tensor) -> str:
    """The units flagged in `bad` (K,) bool, the first ten by id."""
    units = torch.nonzero(bad).flatten().tolist()
    return ", ".join(str(u) for u in units[:10]) + (f", ... ({len(units)} units)" if len(units) > 10 else "")


def thresholds(t, num_units: int) -> torch.Tensor:
    if isinstance(t, (list, tuple)):
        try:
            t = torch.tensor(t)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"thresholds must be {num_units} numbers (one per unit), got {_shown(t)}") from None
    elif isinstance(t, numbers.Number):
        raise TypeError(f"thresholds must hold one value per unit, a ({num_units},) tensor or list, not a single "
                        f"{type(t).__name__}: did you mean thresholds=[{t!r}] * {num_units}?")
    else:
        t = as_tensor(t, "thresholds")
    if not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"thresholds must be a float tensor, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != num_units:
        raise ValueError(f"thresholds must have shape ({num_units},) (one per unit), got {tuple(t.shape)}")
    t = t.detach().to(device="cpu", dtype=torch.float64).contiguous()
    if not bool(torch.isfinite(t).all()):
        bad = torch.nonzero(~torch.isfinite(t)).flatten().tolist()[:10]
        raise ValueError(f"thresholds must be finite, got non-finite values for unit(s) {bad}")
    return t


def union_and_categories(union: str, categories, num_concepts: int):
    """Returns (union, categories as (C,) int64 CPU tensor or None, number of categories)."""
    if union not in UNION_MODES:
        raise ValueError(f"union must be one of {UNION_MODES}, got {union!r}")
    if categories is None:
        if union != "global":
            raise ValueError(f'union="{union}" needs categories: the primary category id of each of the '
                             f"{num_concepts} concepts")
        return union, None, 0
    if isinstance(categories, (list, tuple)):
        categories = torch.tensor(categories)
    categories = as_tensor(categories, "categories")
    if categories.dtype.is_floating_point or categories.dtype == torch.bool:
        raise TypeError(f"categories must be integer category ids, got {categories.dtype}")
    if categories.dim() != 1 or categories.shape[0] != num_concepts:
        raise ValueError(f"categories must have shape ({num_concepts},) (one per concept), "
                         f"got {tuple(categories.shape)}")
    categories = categories.detach().to(device="cpu", dtype=torch.int64).contiguous()
    if num_concepts and int(categories.min()) < 0:
        raise ValueError(f"categories must be >= 0, got {int(categories.min())} "
                         f"for concept {int(categories.argmin())}")
    num_categories = int(categories.max()) + 1 if num_concepts else 1
    return union, categories, num_categories


def backend(name) -> str:
    return choice(name, "backend", BACKENDS)


def union_mode(union) -> str:
    return choice(union, "union", UNION_MODES)


# ---- scalars: each returns the value normalised (numpy scalars become Python ones)

def choice(v, name: str, options: Sequence) -> str:
    # `in` on a tuple compares with ==: an unhashable or array value must not reach it.
    if not isinstance(v, str) or v not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {_shown(v)}")
    return v


def integer(v, name: str, low: int | None = None, high: int | None = None, what: str = "") -> int:
    """An int (numpy ints too, never a bool or a float such as 4.0) in [low, high]."""
    if low == 1 and high is None:
        kind = "a positive int"
    elif low == 0 and high is None:
        kind = "a non-negative int"
    else:
        kind = "an int" + (f" >= {low}" if low is not None else "") + (f" <= {high}" if high is not None else "")
    kind += f" ({what})" if what else ""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be {kind}, got {type(v).__name__} {_shown(v)}")
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{name} must be {kind}, got {v!r}")
    return int(v)


def positive_int(v, name: str) -> int:
    return integer(v, name, low=1)


def optional_positive_int(v, name: str) -> int | None:
    return None if v is None else integer(v, name, low=1)


def number(v, name: str, low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, what: str = "") -> float:
    """A finite real number (not a bool) in the given interval."""
    if low is not None and high is not None:
        bounds = (" in " + ("(" if low_open else "[") + f"{low:g}, {high:g}" + (")" if high_open else "]"))
    elif low is not None:
        bounds = (" > " if low_open else " >= ") + f"{low:g}"
    elif high is not None:
        bounds = (" < " if high_open else " <= ") + f"{high:g}"
    else:
        bounds = ""
    kind = "a number" + bounds + (f" ({what})" if what else "")
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ArgumentTypeError(f"{name} must be {kind}, got {type(v).__name__} {_shown(v)}")
    f = float(v)
    if f != f or f in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be {kind}, got {f!r}: NaN and inf are not allowed")
    if low is not None and (f <= low if low_open else f < low) or high is not None and (f >= high if high_open
                                                                                          else f > high):
        raise ValueError(f"{name} must be {kind}, got {v!r}")
    return f


def quantile_level(q) -> float:
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not (0.0 < float(q) < 1.0):
        raise ValueError(f"quantile must be a float in (0, 1) (the top fraction kept), got {q!r}")
    return float(q)


def boolean(v, name: str) -> bool:
    # A truthy string ("False") or a number would be taken silently as True.
    import numpy as np

    if not isinstance(v, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be True or False, got {type(v).__name__} {_shown(v)}")
    return bool(v)


def optional_boolean(v, name: str) -> bool | None:
    return None if v is None else boolean(v, name)


def name_string(v, name: str, what: str) -> str:
    if not isinstance(v, str):
        raise ArgumentTypeError(f"{name} must be {what} (a str), got {type(v).__name__} {_shown(v)}")
    return v


def optional_path(v, name: str):
    if v is not None and not isinstance(v, (str, os.PathLike)):
        raise ArgumentTypeError(f"{name} must be a directory (str or os.PathLike) or None, got "
                                f"{type(v).__name__} {_shown(v)}")
    return v


def device(v, name: str = "device") -> torch.device | None:
    if v is None:
        return None
    if not isinstance(v, (str, torch.device)) and not (isinstance(v, numbers.Integral) and not isinstance(v, bool)):
        raise ArgumentTypeError(f"{name} must be a torch device (\"cpu\", \"cuda:0\", torch.device), got "
                                f"{type(v).__name__} {_shown(v)}")
    try:
        return torch.device(v)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name} must be a torch device (\"cpu\", \"cuda:0\", torch.device), got {v!r}") from None


# ---- sequences and mappings

def int_list(v, name: str, low: int = 0, what: str = "unit numbers") -> list[int]:
    """A non-empty sequence of ints >= low (a float would be truncated silently by int())."""
    if isinstance(v, torch.Tensor) or _is_array(v):
        if v.ndim != 1:
            raise ValueError(f"{name} must be a 1-D list of {what}, got shape {tuple(v.shape)}")
        v = v.tolist()
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        raise ArgumentTypeError(f"{name} must be a list of {what}, not a single int: did you mean {name}=[{v}]?")
    if isinstance(v, (str, bytes)) or not isinstance(v, (Sequence, set, frozenset, range)):
        raise ArgumentTypeError(f"{name} must be a list of {what}, got {type(v).__name__} {_shown(v)}")
    items = list(v)
    if not items:
        raise ValueError(f"{name} must hold at least one of the {what}, got an empty {type(v).__name__}")
    return [integer(u, f"{name}[{i}]", low=low) for i, u in enumerate(items)]


def _is_array(v) -> bool:
    import numpy as np

    return isinstance(v, np.ndarray)


def module(v, name: str = "model") -> torch.nn.Module:
    if not isinstance(v, torch.nn.Module):
        hint = " (build it first: fd.pipeline.models.load_model(name) or a torchvision/timm constructor)" \
            if isinstance(v, str) else ""
        raise ArgumentTypeError(f"{name} must be a torch.nn.Module, got {type(v).__name__}{hint}")
    return v


def layer_name(v, name: str = "layer") -> str:
    if isinstance(v, (list, tuple)) and len(v) == 1 and isinstance(v[0], str):
        raise ArgumentTypeError(f"{name} must be one layer name (a str), not a {type(v).__name__}: did you mean "
                                f"{name}={v[0]!r}?")
    return name_string(v, name, "a layer name as model.named_modules() spells it")


def layer_names(v, name: str = "layers") -> list[str]:
    """A list of distinct layer names; a single str would be iterated as its characters."""
    if isinstance(v, str):
        raise ArgumentTypeError(f"{name} must be a list of layer names, not a str: did you mean {name}=[{v!r}]?")
    if isinstance(v, Mapping) or not isinstance(v, (Sequence, set, frozenset)) or isinstance(v, bytes):
        raise ArgumentTypeError(f"{name} must be a list of layer names (as model.named_modules() spells them), "
                                f"got {type(v).__name__} {_shown(v)}")
    out = list(v)
    for i, layer in enumerate(out):
        name_string(layer, f"{name}[{i}]", "a layer name as model.named_modules() spells it")
    twice = sorted({layer for layer in out if out.count(layer) > 1})
    if twice:
        raise ValueError(f"{name} names {twice} more than once: each layer is dissected once")
    return out


def callable_map(v, name: str) -> dict | None:
    """None or {layer name: callable} (transform=)."""
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise ArgumentTypeError(f"{name} must be a dict {{layer name: callable}}, got {type(v).__name__}"
                                + (": did you mean transform={'<layer>': fn}?" if callable(v) else ""))
    for key, fn in v.items():
        name_string(key, f"{name} key {key!r}", "a layer name")
        if not callable(fn):
            raise ArgumentTypeError(f"{name}[{key!r}] must be callable (a function of the layer's output), got "
                                    f"{type(fn).__name__}")
    return dict(v)


def mapping(v, name: str, what: str) -> Mapping | None:
    if v is not None and not isinstance(v, Mapping):
        raise ArgumentTypeError(f"{name} must be a dict {what}, got {type(v).__name__} {_shown(v)}")
    return v


# ---- model input

def image_size(v, name: str = "image_size") -> tuple[int, int] | None:
    """None, (height, width), or one int for a square size (as the CLI's --image-size)."""
    if v is None:
        return None
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        side = integer(v, name, low=1)
        return side, side
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise ArgumentTypeError(f"{name} must be (height, width) or one int for a square size, got "
                                f"{type(v).__name__} {_shown(v)}")
    if len(v) != 2:
        raise ValueError(f"{name} must be (height, width): 2 entries, got {len(v)}: {_shown(v)}")
    return integer(v[0], f"{name}[0] (height)", low=1), integer(v[1], f"{name}[1] (width)", low=1)


RGB_CHANNELS = 3  # every image reader here gives (H, W, 3) RGB, so the model input has 3 channels


def channel_stats(v, name: str, positive: bool = False) -> tuple[float, ...]:
    """The input normalisation (mean or std): one finite number per RGB channel, each > 0 for std."""
    if isinstance(v, torch.Tensor) or _is_array(v):
        v = v.tolist() if v.ndim == 1 else v
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        raise ArgumentTypeError(f"{name} must have {RGB_CHANNELS} entries (one per RGB channel), not a single "
                                f"number: did you mean {name}=({v!r},) * {RGB_CHANNELS}?")
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise ArgumentTypeError(f"{name} must be a sequence of {RGB_CHANNELS} numbers (one per RGB channel), got "
                                f"{type(v).__name__} {_shown(v)}")
    if len(v) != RGB_CHANNELS:
        raise ValueError(f"{name} must have {RGB_CHANNELS} entries (one per RGB channel of the images), got "
                         f"{len(v)}: {_shown(v)}")
    if positive:  # a std of 0 divides by zero: every activation would be inf or NaN
        return tuple(number(x, f"{name}[{i}]", 0.0, low_open=True) for i, x in enumerate(v))
    return tuple(number(x, f"{name}[{i}]") for i, x in enumerate(v))


# ---- data sets

_CONCEPT_ATTRIBUTES = ("num_concepts", "concept_names", "category_names", "primary_category")


def concept_dataset(ds, name: str = "dataset"):
    """A data set the pipeline can read: samples by index, and the concept vocabulary."""
    missing = [a for a in _CONCEPT_ATTRIBUTES if not hasattr(ds, a)]
    if missing or not hasattr(ds, "__len__") or not hasattr(ds, "__getitem__"):
        hint = ""
        if isinstance(ds, (list, tuple)):
            hint = ("; wrap a list of (image, label_map) pairs as fd.datasets.SegmentationDataset(samples, "
                    "concept_names, concept_categories)")
        elif isinstance(ds, (str, os.PathLike)):
            hint = f"; open a Broden directory with fd.datasets.Broden({str(ds)!r})"
        lacks = f" (it has no {', '.join(missing)})" if missing and not hint else ""
        raise ArgumentTypeError(f"{name} must be a concept data set (fd.datasets.Broden, SegmentationDataset, a "
                                "packed store, or an object with __len__, __getitem__, "
                                f"{', '.join(_CONCEPT_ATTRIBUTES)}), got {type(ds).__name__}{lacks}{hint}")
    n = integer(ds.num_concepts, f"{name}.num_concepts", low=1)
    for attr in ("concept_names", "primary_category"):
        if len(getattr(ds, attr)) != n:
            raise ValueError(f"{name}.{attr} has {len(getattr(ds, attr))} entries but {name}.num_concepts is {n}: "
                             "one entry per concept id (id 0 included)")
    if len(ds) == 0:
        raise ValueError(f"{name} is empty (0 images)")
    return ds


def image_dataset(ds, name: str = "dataset"):
    """A data set whose images are read by index: `image(i)`, or samples with an `.image`."""
    if not hasattr(ds, "__len__") or not hasattr(ds, "__getitem__"):
        raise ArgumentTypeError(f"{name} must be a data set of images (fd.datasets.Broden, SegmentationDataset, or "
                                f"samples with an .image), got {type(ds).__name__}")
    if len(ds) == 0:
        raise ValueError(f"{name} is empty (0 images)")
    if not hasattr(ds, "image") and not hasattr(ds[0], "image"):
        hint = ("; wrap (image, label_map) pairs as fd.datasets.SegmentationDataset"
                if isinstance(ds, (list, tuple)) else "")
        raise ArgumentTypeError(f"{name} must have an image(i) method or samples with an .image, got "
                                f"{type(ds).__name__} of {type(ds[0]).__name__}{hint}")
    return ds


def same_images(n_act: int, n_masks: int) -> None:
    if n_act != n_masks:
        raise ValueError(f"activations and masks must hold the same images: activations have N={n_act}, "
                         f"masks have N={n_masks}")


def label_ids(ids: Sequence[int] | torch.Tensor, num_concepts: int, where: str) -> None:
    t = torch.as_tensor(ids)
    if t.numel() == 0:
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= num_concepts:
        bad = lo if lo < 0 else hi
        raise ValueError(f"label id {bad} in {where} is out of range: ids must be in [0, {num_concepts}) "
                         f"(num_concepts={num_concepts}; 0 = unlabeled)")


# ---- analyses of a dissection

def targets(v, name: str = "target"):
    """None, one class id, or one per image; a float class would be truncated silently."""
    if v is None:
        return None
    if isinstance(v, torch.Tensor) or _is_array(v):
        import numpy as np

        integral = (not (v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool)
                    if isinstance(v, torch.Tensor) else np.issubdtype(v.dtype, np.integer))
        if not integral:
            raise ArgumentTypeError(f"{name} must hold integer class ids, got dtype {v.dtype}")
        return v
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return integer(v, name, low=0, what="a class id")
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise ArgumentTypeError(f"{name} must be a class id or one per image, got {type(v).__name__} {_shown(v)}")
    return [integer(t, f"{name}[{i}]", low=0, what="a class id") for i, t in enumerate(v)]
