"""Nothing lost, nothing silently wrong: atomic results, verified stores and checkpoints, locked
directories, contained paths, and errors that name what they are about."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastdissect as fd
from fastdissect.files import atomic
from fastdissect.cli import main as cli
from fastdissect.files.lock import DirectoryBusy, locked
from fastdissect.datasets import DatasetError
from fastdissect.pipeline.dissect import CheckpointMismatch
from test_pipeline import PLAIN, ColorDetectors

SETTINGS = dict(quantile=0.05, verbose=False, **PLAIN)
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return fd.datasets.builtin(tmp_path_factory.mktemp("rel") / "concepts", n_images=12, seed=4)


@pytest.fixture
def concepts(source, tmp_path):
    """A private copy of the data set, for tests that damage it."""
    return Path(shutil.copytree(source, tmp_path / "concepts"))


@pytest.fixture(scope="module")
def two_results(source):
    ds = fd.datasets.Broden(source)
    old = fd.dissect(ColorDetectors(), ["pool"], ds, **SETTINGS)
    m = ColorDetectors()
    with torch.no_grad():
        m.conv.weight.mul_(-1)
    return old, fd.dissect(m, ["pool"], ds, **SETTINGS)


def same(a, b) -> bool:
    return all(torch.equal(a[k].scores.iou, b[k].scores.iou) for k in a) and list(a) == list(b)


# ---- atomic results

def test_an_interrupted_save_leaves_the_old_or_the_new_result(two_results, tmp_path, monkeypatch):
    """A crash (here: an exception) at every file operation of a save over a good result."""
    old, new = two_results
    out = old.save(tmp_path / "out")
    real_replace, real_unlink = os.replace, Path.unlink
    steps = []
    monkeypatch.setattr(atomic.os, "replace", lambda *a: (steps.append("replace"), real_replace(*a)))
    new.save(tmp_path / "probe")
    monkeypatch.undo()
    assert len(steps) >= 3  # the dissection file, summary.json, manifest.json
    for crash_at in range(len(steps) + 1):  # + 1: the removal of the replaced file
        old.save(out)
        calls = []

        def replace(a, b, crash_at=crash_at):
            calls.append(b)
            if len(calls) > crash_at:
                raise KeyboardInterrupt("simulated crash")
            real_replace(a, b)

        def unlink(self, *args, crash_at=crash_at, **kwargs):
            if self.name.startswith("dissection-") and crash_at == len(steps):
                raise KeyboardInterrupt("simulated crash while removing the old file")
            return real_unlink(self, *args, **kwargs)
        monkeypatch.setattr(atomic.os, "replace", replace)
        monkeypatch.setattr(Path, "unlink", unlink)
        with pytest.raises(KeyboardInterrupt):
            new.save(out)
        monkeypatch.undo()
        loaded = fd.load(out)
        assert same(loaded, old) or same(loaded, new), crash_at
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # temporary files are cleaned up


def test_kill_9_during_save_never_leaves_a_torn_result(two_results, tmp_path):
    old, new = two_results
    out = tmp_path / "out"
    old.save(out)
    new_dir = new.save(tmp_path / "new")
    script = (f"import fastdissect as fd, sys; sys.path.insert(0, {str(TESTS)!r}); d = fd.load({str(new_dir)!r})\n"
              f"print('saving', flush=True)\nfor _ in range(1000): d.save({str(out)!r})\n")
    outcomes = set()
    for delay in (0.05, 0.15, 0.3, 0.5, 0.8):  # after the imports, whose time depends on the machine's load
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "saving"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        loaded = fd.load(out)
        assert same(loaded, old) or same(loaded, new)
        outcomes.add("new" if same(loaded, new) else "old")
        old.save(out)  # start each round from the old result
    assert "new" in outcomes  # the kills landed while saves were running


def test_full_and_read_only_disks_name_the_path_and_keep_the_old_result(two_results, tmp_path, monkeypatch):
    old, new = two_results
    out = old.save(tmp_path / "out")
    for code, cause in [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system"),
                        (errno.EACCES, "permission denied")]:
        def fail(fd_, code=code):
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(atomic.os, "fsync", fail)
        with pytest.raises(OSError, match=f"{cause} while writing {out}/dissection-"):
            new.save(out)
        with pytest.raises(OSError, match=f"{cause} while writing {tmp_path / 'csv'}"):
            new.to_csv(tmp_path / "csv")
        # the single pass's kept maps are the first file a checkpoint writes
        with pytest.raises(OSError, match=f"{cause} while writing {tmp_path / 'ckpt'}/(checkpoint|kept-rank0-\\d+)\\.safetensors"):
            fd.dissect(ColorDetectors(), ["pool"], new.dataset, checkpoint=tmp_path / "ckpt", **SETTINGS)
        monkeypatch.undo()
        assert same(fd.load(out), old)
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_load_requires_the_manifest_and_checks_the_digest(two_results, tmp_path):
    old, _ = two_results
    out = old.save(tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    data = out / manifest["dissection"]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 1
    data.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="does not match the digest .* damaged"):
        fd.load(out)
    (out / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="no complete saved dissection"):
        fd.load(out)


# ---- locks

def hold_lock(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom fastdissect.files.lock import locked\n"
                             f"with locked({str(directory)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_the_same_out_is_refused_naming_the_first(source, tmp_path, capsys):
    out = tmp_path / "out"
    proc = hold_lock(out)
    try:
        with pytest.raises(DirectoryBusy, match=rf"in use by another fastdissect run \(pid {proc.pid} on "):
            with locked(out):
                pass
        model = tmp_path / "color.py"
        model.write_text("from test_pipeline import ColorDetectors\n\ndef make():\n    return ColorDetectors()\n")
        args = ["dissect", "--model", f"{model}:make", "--layers", "pool", "--dataset", str(source), "--out", str(out),
                "--quiet"]
        start = time.perf_counter()
        assert cli.main(args) == 1
        assert f"pid {proc.pid}" in capsys.readouterr().err and time.perf_counter() - start < 5  # before any work
        with pytest.raises(DirectoryBusy):
            fd.dissect(ColorDetectors(), ["pool"], fd.datasets.Broden(source), checkpoint=out, **SETTINGS)
    finally:
        proc.kill()
        proc.wait()
    with locked(out):  # a killed holder leaves no stale lock
        pass


def test_out_that_is_a_file_is_refused_before_any_work(source, tmp_path, capsys):
    (tmp_path / "outfile").write_text("x")
    assert cli.main(["dissect", "--model", "nomodule.py:make", "--layers", "pool", "--dataset", str(source),
                     "--out", str(tmp_path / "outfile"), "--quiet"]) == 1
    assert "outfile is a file, not a directory" in capsys.readouterr().err


# ---- checkpoints

def test_damaged_truncated_and_foreign_checkpoints_are_refused_by_path(source, tmp_path):
    ds = fd.datasets.Broden(source)
    ckpt = tmp_path / "ckpt"
    good = fd.dissect(ColorDetectors(), ["pool"], ds, checkpoint=ckpt, **SETTINGS)
    path = ckpt / "checkpoint.safetensors"
    raw = path.read_bytes()
    flipped = bytearray(raw)
    flipped[-100] ^= 0x10  # one bit of a tally counter (the payload's tail holds the tensors)
    for damage, needle in [(bytes(flipped), "damaged"), (raw[: len(raw) // 2], "damaged"),
                           (raw[:20], "not a fastdissect file"), (b"garbage" * 10, "not a fastdissect file")]:
        path.write_bytes(damage)
        with pytest.raises(CheckpointMismatch, match=rf"{path}: .*{needle}.*--restart"):
            fd.dissect(ColorDetectors(), ["pool"], ds, checkpoint=ckpt, **SETTINGS)
    again = fd.dissect(ColorDetectors(), ["pool"], ds, checkpoint=ckpt, restart=True, **SETTINGS)
    assert same(again, good)
    assert not [p for p in ckpt.iterdir() if p.name.endswith(".tmp")]


# ---- packed stores

def test_every_damage_to_a_packed_store_is_detected(concepts, tmp_path):
    ds = fd.datasets.Broden(concepts)
    store = tmp_path / "store"
    fd.datasets.pack(ds, store, verbose=False)
    pristine = {p.name: p.read_bytes() for p in store.iterdir()}

    def restore():
        for name, data in pristine.items():
            (store / name).write_bytes(data)

    def edit_array(name, index, value):
        a = np.fromfile(store / name, dtype="<i8")
        a[index] = value
        a.tofile(store / name)

    def edit_header(**fields):
        meta = json.loads((store / "fastdissect-masks.json").read_text())
        meta.update(fields)
        for key in [k for k, v in fields.items() if v is None]:
            del meta[key]
        (store / "fastdissect-masks.json").write_text(json.dumps(meta))

    words = np.fromfile(store / "words.u64", dtype="<i8")
    damages = [
        ("one bit of words.u64", lambda: edit_array("words.u64", 5, int(words[5]) ^ 1), "words.u64: damaged"),
        ("an area above H*W", lambda: edit_array("areas.i64", 0, 64 * 64 + 1), "areas.i64: damaged"),
        ("concept_ids within range", lambda: edit_array("concept_ids.i64", 0, 2), "concept_ids.i64: damaged"),
        ("mask_rows within range", lambda: edit_array("mask_rows.i64", 0, 1), "mask_rows.i64: damaged"),
        ("offsets within range", lambda: edit_array("offsets.i64", 1, 1), "offsets.i64: damaged"),
        ("height/width, same words", lambda: edit_header(height=32, width=128), "header was changed"),
        ('"version": "1"', lambda: edit_header(version="1"), "field 'version' is '1'"),
        ("a missing key", lambda: edit_header(num_rows=None), "field 'num_rows' is missing"),
    ]
    for what, damage, needle in damages:
        damage()
        with pytest.raises(DatasetError, match=needle):
            fd.datasets.open_packed(store)
        restore()
    assert len(fd.datasets.open_packed(store)) == len(ds)
    # the source swapped for another data set of the same size
    other = fd.datasets.builtin(tmp_path / "other", n_images=len(ds), seed=99)
    edit_header(source=str(other))
    meta = json.loads((store / "fastdissect-masks.json").read_text())
    meta["header_checksum"] = fd.datasets.packed._header_checksum(meta)  # a consistent header: only the source lies
    (store / "fastdissect-masks.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="is not the data set it was packed from"):
        fd.dissect(ColorDetectors(), ["pool"], fd.datasets.open_packed(store), **SETTINGS)


# ---- data sets

def rewrite(path: Path, fn) -> None:
    path.write_text(fn(path.read_text()))


def test_duplicate_label_ids_are_refused_naming_both_rows(concepts):
    rewrite(concepts / "label.csv", lambda t: t + "2,bluish,color(1),1,0.1,\n")
    with pytest.raises(DatasetError, match=r"label 2 is listed twice, rows 4 \('blue'\) and \d+ \('bluish'\)"):
        fd.datasets.Broden(concepts)


@pytest.mark.parametrize("path", ["../../etc/passwd", "../../../outside/secret.png", "/etc/passwd", "link.png"])
def test_paths_that_leave_the_data_set_are_refused_unopened(concepts, tmp_path, monkeypatch, path):
    outside = tmp_path / "outside.png"
    Image.new("RGB", (128, 128)).save(outside)
    (concepts / "images" / "link.png").symlink_to(outside)
    rewrite(concepts / "index.csv", lambda t: t.replace("train_000003.png,", f"{path},", 1))
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a))
    with pytest.raises(DatasetError, match=r"index.csv, row 5: .* (is outside|leads out of|is not a path inside) the data set.s images/"):
        fd.datasets.Broden(concepts)
    assert not opened
    if path == "link.png":
        monkeypatch.undo()
        ds = fd.datasets.Broden(concepts, follow_symlinks=True)  # opted in
        assert ds.image(3).shape == (128, 128, 3)


def test_category_csv_without_rows_is_refused_before_any_pass(concepts):
    (concepts / "category.csv").write_text("name,first,last,count,frequency\n")
    with pytest.raises(DatasetError, match="category.csv: no categories"):
        fd.datasets.Broden(concepts)


def test_an_image_of_another_size_names_its_file_and_row(concepts):
    Image.new("RGB", (23, 32)).save(concepts / "images" / "train_000007.png")
    ds = fd.datasets.Broden(concepts)
    with pytest.raises(DatasetError, match=r"row 9: image train_000007.png is 32x23, index.csv says 128x128"):
        fd.dissect(ColorDetectors(), ["pool"], ds, batch_size=1, **SETTINGS)


def test_a_jpeg_under_a_label_png_name_is_named(concepts):
    Image.new("RGB", (64, 64), (3, 0, 0)).save(concepts / "images" / "train_000002_color_0.png", format="JPEG")
    with pytest.raises(DatasetError, match="train_000002_color_0.png is a JPEG image, not a PNG label image"):
        fd.datasets.Broden(concepts).labels(2)


def test_non_utf8_csv_names_file_and_line(concepts):
    data = (concepts / "label.csv").read_bytes().split(b"\n")
    data[3] = data[3] + b"\xff\xfe"
    (concepts / "label.csv").write_bytes(b"\n".join(data))
    with pytest.raises(DatasetError, match=r"label.csv, line 4: not UTF-8"):
        fd.datasets.Broden(concepts)


# ---- models

def test_nan_activations_name_the_layer_and_the_images(source):
    class InfAt5(torch.nn.AvgPool2d):
        def forward(self, x):
            y = super().forward(x)
            if y.shape[0] > 5:
                y[5, 2] = float("inf")
            return y
    model = ColorDetectors()
    model.pool = InfAt5(4)
    with pytest.raises(ValueError, match=r"layer 'pool' gives NaN or inf activations on images \[5\] \(units \[2\]\)"):
        fd.dissect(model, ["pool"], fd.datasets.Broden(source), batch_size=12, **SETTINGS)


def test_a_half_precision_model_on_the_cpu_gets_inputs_of_its_dtype(source):
    ds = fd.datasets.Broden(source)
    half = fd.dissect(ColorDetectors().half(), ["pool"], ds, **SETTINGS)["pool"]
    full = fd.dissect(ColorDetectors(), ["pool"], ds, **SETTINGS)["pool"]
    assert [u["label"] for u in half.units] == [u["label"] for u in full.units]
    assert np.allclose([u["iou"] for u in half.units], [u["iou"] for u in full.units], atol=0.02)


def test_images_of_different_sizes_are_resized_when_image_size_is_given(concepts):
    with Image.open(concepts / "images" / "train_000007.png") as im:
        im.resize((96, 80)).save(concepts / "images" / "train_000007.png")
    rewrite(concepts / "index.csv", lambda t: t.replace("train_000007.png,train,128,128", "train_000007.png,train,80,96"))
    ds = fd.datasets.Broden(concepts)
    with pytest.raises(ValueError, match=r"different sizes \[\(80, 96\), \(128, 128\)\]: pass image_size"):
        fd.dissect(ColorDetectors(), ["pool"], ds, batch_size=12, **SETTINGS)
    batched = fd.dissect(ColorDetectors(), ["pool"], ds, batch_size=12, image_size=(128, 128), **SETTINGS)
    one_by_one = fd.dissect(ColorDetectors(), ["pool"], ds, batch_size=1, image_size=(128, 128), **SETTINGS)
    assert same(batched, one_by_one)


def test_a_moved_results_directory_still_finds_its_data_set(source, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(source, work / "concepts")
    d = fd.dissect(ColorDetectors(), ["pool"], fd.datasets.Broden(work / "concepts"), **SETTINGS)
    d.save(work / "out")
    moved = Path(shutil.move(str(work), str(tmp_path / "elsewhere")))
    loaded = fd.load(moved / "out")
    assert loaded.dataset_root == str((moved / "concepts").resolve())
    assert cli.main(["report", "--results", str(moved / "out"), "--out", str(tmp_path / "report")]) == 0
