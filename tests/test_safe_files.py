"""Nothing fastdissect reads can run code: results, checkpoints and kept-maps files are safetensors
files (tensors and JSON), and a pickle planted in their place, with every digest recomputed to match,
is refused without being run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastdissect as fd
from fastdissect.files import atomic, tensorfile
from fastdissect.pipeline.dissect import CheckpointMismatch
from test_pipeline import PLAIN, ColorDetectors, Interrupting

SETTINGS = dict(quantile=0.05, verbose=False, **PLAIN)


class _Planted:
    """Unpickling this writes its marker file: the side effect a loader must never cause."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def planted_pickle(marker: Path) -> bytes:
    """The old formats' bytes (torch.save's zip of a pickle) carrying a payload with a side effect."""
    import io

    buffer = io.BytesIO()
    torch.save({"layers": _Planted(marker)}, buffer)
    return buffer.getvalue()


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """The planted payload is live: what the tests below show refused would have run."""
    import io

    marker = tmp_path / "ran"
    torch.load(io.BytesIO(planted_pickle(marker)), weights_only=False)
    assert marker.read_text() == "ran"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe")
    ds = fd.datasets.Broden(fd.datasets.builtin(root / "concepts", n_images=12, seed=4))
    out = fd.dissect(ColorDetectors(), ["pool"], ds, formula_length=2, controls=("permuted",), **SETTINGS).save(
        root / "results")
    return ds, out


def plant_result(results: Path, tmp_path: Path, *, version=3) -> tuple[Path, Path]:
    """A copy of `results` whose dissection file is a pickle, its manifest's digest made to match."""
    import shutil

    out = Path(shutil.copytree(results, tmp_path / "planted"))
    marker = tmp_path / "ran"
    manifest = json.loads((out / "manifest.json").read_text())
    (out / manifest["dissection"]).write_bytes(planted_pickle(marker))
    manifest.update(version=version, blake2b=atomic.file_digest(out / manifest["dissection"]))
    if version == 2:  # the old layout: a .pt beside its manifest
        (out / manifest["dissection"]).rename(out / "dissection-0123456789abcdef.pt")
        manifest["dissection"] = "dissection-0123456789abcdef.pt"
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out, marker


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastdissect.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def test_results_round_trip_through_safetensors_exactly(saved):
    ds, out = saved
    files = list(out.glob("dissection-*.safetensors"))
    assert len(files) == 1 and not list(out.glob("*.pt"))
    before = fd.dissect(ColorDetectors(), ["pool"], ds, formula_length=2, controls=("permuted",), **SETTINGS)
    after = fd.load(out)
    a, b = before["pool"], after["pool"]
    for key in ("intersection", "union", "iou", "unit_area", "concept_area", "thresholds", "image_hits"):
        assert torch.equal(getattr(a.scores, key), getattr(b.scores, key)), key
        assert torch.equal(getattr(a.control, key), getattr(b.control, key)), key
    assert [str(f) for f in a.formulas.formulas] == [str(f) for f in b.formulas.formulas]
    assert torch.equal(a.top_maps, b.top_maps) and a.units == b.units


def test_results_files_are_plain_safetensors(saved):
    """Any safetensors reader opens them: no code of fastdissect is needed to read the numbers."""
    safetensors = pytest.importorskip("safetensors.torch")
    _, out = saved
    path = next(out.glob("dissection-*.safetensors"))
    tensors = safetensors.load_file(str(path))
    assert torch.equal(tensors["layers/pool/scores/iou"], fd.load(out)["pool"].scores.iou)


@pytest.mark.parametrize("version", [3, 2])
def test_a_planted_pickle_in_a_results_directory_never_runs(saved, tmp_path, version):
    _, out = saved
    planted, marker = plant_result(out, tmp_path, version=version)
    needle = "older fastdissect as a pickle" if version == 2 else "not a fastdissect file|truncated"
    with pytest.raises(ValueError, match=needle):
        fd.load(planted)
    from PIL import Image

    from test_pipeline import MODEL_FILE

    (tmp_path / "models.py").write_text(MODEL_FILE)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    for args in (["report", "--results", planted, "--out", tmp_path / "report"],
                 ["compare", planted, out, "--out", tmp_path / "compare"],
                 ["explain", "--results", planted, "--model", f"{tmp_path / 'models.py'}:colors", "--image",
                  tmp_path / "red.png", "--out", tmp_path / "explain"]):
        r = run_cli(*args)
        assert r.returncode != 0 and "fastdissect: error:" in r.stderr, (args, r.stderr)
        assert "pickle" in r.stderr or "not a fastdissect file" in r.stderr or "truncated" in r.stderr, r.stderr
    assert not marker.exists()


