"""Exclusive use of an output or checkpoint directory by one run.

The lock is an `flock` on `DIR/.fastdissect.lock`: the kernel releases it when its holder exits,
however it exits (kill -9 included), so a stale lock never blocks a later run. The file records the
holder (pid, host, start time, command) for the message a second run gets. Within one process the
lock is re-entrant: the CLI holds its output directory for the whole run, and the saves inside it
take the same lock again.

Taking the lock also removes the hidden temporaries killed runs left in the directory
(`atomic.remove_stale_temporaries`): results, checkpoints and --out directories are all written
under it, so this one place keeps them all clean.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from .atomic import make_dirs, remove_stale_temporaries

LOCK_NAME = ".fastdissect.lock"
_held: dict[str, list] = {}  # resolved directory -> [open lock file, depth]


class DirectoryBusy(RuntimeError):
    """Another run holds the directory (the message names it)."""


def holder(directory, name: str = LOCK_NAME) -> dict | None:
    try:
        return json.loads((Path(directory) / name).read_text() or "null")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def locked(directory, what: str = "directory", name: str | None = None) -> Iterator[Path]:
    """Holds `directory` (created if needed) for the block; DirectoryBusy if another process does.
    name: the lock file (default LOCK_NAME; distributed ranks each hold their own)."""
    directory = make_dirs(directory)
    name = name or LOCK_NAME
    key = str((directory / name).resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield directory
        finally:
            _held[key][1] -= 1
        return
    f = open(directory / name, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        info = holder(directory, name) or {}
        f.close()
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"])) if "started" in info else "?"
        raise DirectoryBusy(f"{directory} is in use by another fastdissect run (pid {info.get('pid', '?')} on "
                            f"{info.get('host', '?')}, since {since}: {info.get('command', '?')}); wait for it, "
                            f"or choose another {what}") from None
    f.seek(0)
    f.truncate()
    json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
               "command": " ".join(sys.argv)[:200]}, f)
    f.flush()
    _held[key] = [f, 1]
    try:
        # A rank's own lock (name given) leaves the other ranks writing beside it: their temporary
        # directories, which carry no pid, are only removed under the directory's one lock.
        remove_stale_temporaries(directory, owned=name == LOCK_NAME)
        yield directory
    finally:
        if _held[key][1] == 1:
            del _held[key]
            f.close()  # releases the flock
        else:
            _held[key][1] -= 1
