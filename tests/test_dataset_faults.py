"""Faults of data sets on disk: each is refused by a DatasetError (or DownloadError,
WriteError) naming the file, the row or the annotation, never a bare exception or a silent result."""

import builtins
import errno
import http.server
import io
import json
import os
import stat
import struct
import tarfile
import threading
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastdissect as fd
from fastdissect.files import atomic
from fastdissect.datasets import DatasetError, DownloadError, label_png, mask_cache, packed
from fastdissect.datasets.broden import MAX_PIXELS
from test_datasets import write_fixture, write_label_png
from test_getting_started import zipped


@pytest.fixture
def root(tmp_path, rng):
    """A Broden-layout set of 5 images (12x12, labels 6x6; image i is on row i + 2 of index.csv)."""
    write_fixture(tmp_path / "broden", rng)
    return tmp_path / "broden"


def append_line(path: Path, line: str) -> None:
    path.write_text(path.read_text() + line + "\n")


def png_header(width: int, height: int, idat: bytes = b"") -> bytes:
    """An 8-bit RGB PNG whose IHDR claims width x height, with `idat` as its (tiny) image data."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return label_png.SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat or zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


# ---- 1-3: index.csv and category.csv

def test_an_image_listed_twice_in_index_csv_names_both_rows(root):
    rows = (root / "index.csv").read_text().splitlines()
    append_line(root / "index.csv", rows[2].replace("train", "val"))  # im1, again, in another split
    with pytest.raises(DatasetError, match=r"index.csv: image 'im1.png' is listed twice, rows 3 and 7"):
        fd.datasets.Broden(root)


def test_a_category_listed_twice_in_category_csv_names_both_rows(root):
    listed = (root / "category.csv").read_text()
    append_line(root / "category.csv", "object,0,0,0,0")
    with pytest.raises(DatasetError, match=r"category.csv: category 'object' is listed twice, rows 3 and 8"):
        fd.datasets.Broden(root)
    (root / "category.csv").write_text(listed)
    with pytest.raises(ValueError, match="categories lists a category twice"):
        fd.datasets.Broden(root, categories=["part", "part"])


def test_a_category_without_its_c_csv_names_the_file_and_row(root):
    (root / "c_part.csv").unlink()
    with pytest.raises(DatasetError, match=r"category.csv, row 4: category 'part' has no .*c_part.csv \(file not found"):
        fd.datasets.Broden(root)


# ---- 4: a rewrite that keeps the size and sets the mtime back

def test_a_same_size_rewrite_with_its_mtime_restored_changes_the_fingerprint_and_repacks(root, tmp_path):
    label = root / "images" / "im0_color.png"
    Image.fromarray(np.full((6, 6, 3), (1, 0, 0), np.uint8)).save(label, compress_level=0)
    before = fd.datasets.Broden(root)
    store = mask_cache.broden_store(before, tmp_path / "cache", verbose=False)
    assert "red" in store.concepts_of(0)
    st = os.stat(label)
    time.sleep(0.01)  # past the file system's clock tick: the rewrite gets a later ctime
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(label, compress_level=0)  # stored: same size
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(label).st_size, os.stat(label).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    after = fd.datasets.Broden(root)
    assert after.fingerprint() != before.fingerprint()  # which also keeps a checkpoint from resuming
    store = mask_cache.broden_store(after, tmp_path / "cache", verbose=False)
    assert "red" not in store.concepts_of(0) and store.concepts_of(0) == after.concepts_of(0)


# ---- 5: a full disk while the mask cache is written

class FullDisk:
    """A file on a full disk: every write fails as the kernel's would."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self):
        self.f.close()


def test_a_full_disk_while_packing_the_mask_cache_names_the_path(root, tmp_path, monkeypatch):
    monkeypatch.setattr(packed, "open", lambda path, mode="r", *a, **k: FullDisk(builtins.open(path, mode, *a, **k)),
                        raising=False)
    cache = tmp_path / "cache"
    with pytest.raises(atomic.WriteError, match=rf"no space left on device while writing {cache}/masks/.*\.i64"):
        mask_cache.broden_store(fd.datasets.Broden(root), cache, verbose=False)
    assert not list((cache / "masks").iterdir())  # no half store left behind
    with pytest.raises(atomic.WriteError, match=rf"no space left on device while writing {tmp_path}/store/"):
        fd.datasets.pack(fd.datasets.Broden(root), tmp_path / "store", verbose=False)


# ---- 6: decompression bombs