def test_an_old_result_says_how_to_write_it_again(saved, tmp_path):
    planted, _ = plant_result(saved[1], tmp_path, version=2)
    with pytest.raises(ValueError, match=r"re-create it .*fastdissect dissect .*--overwrite"):
        fd.load(planted)


@pytest.mark.parametrize("field,where", [("extra", "unknown field"), ("layers", "missing field")])
def test_a_results_file_with_fields_this_version_does_not_write_is_refused(saved, tmp_path, field, where):
    import shutil

    out = Path(shutil.copytree(saved[1], tmp_path / "edited"))
    manifest = json.loads((out / "manifest.json").read_text())
    path = out / manifest["dissection"]
    tree = tensorfile.read(path, kind="dissection")
    if field == "extra":
        tree["extra"] = "?"
    else:
        del tree[field]
    path.write_bytes(tensorfile.dumps(tree, kind="dissection"))
    manifest["blake2b"] = atomic.file_digest(path)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=where):
        fd.load(out)


@pytest.mark.parametrize("manifest,needle", [
    ({"dissection": 12}, '"dissection" must name'), ({"dissection": "../x.safetensors"}, '"dissection" must name'),
    ({"blake2b": None}, '"blake2b" must be'), ({"version": 99}, "version 99"), ([], "not a fastdissect results")])
def test_a_malformed_manifest_is_named(saved, tmp_path, manifest, needle):
    import shutil

    out = Path(shutil.copytree(saved[1], tmp_path / "m"))
    good = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**good, **manifest} if isinstance(manifest, dict) else manifest))
    with pytest.raises(ValueError, match=needle):
        fd.load(out)


