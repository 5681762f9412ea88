"""Visualisations on the report: a unit's page shows its image beside its top images, the layer's
table a thumbnail, both render in headless Chromium; bad visualisations are refused by name; the
CLI's --visualize on dissect and report puts the N best units' images there."""

import re

import numpy as np
import pytest
from PIL import Image

import fastdissect as fd
from fastdissect.cli import main as cli
from test_pipeline import PLAIN, ColorDetectors
from test_report import OUTPUT, chromium, render

FAST = dict(steps=8, size=32, verbose=False)
MODEL = "from test_pipeline import ColorDetectors\n\ndef make():\n    return ColorDetectors()\n"


@pytest.fixture(scope="module")
def dissected(tmp_path_factory):
    root = tmp_path_factory.mktemp("reportvis")
    ds = fd.datasets.Broden(fd.datasets.builtin(root / "concepts", n_images=24, seed=3))
    d = fd.dissect(ColorDetectors(), ["conv", "pool"], ds, quantile=0.05, top_k=4, verbose=False, **PLAIN)
    vis = fd.visualize(ColorDetectors(), "pool", [0, 2], **FAST, **PLAIN)
    index = fd.write_report(d, root / "report", visualizations={"pool": vis}, verbose=False)
    return d, vis, index


def test_the_units_page_shows_each_visualised_units_image(dissected):
    d, vis, index = dissected
    folder = index.parent / "units_pool"
    for unit in (0, 2):
        with Image.open(folder / f"vis_{unit}.png") as im:
            assert np.array_equal(np.asarray(im), vis.image(unit))  # the image itself, losslessly
    assert not (folder / "vis_1.png").exists() and not (index.parent / "units_conv" / "vis_0.png").exists()
    page = (folder / "units.html").read_text()
    sections = dict(re.findall(r'<section class="unit" id="unit-(\d+)">(.*?)</section>', page, flags=re.S))
    assert 'src="vis_0.png"' in sections["0"] and 'src="vis_2.png"' in sections["2"]
    assert "img" in sections["1"] and "vis_" not in sections["1"] and "What maximises it" not in sections["1"]
    assert "the channel objective maximised, 8 steps" in sections["0"]
    layer = (index.parent / "layer_pool.html").read_text()
    assert "<th>visualisation</th>" in layer and layer.count('class="thumb"') == 2
    assert 'src="units_pool/vis_2.png"' in layer
    assert "<th>visualisation</th>" not in (index.parent / "layer_conv.html").read_text()


def test_a_report_without_visualisations_is_as_before(dissected, tmp_path):
    d, _, _ = dissected
    index = fd.write_report(d, tmp_path / "plain", verbose=False)
    assert "vis_" not in (index.parent / "units_pool" / "units.html").read_text()
    assert not list((index.parent / "units_pool").glob("vis_*.png"))


class NotAVisualization:
    units = [0]
    images = np.zeros((1, 8, 8), np.uint8)


@pytest.mark.parametrize("make, error, match", [
    (lambda v: {"fc": v}, LookupError, "visualizations names layer 'fc'"),
    (lambda v: {"conv": v}, ValueError, "visualises layer 'pool', not 'conv'"),
    (lambda v: {"pool": NotAVisualization()}, ValueError, r"must have units and \(units, S, S, 3\) uint8 images"),
    (lambda v: [v], TypeError, "visualizations must be"),
])
def test_bad_visualisations_are_refused_by_name(dissected, tmp_path, make, error, match):
    d, vis, _ = dissected
    with pytest.raises(error, match=match):
        fd.write_report(d, tmp_path / "r", visualizations=make(vis), verbose=False)


def test_a_unit_outside_the_layer_is_refused(dissected, tmp_path):
    d, _, _ = dissected
    vis = fd.Visualization("pool", "channel", [7], np.zeros((1, 1, 8, 8, 3), np.uint8), np.zeros((1, 1, 1)),
                           np.zeros((1, 1)), {})
    with pytest.raises(ValueError, match=r"shows units \[7\], outside layer 'pool''s 3 units"):
        fd.write_report(d, tmp_path / "r", visualizations={"pool": vis}, verbose=False)


