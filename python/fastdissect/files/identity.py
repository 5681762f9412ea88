"""What a dissection's numbers depend on, recorded once: its identity.

A checkpoint resumes only a run of the same identity, and results carry it (`Dissection.identity`,
the report's header). The identity covers the model (architecture and a hash of every parameter
and buffer), the layers and their transforms, the data set (its content fingerprint), the input
(image size, mean, std, float16 cache) and the measurement (quantile, method, union, top_k). It
leaves out what never changes a number: batch size, workers, device, backend.

>>> import torch, fastdissect as fd
>>> a = fd.identity.model_identity(torch.nn.Linear(2, 2))
>>> sorted(a), a["architecture"]
(['architecture', 'parameters', 'structure'], 'torch.nn.modules.linear.Linear')
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

VERSION = 2  # of the identity's layout: checkpoints of another version are refused


def _digest() -> "hashlib._Hash":
    return hashlib.blake2b(digest_size=16)


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The tensor's dtype, shape and raw bytes (any dtype, bfloat16 included)."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return f"{t.dtype}{tuple(t.shape)}".encode() + t.view(torch.uint8).numpy().tobytes()


def state_hash(module: torch.nn.Module) -> str:
    """Hash of every parameter and buffer, by name (computed once per run: about 1 s per GB)."""
    h = _digest()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode() + b"\0")
        h.update(tensor_bytes(t) if isinstance(t, torch.Tensor) else repr(t).encode())
    return h.hexdigest()


def model_identity(model: torch.nn.Module) -> dict:
    cls = type(model)
    return {"architecture": f"{cls.__module__}.{cls.__qualname__}",
            "structure": hashlib.blake2b(repr(model).encode(), digest_size=8).hexdigest(),
            "parameters": state_hash(model)}


def transform_identity(transform) -> str | None:
    """A stable description of a layer transform: its own `fingerprint()` when it has one, a
    module's class and state, a tensor's bytes, or a function's code and captured values."""
    if transform is None:
        return None
    if hasattr(transform, "fingerprint"):
        return str(transform.fingerprint())
    h = _digest()
    if isinstance(transform, torch.Tensor):
        h.update(tensor_bytes(transform))
        return f"tensor:{h.hexdigest()}"
    if isinstance(transform, torch.nn.Module):
        return f"{type(transform).__qualname__}:{state_hash(transform)}"
    func = getattr(transform, "__func__", transform)
    code = getattr(func, "__code__", None)
    if code is None:
        return f"{type(transform).__qualname__}:{transform!r}"
    h.update(code.co_code + repr(code.co_consts).encode())
    cells = [c.cell_contents for c in (func.__closure__ or ())]
    defaults = list(func.__defaults__ or ())
    for value in cells + defaults:
        h.update(tensor_bytes(value) if isinstance(value, torch.Tensor) else repr(value).encode())
    return f"{func.__qualname__}:{h.hexdigest()}"


def files_fingerprint(root: Path, names) -> str:
    """Hash of the listed files' `stat_stamp`s (not their bytes: 63,305 Broden images are stat'ed in
    about a second, read in minutes). Size and mtime alone would miss a same-size rewrite whose mtime
    was set back (os.utime, rsync -t, tar -x); the ctime and inode catch it, at the price of a new
    fingerprint after a copy, a restore or a chmod."""
    h = _digest()
    base = os.fspath(root)
    for name in names:
        stamp = stat_stamp(os.path.join(base, name))  # not pathlib: a Broden has 10^5 files
        h.update(f"{name}\0{'missing' if stamp is None else stamp}\n".encode())
    return h.hexdigest()


def stat_stamp(path) -> tuple | None:
    """A file's size, inode, mtime and ctime (None if it is missing): every write changes the ctime,
    which no program can set back, so an unchanged stamp means unchanged bytes."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns


def kept_while_unchanged(memo: dict, key, paths, compute):
    """compute(), kept in memo[key] for the process and returned again while every file of `paths`
    keeps its `stat_stamp` (none missing); a result whose files changed while it was computed is
    returned but not kept."""
    stamps = [stat_stamp(p) for p in paths]
    hit = memo.get(key)
    if hit is not None and hit[0] == stamps and None not in stamps:
        return hit[1]
    value = compute()
    if [stat_stamp(p) for p in paths] == stamps:
        memo[key] = (stamps, value)
    return value


_HASHED: dict = {}  # path -> (stamps, hash): a file is read again only after it changed


def file_hash(path: Path) -> str:
    """The file's BLAKE2b digest (kept for the process while its `stat_stamp` is the same)."""
    def digest() -> str:
        h = _digest()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    return kept_while_unchanged(_HASHED, os.fspath(path), [path], digest)