def test_a_label_png_claiming_40000_squared_is_refused_from_its_header(root, monkeypatch):
    bomb = png_header(40000, 40000)
    (root / "images" / "im1_object.png").write_bytes(bomb)
    inflated = []
    monkeypatch.setattr(label_png, "decode", lambda data: inflated.append(data))
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=r"index.csv, row 3: label file .*im1_object.png is 40000x40000 = "
                                               r"1,600,000,000 pixels, more than max_pixels=67,108,864"):
            fd.datasets.Broden(root).labels(1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert bomb not in inflated and peak < 10 << 20


def test_an_image_claiming_40000_squared_names_its_file_and_row(root):
    (root / "images" / "im1.png").write_bytes(png_header(40000, 40000))
    with pytest.raises(DatasetError, match=r"index.csv, row 3: image .*im1.png is 40000x40000 .* more than max_pixels"):
        fd.datasets.Broden(root).image(1)
    Image.new("RGB", (40000, 5000)).save(root / "images" / "im2.png", format="JPEG")  # not a PNG: Pillow's limit
    with pytest.raises(DatasetError, match=r"index.csv, row 4: image .*im2.png is refused before decoding: .*"
                                           r"decompression bomb.*Pillow's limit"):
        fd.datasets.Broden(root, max_pixels=None).image(2)


def test_max_pixels_is_the_limit_of_images_labels_and_index_sizes(root, tmp_path):
    assert MAX_PIXELS == 2 ** 26
    assert fd.datasets.Broden(root, max_pixels=144).image(0).shape == (12, 12, 3)
    with pytest.raises(DatasetError, match=r"index.csv, row 2: the image \(ih x iw\) is 12x12 = 144 pixels, more "
                                           r"than max_pixels=100"):
        fd.datasets.Broden(root, max_pixels=100)
    Image.new("RGB", (20, 20)).save(root / "images" / "im0.png", format="JPEG")  # its header, not index.csv, is big
    with pytest.raises(DatasetError, match=r"row 2: image .*im0.png is 20x20 = 400 pixels, more than max_pixels=200"):
        fd.datasets.Broden(root, max_pixels=200).image(0)
    write_label_png(root / "images" / "im0_color.png", np.ones((20, 20), np.int64))
    with pytest.raises(DatasetError, match=r"row 2: label file .*im0_color.png is 20x20 = 400 pixels, more than "
                                           r"max_pixels=200"):
        fd.datasets.Broden(root, max_pixels=200).labels(0)
    with pytest.raises(ValueError, match="max_pixels must be a positive int or None"):
        fd.datasets.Broden(root, max_pixels=0)
    rows = (root / "index.csv").read_text().splitlines()
    (root / "index.csv").write_text("\n".join(rows[:2] + [rows[2].replace(",12,12,6,6,", ",12,12,40000,40000,")]
                                              + rows[3:]) + "\n")
    with pytest.raises(DatasetError, match=r"index.csv, row 3: the segmentation \(sh x sw\) is 40000x40000 "):
        fd.datasets.Broden(root)


def test_a_small_label_png_inflating_beyond_its_header_stops_at_the_header(tmp_path):
    bomb = png_header(8, 8, zlib.compress(b"\0" * (64 << 20), 9))  # 64 MB of zeros for an 8x8 image
    tracemalloc.start()
    try:
        with pytest.raises(label_png.LabelPngError, match="inflates to more than the 200 bytes 8x8 needs"):
            label_png.decode(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


# ---- 7, 8: rebuild, from_label_pngs

def test_rebuild_names_a_truncated_label_file_and_its_row(root, tmp_path):
    label = root / "images" / "im1_object.png"
    label.write_bytes(label.read_bytes()[:60])
    with pytest.raises(DatasetError, match=r"index.csv, row 3: cannot decode label file .*im1_object.png \("):
        fd.datasets.rebuild(root, 8, tmp_path / "small", verbose=False)
    assert not (tmp_path / "small").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".small")]


def test_a_names_file_that_is_not_utf8_names_its_line(tmp_path):
    for d in ("images", "labels"):
        (tmp_path / d).mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "labels" / "a.png")
    (tmp_path / "names.txt").write_bytes(b"red,color\nbl\xe9u,color\n")
    with pytest.raises(DatasetError, match=r"names.txt, line 2: not UTF-8 text \(byte 0xe9\)"):
        fd.datasets.from_label_pngs(tmp_path / "images", tmp_path / "labels", tmp_path / "names.txt")


# ---- 9: COCO

@pytest.fixture
def coco(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.jpg")
    doc = {"images": [{"id": 10, "file_name": "a.jpg", "height": 30, "width": 40}],
           "categories": [{"id": 1, "name": "dog"}],
           "annotations": [{"id": 5, "image_id": 10, "category_id": 1, "segmentation": [[0, 0, 9, 0, 9, 9]]}]}

    def load(**changes):
        for key, value in changes.items():
            where, field = key.split("__")
            doc[where][0][field] = value
        (tmp_path / "ann.json").write_text(json.dumps(doc))
        return fd.datasets.from_coco(tmp_path / "ann.json", tmp_path / "images", label_size=(15, 20))
    return load


def test_coco_annotation_of_no_image_is_named(coco):
    assert coco()[0].labels.max() == 1
    with pytest.raises(DatasetError, match=r"ann.json: annotation 0 \(id 5\) has image_id 99, which no image lists"):
        coco(annotations__image_id=99)


@pytest.mark.parametrize("name, says", [("../outside.jpg", "is outside"), ("/etc/passwd", "is not a path inside")])
def test_coco_file_names_out_of_the_image_directory_are_refused_unopened(coco, tmp_path, monkeypatch, name, says):
    Image.new("RGB", (40, 30)).save(tmp_path / "outside.jpg")
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a))
    with pytest.raises(DatasetError, match=rf"ann.json, image 10: '{name}' {says} the image directory"):
        coco(images__file_name=name)
    assert not opened


