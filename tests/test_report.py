"""The HTML report: files, content, and a real browser (headless Chromium from Debian's package)."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fastdissect as fd
import torch
from test_pipeline import PLAIN, ColorDetectors

OUTPUT = Path(__file__).parent / "output"  # screenshots land here (not committed)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    ds = fd.datasets.Broden(fd.datasets.builtin(root / "concepts", n_images=40, seed=2))
    d = fd.dissect(ColorDetectors(), ["conv", "pool"], ds, quantile=0.05, top_k=5, verbose=False, **PLAIN)
    return d, d.report(root / "report", verbose=False), ds


def referenced_images(html: Path):
    return re.findall(r'<img[^>]*src="([^"]+)"', html.read_text())


def test_report_pages_and_images(report):
    d, index, _ = report
    html = index.read_text()
    assert "<script src=" not in html and "http" not in html.replace("http-equiv", "")  # offline: no CDN
    for name, layer in d.items():
        page = index.parent / f"layer_{name}.html"
        text = page.read_text()
        assert text.count('<tr id="unit-') == layer.num_units
        srcs = referenced_images(page)
        figures = 2 if layer.summary["interpretable"] else 1  # per category, and per concept when any
        assert len(srcs) == figures + layer.num_units  # the figures + one strip per unit
        for src in srcs:
            with Image.open(page.parent / src) as im:
                im.load()
                assert im.width > 0
        # a unit's strip shows its top images: 5 tiles of 112 px, each unit's row has an anchor
        with Image.open(page.parent / srcs[figures]) as strip:
            assert strip.height == 112 and strip.width == 5 * 112 + 4 * 2
        assert 'id="unit-0"' in text and "peaks highest" in text
    assert "red" in (index.parent / "layer_pool.html").read_text()
    # a page per unit: its strip, its 5 best concepts by IoU as bars, the way back to its row
    layer = d["pool"]
    unit_page = index.parent / "units_pool" / "unit_0000.html"
    text = unit_page.read_text()
    assert 'href="units_pool/unit_0000.html"' in (index.parent / "layer_pool.html").read_text()
    assert text.count("<tr data-concept=") == 5 and 'href="../layer_pool.html#unit-0"' in text
    iou = layer.scores.iou[0].clone()
    iou[0] = -1
    best = [layer.concept_names[int(c)] for c in iou.topk(5).indices]
    assert [m for m in re.findall(r'<tr data-concept="([^"]+)"', text)] == best
    assert 'src="unit_0000.jpg"' in text and (unit_page.parent / "unit_0000.jpg").is_file()
    for field in ("<dt>run time</dt>", "<dt>map size</dt>", "<dt>concepts</dt>", "<dt>fastdissect</dt>",
                  "<dt>image size</dt>", "<dt>layers</dt>"):  # the header says what was dissected, and how
        assert field in html
    for src in referenced_images(index):
        assert (index.parent / src).is_file()


def test_strip_masks_are_the_thresholded_upsampled_maps(report):
    """The overlay keeps pixels inside the unit's mask and dims the rest, at image resolution."""
    d, index, ds = report
    from fastdissect.report import _overlay
    from fastdissect.torch_backend import upsample

    layer = d["pool"]
    k, j = 0, 0
    image = ds.image(int(layer.top_images[k, j]))
    mask = (upsample(layer.top_maps[k, j], *image.shape[:2]) > float(layer.scores.thresholds[k])).numpy()
    assert mask.any() and not mask.all()
    out = _overlay(image, mask)
    inside = mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
    assert np.array_equal(out[inside], image[inside])
    assert (out[~mask].astype(int) <= image[~mask].astype(int)).all()


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(*args):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--enable-logging=stderr", "--v=0"]
    return subprocess.run([chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


def render(page: Path, tmp_path: Path, screenshot: Path):
    dom = run_chromium(f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=4000", "--dump-dom",
                       page.as_uri())
    shot = run_chromium(f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1400,1600",
                        "--hide-scrollbars", f"--screenshot={screenshot}", page.as_uri())
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    return dom.stdout, console, shot


def assert_renders(page: Path, tmp_path: Path, name: str) -> None:
    """The page renders in headless Chromium with no console error, its script finished and every
    image decoded; the screenshot is saved under tests/output/ (skipped without Chromium)."""
    if chromium() is None:
        pytest.skip("no Chromium (.ci/run installs Debian's chromium)")
    OUTPUT.mkdir(exist_ok=True)
    shot = OUTPUT / f"{name}.png"
    dom, console, result = render(page, tmp_path, shot)
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console
    assert 'data-status="ready"' in dom and 'data-broken-images="0"' in dom
    assert result.returncode == 0 and shot.is_file()
    with Image.open(shot) as im:
        assert len(np.unique(np.asarray(im.convert("L")))) > 20
    print(f"screenshot: {shot}")


@pytest.mark.skipif(chromium() is None, reason="no Chromium (.ci/run installs Debian's chromium)")
def test_report_in_a_real_browser(report, tmp_path):
    d, index, _ = report
    OUTPUT.mkdir(exist_ok=True)
    unit_page = index.parent / "units_pool" / "unit_0000.html"
    for page, expected_rows in [(index, len(d)), (index.parent / "layer_pool.html", d["pool"].num_units),
                                (unit_page, 5)]:
        shot = OUTPUT / f"report_{page.stem}.png" if page != unit_page else OUTPUT / "report_unit_pool_0.png"
        dom, console, result = render(page, tmp_path, shot)
        assert not [line for line in console if "Uncaught" in line or "Error" in line], console
        assert 'data-status="ready"' in dom, "the page's script did not run to the end"
        assert 'data-broken-images="0"' in dom
        rows = len(re.findall(r'<a href="layer_', dom)) if page == index else \
            dom.count("<tr data-concept=") if page == unit_page else dom.count('<tr id="unit-')
        assert rows == expected_rows
        assert result.returncode == 0 and shot.is_file()
        with Image.open(shot) as im:
            assert im.size == (1400, 1600) and len(np.unique(np.asarray(im.convert("L")))) > 20  # not blank
        print(f"screenshot: {shot}")


def test_formula_column_and_formula_mask_outline(tmp_path):
    ds = fd.datasets.Broden(fd.datasets.builtin(tmp_path / "concepts", n_images=24, seed=3))
    d = fd.dissect(ColorDetectors(), ["pool"], ds, quantile=0.05, top_k=3, verbose=False, formula_length=2, **PLAIN)
    index = d.report(tmp_path / "report", verbose=False)
    page = (index.parent / "layer_pool.html").read_text()
    layer = d["pool"]
    f = layer.formulas.formulas[0]
    assert "formula (IoU)" in page and f.to_str(ds.concept_names) in page and "outlined in cyan" in page
    # the formula's mask on a top image is the formula evaluated on its label planes (nearest upsampled)
    from fastdissect.report import formula_mask_of

    i = int(layer.top_images[0, 0])
    sample = ds[i]
    image = ds.image(i)
    got = formula_mask_of(f, sample, sample.labels.shape[1], sample.labels.shape[2])
    dense = fd.pack_masks(labels=torch.from_numpy(sample.labels[None]), image_labels=[sample.image_labels],
                          num_concepts=ds.num_concepts)
    assert np.array_equal(got, f.mask(dense).to_dense()[0, 0].numpy())
    assert formula_mask_of(f, sample, *image.shape[:2]).shape == image.shape[:2]
