"""The HTML report: files, content, and a real browser (headless Chromium from Debian's package)."""

import io
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
    return d, fd.write_report(d, root / "report", verbose=False), ds


def referenced_images(html: Path):
    return re.findall(r'<img[^>]*src="([^"]+)"', html.read_text())


def strips_of(page: Path) -> list[dict]:
    """Each unit's strip on a page: its sheet, where it lies in it and its size."""
    tags = re.findall(r'<img class="strip"[^>]*>', page.read_text())
    attr = lambda tag, name: re.search(f'{name}="([^"]+)"', tag).group(1)  # noqa: E731
    return [{"src": attr(t, "src"), "width": int(attr(t, "width")), "height": int(attr(t, "height")),
             "y": int(re.search(r"object-position: 0 -(\d+)px", t).group(1))} for t in tags]


def unit_section(page: Path, unit: int) -> str:
    html = page.read_text()
    start = html.index(f'<section class="unit" id="unit-{unit}">')
    return html[start:html.index("</section>", start)]


def test_report_pages_and_images(report):
    d, index, ds = report
    from fastdissect.report.pages import strip_image

    html = index.read_text()
    assert "<script src=" not in html and "http" not in html.replace("http-equiv", "")  # offline: no CDN
    for name, layer in d.items():
        page = index.parent / f"layer_{name}.html"
        text = page.read_text()
        assert text.count('<tr id="unit-') == layer.num_units
        srcs = referenced_images(page)
        figures = 2 if layer.summary["interpretable"] else 1  # per category, and per concept when any
        assert len(srcs) == figures + layer.num_units  # the figures + one strip per unit
        for src in set(srcs):
            with Image.open(page.parent / src) as im:
                im.load()
                assert im.width > 0
        # a unit's strip: 5 tiles of 112 px, its rows of a sheet of up to 64 units; it is the strip
        # strip_image draws (up to JPEG's loss)
        strips = strips_of(page)
        assert [(s["width"], s["height"]) for s in strips] == [(5 * 112 + 4 * 2, 112)] * layer.num_units
        for k in (0, layer.num_units - 1):
            with Image.open(page.parent / strips[k]["src"]) as sheet:
                assert sheet.height == 112 * min(64, layer.num_units) and sheet.width == strips[k]["width"]
                y = strips[k]["y"]
                shown = np.asarray(sheet.convert("RGB"))[y:y + 112, :strips[k]["width"]].astype(int)
            alone = io.BytesIO()  # the same strip encoded on its own: JPEG's loss is the same in the sheet
            strip_image(layer, k, ds).save(alone, "JPEG", quality=85)
            with Image.open(alone) as im:
                drawn = np.asarray(im.convert("RGB")).astype(int)
            assert shown.shape == drawn.shape and np.abs(shown - drawn).mean() < 0.5
        assert 'id="unit-0"' in text and "peaks highest" in text
    assert "red" in (index.parent / "layer_pool.html").read_text()
    # one page for a layer's units: a section each, its strip, its 5 best concepts by IoU as bars,
    # the way back to its row; the layer page links each unit to its section
    layer = d["pool"]
    unit_page = index.parent / "units_pool" / "units.html"
    assert 'href="units_pool/units.html#unit-0"' in (index.parent / "layer_pool.html").read_text()
    assert unit_page.read_text().count('<section class="unit"') == layer.num_units
    text = unit_section(unit_page, 0)
    assert text.count("<tr data-concept=") == 5 and 'href="../layer_pool.html#unit-0"' in text
    iou = layer.scores.iou[0].clone()
    iou[0] = -1
    best = [layer.concept_names[int(c)] for c in iou.topk(5).indices]
    assert [m for m in re.findall(r'<tr data-concept="([^"]+)"', text)] == best
    assert strips_of(index.parent / "layer_pool.html")[0]["src"] == "units_pool/" + strips_of(unit_page)[0]["src"]
    for field in ("<dt>run time</dt>", "<dt>map size</dt>", "<dt>concepts</dt>", "<dt>fastdissect</dt>",
                  "<dt>image size</dt>", "<dt>layers</dt>"):  # the header says what was dissected, and how
        assert field in html
    for src in referenced_images(index):
        assert (index.parent / src).is_file()


