"""What every data-set reader checks before it trusts a file: `DatasetError` (the message names the
file, the row or line), the pixel limit (`MAX_PIXELS`: a header's size is checked before anything is
decoded), images and label PNGs decoded with that check, UTF-8 text and CSV, and paths kept inside
the data set's directory.
"""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path

import numpy as np

# Most pixels a file may have before it is decoded (8192 x 8192: above any camera's photograph, 1,300
# times Broden's 227 x 227; a label plane this size is 512 MB as int64). Below Pillow's own
# warning (89,478,485 pixels), so a header claiming 40,000 x 40,000 is refused here, by file and row.
MAX_PIXELS = 1 << 26


class DatasetError(ValueError):
    """A concept data set on disk is missing, malformed or inconsistent (the message names the file).

    A DataLoader worker's DatasetError reaches the main process re-created from torch's text
    "Caught DatasetError in DataLoader worker process N.\nOriginal Traceback ...\n<module>.DatasetError:
    <message>": the message is the worker's again and torch's text is kept as `worker_traceback`."""

    # The name it has always had in tracebacks and in torch's worker text, where callers match it;
    # fastdissect.datasets.broden hands it on, so the name still resolves.
    __module__ = "fastdissect.datasets.broden"

    def __init__(self, message="", *args):
        message, self.worker_traceback = _unwrap_worker(type(self), message)
        super().__init__(message, *args)
        if self.worker_traceback:
            self.add_note(self.worker_traceback)  # a traceback printed in full still shows the worker's


def _unwrap_worker(cls, message) -> tuple:
    """(the worker's message, torch's whole text) of a message torch.utils.data re-raised, else (message, None)."""
    marker = f"\n{cls.__module__}.{cls.__qualname__}: "
    if not (isinstance(message, str) and message.startswith(f"Caught {cls.__name__} ") and marker in message):
        return message, None
    return message.rsplit(marker, 1)[1].rstrip("\n"), message


def check_max_pixels(max_pixels) -> int | None:
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive int or None (no limit), got {max_pixels!r}")
    return max_pixels


def check_pixels(height: int, width: int, where: str, what: str, max_pixels: int | None) -> None:
    """Refuses a file whose header (or index.csv) claims more than max_pixels pixels, before any decoding:
    a few bytes can claim 40,000 x 40,000 pixels and inflate to gigabytes."""
    if max_pixels is not None and height * width > max_pixels:
        raise DatasetError(f"{where}: {what} is {height}x{width} = {height * width:,} pixels, more than "
                           f"max_pixels={max_pixels:,}; refused before decoding (a damaged header or a "
                           "decompression bomb?); pass a larger max_pixels= to read it")


def decode_image(source, where: str, what: str, convert, *, max_pixels: int | None = MAX_PIXELS):
    """convert(im) of the image at `source` (a path or a seekable file object), its header's size
    checked first; `what` names it in messages ("image a.jpg"). Every failure is a DatasetError."""
    from PIL import Image

    try:
        with contextlib.ExitStack() as stack:
            f = stack.enter_context(open(source, "rb")) if isinstance(source, (str, os.PathLike)) else source
            size = _png_size(f)
            if size is not None:  # before Pillow, whose own limit is larger and would be named instead
                check_pixels(*size, where, what, max_pixels)
            im = stack.enter_context(Image.open(f))  # reads the header only
            check_pixels(im.height, im.width, where, what, max_pixels)
            return convert(im)
    except DatasetError:
        raise
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{where}: {what} is refused before decoding: {exc} (Pillow's limit, "
                           "PIL.Image.MAX_IMAGE_PIXELS)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DatasetError(f"{where}: cannot decode {what} ({exc})") from None


def _png_size(f) -> tuple[int, int] | None:
    """(h, w) from a PNG's IHDR (None for another kind of file), the file's position left as it was."""
    from .label_png import png_size

    start = f.tell()
    head = f.read(24)
    f.seek(start)
    return png_size(head)


def read_text(path: Path) -> str:
    """A UTF-8 text file (a BOM allowed); a missing file or another encoding is named by file and line."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DatasetError(f"{path}, line {line}: not UTF-8 text (byte {data[exc.start]:#04x}); save the file as "
                           "UTF-8") from None


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(read_text(path).splitlines()))
    if not rows:
        raise DatasetError(f"{path}: empty file (expected a header row)")
    return rows[0], rows[1:]


def decode_label_png(path: Path, where: str, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """(h, w) int64 label numbers R + 256 * G (decoded in int64: uint8 arithmetic would wrap).
    Broden's own kind of PNG (8-bit RGB/RGBA) is read by label_png, anything else by Pillow; either
    way the header's size is checked against max_pixels before anything is inflated."""
    import io

    from .label_png import LabelPngError, decode, png_size

    what = f"label file {path}"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise DatasetError(f"{where}: {what} not found") from None
    size = png_size(data)
    if size is not None:
        check_pixels(*size, where, what, max_pixels)
    try:
        labels = decode(data)
    except (LabelPngError, ValueError, OSError) as exc:
        raise DatasetError(f"{where}: cannot decode {what} ({exc})") from None
    if labels is not None:
        return labels

    def rgb(im):
        if im.format != "PNG":  # a lossy format would turn its pixels into made-up label numbers
            raise DatasetError(f"{where}: {what} is a {im.format or 'non-PNG'} image, not a PNG label image "
                               "(labels are R + 256 * G, stored losslessly)")
        return np.asarray(im.convert("RGB"))

    pixels = decode_image(io.BytesIO(data), where, what, rgb, max_pixels=max_pixels)
    return pixels[..., 0].astype(np.int64) + 256 * pixels[..., 1].astype(np.int64)


def load_image(path: Path, where: str, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{where}: image file {path} not found")
    return decode_image(path, where, f"image {path}", lambda im: np.asarray(im.convert("RGB")),
                        max_pixels=max_pixels)


def check_inside(directory: Path, name: str, where: str, *, follow_symlinks: bool = False,
                 what: str = "the data set's images/ directory") -> None:
    """A path a data set's file lists must name a file under `directory`: no absolute path, no '..' out
    of it, and (unless follow_symlinks) no symlink that leads out. Checked before anything is opened."""
    base = Path(directory).resolve()
    target = Path(name)
    if not name or target.is_absolute():
        raise DatasetError(f"{where}: {name!r} is not a path inside {what}")
    lexical = Path(os.path.normpath(base / target))
    if not lexical.is_relative_to(base):
        raise DatasetError(f"{where}: {name!r} is outside {what} ({base}); paths must stay inside it")
    if not follow_symlinks and not (base / target).resolve().is_relative_to(base):
        raise DatasetError(f"{where}: {name!r} leads out of {what} ({base}); pass follow_symlinks=True to allow "
                           "symlinks out")