@pytest.mark.skipif(chromium() is None, reason="no Chromium (.ci/run installs Debian's chromium)")
def test_unit_pages_with_visualisations_render_in_a_real_browser(dissected, tmp_path):
    _, _, index = dissected
    OUTPUT.mkdir(exist_ok=True)
    for page, fragment, name in [(index.parent / "units_pool" / "units.html", "#unit-2", "report_visualize_unit_2"),
                                 (index.parent / "layer_pool.html", "", "report_visualize_layer")]:
        shot = OUTPUT / f"{name}.png"
        dom, console, result = render(page, tmp_path, shot, fragment)
        assert not [line for line in console if "Uncaught" in line or "Error" in line], console
        assert 'data-status="ready"' in dom and 'data-broken-images="0"' in dom
        if fragment:  # the unit's visualisation and its strip both decoded
            assert 'data-shown="unit-2"' in dom and 'data-shown-visual="decoded"' in dom
            assert 'data-shown-strip="decoded"' in dom
        assert result.returncode == 0 and shot.is_file()
        with Image.open(shot) as im:
            assert len(np.unique(np.asarray(im.convert("L")))) > 20
        print(f"screenshot: {shot}")


def test_the_cli_visualises_the_best_units_on_dissect_and_on_report(tmp_path, capsys):
    model = tmp_path / "color.py"
    model.write_text(MODEL)
    concepts = fd.datasets.builtin(tmp_path / "concepts", n_images=24, seed=3)
    common = ["--model", f"{model}:make", "--mean", "0", "0", "0", "--std", "1", "1", "1"]
    out = tmp_path / "run"
    assert cli.main(["dissect", *common, "--layers", "pool", "--dataset", str(concepts), "--quantile", "0.05",
                     "--out", str(out), "--quiet", "--visualize", "2"]) == 0
    d = fd.load(out)
    best = sorted(d["pool"].units, key=lambda u: -u["iou"])[:2]
    names = sorted(f"vis_{u['unit']}.png" for u in best)
    assert sorted(p.name for p in (out / "report" / "units_pool").glob("vis_*.png")) == names
    saved = fd.Visualization.load(out / "visualizations" / "pool")
    assert saved.units == [u["unit"] for u in best] and saved.settings["steps"] == 256
    # report --visualize: the model is needed, and must be the dissected one
    report = ["report", "--results", str(out), "--out", str(tmp_path / "again"), "--visualize", "1"]
    assert cli.main(report) == 1
    assert "--visualize needs --model" in capsys.readouterr().err
    other = tmp_path / "other.py"
    other.write_text(MODEL.replace("return ColorDetectors()", "m = ColorDetectors()\n    m.conv.bias.data += 1\n"
                                                             "    return m"))
    assert cli.main([*report, "--model", f"{other}:make"]) == 1
    assert "is not the model the results were computed on" in capsys.readouterr().err
    assert cli.main([*report, "--model", f"{model}:make"]) == 0
    assert [p.name for p in (tmp_path / "again" / "units_pool").glob("vis_*.png")] == [f"vis_{best[0]['unit']}.png"]


def test_the_demo_visualises_five_units_by_default_and_dissect_none():
    from fastdissect.cli.parser import build_parser

    parser = build_parser()
    assert parser.parse_args(["demo", "--out", "x"]).visualize == 5
    assert parser.parse_args(["dissect", "--model", "m", "--dataset", "d", "--layers", "l", "--out", "x"]).visualize == 0
    assert parser.parse_args(["report", "--results", "r", "--out", "x"]).visualize == 0
    assert parser.parse_args(["demo", "--out", "x", "--visualize", "0"]).visualize == 0
