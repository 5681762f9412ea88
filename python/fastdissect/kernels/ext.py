"""Loads the compiled kernels once, with an error that says how to get them."""

from __future__ import annotations

_C = None
_IMPORT_ERROR: Exception | None = None

try:  # pragma: no branch
    from .. import _C  # type: ignore[attr-defined,no-redef]
except ImportError as exc:  # the package can still run its torch backend
    _IMPORT_ERROR = exc


def available() -> bool:
    return _C is not None


def import_error() -> Exception | None:
    """Why the extension did not load (None when it did)."""
    return _IMPORT_ERROR


def extension():
    """The `_C` module, or a RuntimeError explaining that the package was not built."""
    if _C is None:
        raise RuntimeError(
            "fastdissect's compiled extension is not available "
            f"({_IMPORT_ERROR}); reinstall with `pip install .` from a source checkout, "
            'or use backend="torch"'
        )
    return _C


def build_info() -> dict:
    """What the extension was built with.

    >>> import fastdissect as fd
    >>> sorted(fd.build_info())[:3]
    ['build_type', 'compiler', 'cuda']
    """
    if _C is None:
        return {"extension": False, "error": str(_IMPORT_ERROR), "openmp": False, "cuda": False,
                "cuda_architectures": "", "compiler": "", "build_type": ""}
    info = dict(_C.build_info())
    info["extension"] = True
    return info
