"""Label PNGs read without Pillow (datasets/label_png.py + csrc/cpu/png_labels_cpu.cpp) against Pillow
itself: PNGs encoded here with each scanline filter chosen, RGB and RGBA, odd sizes; other kinds go to
Pillow; damaged files are refused with the file named."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fastdissect.datasets import label_png
from fastdissect.datasets.broden import DatasetError, decode_label_png


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def filtered_row(row: np.ndarray, prev: np.ndarray, kind: int, bpp: int) -> bytes:
    """PNG's forward filter of one scanline (spec section 9), as an encoder applies it."""
    x, b = row.astype(np.int64), prev.astype(np.int64)
    a = np.concatenate([np.zeros(bpp, np.int64), x[:-bpp]])
    c = np.concatenate([np.zeros(bpp, np.int64), b[:-bpp]])
    pred = [np.zeros_like(x), a, b, (a + b) // 2, paeth(a, b, c)][kind]
    return bytes([kind]) + ((x - pred) % 256).astype(np.uint8).tobytes()


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png(pixels: np.ndarray, filters) -> bytes:
    """(h, w, 3 or 4) uint8 as a PNG whose row y uses filter filters[y % len(filters)]."""
    h, w, ch = pixels.shape
    rows, prev = [], np.zeros(w * ch, np.uint8)
    for y in range(h):
        row = pixels[y].reshape(-1)
        rows.append(filtered_row(row, prev, filters[y % len(filters)], ch))
        prev = row
    header = struct.pack(">IIBBBBB", w, h, 8, 2 if ch == 3 else 6, 0, 0, 0)
    return label_png.SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows))) + \
        chunk(b"IEND", b"")


def pillow_labels(data: bytes) -> np.ndarray:
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1]


@pytest.mark.parametrize("filters", [[0], [1], [2], [3], [4], [4, 0, 3, 1, 2]])
@pytest.mark.parametrize("shape", [(1, 1, 3), (3, 7, 3), (64, 64, 3), (17, 5, 4), (112, 113, 4)])
def test_every_filter_type_reads_as_pillow_reads_it(rng, filters, shape):
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    pixels[: shape[0] // 2, :, :2] = 255  # saturated runs: filters wrap modulo 256
    data = encode_png(pixels, filters)
    got = label_png.decode(data)
    assert got is not None and got.dtype == np.int64
    np.testing.assert_array_equal(got, pillow_labels(data))


def test_pillows_own_files_and_other_kinds(rng, tmp_path):
    rgb = rng.integers(0, 4, size=(20, 30, 3), dtype=np.uint8) * 60
    for mode, name in [("RGB", "rgb.png"), ("RGBA", "rgba.png"), ("P", "palette.png"), ("L", "grey.png")]:
        image = Image.fromarray(rgb).convert(mode)
        image.save(tmp_path / name)
        data = (tmp_path / name).read_bytes()
        fast = label_png.decode(data)
        assert (fast is None) == (mode in ("P", "L"))  # palette and grey go to Pillow
        np.testing.assert_array_equal(decode_label_png(tmp_path / name, "here"), pillow_labels(data))


def damaged(data: bytes, how: str) -> bytes:
    idat = data.index(b"IDAT")
    if how == "crc":
        return data[:idat + 6] + bytes([data[idat + 6] ^ 1]) + data[idat + 7:]
    if how == "truncated":
        return data[:idat + 10]
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["crc", "truncated", "filter", "size"])
def test_damaged_files_are_refused_naming_the_file(rng, tmp_path, how):
    pixels = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    data = encode_png(pixels, [1])
    if how == "filter":  # a scanline with filter type 5
        raw = bytearray(zlib.decompress(zlib.compress(b"".join(
            filtered_row(pixels[y].reshape(-1), pixels[y - 1].reshape(-1) if y else np.zeros(15, np.uint8), 1, 3)
            for y in range(6)))))
        raw[2 * 16] = 5
        header = struct.pack(">IIBBBBB", 5, 6, 8, 2, 0, 0, 0)
        data = label_png.SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw))) + \
            chunk(b"IEND", b"")
        message = "row 2 has filter type 5"
    elif how == "size":  # IHDR says 6 rows, the data holds 5
        rows = b"".join(bytes([0]) + pixels[y].tobytes() for y in range(5))
        header = struct.pack(">IIBBBBB", 5, 6, 8, 2, 0, 0, 0)
        data = label_png.SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + \
            chunk(b"IEND", b"")
        message = "inflates to 80 bytes, 5x6 needs 96"
    else:
        data = damaged(data, how)
        message = "CRC" if how == "crc" else "truncated"
    path = tmp_path / "label.png"
    path.write_bytes(data)
    with pytest.raises(DatasetError, match=f"index.csv, row 3: cannot decode label file .*label.png.*{message}"):
        decode_label_png(path, "index.csv, row 3")
