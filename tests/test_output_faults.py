"""Faults around the CLI's outputs: --overwrite never loses the earlier result, a killed
run is recognised as one, killed writers' temporaries are removed, a module called twice is read
at one call, the report refuses another data set's images, and a DataLoader worker's error is
printed by its own message."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastdissect as fd
from fastdissect.cli import main as cli
from test_pipeline import ColorDetectors
from test_reliability import SETTINGS, TESTS, same

MODELS = '''
import torch
from test_pipeline import ColorDetectors

def colors():
    return ColorDetectors()

def negated():  # other numbers on the same layers
    m = ColorDetectors()
    with torch.no_grad():
        m.conv.weight.mul_(-1)
    return m
'''
FLAGS = ["--quiet", "--quantile", "0.05", "--mean", "0", "0", "0", "--std", "1", "1", "1"]

# The child counts os.replace calls (every published file, and every update of the outputs record)
# and sends itself SIGKILL right after the N-th: a kill -9 at a known point, after all imports.
KILL_AFTER = """
import os, signal, sys
from fastdissect.cli import main as cli
real, count = os.replace, [0]
def replace(a, b):
    real(a, b)
    count[0] += 1
    if count[0] == {after}:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
sys.exit(cli.main({argv!r}))
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return fd.datasets.builtin(tmp_path_factory.mktemp("faults") / "concepts", n_images=12, seed=4)


@pytest.fixture
def models(tmp_path):
    path = tmp_path / "faults_models.py"
    path.write_text(MODELS)
    return path


def dissect_args(models, source, out, model="colors", layers="pool", *extra):
    return ["dissect", "--model", f"{models}:{model}", "--layers", layers, "--dataset", str(source), "--out", str(out),
            *FLAGS, *extra]


def killed_after(n: int, argv) -> int:
    """Runs the CLI in a child killed by SIGKILL after its n-th os.replace; its return code."""
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER.format(after=n, argv=list(map(str, argv)))],
                          cwd=TESTS, capture_output=True, text=True)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
    return proc.returncode


def record(out: Path) -> dict:
    return json.loads((out / cli.OUTPUTS_RECORD).read_text())


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# ---- 1. --overwrite keeps the earlier result until the new one replaces it