def broden_fingerprint(root: Path, csv_names, data_files) -> dict:
    """A Broden-layout directory: the bytes of its CSV files, the stat stamps (size, inode, mtime,
    ctime) of the image and label files its index lists."""
    root = Path(root)
    return {"root": str(root.resolve()),
            "csv": {name: file_hash(root / name) for name in csv_names if (root / name).is_file()},
            "files": files_fingerprint(root / "images", data_files)}


def samples_fingerprint(dataset) -> str:
    """Content hash of a data set held in memory: every image, label plane and image-level label."""
    h = _digest()
    for i in range(len(dataset)):
        s = dataset[i]
        for part in (s.image, s.labels, np.asarray(s.image_labels, dtype=np.int64)):
            a = np.ascontiguousarray(part)
            h.update(f"{a.dtype}{a.shape}".encode() + a.tobytes())
    return h.hexdigest()


def dataset_identity(dataset) -> dict:
    """The data set's own `fingerprint()`, or (for a data set without one) its class, size and
    concepts, with content "unknown": a changed content of such a data set is not detected."""
    base = {"kind": f"{type(dataset).__module__}.{type(dataset).__qualname__}", "images": len(dataset),
            "concepts": hashlib.blake2b("\0".join(map(str, dataset.concept_names)).encode(),
                                        digest_size=8).hexdigest()}
    if hasattr(dataset, "fingerprint"):
        return {**base, **dataset.fingerprint()}
    return {**base, "content": "unknown"}


def dissection_identity(model, layers, dataset, opts) -> dict:
    """Everything that changes a number of `fd.dissect(model, layers, dataset, **opts)`."""
    transform = opts.get("transform") or {}
    views = {name: [module, transform_identity(view)] for name, (module, view) in (opts.get("views") or {}).items()
             if view is not None}
    size = opts.get("image_size")
    return {"version": VERSION,
            "model": model_identity(model),
            "layers": list(layers),
            "transforms": {name: transform_identity(transform.get(name)) for name in dict.fromkeys([*layers, *transform])},
            **({"views": views} if views else {}),
            "dataset": dataset_identity(dataset),
            "image_size": list(size) if size is not None else "as stored",
            "mean": [float(v) for v in opts["mean"]], "std": [float(v) for v in opts["std"]],
            "float16_cache": opts.get("cache") is not None,
            "quantile": float(opts["quantile"]), "method": opts["method"], "union": opts["union"],
            "top_k": int(opts["top_k"]), "formulas": opts.get("formulas"),
            "controls": list(opts.get("controls") or ()), "control_seed": opts.get("control_seed"),
            "stop_early": bool(opts.get("stop_early", False)),
            # only when set: a dissection of every layer keeps the identity it had before these options
            **{key: list(opts[key]) for key in ("formula_layers", "control_layers") if opts.get(key) is not None}}


def flatten(d, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def differences(recorded: dict, current: dict) -> list[str]:
    """'key: recorded ... , this run ...' for every entry that differs (nested keys dotted)."""
    a, b = flatten(recorded), flatten(current)
    lines = []
    for key in sorted(set(a) | set(b), key=lambda k: (k.count("."), k)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            lines.append(f"{key}: {_short(a.get(key, '<absent>'))} in the checkpoint, {_short(b.get(key, '<absent>'))} "
                         "in this run")
    return lines


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(identity: dict) -> dict:
    """The identity as short lines for people (the report's header, `fastdissect` output)."""
    if not identity:
        return {}
    model, data = identity.get("model", {}), identity.get("dataset", {})
    size = identity.get("image_size")
    return {"model": model.get("architecture", "?"),
            "weights": str(model.get("parameters", "?"))[:12],
            "dataset": data.get("root") or data.get("kind", "?"),
            "images": data.get("images", "?"),
            "image size": "x".join(map(str, size)) if isinstance(size, list) else str(size),
            "quantile": identity.get("quantile"), "union": identity.get("union"),
            "layers": ", ".join(identity.get("layers", []))}
