"""Broden's label PNGs read without an image library: the chunks parsed here, the image data
inflated by zlib, the scanline filters undone and R + 256 * G read in C++ (csrc/cpu/png_labels_cpu.cpp).

Only what Broden writes takes this path: 8-bit RGB or RGBA, not interlaced. Anything else (palette,
grey, 16-bit, interlaced) returns None and is read by Pillow; either way the labels are the same
(tests/test_label_png.py compares them with Pillow on every filter type).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from ..kernels import dispatch

SIGNATURE = b"\x89PNG\r\n\x1a\n"
RGB, RGBA = 2, 6  # PNG colour types


class LabelPngError(ValueError):
    """A damaged PNG: the message says what is wrong (the caller names the file)."""


def _chunks(data: bytes):
    """(type, payload) of each chunk up to IEND, each checked against its CRC."""
    pos = len(SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise LabelPngError("truncated: the file ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise LabelPngError(f"truncated: chunk {kind.decode('latin-1')!r} runs past the end of the file")
        payload = data[pos + 8:end]
        if zlib.crc32(kind + payload) != struct.unpack(">I", data[end:end + 4])[0]:
            raise LabelPngError(f"chunk {kind.decode('latin-1')!r} fails its CRC check")
        yield kind, payload
        if kind == b"IEND":
            return
        pos = end + 4


def png_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR, which the format puts first (None if `data` starts otherwise):
    read before anything is inflated, so a claimed 40,000 x 40,000 can be refused unread."""
    if data[:len(SIGNATURE)] != SIGNATURE or data[12:16] != b"IHDR" or len(data) < 24:
        return None
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def decode(data: bytes) -> np.ndarray | None:
    """(height, width) int64 labels R + 256 * G of an 8-bit RGB(A) PNG, or None for another kind."""
    if data[:len(SIGNATURE)] != SIGNATURE or not dispatch.has_extension():
        return None
    header, image = None, []
    for n, (kind, payload) in enumerate(_chunks(data)):
        if (kind == b"IHDR") != (n == 0):  # the size was checked from the first chunk (png_size)
            raise LabelPngError("IHDR is not the first chunk, or not the only one")
        if kind == b"IHDR":
            if len(payload) != 13:
                raise LabelPngError(f"IHDR chunk of {len(payload)} bytes, expected 13")
            header = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            image.append(payload)
    width, height, depth, color, compression, filtering, interlace = header
    if depth != 8 or color not in (RGB, RGBA) or interlace or compression or filtering:
        return None
    channels = 3 if color == RGB else 4
    expected = height * (1 + width * channels)
    inflate = zlib.decompressobj()
    try:  # never beyond what the header promises: a small stream may inflate to gigabytes
        raw = inflate.decompress(b"".join(image), expected + 1)
    except zlib.error as exc:
        raise LabelPngError(f"image data does not inflate ({exc})") from None
    if len(raw) > expected:
        raise LabelPngError(f"image data inflates to more than the {expected} bytes {width}x{height} needs")
    if not inflate.eof:
        raise LabelPngError("image data does not inflate (incomplete or truncated stream)")
    if len(raw) != expected:
        raise LabelPngError(f"image data inflates to {len(raw)} bytes, {width}x{height} needs {expected}")
    labels, bad_row = dispatch.png_labels(raw, height, width, channels)
    if bad_row >= 0:
        raise LabelPngError(f"row {bad_row} has filter type {raw[bad_row * (1 + width * channels)]} (PNG has 0-4)")
    return labels