def test_a_failed_overwrite_keeps_the_earlier_result(models, source, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(dissect_args(models, source, out)) == 0
    old = fd.load(out)
    assert cli.main(dissect_args(models, source, out, "negated", "nope", "--overwrite")) == 1
    assert "the model has no layer 'nope'" in capsys.readouterr().err
    assert same(fd.load(out), old)  # the earlier numbers, still loadable
    assert (out / "pool.csv").is_file() and (out / "report" / "index.html").is_file()
    assert record(out)["running"] is None


def test_kill_9_during_an_overwrite_leaves_the_old_or_the_new_result(models, source, tmp_path):
    pristine = tmp_path / "pristine"
    assert cli.main(dissect_args(models, source, pristine)) == 0
    old = fd.load(pristine)
    m = ColorDetectors()
    with torch.no_grad():
        m.conv.weight.mul_(-1)
    new = fd.dissect(m, ["pool"], fd.datasets.Broden(source), **SETTINGS)
    assert not same(old, new)
    out = tmp_path / "out"
    outcomes = set()
    for n in (3, 9, 15, 21):  # before, around and after the new manifest; the last is about the end
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(pristine, out)
        code = killed_after(n, dissect_args(models, source, out, "negated", "pool", "--overwrite"))
        loaded = fd.load(out)
        assert same(loaded, old) or same(loaded, new), n
        outcomes.add("new" if same(loaded, new) else "old")
        if code == -signal.SIGKILL:
            assert record(out)["running"] is not None  # the record says the run never ended
    assert outcomes == {"old", "new"}


# ---- 2. a killed run is recognised, and --overwrite replaces it

def test_a_killed_run_is_named_as_interrupted_and_overwrite_replaces_it(models, source, tmp_path, capsys):
    out = tmp_path / "out"
    argv = dissect_args(models, source, out)
    assert killed_after(3, argv) == -signal.SIGKILL  # the first output is in place, the result is not
    left = {p.name for p in out.iterdir()} - cli.KEPT
    assert left
    pid = record(out)["running"]["pid"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"--out {out} holds an interrupted run" in err and f"pid {pid}" in err and "--overwrite" in err
    assert cli.main([*argv, "--overwrite"]) == 0, capsys.readouterr().err
    assert fd.load(out)["pool"].num_units == 3 and record(out)["running"] is None
    assert left <= set(record(out)["written"])


# ---- 3. temporaries of killed writers

def test_temporaries_of_dead_processes_are_removed_and_live_ones_kept(models, source, tmp_path):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    assert cli.main(dissect_args(models, source, out, "colors", "pool", "--checkpoint", str(ckpt))) == 0
    dead, live = dead_pid(), os.getpid()
    stale = [out / f".pool.csv.{dead}.0123abcd.tmp", out / "report" / f".index.html.{dead}.89abcdef.tmp",
             ckpt / f".checkpoint.st.{dead}.0badc0de.tmp"]
    kept = [out / f".pool.csv.{live}.0123abcd.tmp", ckpt / f".checkpoint.st.{live}.0badc0de.tmp"]
    for path in stale + kept:
        path.write_bytes(b"partial")
    # directory_in_place's and replace_directory's: no pid, removed under the directory's lock
    folders = [out / ".pool.a1b2c3d4.tmp", out / "report" / ".units_pool.old.k2j4h5g6.tmp", ckpt / ".x.abcdefgh.tmp"]
    for folder in folders:
        folder.mkdir()
        (folder / "strips_0000.jpg").write_bytes(b"partial")
    assert cli.main(dissect_args(models, source, out, "colors", "pool", "--checkpoint", str(ckpt),
                                 "--overwrite", "--restart")) == 0
    assert not [p for p in stale + folders if p.exists()]
    assert all(p.is_file() for p in kept)
    # a rank's own lock does not own the directory: another rank's temporary directories stay
    from fastdissect.files.lock import locked

    folder = ckpt / ".y.abcdefgh.tmp"
    folder.mkdir()
    with locked(ckpt, name=".fastdissect-rank1.lock"):
        pass
    assert folder.is_dir()
    with locked(ckpt):
        pass
    assert not folder.exists()


# ---- 4. a module called twice in one forward pass

class PoolTwice(ColorDetectors):
    """pool is called on the detectors' maps, then again on its own output (a reused module)."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Identity()

    def forward(self, x):
        y = super().forward(x)
        again = self.pool(y)
        return self.head(y) + 0 * again.mean()


def test_a_module_called_twice_is_read_at_its_first_call_and_named(source):
    ds = fd.datasets.Broden(source)
    once = fd.dissect(ColorDetectors(), ["pool"], ds, **SETTINGS)["pool"]
    for stop_early in (True, False):
        with pytest.warns(RuntimeWarning, match=r"layer 'pool' \(AvgPool2d\) is called (at least )?2 times in one "
                                                r"forward pass.*: its first call's output is the one read") as caught:
            d = fd.dissect(PoolTwice(), ["pool", "head"], ds, batch_size=4, stop_early=stop_early, **SETTINGS)
        assert len([w for w in caught if "is called" in str(w.message)]) == 1  # once, not once per batch
        assert torch.equal(d["pool"].scores.intersection, once.scores.intersection), stop_early
        assert torch.equal(d["pool"].top_maps, once.top_maps)
    with pytest.warns(RuntimeWarning, match=r"layer 'pool' \(AvgPool2d\) is called 2 times"):
        alone = fd.dissect(PoolTwice(), ["pool"], ds, stop_early=False, **SETTINGS)["pool"]
    assert torch.equal(alone.top_maps, once.top_maps)
    net = PoolTwice()
    x = torch.rand(2, 3, 16, 16)
    with pytest.warns(RuntimeWarning), fd.trace(net, ["pool"]) as acts:
        net(x)
    assert torch.equal(acts["pool"], net.pool(net.relu(torch.cat([net.conv(x)[:, :2], x.min(dim=1, keepdim=True)
                                                                  .values - 0.85], dim=1))))


# ---- 5. the report's data set must be the dissection's

def test_report_refuses_a_data_set_regenerated_in_place(models, source, tmp_path, capsys):
    concepts = Path(shutil.copytree(source, tmp_path / "concepts"))
    out = tmp_path / "out"
    assert cli.main(dissect_args(models, concepts, out)) == 0
    capsys.readouterr()
    fd.datasets.builtin(concepts, n_images=12, seed=5, overwrite=True)  # other images, the same names
    assert cli.main(["report", "--results", str(out), "--out", str(tmp_path / "r1")]) == 1
    err = capsys.readouterr().err
    assert f"the data set of --results {out} ({concepts.resolve()}) is not the data set the results were computed " \
           "on (its " in err and "its image and label files differ" in err and "--allow-changed-dataset" in err
    assert not (tmp_path / "r1" / "index.html").exists()
    assert cli.main(["report", "--results", str(out), "--out", str(tmp_path / "r2"), "--allow-changed-dataset"]) == 0
    shutil.rmtree(concepts)
    fd.datasets.builtin(concepts, n_images=8, seed=4)  # fewer images than the dissection's
    for extra in ([], ["--allow-changed-dataset"]):
        assert cli.main(["report", "--results", str(out), "--dataset", str(concepts), "--out",
                         str(tmp_path / "r3"), *extra]) == 1
        err = capsys.readouterr().err
        assert f"--dataset {concepts} is not the data set the results were computed on (12 images in the results, " \
               f"8 in --dataset {concepts}" in err and "IndexError" not in err
    with pytest.raises(fd.datasets.DatasetError, match="holds 8 images, the dissection's top images go up to image"):
        fd.write_report(fd.load(out), tmp_path / "r4", fd.datasets.Broden(concepts), verbose=False)


# ---- 6. a DataLoader worker's error, by its own message

def test_a_damaged_label_png_read_by_a_worker_is_named(models, source, tmp_path, capsys):
    concepts = Path(shutil.copytree(source, tmp_path / "concepts"))
    label = concepts / "images" / fd.datasets.Broden(concepts).records[3]["files"][0]
    data = label.read_bytes()
    label.write_bytes(data[: len(data) // 2])  # truncated mid-IDAT
    assert cli.main(dissect_args(models, concepts, tmp_path / "out", "colors", "pool", "--workers", "2")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fastdissect: error: ") and str(label) in err[-1] and "Caught" not in err[-1]


def test_any_error_from_a_worker_prints_its_own_message(models, source, tmp_path, capsys, monkeypatch):
    def unreadable(self, i):
        raise OSError(f"read error on {self.root}/images/label_{i}.png")
    monkeypatch.setattr(fd.datasets.Broden, "labels", unreadable)  # the forked workers inherit it
    argv = dissect_args(models, source, tmp_path / "out", "colors", "pool", "--workers", "2", "--no-mask-cache")
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"fastdissect: error: read error on {source}/images/label_"), err