def test_every_flipped_byte_of_a_results_file_is_refused(saved, tmp_path):
    """The manifest's digest aside, the file's own checksum refuses a damaged file."""
    path = next(saved[1].glob("dissection-*.safetensors"))
    raw = path.read_bytes()
    for i in range(0, len(raw), max(1, len(raw) // 97)):
        damaged = bytearray(raw)
        damaged[i] ^= 0x20
        with pytest.raises(tensorfile.UnsafeFileError):
            tensorfile.loads(bytes(damaged), kind="dissection", where=path)


def _interrupted_checkpoint(ds, ckpt: Path):
    opts = dict(batch_size=4, checkpoint=ckpt, checkpoint_every=1, memory_limit=0, **SETTINGS)
    with pytest.raises(KeyboardInterrupt):
        fd.dissect(Interrupting(2), ["conv", "pool"], ds, **opts)
    return opts


def test_a_planted_pickle_as_checkpoint_never_runs(saved, tmp_path):
    ds, _ = saved
    ckpt = tmp_path / "ckpt"
    opts = _interrupted_checkpoint(ds, ckpt)
    marker = tmp_path / "ran"
    (ckpt / "checkpoint.safetensors").write_bytes(planted_pickle(marker))
    with pytest.raises(CheckpointMismatch, match=r"checkpoint\.safetensors: .*not a fastdissect file.*--restart"):
        fd.dissect(ColorDetectors(), ["conv", "pool"], ds, **opts)
    # An old checkpoint.pt, with the old format's magic and checksum, is never opened either.
    (ckpt / "checkpoint.safetensors").unlink()
    payload = planted_pickle(marker)
    (ckpt / "checkpoint.pt").write_bytes(b"fastdissect-checkpoint\n" + atomic.digest(payload).encode() + b"\n" + payload)
    with pytest.raises(CheckpointMismatch, match=r"checkpoint\.pt: a checkpoint of an older fastdissect, a pickle"):
        fd.dissect(ColorDetectors(), ["conv", "pool"], ds, **opts)
    from test_pipeline import MODEL_FILE

    (tmp_path / "models.py").write_text(MODEL_FILE)
    r = run_cli("dissect", "--model", f"{tmp_path / 'models.py'}:colors", "--layers", "pool", "--dataset", ds.root,
                "--out", tmp_path / "o", "--checkpoint", ckpt, "--quiet")
    assert r.returncode == 1 and "a checkpoint of an older fastdissect, a pickle" in r.stderr, r.stderr
    assert not marker.exists()
    fd.dissect(ColorDetectors(), ["conv", "pool"], ds, **{**opts, "restart": True})  # --restart starts afresh
    assert not marker.exists()


def test_a_planted_pickle_as_kept_maps_never_runs(saved, tmp_path):
    ds, _ = saved
    ckpt = tmp_path / "ckpt"
    opts = _interrupted_checkpoint(ds, ckpt)
    kept = sorted(ckpt.glob("kept-rank0-*.safetensors"))
    assert kept, "the interrupted single pass spilled its kept maps into the checkpoint"
    marker = tmp_path / "ran"
    kept[0].write_bytes(planted_pickle(marker))
    # The checkpoint's reference to that file carries the pickle's digest, and its own checksum is redone.
    path = ckpt / "checkpoint.safetensors"
    state = tensorfile.read(path, kind="checkpoint")
    for ref in state["kept"]:
        if ref["file"] == kept[0].name:
            ref["digest"] = atomic.digest(kept[0].read_bytes())
    path.write_bytes(tensorfile.dumps(state, kind="checkpoint"))
    with pytest.raises(ValueError, match=rf"{kept[0].name}: .*not a fastdissect file.*--restart"):
        fd.dissect(ColorDetectors(), ["conv", "pool"], ds, **opts)
    assert not marker.exists()


def test_tensor_files_refuse_what_they_cannot_hold_and_malformed_entries(tmp_path):
    with pytest.raises(TypeError, match="a object cannot be stored"):
        tensorfile.dumps({"x": object()}, kind="t")
    with pytest.raises(TypeError, match="dict keys must be str"):
        tensorfile.dumps({1: 2}, kind="t")
    with pytest.raises(TypeError, match="complex"):
        tensorfile.dumps({"x": torch.zeros(2, dtype=torch.complex64)}, kind="t")
    good = tensorfile.dumps({"x": torch.arange(6).view(2, 3)}, kind="t")
    with pytest.raises(tensorfile.UnsafeFileError, match="holds a fastdissect 't', not a 'u'"):
        tensorfile.loads(good, kind="u", where="f")
    # Offsets that point outside the file, and a shape that lies about the bytes, each named.
    n = int.from_bytes(good[:8], "little")
    header = json.loads(good[8:8 + n])
    for entry, needle in [({"data_offsets": [0, 10**9]}, "malformed entry"), ({"shape": [5, 5]}, "does not match"),
                          ({"dtype": "OBJECT"}, "malformed entry")]:
        h = {**header, "x": {**header["x"], **entry}}
        raw = json.dumps(h).encode()
        with pytest.raises(tensorfile.UnsafeFileError, match=needle):
            tensorfile.loads(len(raw).to_bytes(8, "little") + raw + good[8 + n:], kind="t", where="f")


def test_tensor_files_keep_every_dtype_shape_and_value(rng=None):
    values = {"b": torch.tensor([[True, False]]), "u8": torch.arange(5, dtype=torch.uint8),
              "f16": torch.tensor([1.5, float("inf"), float("nan")], dtype=torch.float16),
              "bf16": torch.tensor([0.25], dtype=torch.bfloat16), "i64": torch.tensor([-(2**62)]),
              "empty": torch.zeros(0, 3), "strided": torch.arange(12.0).view(3, 4).t(), "scalar": torch.tensor(3.0),
              "nested": [{"f": float("-inf"), "t": (1, 2)}, None, "text"], "dt": torch.int16}
    back = tensorfile.loads(tensorfile.dumps(values, kind="t"), kind="t", where="m")
    for k, v in values.items():
        if isinstance(v, torch.Tensor):
            assert back[k].dtype == v.dtype and back[k].shape == v.shape
            assert torch.equal(back[k].view(-1).view(torch.uint8), v.contiguous().view(-1).view(torch.uint8)) \
                if v.dtype != torch.bool else torch.equal(back[k], v)
    assert back["nested"] == [{"f": float("-inf"), "t": [1, 2]}, None, "text"] and back["dt"] is torch.int16


def test_model_weights_from_a_safetensors_file(tmp_path):
    """--weights x.safetensors is read as plain tensors, written by any safetensors writer."""
    safetensors = pytest.importorskip("safetensors.torch")
    from fastdissect.pipeline import models

    model, other = ColorDetectors(), ColorDetectors()
    with torch.no_grad():
        other.conv.weight.mul_(-3)
    path = tmp_path / "w.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    models._load_weights(model, str(path))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
