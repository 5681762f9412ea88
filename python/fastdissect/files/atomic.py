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
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

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


_TEMPORARY_FILE = re.compile(r"\..+\.(\d+)\.[0-9a-f]{8}\.tmp")  # temporary_name's
_TEMPORARY_DIRECTORY = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")  # mkdtemp's in directory_in_place, replace_directory


def is_temporary(name: str) -> bool:
    """Whether `name` is one of the hidden temporaries this module writes before a rename."""
    return bool(_TEMPORARY_FILE.fullmatch(name) or _TEMPORARY_DIRECTORY.fullmatch(name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:  # not a pid this system can have
        return False
    return True


def remove_stale_temporaries(directory, *, owned: bool = False) -> list[Path]:
    """Removes the temporaries a killed process left in `directory` (kill -9 runs no cleanup):
    files of `temporary_name` whose process no longer exists, and, when `owned` (the caller holds
    the directory's lock, so no run is writing there), the mkdtemp directories of
    `directory_in_place` and `replace_directory`, whose names carry no pid. Returns what it removed."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY_FILE.fullmatch(entry.name)
        try:
            if match and not entry.is_dir(follow_symlinks=False):
                if _alive(int(match.group(1))):
                    continue
                os.unlink(entry.path)
            elif owned and _TEMPORARY_DIRECTORY.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                continue
        except OSError:
            continue  # gone already, or not ours to remove: never a reason to fail a run
        removed.append(Path(entry.path))
    return removed


_watchers: list[Callable[[Path], None]] = []


@contextlib.contextmanager
def watching(callback: Callable[[Path], None]) -> Iterator[None]:
    """Calls callback(path) before this module publishes any output `path` (renames a file or a
    directory into place, creates a directory), for the block: whoever must know what was written
    learns it before it exists, so even a killed writer leaves a complete account. An error of
    the callback stops the write."""
    _watchers.append(callback)
    try:
        yield
    finally:
        _watchers.remove(callback)


def announce(path) -> None:
    """Tells the watchers that `path` is about to be written (also for outputs written without
    this module, or kept by a run without being rewritten)."""
    for callback in list(_watchers):
        callback(Path(path))


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
        announce(path)
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
    announce(path)  # before the older one is moved aside: a refusal leaves it in place
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
    if not path.is_dir():
        announce(path)
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
