"""Fetching Broden: resumable, checked, and never half-written at its destination.

The archive is downloaded to `<out>.part` beside the destination (a second call continues it with
an HTTP Range request; a server that ignores ranges restarts it), checked against `sha256` when one
is given, unpacked into a temporary directory, opened with `Broden` and counted (`expected_images`;
every row of its index.csv otherwise), every image and label PNG its index.csv lists present, and
only then renamed to `out`. A complete download that is no readable archive is removed (and the
message says so): it would otherwise be "complete" (HTTP 416) and unreadable on every later call.
Link members (symbolic or hard) are refused by name before anything is unpacked.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from .broden import Broden
from .reading import DatasetError

# NetDissect's official Broden archives (its script/dlbroden.sh) and their sizes in images.
OFFICIAL = {224: "http://netdissect.csail.mit.edu/data/broden1_224.zip",
            227: "http://netdissect.csail.mit.edu/data/broden1_227.zip"}
OFFICIAL_IMAGES = 63305
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The network, the checksum or the archive's contents failed (the message says which)."""


def download_broden(out, *, url: str | None = None, resolution: int = 224, sha256: str | None = None,
                    expected_images: int | None = None, timeout: float = 60.0, verbose: bool = True) -> Path:
    """Downloads and unpacks a Broden archive into the new directory `out`; returns it.

    url: a mirror of the user's (default: the official archive at `resolution` 224 or 227, which must
    hold 63,305 images). expected_images: the number of images to insist on (default: the official
    count for the official archive, else every row of the archive's index.csv)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: choose a new directory for the data set")
    if url is None:
        if resolution not in OFFICIAL:
            raise ValueError(f"resolution must be one of {sorted(OFFICIAL)}, got {resolution}")
        url = OFFICIAL[resolution]
        expected_images = OFFICIAL_IMAGES if expected_images is None else expected_images
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    _fetch(url, part, timeout, verbose)
    if sha256 is not None:
        digest = _sha256(part)
        if digest != sha256.lower():
            part.unlink()
            raise DownloadError(f"{url}: the archive's SHA-256 is {digest}, expected {sha256}; the damaged download "
                                "was removed, run again to fetch it afresh")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        root = _unpack(part, tmp, url)
        _check_contents(root, url, expected_images)
        os.replace(root, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    part.unlink()
    return out


def _check_contents(root: Path, url: str, expected_images: int | None) -> None:
    """A Broden data set of the expected size, holding every file its index.csv lists."""
    try:
        ds = Broden(root)
    except DatasetError as exc:
        raise DownloadError(f"{url}: the archive is not a Broden data set ({exc})") from None
    want = expected_images if expected_images is not None else _index_rows(root)
    if len(ds) != want:
        raise DownloadError(f"{url}: the archive holds {len(ds)} images, expected {want}")
    missing = [name for r in ds.records for name in [r["image"], *r["files"]]
               if not (ds.root / "images" / name).is_file()]
    if missing:
        raise DownloadError(f"{url}: {len(missing)} files index.csv lists (images and label PNGs) are missing "
                            f"from the archive, e.g. {missing[0]}")


def _fetch(url: str, part: Path, timeout: float, verbose: bool) -> None:
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # complete (or longer than the remote file): _unpack verifies it
            return
        raise DownloadError(f"{url}: the server answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"{url}: cannot connect ({getattr(exc, 'reason', exc)}); check the network or pass "
                            "--url with a mirror") from None
    with response:
        resumed = response.status == 206
        if have and not resumed:
            have = 0  # the server ignored the range: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if resumed else "wb") as f, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, desc="downloading Broden",
                     disable=not verbose) as bar:
            try:
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
            except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
                raise DownloadError(f"{url}: the transfer broke off after {f.tell()} bytes ({exc}); run the same "
                                    "command again to resume it") from None
        if total is not None and part.stat().st_size < total:
            raise DownloadError(f"{url}: the transfer broke off at {part.stat().st_size} of {total} bytes; run the "
                                "same command again to resume it")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _unpack(archive: Path, into: Path, url: str) -> Path:
    """Unpacks a zip or tar archive (members must be plain files or directories inside `into`); returns
    the directory that holds index.csv (the archive's top folder, or `into` itself). An archive that
    cannot be read is removed: downloading it again is the remedy."""
    try:
        if _kind(archive, url) == "zip":
            with zipfile.ZipFile(archive) as z:
                _extract(into, url, [(i.filename, not stat.S_ISLNK(i.external_attr >> 16), i) for i in z.infolist()],
                         z.extract)
        else:
            with tarfile.open(archive) as t:
                _extract(into, url, [(m.name, m.isfile() or m.isdir(), m) for m in t.getmembers()],
                         lambda m, to: t.extract(m, to, filter="data"))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise _discarded(archive, url, f"the archive is damaged ({exc})") from None
    candidates = [p.parent for p in into.rglob("index.csv")]
    if not candidates:
        raise DownloadError(f"{url}: the archive holds no index.csv: not a Broden data set")
    return min(candidates, key=lambda p: len(p.parts))


def _kind(archive: Path, url: str) -> str:
    """"zip" or "tar"; a file that begins as one but cannot be opened as one is truncated or damaged."""
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    with open(archive, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):  # a zip's directory is at its end: a cut-off zip has none
        raise _discarded(archive, url, "the download is a zip archive that is truncated or damaged (its central "
                                       "directory, at the end, is missing)")
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar":
        raise _discarded(archive, url, "the download is a tar archive that is truncated or damaged")
    raise _discarded(archive, url, f"the download is neither a zip nor a tar archive (it begins {head[:16]!r})")


def _discarded(archive: Path, url: str, what: str) -> DownloadError:
    archive.unlink(missing_ok=True)
    return DownloadError(f"{url}: {what}; the download {archive} was removed: run the same command again to "
                         "download it afresh")


def _extract(into: Path, url: str, members, extract) -> None:
    """extract(member, into) for each (name, plain, member), once every member was checked: a link
    could lead a later member out of `into` (and zipfile writes a symlink as a file holding its
    target, on which a member beneath it fails with a bare NotADirectoryError)."""
    for name, plain, _ in members:
        if not plain:
            raise DownloadError(f"{url}: the archive's member {name!r} is a link or a special file, not a plain file "
                                "or directory; refused before unpacking anything")
        _check_member(into, name, url)
    for name, _, member in members:
        try:
            extract(member, into)
        except OSError as exc:
            raise DownloadError(f"{url}: cannot unpack the archive's member {name!r} into {into} "
                                f"({exc.strerror or exc})") from None


def _check_member(into: Path, member: str, url: str) -> None:
    target = (into / member).resolve()
    if not target.is_relative_to(into.resolve()):
        raise DownloadError(f"{url}: the archive's member {member!r} would be written outside the destination")


def _index_rows(root: Path) -> int:
    from .reading import read_csv

    return sum(1 for row in read_csv(root / "index.csv")[1] if row)


__all__ = ["DownloadError", "OFFICIAL", "OFFICIAL_IMAGES", "download_broden"]