def test_coco_rle_of_another_size_and_bad_polygons_name_the_annotation(coco):
    ds = coco(annotations__segmentation={"size": [10, 10], "counts": [100]})
    with pytest.raises(DatasetError, match=r"ann.json, image 10 \(a.jpg\), annotation 0 \(id 5\): its RLE mask is "
                                           r"10x10, the image is 30x40"):
        ds[0]
    ds = coco(annotations__segmentation=[[0, 0, "abc", 0, 9, 9]])
    with pytest.raises(DatasetError, match=r"annotation 0 \(id 5\): malformed segmentation \(ValueError: could not "
                                           r"convert string to float: 'abc'\)"):
        ds[0]
    ds = coco(annotations__segmentation={"size": [30, 40], "counts": [5]})
    with pytest.raises(DatasetError, match=r"annotation 0 \(id 5\): an RLE mask covers 5 pixels"):
        ds[0]


# ---- 10: download, from a server on 127.0.0.1

class Served(http.server.BaseHTTPRequestHandler):
    """Serves `data` with Range support, answering 416 to a range that starts at or past its end."""
    data = b""

    def do_GET(self):
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if "Range" in self.headers else 0
        if start and start >= len(self.data):
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(self.data) - start))
        self.end_headers()
        self.wfile.write(self.data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def url():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Served)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/broden.zip"
    httpd.shutdown()


def download(tmp_path, url, name="out"):
    return fd.datasets.download_broden(tmp_path / name, url=url, verbose=False)


def test_download_refuses_an_archive_without_a_label_png_its_index_lists(root, tmp_path, url):
    Served.data = zipped(root, drop="im3_part1.png")
    with pytest.raises(DownloadError, match=r"1 files index.csv lists \(images and label PNGs\) are missing from the "
                                            r"archive, e.g. im3_part1.png"):
        download(tmp_path, url)
    assert not (tmp_path / "out").exists()


def test_download_refuses_link_members_by_name(root, tmp_path, url):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        link = zipfile.ZipInfo("broden/images/link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/tmp")
        z.writestr("broden/images/link/x.png", b"x")
    Served.data = buffer.getvalue()
    with pytest.raises(DownloadError, match=r"member 'broden/images/link' is a link .*refused before unpacking"):
        download(tmp_path, url)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as t:
        link = tarfile.TarInfo("broden/images/up")
        link.type, link.linkname = tarfile.SYMTYPE, ".."
        t.addfile(link)
    Served.data = buffer.getvalue()
    with pytest.raises(DownloadError, match=r"member 'broden/images/up' is a link"):
        download(tmp_path, url, "out2")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_a_complete_download_that_is_no_archive_is_removed_not_kept_forever(root, tmp_path, url):
    Served.data = b"<html>mirror moved</html>" * 40
    with pytest.raises(DownloadError, match=r"neither a zip nor a tar archive .*out.part was removed: run the same "
                                            r"command again"):
        download(tmp_path, url)
    assert not (tmp_path / "out.part").exists()
    (tmp_path / "out.part").write_bytes(Served.data)  # an earlier run's: the server now answers 416
    with pytest.raises(DownloadError, match="neither a zip nor a tar archive .* was removed"):
        download(tmp_path, url)
    assert not (tmp_path / "out.part").exists()
    Served.data = zipped(root)
    assert len(fd.datasets.Broden(download(tmp_path, url))) == 5  # the next run downloads afresh


def test_a_truncated_zip_is_called_truncated(root, tmp_path, url):
    Served.data = zipped(root)[:3000]
    with pytest.raises(DownloadError, match=r"a zip archive that is truncated or damaged .* was removed"):
        download(tmp_path, url)


# ---- 11: a DatasetError raised in a DataLoader worker

def test_a_dataset_error_in_a_dataloader_worker_keeps_its_message(root):
    (root / "images" / "im1_object.png").write_bytes(b"not a png")
    loader = torch.utils.data.DataLoader(fd.datasets.Broden(root), batch_size=1, num_workers=1,
                                         collate_fn=lambda batch: batch)
    with pytest.raises(DatasetError) as caught:
        list(loader)
    message = str(caught.value)
    assert message.startswith(f"{root / 'index.csv'}, row 3: ") and "im1_object.png" in message
    assert "\n" not in message
    assert caught.value.worker_traceback.startswith("Caught DatasetError in DataLoader worker process 0")
    plain = DatasetError("x.csv, row 2: bad")
    assert str(plain) == "x.csv, row 2: bad" and plain.worker_traceback is None
