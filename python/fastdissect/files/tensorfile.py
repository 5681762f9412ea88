"""Files that carry tensors and plain data and nothing that can run when read.

Every file fastdissect writes for itself to read back (results, checkpoints, kept maps, models it
trains) is a safetensors file: an 8-byte little-endian header length, a JSON header that lists each
tensor's dtype, shape and byte range, then the raw bytes. What is not a tensor (numbers, strings,
lists, dicts, dtypes) travels as one JSON text in the header's ``__metadata__``, with each tensor
replaced by a reference to its entry. Reading parses JSON and copies bytes: unlike a pickle, no
content of the file is ever called, so a file from anyone is as safe to load as a CSV.

A checksum over the tree and the tensor bytes is stored beside them: a damaged file is refused, not
read as wrong numbers. (It is no signature: whoever writes a file can recompute it. Safety comes
from the format, integrity from the checksum.)

>>> import torch
>>> tree = {"layer": {"iou": torch.tensor([0.5, 0.25]), "names": ["sky", "tree"]}, "dtype": torch.float16}
>>> back = loads(dumps(tree, kind="example"), kind="example", where="memory")
>>> back["layer"]["iou"].tolist(), back["layer"]["names"], back["dtype"]
([0.5, 0.25], ['sky', 'tree'], torch.float16)
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import torch

# safetensors' dtype names; nothing else is read or written.
DTYPES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
          torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
          torch.float64: "F64"}
BY_NAME = {v: k for k, v in DTYPES.items()}
TORCH_DTYPES = {str(d).removeprefix("torch."): d for d in DTYPES}  # dtypes held as values ("float16")
SUFFIX = ".safetensors"
MAX_HEADER = 1 << 28  # 256 MB of JSON: far above any header fastdissect writes, far below a memory bomb


class UnsafeFileError(ValueError):
    """A file that is not a fastdissect tensor file of the expected kind, or is damaged."""


def dumps(tree, *, kind: str) -> bytes:
    """`tree` (dicts with str keys, lists, tuples as lists, str, int, float, bool, None, torch dtypes and
    CPU or device tensors) as a safetensors file whose metadata names its `kind`."""
    tensors: dict[str, torch.Tensor] = {}
    text = json.dumps(_encode(tree, "", tensors), separators=(",", ":"), allow_nan=True)
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = _tensor_bytes(t)
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    body = b"".join(blobs)
    header["__metadata__"] = {"format": "fastdissect", "kind": kind, "tree": text,
                              "blake2b": _checksum(kind, text, body)}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the byte buffer to 8
    return struct.pack("<Q", len(raw)) + raw + body


def loads(data: bytes, *, kind: str, where) -> object:
    """The tree `dumps` wrote, from a file of this `kind`; `where` names the file in every error."""
    header, body = _split(data, where)
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != "fastdissect" or not isinstance(meta.get("tree"), str):
        raise UnsafeFileError(f"{where}: a safetensors file, but not one fastdissect wrote")
    if meta.get("kind") != kind:
        raise UnsafeFileError(f"{where}: holds a fastdissect {meta.get('kind')!r}, not a {kind!r}")
    if meta.get("blake2b") != _checksum(kind, meta["tree"], body):
        raise UnsafeFileError(f"{where}: the file is damaged (its checksum does not match)")
    tensors = {name: _tensor(name, entry, body, where) for name, entry in header.items()}
    try:
        tree = json.loads(meta["tree"])
    except ValueError as exc:
        raise UnsafeFileError(f"{where}: damaged metadata ({exc})") from None
    return _decode(tree, tensors, where)


def read(path, *, kind: str):
    path = Path(path)
    return loads(path.read_bytes(), kind=kind, where=path)


def read_tensors(path) -> dict[str, torch.Tensor]:
    """Every tensor of any safetensors file (model weights from elsewhere), its metadata ignored."""
    path = Path(path)
    header, body = _split(path.read_bytes(), path)
    header.pop("__metadata__", None)
    return {name: _tensor(name, entry, body, path) for name, entry in header.items()}


def as_stored(tree):
    """`tree` as a file gives it back (tuples become lists): compare a live value with a stored one."""
    tensors: dict = {}
    return _decode(json.loads(json.dumps(_encode(tree, "", tensors))), tensors, "memory")


def check_fields(d, where, *, required=(), optional=(), tensors=(), optional_tensors=()) -> dict:
    """`d` after checking that it is a dict with every `required` key and no key but these and the
    `optional` ones, with tensors where `tensors` (and `optional_tensors`, or None) say: what a file
    holds beyond the fields its reader knows is refused, not ignored."""
    if not isinstance(d, dict):
        raise UnsafeFileError(f"{where}: expected a mapping of fields, found a {type(d).__name__}")
    missing = [k for k in required if k not in d]
    unknown = sorted(set(d) - set(required) - set(optional))
    if missing or unknown:
        raise UnsafeFileError(f"{where}: " + "; ".join(
            ([f"missing field(s) {', '.join(missing)}"] if missing else [])
            + ([f"unknown field(s) {', '.join(unknown)}"] if unknown else []))
            + ": not a file this version of fastdissect wrote")
    for k in (*tensors, *optional_tensors):
        if k in d and not isinstance(d[k], torch.Tensor) and not (k in optional_tensors and d[k] is None):
            raise UnsafeFileError(f"{where}: field {k} must be a tensor, found a {type(d[k]).__name__}")
    return d


def _encode(x, path: str, tensors: dict):
    if isinstance(x, torch.Tensor):
        name = path or "tensor"
        while name in tensors:  # two paths may spell one name ("a/b" as a key): keep both
            name += "'"
        if x.dtype not in DTYPES:
            raise TypeError(f"{path}: tensors of dtype {x.dtype} cannot be stored")
        tensors[name] = x
        return {"$tensor": name}
    if isinstance(x, torch.dtype):
        if x not in DTYPES:
            raise TypeError(f"{path}: dtype {x} cannot be stored")
        return {"$dtype": str(x).removeprefix("torch.")}
    if isinstance(x, dict):
        if not all(isinstance(k, str) for k in x):
            raise TypeError(f"{path}: dict keys must be str to be stored, got {sorted(map(repr, x))[:3]}")
        if any(k.startswith("$") for k in x):
            raise TypeError(f"{path}: keys starting with '$' are reserved")
        return {k: _encode(v, f"{path}/{k}" if path else k, tensors) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(x)]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{path}: a {type(x).__name__} cannot be stored (only tensors, numbers, str, lists and dicts)")


def _decode(x, tensors: dict, where):
    if isinstance(x, dict):
        if "$tensor" in x or "$dtype" in x:
            return _reference(x, tensors, where)
        return {k: _decode(v, tensors, where) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v, tensors, where) for v in x]
    return x


def _reference(x: dict, tensors: dict, where):
    if len(x) != 1:
        raise UnsafeFileError(f"{where}: a malformed reference {sorted(x)}")
    if "$dtype" in x:
        if x["$dtype"] not in TORCH_DTYPES:
            raise UnsafeFileError(f"{where}: unknown dtype {x['$dtype']!r}")
        return TORCH_DTYPES[x["$dtype"]]
    name = x["$tensor"]
    if not isinstance(name, str) or name not in tensors:
        raise UnsafeFileError(f"{where}: the metadata names a tensor {name!r} the file does not hold")
    return tensors[name]


def _split(data: bytes, where) -> tuple[dict, memoryview]:
    (n,) = struct.unpack("<Q", data[:8]) if len(data) >= 8 else (len(data),)
    if n > min(MAX_HEADER, len(data) - 8):
        raise UnsafeFileError(f"{where}: truncated, or not a fastdissect file (a header of {n} bytes in a file of "
                              f"{len(data)})")
    try:
        header = json.loads(bytes(data[8:8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise UnsafeFileError(f"{where}: not a fastdissect file (no safetensors header)") from None
    if not isinstance(header, dict):
        raise UnsafeFileError(f"{where}: not a safetensors file (its header is not a JSON object)")
    return header, memoryview(data)[8 + n:]


def _tensor(name: str, entry, body: memoryview, where) -> torch.Tensor:
    try:
        dtype, shape, (begin, end) = BY_NAME[entry["dtype"]], entry["shape"], entry["data_offsets"]
        ok = all(isinstance(s, int) and s >= 0 for s in shape) and 0 <= begin <= end <= len(body)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise UnsafeFileError(f"{where}: tensor {name!r} has a malformed entry {entry!r}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if math.prod(shape) * itemsize != end - begin:
        raise UnsafeFileError(f"{where}: tensor {name!r}: shape {shape} does not match its {end - begin} bytes")
    if begin == end:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(bytearray(body[begin:end]), dtype=torch.uint8)
    if dtype == torch.bool:  # a byte other than 0 or 1 is no valid bool: read it as true
        return (flat != 0).reshape(shape)
    return flat.view(dtype).reshape(shape)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _checksum(kind: str, text: str, body) -> str:
    h = hashlib.blake2b(digest_size=32)
    for part in (kind.encode(), b"\0", text.encode("utf-8"), b"\0"):
        h.update(part)
    h.update(body)
    return h.hexdigest()
