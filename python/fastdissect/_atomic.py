"""Writing files so that an interruption never leaves a torn one: every output goes to a unique
temporary name in its directory, is flushed to disk, and is renamed over the old file (a rename
within a directory is atomic on POSIX file systems). A full, read-only or forbidden file system is
reported by path and cause, and the previous file is left as it was.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
>>> write_text(p, "one")
>>> with atomic_file(p, "w") as f:
...     _ = f.write("two")
>>> p.read_text(), sorted(x.name for x in p.parent.iterdir())
('two', ['out.txt'])
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

CAUSES = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
          errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


class WriteError(OSError):
    """An output could not be written; the message names the path and the cause."""


def describe(exc: OSError, path: Path) -> WriteError:
    cause = CAUSES.get(exc.errno, exc.strerror or type(exc).__name__)
    return WriteError(exc.errno, f"{cause} while writing {path}")


def temporary_name(path: Path) -> Path:
    """A name no other process or thread will pick, beside `path` (hidden, never loaded as a result)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb", *, durable: bool = True, **open_options) -> Iterator:
    """A file object whose content replaces `path` only when the block ends without an error.
    durable=False skips the fsync: still never torn by a killed process, but a power cut may lose
    the file (for derived files such as the report's pages and images, written by the thousand)."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, **open_options) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise describe(exc, path) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def write_bytes(path, data: bytes, *, durable: bool = True) -> None:
    with atomic_file(path, "wb", durable=durable) as f:
        f.write(data)


def write_text(path, text: str, *, durable: bool = True) -> None:
    write_bytes(path, text.encode("utf-8"), durable=durable)


def torch_bytes(obj) -> bytes:
    """torch.save into memory: a full disk then surfaces as an OSError of the write, not as a torn zip
    archive and torch's "unexpected pos" error."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_figure(fig, path, *, durable: bool = False) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png")
    write_bytes(path, buffer.getvalue(), durable=durable)


def save_image(image, path, *, durable: bool = False, **options) -> None:
    """A PIL image, atomically (format from the suffix); figures and images are derived files."""
    write_bytes(path, image_bytes(image, Path(path).suffix, **options), durable=durable)


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def file_digest(path) -> str:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def directory_in_place(path) -> Iterator[Path]:
    """A new empty directory beside `path` that replaces `path` (and all it held) when the block ends
    without an error; on an error it is removed and `path` is left as it was. Files written into it
    need no rename each (`write_new`): the directory's move publishes them all at once."""
    path = Path(path)
    make_dirs(path.parent)
    try:
        fresh = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise describe(exc, path) from None
    try:
        yield fresh
        replace_directory(fresh, path)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def replace_directory(new: Path, path: Path) -> None:
    """Moves `new` to `path`; an older `path` is moved aside first and removed after."""
    old = None
    try:
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", suffix=".tmp", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(new, path)
    except OSError as exc:
        raise describe(exc, path) from None
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_new(path, data: bytes) -> None:
    """A file inside a `directory_in_place` directory, written directly."""
    try:
        with open(path, "xb") as f:
            f.write(data)
    except OSError as exc:
        raise describe(exc, Path(path)) from None


def image_bytes(image, suffix: str, **options) -> bytes:
    """A PIL image encoded as its suffix says (JPEG or PNG)."""
    buffer = io.BytesIO()
    image.save(buffer, format={".jpg": "JPEG", ".jpeg": "JPEG"}.get(suffix.lower(), "PNG"), **options)
    return buffer.getvalue()


def make_dirs(path) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WriteError(errno.ENOTDIR, f"{path} is a file, not a directory: choose another output directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise describe(exc, path) from None
    return path


def write_csv(path, rows: list[dict], float_format: str | None = "{:.6f}") -> Path:
    """rows (dicts with the same keys) as a CSV with a header; no rows: an empty file."""
    import csv

    with atomic_file(path, "w", newline="", encoding="utf-8") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            fmt = (lambda v: float_format.format(v) if isinstance(v, float) else v) if float_format else (lambda v: v)
            w.writerows({k: fmt(v) for k, v in r.items()} for r in rows)
    return Path(path)
