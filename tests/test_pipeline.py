"""fd.dissect end to end: hooks, both passes, labels, invariances, resume, cache, CLI and demo."""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fastdissect as fd
import reference
from fastdissect.cli import main as cli

PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # model input = image / 255


class ColorDetectors(torch.nn.Module):
    """Three units built to detect colors: red (R - G - B), blue (B - R - G), white (min(R, G, B) - 0.85),
    on 4x4-pooled maps (32 x 32 for 128-px images, upsampled to the 64 x 64 labels)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, -1, -1], [-1, -1, 1], [0, 0, 0]])[:, :, None, None])
            self.conv.bias.zero_()
        self.relu = torch.nn.ReLU()
        self.pool = torch.nn.AvgPool2d(4)
        self.forwards = 0
        self.interrupt_after = None  # forwards after which a simulated Ctrl-C arrives

    def forward(self, x):
        if self.interrupt_after is not None and self.forwards >= self.interrupt_after:
            raise KeyboardInterrupt("simulated interruption")
        self.forwards += 1
        y = self.conv(x)
        y = torch.cat([y[:, :2], x.min(dim=1, keepdim=True).values - 0.85], dim=1)
        return self.pool(self.relu(y))


@pytest.fixture(scope="module")
def concepts(tmp_path_factory):
    # The color detectors' expected labels were measured on this set with up to 4 crops per
    # photograph (max_photo_share 0.1 of 40 images); other tests share it with the same setting.
    root = tmp_path_factory.mktemp("pipeline") / "concepts"
    return fd.datasets.Broden(fd.datasets.builtin(root, n_images=40, seed=1, max_photo_share=0.1))


def reference_dissection(model, ds, layer="pool"):
    """Independent numpy reference: activations, numpy.quantile thresholds, reference.tally (netdissect)."""
    images = torch.from_numpy(np.stack([ds[i].image for i in range(len(ds))]))
    with torch.no_grad(), fd.trace(model, [layer]) as acts:
        model(images.permute(0, 3, 1, 2).float() / 255)
    a = acts[layer].numpy()
    t = np.quantile(a.transpose(1, 0, 2, 3).reshape(a.shape[1], -1).astype(np.float64), 0.95, axis=1)
    labels = np.stack([ds[i].labels for i in range(len(ds))])
    masks = reference.dense_from_labels(labels, [ds[i].image_labels for i in range(len(ds))], ds.num_concepts)
    return t, reference.tally(a, masks, t, "netdissect", ds.primary_category)


def test_units_built_to_detect_colors_are_labeled_with_exact_iou(concepts):
    model = ColorDetectors()
    # top 5%: flat color regions cover more than 0.5% of the pixels, and T is exceeded strictly
    d = fd.dissect(model, ["pool"], concepts, quantile=0.05, batch_size=16, verbose=False, **PLAIN)
    t, ref = reference_dissection(model, concepts)
    layer = d["pool"]
    np.testing.assert_array_equal(layer.scores.thresholds.numpy(), t)
    for key in ("intersection", "union", "unit_area", "concept_area"):
        np.testing.assert_array_equal(getattr(layer.scores, key).numpy(), ref[key])
    np.testing.assert_array_equal(layer.scores.iou.numpy(), ref["iou"])
    labels = [(u["label"], u["category"], u["detector"]) for u in layer.units]
    assert labels == [("red", "color", True), ("blue", "color", True), ("white", "color", True)]
    red = concepts.concept_names.index("red")
    assert layer.units[0]["iou"] == ref["iou"][0, red]
    assert layer.summary["unique_detectors"]["color"] == 3 and layer.summary["interpretable"] == 3
    # top images: the highest per-image maxima, in order
    maxima = reference_maxima(model, concepts)
    want = np.argsort(-maxima[:, 0], kind="stable")[:8]
    assert layer.top_images[0].tolist() == want.tolist()


def reference_maxima(model, ds):
    images = torch.from_numpy(np.stack([ds[i].image for i in range(len(ds))]))
    with torch.no_grad():
        return model(images.permute(0, 3, 1, 2).float() / 255).amax(dim=(2, 3)).numpy()


def test_results_do_not_depend_on_batch_size_or_workers(concepts):
    a = fd.dissect(ColorDetectors(), ["conv", "pool"], concepts, batch_size=7, verbose=False, **PLAIN)
    b = fd.dissect(ColorDetectors(), ["conv", "pool"], concepts, batch_size=16, num_workers=2, verbose=False,
                   **PLAIN)
    for name in ("conv", "pool"):
        for key in ("intersection", "union", "thresholds", "unit_area"):
            assert torch.equal(getattr(a[name].scores, key), getattr(b[name].scores, key))
        assert torch.equal(a[name].top_images, b[name].top_images)


def Interrupting(after):
    model = ColorDetectors()
    model.interrupt_after = after
    return model


@pytest.mark.parametrize("passes,after", [(1, 2), (1, 4), (2, 2), (2, 6)])  # 5 batches per pass
def test_an_interrupted_run_resumes_with_identical_results(concepts, tmp_path, passes, after):
    whole = fd.dissect(ColorDetectors(), ["pool"], concepts, batch_size=8, verbose=False, passes=2, **PLAIN)
    with pytest.raises(KeyboardInterrupt):
        fd.dissect(Interrupting(after), ["pool"], concepts, batch_size=8, verbose=False, checkpoint=tmp_path,
                   checkpoint_every=1, passes=passes, **PLAIN)
    resumed_model = ColorDetectors()
    resumed = fd.dissect(resumed_model, ["pool"], concepts, batch_size=8, verbose=False, checkpoint=tmp_path,
                         checkpoint_every=1, passes=passes, **PLAIN)
    assert resumed_model.forwards == 5 * passes - after  # it did not start over
    for key in ("intersection", "union", "thresholds"):
        assert torch.equal(getattr(whole["pool"].scores, key), getattr(resumed["pool"].scores, key))
    assert torch.equal(whole["pool"].top_images, resumed["pool"].top_images)
    assert not list(tmp_path.glob("kept-*.safetensors"))  # the kept maps are gone once the run is complete


class Float16Maps(ColorDetectors):
    def forward(self, x):
        return super().forward(x).half().float()  # outputs a float16 cache holds exactly


def test_cache_removes_the_second_forward(concepts, tmp_path):
    plain = fd.dissect(Float16Maps(), ["pool"], concepts, batch_size=8, verbose=False, **PLAIN)
    for cache in ("memory", tmp_path / "cache"):
        model = Float16Maps()
        cached = fd.dissect(model, ["pool"], concepts, batch_size=8, verbose=False, cache=cache, **PLAIN)
        assert model.forwards == 5  # 40 images / 8: pass 1 only
        assert torch.equal(cached["pool"].scores.intersection, plain["pool"].scores.intersection)
    model = Float16Maps()
    fd.dissect(model, ["pool"], concepts, batch_size=8, verbose=False, cache="memory", cache_limit=10, **PLAIN)
    assert model.forwards == 10  # too big for the limit: the second pass re-runs the model


def test_packed_store_as_dataset(concepts, tmp_path):
    store = fd.datasets.open_packed(fd.datasets.pack(concepts, tmp_path / "packed", verbose=False))
    a = fd.dissect(ColorDetectors(), ["pool"], concepts, verbose=False, **PLAIN)
    b = fd.dissect(ColorDetectors(), ["pool"], store, verbose=False, **PLAIN)
    assert torch.equal(a["pool"].scores.intersection, b["pool"].scores.intersection)


def test_trace_names_close_layers_and_always_removes_hooks():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    with pytest.raises(LookupError, match=r"no layer '00'.*did you mean '0'"):
        with fd.trace(net, ["00"]):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with fd.trace(net, ["0", "1"]):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in net.modules())
    with pytest.raises(LookupError, match="no layer 'layer9'"):
        fd.dissect(net, ["layer9"], [])


class TinyViT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 16, 8, stride=8)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 16))
        self.block = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        return self.block(torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1))


def test_token_outputs_become_patch_grids(concepts):
    torch.manual_seed(0)
    vit = TinyViT().eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad(), fd.trace(vit, ["block"], transform={"block": fd.token_grid(1)}) as acts:
        tokens = vit(x)
    assert acts["block"].shape == (2, 16, 16, 16)
    assert torch.equal(acts["block"][1, :, 3, 5], tokens[1, 1 + 3 * 16 + 5])
    d = fd.dissect(vit, ["block"], concepts, transform={"block": fd.token_grid(1)}, verbose=False)
    assert d["block"].num_units == 16
    with pytest.raises(ValueError, match=r"not \(N, K, h, w\) maps or \(N, K\) values; for token outputs pass transform"):
        fd.dissect(vit, ["block"], concepts, verbose=False)
    with pytest.raises(ValueError, match="is not a square grid"):
        fd.token_grid(2)(torch.zeros(1, 257, 4))


MODEL_FILE = '''
import torch
def colors():
    import test_pipeline
    return test_pipeline.ColorDetectors()
def broken():
    raise RuntimeError("cannot build")
'''


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fastdissect.cli.main", *map(str, args)], capture_output=True, text=True,
                          cwd=Path(__file__).parent)


def test_cli_dissects_and_reports_errors_in_one_line(concepts, tmp_path):
    model_file = tmp_path / "models.py"
    model_file.write_text(MODEL_FILE)
    out = tmp_path / "out"
    r = run_cli("dissect", "--model", f"{model_file}:colors", "--layers", "pool", "--dataset", concepts.root,
                "--out", out, "--quiet", "--quantile", 0.05, "--mean", 0, 0, 0, "--std", 1, 1, 1)
    assert r.returncode == 0, r.stderr
    assert "pool: 3/3 units interpretable, 3 unique detectors (color 3)" in r.stdout
    assert (out / "pool.csv").is_file() and (out / "pool-tally.csv").is_file()
    assert fd.load(out)["pool"].units[0]["label"] == "red"
    assert (out / "report" / "layer_pool.html").is_file()
    r = run_cli("report", "--results", out, "--out", tmp_path / "again")  # from the saved results
    assert r.returncode == 0 and (tmp_path / "again" / "units_pool" / "strips_0000.jpg").is_file(), r.stderr
    for i, (args, message) in enumerate([
        (("--layers", "pol"), "fastdissect: error: the model has no layer 'pol'; did you mean 'pool'"),
        (("--layers", "pool", "--dataset", tmp_path / "none"), "neither a Broden directory"),
        (("--model", f"{model_file}:broken"), "broken() failed (RuntimeError: cannot build)"),
        (("--model", "resnet9000"), "unknown model 'resnet9000'"),
        ((), f"--out {out} already holds dissection-"),  # an earlier result is not replaced silently
    ]):
        base = {"--model": f"{model_file}:colors", "--layers": "pool", "--dataset": concepts.root,
                "--out": tmp_path / f"failed{i}" if args else out}
        base.update(dict(zip(args[::2], args[1::2])))
        r = run_cli("dissect", *sum(([k, v] for k, v in base.items()), []), "--quiet")
        assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    for flag, value, needle in [("--batch-size", 0, "argument --batch-size: must be >= 1, got 0"),
                                ("--image-size", 0, "argument --image-size: must be >= 8, got 0"),
                                ("--quantile", 1.5, "argument --quantile: must be in (0, 1), got 1.5")]:
        r = run_cli("dissect", "--model", "x", "--layers", "x", "--dataset", "builtin", "--out", out, flag, value)
        assert r.returncode == 2 and needle in r.stderr
    for debug in (("--debug", "dissect"), ("dissect", "--debug")):  # before or after the command
        r = run_cli(*debug, "--model", "resnet9000", "--layers", "x", "--dataset", "builtin", "--out",
                    tmp_path / "debug")
        assert "Traceback" in r.stderr
    # --overwrite replaces the earlier result and removes only what fastdissect wrote
    (out / "pool-formulas.csv").write_text("stale")  # as if written by another run: not recorded
    r = run_cli("dissect", "--model", f"{model_file}:colors", "--layers", "pool", "--dataset", concepts.root,
                "--out", out, "--quiet", "--overwrite")
    assert r.returncode == 1 and "files fastdissect did not write (pool-formulas.csv)" in r.stderr
    (out / "pool-formulas.csv").unlink()
    r = run_cli("dissect", "--model", f"{model_file}:colors", "--layers", "pool", "--dataset", concepts.root,
                "--out", out, "--quiet", "--overwrite", "--quantile", 0.05, "--mean", 0, 0, 0, "--std", 1, 1, 1)
    assert r.returncode == 0, r.stderr
    assert len(list(out.glob("dissection-*.safetensors"))) == 1 and fd.load(out)["pool"].units[0]["label"] == "red"


def test_cli_help_is_complete():
    parser = cli.build_parser()
    text = parser.format_help()
    for command in ("dissect", "demo", "builtin", "selftest"):
        assert command in text
    for command in ("dissect", "demo", "builtin", "selftest"):
        r = run_cli(command, "--help")
        assert r.returncode == 0 and "usage: fastdissect" in r.stdout
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():  # every option of every command says what it does
        for action in sub._actions:
            if action.option_strings and action.help is not argparse.SUPPRESS:
                assert action.help and action.help.strip(), f"fastdissect {name} {action.option_strings[0]} has no help"


def test_demo_defaults_and_the_layer_flags():
    parser = cli.build_parser()
    demo = parser.parse_args(["demo", "--out", "x"])
    assert (demo.formula_length, demo.control, demo.formula_layers) == (3, ["permuted"], None)  # _bn1: cmd_demo
    assert parser.parse_args(["demo", "--out", "x", "--control", "random-init"]).control == ["permuted", "random-init"]
    base = ["dissect", "--model", "m", "--layers", "a, b", "--dataset", "d", "--out", "o"]
    args = parser.parse_args(base + ["--formula-length", "2", "--formula-layers", "b", "--control", "permuted",
                                     "--control-layers", "a,b"])
    options = cli._dissect_options(args, None, (0, 0, 0), (1, 1, 1))
    assert (options["formula_layers"], options["control_layers"]) == (["b"], ["a", "b"])
    assert cli._dissect_options(parser.parse_args(base), None, (0, 0, 0), (1, 1, 1))["formula_layers"] is None


def test_demo_runs_offline_and_summarises(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    r = run_cli("demo", "--out", tmp_path, "--images", 48, "--quiet")
    assert r.returncode == 0, r.stderr
    for layer in ("_blocks.1", "_blocks.4", "_blocks.10", "_blocks.15", "_bn1"):
        assert f"{layer}: " in r.stdout and (tmp_path / f"{layer}-tally.csv").is_file()
        assert (tmp_path / "report" / f"layer_{layer}.html").is_file()
    assert "units interpretable" in r.stdout
    # formulas and the permuted control on the last layer only, its best units printed with both
    result = fd.load(tmp_path)
    assert result["_bn1"].formulas is not None and result["_bn1"].control is not None
    assert all(result[name].formulas is None and result[name].control is None for name in list(result)[:-1])
    best = [line for line in r.stdout.splitlines() if line.startswith("_bn1 unit ")]
    assert len(best) == 3 and all("; formula " in line and " chance (control IoU " in line for line in best), best
    # one explained prediction on a photograph of the set, linked from the report
    assert "explaining the prediction on image 9" in r.stdout and "labeled units carry" in r.stdout
    assert (tmp_path / "report" / "explain" / "explained_0.png").is_file()
    assert (tmp_path / "report" / "explain" / "pixels_0.png").is_file()  # SmoothGrad beside Grad-CAM
    assert 'href="explain/index.html"' in (tmp_path / "report" / "index.html").read_text()
    import test_report  # the demo's report, looked at in a real browser when one is installed

    if test_report.chromium():
        test_report.OUTPUT.mkdir(exist_ok=True)
        for page in ("index", "layer__bn1"):
            shot = test_report.OUTPUT / f"demo_report_{page}.png"
            dom, console, result = test_report.render(tmp_path / "report" / f"{page}.html", tmp_path, shot)
            assert 'data-status="ready"' in dom and 'data-broken-images="0"' in dom and shot.is_file()


def _interrupted_checkpoint(concepts, directory, **options):
    with pytest.raises(KeyboardInterrupt):
        fd.dissect(Interrupting(2), ["pool"], concepts, batch_size=8, verbose=False, checkpoint=directory,
                   checkpoint_every=1, **{**PLAIN, **options})


class WiderDetectors(ColorDetectors):
    """Another architecture with the same layer names and unit count."""


@pytest.mark.parametrize("change, named", [
    ("weights", "model.parameters"), ("architecture", "model.architecture"), ("dataset", "dataset."),
    ("image_size", "image_size"), ("mean", "mean"), ("quantile", "quantile"), ("transform", "transforms.pool")])
def test_a_checkpoint_of_another_dissection_is_refused_naming_the_difference(concepts, tmp_path, change, named):
    _interrupted_checkpoint(concepts, tmp_path / "ck")
    model, dataset, options = ColorDetectors(), concepts, dict(PLAIN)
    if change == "weights":
        with torch.no_grad():
            model.conv.bias.fill_(0.01)
    elif change == "architecture":
        model = WiderDetectors()
    elif change == "dataset":
        dataset = fd.datasets.Broden(fd.datasets.builtin(tmp_path / "other", n_images=40, seed=2))
    elif change == "image_size":
        options["image_size"] = (64, 64)
    elif change == "mean":
        options["mean"] = (0.1, 0.0, 0.0)
    elif change == "quantile":
        options["quantile"] = 0.01
    else:
        options["transform"] = {"pool": lambda a: a * 2}
    with pytest.raises(fd.pipeline.dissect.CheckpointMismatch, match=named) as err:
        fd.dissect(model, ["pool"], dataset, batch_size=8, verbose=False, checkpoint=tmp_path / "ck", **options)
    assert "another dissection" in str(err.value) and "--restart" in str(err.value)
    # restart=True discards it: the same numbers as a run without any checkpoint
    fresh = fd.dissect(model, ["pool"], dataset, batch_size=8, verbose=False, **options)
    restarted = fd.dissect(model, ["pool"], dataset, batch_size=8, verbose=False, checkpoint=tmp_path / "ck",
                           restart=True, **options)
    assert torch.equal(fresh["pool"].scores.intersection, restarted["pool"].scores.intersection)


def _same_state(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize("passes,after,stage", [(1, 2, 1), (2, 6, 2)])
def test_a_checkpoint_holds_each_layers_accumulators_by_kind(concepts, tmp_path, passes, after, stage):
    from fastdissect.engine.controls import PermutedControl
    from fastdissect.engine.unit_masks import MaskLog, UnitMasks
    from fastdissect.files import tensorfile
    from fastdissect.pipeline import checkpoint

    # The file format older checkpoints were written in: a change here must refuse them clearly.
    assert checkpoint.CHECKPOINT_FIELDS == ("identity", "stage", "images_done", "quantiles", "tallies", "top",
                                            "unit_masks", "control_tallies", "mask_log", "kept")
    with pytest.raises(KeyboardInterrupt):
        fd.dissect(Interrupting(after), ["pool"], concepts, batch_size=8, verbose=False, checkpoint=tmp_path,
                   checkpoint_every=1, passes=passes, formula_length=2, controls=("permuted",), **PLAIN)
    state = checkpoint.read_checkpoint(tmp_path / f"checkpoint{tensorfile.SUFFIX}")
    assert set(state) == set(checkpoint.CHECKPOINT_FIELDS) and state["stage"] == stage
    assert {k: state["identity"][k] for k in ("shard", "world", "checkpoint_version", "passes")} == \
        {"shard": [0, 40], "world": 1, "checkpoint_version": checkpoint.CHECKPOINT_VERSION, "passes": passes}
    kinds = {"quantiles": fd.TopQuantile, "tallies": fd.Tally, "top": fd.TopImages, "unit_masks": UnitMasks}
    held = {field: list(state[field]) for field in (*kinds, "control_tallies")}
    if stage == 1:  # thresholds and top images so far; the tallies start once the thresholds are known
        assert held == {"quantiles": ["pool"], "tallies": [], "top": ["pool"], "unit_masks": [], "control_tallies": []}
        assert state["kept"] and state["mask_log"]["parts"]
    else:
        assert held == {"quantiles": [], "tallies": ["pool"], "top": ["pool"], "unit_masks": ["pool"],
                        "control_tallies": ["pool"]}
        control = PermutedControl.from_state_dict(state["control_tallies"]["pool"], perm=torch.arange(40))
        assert _same_state(control.state_dict(), state["control_tallies"]["pool"])
    for field, cls in kinds.items():
        for s in state[field].values():
            assert _same_state(cls.from_state_dict(s).state_dict(), s), field
    assert _same_state(MaskLog.from_state_dict(state["mask_log"]).state_dict(), state["mask_log"])


def test_resume_and_interrupt_say_what_the_checkpoint_holds(concepts, tmp_path, capsys):
    with pytest.raises(KeyboardInterrupt):
        fd.dissect(Interrupting(0), ["pool"], concepts, batch_size=8, **PLAIN)
    assert "no checkpoint was written" in capsys.readouterr().out
    with pytest.raises(KeyboardInterrupt):
        fd.dissect(Interrupting(3), ["pool"], concepts, batch_size=8, checkpoint=tmp_path / "b", checkpoint_every=1,
                   **PLAIN)
    out = capsys.readouterr().out
    assert "holds pass 1, 24/40 images" in out and "run the same command again" in out
    d = fd.dissect(ColorDetectors(), ["pool"], concepts, batch_size=8, checkpoint=tmp_path / "b", **PLAIN)
    assert "resuming from" in capsys.readouterr().out and d.identity["model"]["parameters"]


def test_results_carry_their_identity(concepts, tmp_path):
    d = fd.dissect(ColorDetectors(), ["pool"], concepts, batch_size=8, verbose=False, quantile=0.01, **PLAIN)
    ident = d.identity
    assert ident["quantile"] == 0.01 and ident["union"] == "netdissect" and ident["layers"] == ["pool"]
    assert ident["model"]["parameters"] == fd.identity.state_hash(ColorDetectors())
    assert ident["dataset"]["root"] == str(concepts.root.resolve()) and ident["dataset"]["images"] == 40
    d.save(tmp_path)
    assert fd.load(tmp_path).identity == ident
    assert "ColorDetectors" in d.summary_text().splitlines()[0]
    index = fd.write_report(d, tmp_path / "report", verbose=False).read_text()
    assert 'id="identity"' in index and ident["model"]["parameters"][:12] in index


def test_model_identity_sees_every_parameter_and_buffer():
    a, b = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    assert fd.identity.state_hash(a) == fd.identity.state_hash(b)
    b.running_mean[1] = 1e-7
    assert fd.identity.state_hash(a) != fd.identity.state_hash(b)
    half = torch.nn.Linear(2, 2).to(torch.bfloat16)
    assert len(fd.identity.state_hash(half)) == 32


def test_cli_refuses_a_checkpoint_of_other_weights_and_restarts_on_request(concepts, tmp_path):
    model_file = tmp_path / "models.py"
    model_file.write_text(MODEL_FILE)
    weights = tmp_path / "b.pth"
    other = ColorDetectors()
    with torch.no_grad():
        other.conv.bias.fill_(0.05)
    torch.save(other.state_dict(), weights)
    common = ["--layers", "pool", "--dataset", concepts.root, "--quiet", "--checkpoint", tmp_path / "ck",
              "--checkpoint-every", 1, "--mean", 0, 0, 0, "--std", 1, 1, 1]
    r = run_cli("dissect", "--model", f"{model_file}:colors", "--out", tmp_path / "o1", *common)
    assert r.returncode == 0, r.stderr
    r = run_cli("dissect", "--model", f"{model_file}:colors", "--weights", weights, "--out", tmp_path / "o2", *common)
    assert r.returncode == 1 and "belongs to another dissection: model.parameters" in r.stderr, r.stderr
    r = run_cli("dissect", "--model", f"{model_file}:colors", "--weights", weights, "--out", tmp_path / "o2",
                "--restart", *common)
    assert r.returncode == 0, r.stderr
    assert fd.load(tmp_path / "o2").identity["model"]["parameters"] == fd.identity.state_hash(other)
    assert fd.load(tmp_path / "o1").identity["model"]["parameters"] != fd.identity.state_hash(other)


def test_torchvision_models_without_weights_are_seeded_and_said_to_be_random(monkeypatch):
    import types

    from fastdissect.pipeline import models

    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(get_model=lambda name, weights=None: torch.nn.Conv2d(3, 4, 3))
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    with pytest.warns(UserWarning, match="weights are random"):
        a = models.load_model("torchvision:tiny", seed=3)
    with pytest.warns(UserWarning):
        b = models.load_model("torchvision:tiny", seed=3)
        c = models.load_model("torchvision:tiny", seed=4)
    assert fd.identity.state_hash(a) == fd.identity.state_hash(b) != fd.identity.state_hash(c)


def test_formulas_in_the_pipeline_equal_fd_compositional(concepts, tmp_path):
    model = ColorDetectors()
    d = fd.dissect(model, ["pool"], concepts, quantile=0.05, batch_size=16, verbose=False, formula_length=3,
                   beam_size=4, **PLAIN)
    layer = d["pool"]
    images = torch.from_numpy(np.stack([concepts[i].image for i in range(len(concepts))]))
    with torch.no_grad(), fd.trace(model, ["pool"]) as acts:
        model(images.permute(0, 3, 1, 2).float() / 255)
    labels = torch.from_numpy(np.stack([concepts[i].labels for i in range(len(concepts))]))
    masks = fd.pack_masks(labels=labels, image_labels=[concepts[i].image_labels for i in range(len(concepts))],
                          num_concepts=concepts.num_concepts)
    want = fd.compositional(acts["pool"], masks, thresholds=layer.scores.thresholds, length=3, beam_size=4)
    assert [str(f) for f in layer.formulas.formulas] == [str(f) for f in want.formulas]
    assert torch.equal(layer.formulas.iou, want.iou) and torch.equal(layer.formulas.intersection, want.intersection)
    red = concepts.concept_names.index("red")
    assert red in layer.formulas.formulas[0].concepts()
    assert layer.formulas.iou[0] >= layer.formulas.single_iou[0] > 0
    assert layer.units[0]["formula"] == layer.formulas.formulas[0].to_str(concepts.concept_names)
    # saved, loaded, written as compexp's CSV
    d.save(tmp_path / "out")
    back = fd.load(tmp_path / "out")
    assert [str(f) for f in back["pool"].formulas.formulas] == [str(f) for f in want.formulas]
    assert torch.equal(back["pool"].formulas.iou, want.iou)
    d.to_csv(tmp_path / "csv")
    rows = (tmp_path / "csv" / "pool-formulas.csv").read_text().splitlines()
    assert rows[0] == "unit,category,label,score,length,label_noncomp,category_noncomp,score_noncomp"
    assert len(rows) == 4
    # a run interrupted in the tally pass resumes with the same formulas
    model.interrupt_after = 4
    ck = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        fd.dissect(model, ["pool"], concepts, quantile=0.05, batch_size=8, verbose=False, formula_length=3,
                   beam_size=4, checkpoint=ck, checkpoint_every=1, **PLAIN)
    model.interrupt_after = None
    again = fd.dissect(model, ["pool"], concepts, quantile=0.05, batch_size=8, verbose=False, formula_length=3,
                       beam_size=4, checkpoint=ck, **PLAIN)
    assert [str(f) for f in again["pool"].formulas.formulas] == [str(f) for f in want.formulas]
    # another formula length is another dissection: the checkpoint is refused
    with pytest.raises(fd.pipeline.dissect.CheckpointMismatch, match="formulas"):
        fd.dissect(model, ["pool"], concepts, quantile=0.05, batch_size=8, verbose=False, formula_length=2,
                   checkpoint=ck, **PLAIN)


def test_cli_formula_flags(concepts, tmp_path):
    model_file = tmp_path / "models.py"
    model_file.write_text(MODEL_FILE)
    out = tmp_path / "out"
    common = ["--model", f"{model_file}:colors", "--layers", "pool", "--dataset", concepts.root, "--quiet",
              "--quantile", 0.05, "--mean", 0, 0, 0, "--std", 1, 1, 1]
    r = run_cli("dissect", *common, "--out", out, "--formula-length", 2, "--beam-size", 3, "--search", "optimal")
    assert r.returncode == 0, r.stderr
    header = (out / "pool-formulas.csv").read_text().splitlines()[0]
    assert header.startswith("unit,category,label,score,length")
    layer = fd.load(out)["pool"]
    assert layer.formulas.settings["search"] == "optimal" and layer.formulas.formulas[0] is not None
    assert "formula (IoU)" in (out / "report" / "layer_pool.html").read_text()
    r = run_cli("dissect", *common, "--out", tmp_path / "bad", "--formula-length", 0)
    assert r.returncode != 0 and "length" in r.stderr and "Traceback" not in r.stderr


def test_the_forward_pass_stops_at_the_last_requested_layer(concepts):
    class Counting(ColorDetectors):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Conv2d(3, 3, 1)
            self.head_calls = 0

        def forward(self, x):
            y = super().forward(x)
            self.head_calls += 1  # reached only when the forward runs past the pool
            return self.head(y)

    early, full = Counting(), Counting()
    a = fd.dissect(early, ["conv"], concepts, quantile=0.05, batch_size=16, verbose=False, **PLAIN)
    b = fd.dissect(full, ["conv"], concepts, quantile=0.05, batch_size=16, verbose=False, stop_early=False, **PLAIN)
    assert early.head_calls == 0 and full.head_calls > 0 and early.forwards == full.forwards
    assert torch.equal(a["conv"].scores.intersection, b["conv"].scores.intersection)
    assert torch.equal(a["conv"].top_maps, b["conv"].top_maps)