def test_strip_masks_are_the_thresholded_upsampled_maps(report):
    """Each tile: the image at 112 px, kept inside the unit's mask (its top map upsampled to the tile
    and thresholded, as the reference computes it) and dimmed outside, the mask outlined in yellow."""
    import reference
    from fastdissect.report.pages import strip_image

    d, _, ds = report
    layer = d["pool"]
    k = 0
    strip = np.asarray(strip_image(layer, k, ds))
    seen = 0
    for j, i in enumerate(layer.top_images[k].tolist()):
        thumb = np.asarray(Image.fromarray(ds.image(i)).resize((112, 112), Image.BILINEAR))
        tile = strip[:, j * 114:j * 114 + 112]
        mask = reference.upsample(layer.top_maps[k, j].numpy(), 112, 112) > float(layer.scores.thresholds[k])
        padded = np.pad(mask, 1)
        inside = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        assert np.array_equal(tile[inside], thumb[inside])
        assert np.array_equal(tile[~mask], (thumb[~mask] * np.float32(0.3)).astype(np.uint8))
        assert (tile[mask & ~inside] == (255, 212, 59)).all()
        seen += int(mask.any() and not mask.all())
    assert seen > 0  # some tile has a mask with an inside and an outside
    assert (strip[:, 112:114] == 255).all()  # the gap between tiles
    with pytest.raises(ValueError, match="unit must be in"):
        strip_image(layer, layer.num_units, ds)


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(*args):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--enable-logging=stderr", "--v=0"]
    return subprocess.run([chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


def render(page: Path, tmp_path: Path, screenshot: Path, fragment: str = ""):
    dom = run_chromium(f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=4000", "--dump-dom",
                       page.as_uri() + fragment)
    shot = run_chromium(f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1400,1600",
                        "--hide-scrollbars", f"--screenshot={screenshot}", page.as_uri() + fragment)
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
    unit_page = index.parent / "units_pool" / "units.html"
    for page, expected_rows in [(index, len(d)), (index.parent / "layer_pool.html", d["pool"].num_units),
                                (unit_page, d["pool"].num_units)]:
        shot = OUTPUT / f"report_{page.stem}.png" if page != unit_page else OUTPUT / "report_unit_pool_0.png"
        dom, console, result = render(page, tmp_path, shot, "#unit-0" if page == unit_page else "")
        assert not [line for line in console if "Uncaught" in line or "Error" in line], console
        assert 'data-status="ready"' in dom, "the page's script did not run to the end"
        assert 'data-broken-images="0"' in dom
        rows = len(re.findall(r'<a href="layer_', dom)) if page == index else \
            dom.count('<section class="unit"') if page == unit_page else dom.count('<tr id="unit-')
        assert rows == expected_rows
        if page == unit_page:  # the address's unit is the one shown, and its strip decoded
            assert 'data-shown="unit-0"' in dom and 'data-shown-strip="decoded"' in dom
        assert result.returncode == 0 and shot.is_file()
        with Image.open(shot) as im:
            assert im.size == (1400, 1600) and len(np.unique(np.asarray(im.convert("L")))) > 20  # not blank
        print(f"screenshot: {shot}")


def test_formula_column_and_formula_mask_outline(tmp_path):
    ds = fd.datasets.Broden(fd.datasets.builtin(tmp_path / "concepts", n_images=24, seed=3))
    d = fd.dissect(ColorDetectors(), ["pool"], ds, quantile=0.05, top_k=3, verbose=False, formula_length=2, **PLAIN)
    index = fd.write_report(d, tmp_path / "report", verbose=False)
    page = (index.parent / "layer_pool.html").read_text()
    layer = d["pool"]
    f = layer.formulas.formulas[0]
    assert "formula (IoU)" in page and f.to_str(ds.concept_names) in page and "outlined in cyan" in page
    # the formula's mask on a top image is the formula evaluated on its label planes (nearest upsampled)
    from fastdissect.report.draw import FormulaOutlines

    i = int(layer.top_images[0, 0])
    sample = ds[i]
    image = ds.image(i)
    outlines = FormulaOutlines({i: (sample.labels, sample.image_labels)})
    got = outlines.mask(f, i, sample.labels.shape[1], sample.labels.shape[2])
    dense = fd.pack_masks(labels=torch.from_numpy(sample.labels[None]), image_labels=[sample.image_labels],
                          num_concepts=ds.num_concepts)
    assert np.array_equal(got, fd.formula_mask(f, dense).to_dense()[0, 0].numpy())
    assert outlines.mask(f, i, *image.shape[:2]).shape == image.shape[:2]


def test_formula_outlines_resize_each_leaf_once_and_equal_the_resized_formula(tmp_path):
    """Leaves resized one by one, then joined, equal the joined mask resized (nearest picks pixels), at
    sizes up and down, for formulas with AND, OR, NOT and image-level concepts."""
    from PIL import Image

    from fastdissect.core.formula import And, Leaf, Not, Or
    from fastdissect.report.draw import FormulaOutlines

    ds = fd.datasets.Broden(fd.datasets.builtin(tmp_path / "concepts", n_images=6, seed=4))
    samples = {i: ds[i] for i in range(len(ds))}
    assert all(ds.image_labels(i) == samples[i].image_labels for i in samples)
    rng = np.random.default_rng(0)
    outlines = FormulaOutlines({i: (ds.labels(i), ds.image_labels(i)) for i in samples})
    for trial in range(40):
        i = int(rng.integers(len(ds)))
        present = sorted({int(c) for c in np.unique(samples[i].labels) if c} | set(samples[i].image_labels))
        a, b, c = (Leaf(int(rng.choice(present if rng.random() < 0.8 else range(1, ds.num_concepts))))
                   for _ in range(3))
        f = [And(Or(a, b), Not(c)), Or(And(a, Not(b)), c), Not(Or(a, b)), a][trial % 4]
        dense = fd.pack_masks(labels=torch.from_numpy(samples[i].labels[None]),
                              image_labels=[samples[i].image_labels], num_concepts=ds.num_concepts)
        whole = fd.formula_mask(f, dense).to_dense()[0, 0].numpy()
        h, w = [(7, 9), (40, 33), (112, 150)][trial % 3]
        want = np.asarray(Image.fromarray(whole.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
        assert np.array_equal(outlines.mask(f, i, h, w), want), (trial, str(f))
    assert len(outlines.leaves) < 3 * 40  # leaves shared across formulas


def test_mask_overlay_at_image_resolution():
    """Explained predictions draw a unit's mask over the whole image as the strips draw tiles."""
    from fastdissect.report.draw import mask_overlay

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    mask = np.zeros((30, 41), dtype=bool)
    mask[4:20, 0:25] = True  # reaches the left edge of the frame
    out = mask_overlay(image, mask)
    inside = np.zeros_like(mask)
    inside[5:19, 1:24] = True
    assert np.array_equal(out[inside], image[inside])
    assert np.array_equal(out[~mask], (image[~mask] * np.float32(0.3)).astype(np.uint8))
    assert (out[mask & ~inside] == (255, 212, 59)).all()
    with pytest.raises(ValueError, match=r"an \(H, W\) mask"):
        mask_overlay(image, mask[:, :40])


def test_the_tile_cache_keeps_earlier_layers_only_within_its_budget(report, monkeypatch):
    """Tiles stay for later layers while the cache is small; beyond its budget only the current
    layer's top images are kept (memory bounded by one layer's)."""
    import fastdissect.report.pages as R

    _, _, ds = report
    cache: dict = {}
    R._thumbnails(ds, [0, 1, 2], cache, 112)
    R._thumbnails(ds, [3], cache, 112)
    assert sorted(cache) == [(0, 112), (1, 112), (2, 112), (3, 112)]
    monkeypatch.setattr(R, "THUMB_CACHE_BYTES", 1)
    R._thumbnails(ds, [2, 4], cache, 112)
    assert sorted(cache) == [(2, 112), (4, 112)]


def test_unit_page_shows_labels_finer_than_the_strips_at_their_resolution(tmp_path):
    """With 128 px labels the layer page keeps 112 px strips and the unit page shows 128 px ones
    (sheets full_NNNN.jpg, strips every 128 rows: a multiple of JPEG's blocks)."""
    from fastdissect.report.pages import strip_image

    ds = fd.datasets.Broden(fd.datasets.builtin(tmp_path / "concepts", n_images=12, seed=4, image_size=256,
                                                label_size=128))
    d = fd.dissect(ColorDetectors(), ["pool"], ds, quantile=0.05, top_k=3, verbose=False, **PLAIN)
    index = fd.write_report(d, tmp_path / "report", verbose=False)
    layer_strips = strips_of(index.parent / "layer_pool.html")
    unit_strips = strips_of(index.parent / "units_pool" / "units.html")
    assert {s["height"] for s in layer_strips} == {112} and {s["height"] for s in unit_strips} == {128}
    assert [s["y"] for s in unit_strips] == [128 * k for k in range(d["pool"].num_units)]
    k = d["pool"].num_units - 1
    with Image.open(index.parent / "units_pool" / unit_strips[k]["src"]) as sheet:
        assert unit_strips[k]["src"] == "full_0000.jpg" and sheet.height == 128 * d["pool"].num_units
        shown = np.asarray(sheet.convert("RGB"))[128 * k:128 * (k + 1), :unit_strips[k]["width"]].astype(int)
    alone = io.BytesIO()
    strip_image(d["pool"], k, ds, height=128).save(alone, "JPEG", quality=85)
    with Image.open(alone) as im:
        assert np.abs(shown - np.asarray(im.convert("RGB")).astype(int)).mean() < 0.5
