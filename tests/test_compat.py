"""fastdissect.compat.netdissect_lite against a plain transcription of NetDissect-Lite's published tally.

The reference below is written from Lite's algorithm (a loop over images and units, Pillow's resize
on each map, bincounts over the concatenated planes), not from fastdissect's code.
"""

import csv
import io

import numpy as np
import pytest
from PIL import Image

from fastdissect.compat import netdissect_lite as lite
from fastdissect.compat.pillow import resize_bilinear
from test_datasets import CATEGORIES, LABELS, write_fixture


def reference_tally(features, thresholds, root, categories):
    """Lite's FeatureOperator.tally, transcribed: returns (rows, truth, both, units_cat)."""
    index = list(csv.DictReader(open(root / "index.csv")))
    cats = [c for c in CATEGORIES if c in categories]
    index = [r for r in index if any(r[c] for c in cats)]
    L = max(LABELS) + 1
    names = ["-"] + [""] * (L - 1)
    for n, (name, _) in LABELS.items():
        names[n] = name
    primary = []
    for i in range(L):
        options = [(LABELS[i][1].get(c, 0) if i in LABELS and c in LABELS[i][1] else 0, ic) for ic, c in enumerate(cats)]
        primary.append(max(options)[1])
    primary = np.array(primary)
    labelcat = np.zeros((L, len(cats)))
    labelcat[np.arange(L), primary] = 1
    K = features.shape[1]
    both, units, units_cat, truth = np.zeros((K, L)), np.zeros(K), np.zeros((K, len(cats))), np.zeros(L)
    for n, row in enumerate(index):
        sh, sw = int(row["sh"]), int(row["sw"])
        scalars, planes = [], []
        for c in cats:
            items = [t for t in row[c].split(";") if t]
            if all(t.isdigit() for t in items):
                scalars += [int(t) for t in items]
            else:
                for t in items:
                    rgb = np.asarray(Image.open(root / "images" / t).convert("RGB")).astype(np.int64)
                    planes.append(rgb[..., 0] + 256 * rgb[..., 1])
        for s in scalars:
            truth[s] += sh * sw
        if planes:
            pixels = np.stack(planes)
            t = np.bincount(pixels.ravel())
            t[0] = 0
            truth[:len(t)] += t
        for k in range(K):
            fmap = features[n, k]
            if fmap.max() > thresholds[k]:
                up = np.asarray(Image.fromarray(fmap.astype(np.float32), "F").resize((sw, sh), Image.BILINEAR))
                idx = np.argwhere(up > thresholds[k])
                units[k] += len(idx)
                tally_cat = np.zeros(len(cats))
                if planes:
                    bt = np.bincount(pixels[:, idx[:, 0], idx[:, 1]].ravel())
                    if len(bt):
                        bt[0] = 0
                    tally_cat = bt[None, :] @ labelcat[:len(bt)]
                    tally_cat = tally_cat[0]
                    both[k, :len(bt)] += bt
                for s in scalars:
                    tally_cat = tally_cat + labelcat[s]
                    both[k, s] += len(idx)
                units_cat[k] += len(idx) * (tally_cat > 0)
    units_label = units_cat @ labelcat.T
    iou = both / (units_label + truth[None, :] - both + 1e-10)
    pciou = np.array([iou * (primary == ci)[None, :] for ci in range(len(cats))])
    label = pciou.argmax(axis=2)
    score = pciou[np.arange(len(cats))[:, None], np.arange(K)[None, :], label]
    best = score.argsort(axis=0)[::-1]
    rows = []
    for unit in score.max(axis=0).argsort()[::-1]:
        r = {"unit": unit + 1, "category": cats[best[0, unit]], "label": names[label[best[0, unit], unit]],
             "score": score[best[0, unit], unit]}
        for ci, c in enumerate(cats):
            j = label[ci, unit]
            r.update({f"{c}-label": names[j], f"{c}-truth": truth[j], f"{c}-activation": units_label[unit, j],
                      f"{c}-intersect": both[unit, j], f"{c}-iou": score[ci, unit]})
        rows.append(r)
    return rows


@pytest.fixture
def broden(tmp_path, rng):
    root = tmp_path / "broden"
    write_fixture(root, rng)
    return root


@pytest.mark.parametrize("map_size", [3, 4, 9])  # upsampled 3 -> 6 and 4 -> 6, downsampled 9 -> 6
@pytest.mark.parametrize("categories", [None, ["object", "part", "scene"]])
def test_tally_equals_the_lite_transcription(broden, rng, tmp_path, map_size, categories):
    features = np.maximum(rng.standard_normal((5, 7, map_size, map_size)), 0)
    features[:, 6] = 0  # a dead unit
    thresholds = lite.quantile_threshold(features, 0.2)
    out = tmp_path / "tally.csv"
    rows = lite.tally(features, thresholds, broden, categories=categories, output_csv=out, progress=False)
    want = reference_tally(features, thresholds, broden, categories or CATEGORIES)
    assert [list(r) for r in rows] == [list(r) for r in want]
    for got, ref in zip(rows, want):
        for key in ref:
            assert got[key] == ref[key] or (isinstance(ref[key], float) and np.isnan(ref[key])), (key, got, ref)
    buf = io.StringIO()
    w = csv.DictWriter(buf, list(want[0]))
    w.writeheader()
    w.writerows(want)
    assert out.read_bytes() == buf.getvalue().encode()
    assert sum(r["score"] > 0 for r in rows) > 0


def test_quantile_threshold_reads_level_994_of_999_with_hazen(rng):
    features = rng.standard_normal((40, 3, 5, 5))
    want = np.quantile(features.transpose(1, 0, 2, 3).reshape(3, -1), 994 / 999, axis=1, method="hazen")
    np.testing.assert_array_equal(lite.quantile_threshold(features), want)
    np.testing.assert_array_equal(lite.quantile_threshold(features, chunk=7), want)


def test_memmap_features_larger_than_a_chunk(broden, rng, tmp_path):
    features = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float64, shape=(5, 4, 3, 3))
    features[:] = np.maximum(rng.standard_normal((5, 4, 3, 3)), 0)
    t = lite.quantile_threshold(features, 0.1, chunk=2)
    rows = lite.tally(features, t, broden, progress=False)
    assert rows == lite.tally(np.array(features), t, broden, progress=False)


def test_pillow_resize_matches_pillow(rng):
    for h, w, H, W in [(7, 7, 112, 112), (7, 7, 113, 113), (13, 9, 56, 30), (200, 150, 112, 112), (9, 30, 20, 7)]:
        m = rng.standard_normal((h, w)).astype(np.float32)
        want = np.asarray(Image.fromarray(m, "F").resize((W, H), Image.BILINEAR))
        assert np.array_equal(resize_bilinear(m, H, W), want)


def test_errors(broden, rng):
    with pytest.raises(ValueError, match=r"features hold 4 images but .* has 5 images"):
        lite.tally(np.zeros((4, 2, 3, 3)), [0, 0], broden, progress=False)
    with pytest.raises(ValueError, match=r"thresholds must have shape \(2,\)"):
        lite.tally(np.zeros((5, 2, 3, 3)), [0, 0, 0], broden, progress=False)
    with pytest.raises(TypeError, match="features must be floats"):
        lite.quantile_threshold(np.zeros((5, 2, 3, 3), dtype=np.int64))


def test_upsampling_runs_on_the_fused_kernel(broden, rng, monkeypatch):
    calls = []
    real = lite._tally_kernel
    monkeypatch.setattr(lite, "_tally_kernel", lambda *a, **k: calls.append(1) or real(*a, **k))
    features = np.maximum(rng.standard_normal((5, 3, 3, 3)), 0)
    t = lite.quantile_threshold(features, 0.2)
    rows = lite.tally(features, t, broden, progress=False)
    assert calls and rows == reference_tally(features, t, broden, CATEGORIES)
    lite.tally(np.maximum(rng.standard_normal((5, 3, 9, 9)), 0), t, broden, progress=False)
    assert len(calls) == 1  # 9x9 maps shrink to 6x6: Pillow itself resizes them


def test_dissect_iou_equals_a_transcription_of_its_definition(rng):
    """davidbau/dissect: grid_sample upsampling, the 0.99 level of upsampled values, and
    iou_from_conditional_indicator_mean (isect / (act + gt - isect) in pixel fractions)."""
    import torch

    from fastdissect.compat import dissect as dc

    acts = torch.from_numpy(np.maximum(rng.standard_normal((6, 5, 7, 7)), 0)).float()
    seg = torch.from_numpy(rng.integers(0, 9, size=(6, 2, 56, 56)))
    seg[:, 1] = torch.where(torch.from_numpy(rng.random((6, 56, 56)) < 0.7), 0, seg[:, 1])
    up = dc.upsampler((56, 56), (7, 7))
    batches = lambda: acts.split(4)  # noqa: E731
    levels = dc.quantile_levels(batches, up, 0.01)
    got = dc.iou(lambda: zip(acts.split(4), seg.split(4)), up, levels, num_concepts=9)

    # the transcription: dissect's grid by its formula, then the conditional means
    s = 56 / 7
    t = (torch.arange(56, dtype=torch.float32) - (0.5 * s - 0.5)) * (2 / (s * 6)) - 1
    grid = torch.stack((t[None, :].expand(56, 56), t[:, None].expand(56, 56)), 2)[None].expand(6, 56, 56, 2)
    hacts = torch.nn.functional.grid_sample(acts, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    values = hacts.permute(1, 0, 2, 3).reshape(5, -1).double().numpy()
    level = np.quantile(values, 0.99, axis=1)
    np.testing.assert_array_equal(levels.numpy(), level)
    ind = (hacts.double() > torch.from_numpy(level)[None, :, None, None]).numpy()
    seg_np = seg.numpy()
    total = 6 * 56 * 56
    act = ind.reshape(6, 5, -1).transpose(1, 0, 2).reshape(5, -1).mean(axis=1)
    want = np.zeros((5, 9))
    for c in range(1, 9):
        has = (seg_np == c).any(axis=1)              # (6, 56, 56): a pixel counts once
        gt = has.sum() / total
        if gt == 0:
            continue
        cond = ind.transpose(1, 0, 2, 3)[:, has].mean(axis=1)
        isect = cond * gt
        want[:, c] = isect / (act + gt - isect)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=0)
    assert (got[:, 1:] > 0).any()


# ---- compat.compexp against a transcription of compexp's tally (vision/dissection/neuron.py)
def compexp_reference(features, thresholds, root, categories, length, beam_size):
    """compexp's masks (MaskCatalog: label planes OR-ed, scalars broadcast, label 0 skipped), its unit
    masks (PIL BILINEAR resize where the map's max exceeds T), then its beam search (reference.py)."""
    import reference

    data = lite.LiteData(root, categories)
    n = len(data.rows)
    sh, sw = data.rows[0][1:3]
    dense = np.zeros((n, data.num_labels, sh, sw), dtype=bool)
    for i in range(n):
        planes, scalars, _ = data.labels(i)
        for plane in planes:
            for feat in np.unique(plane):
                if feat != 0:
                    dense[i, feat] |= plane == feat
        for s in scalars:
            if s != 0:
                dense[i, s] = True
    rows = []
    for u in range(features.shape[1]):
        unit = np.zeros((n, sh, sw), dtype=bool)
        for i in range(n):
            if features[i, u].max() > thresholds[u]:
                up = np.array(Image.fromarray(features[i, u].astype(np.float32)).resize((sw, sh), Image.BILINEAR))
                unit[i] = up > thresholds[u]
        rows.append(reference.beam_search(unit, dense, length, beam_size))
    return rows, data


@pytest.mark.parametrize("length,beam_size", [(1, 3), (3, 5)])
def test_compexp_equals_the_transcription(broden, rng, tmp_path, length, beam_size):
    from fastdissect.compat import compexp
    import reference

    features = np.maximum(rng.standard_normal((5, 6, 3, 3)), 0).astype(np.float32)
    features[:, 5] = 0  # a dead unit
    thresholds = lite.quantile_threshold(features, 0.2)
    out = tmp_path / "tally_layer.csv"
    rows = compexp.tally(features, thresholds, broden, categories=CATEGORIES, length=length, beam_size=beam_size,
                         output_csv=out, progress=False)
    want, data = compexp_reference(features, thresholds, broden, CATEGORIES, length, beam_size)
    assert [r["unit"] for r in rows] == list(range(6))
    for row, ref in zip(rows, want):
        if ref is None:
            assert (row["label"], row["score"], row["length"]) == ("NONE", 0.0, 1)
            continue
        formula, score, single, single_score = ref
        name = lambda t: data.names[int(t)] if t.isdigit() else t  # noqa: E731
        text = reference.formula_text(formula)
        assert row["label"] == " ".join(name(t) for t in text.replace("(", "( ").replace(")", " )").split()) \
            .replace("( ", "(").replace(" )", ")")
        assert row["score"] == pytest.approx(score, rel=1e-12)
        assert row["label_noncomp"] == data.names[single[1]] and row["score_noncomp"] == pytest.approx(single_score)
        assert row["length"] == reference.formula_len(formula)
    header = out.read_text().splitlines()[0]
    assert header == "unit,category,label,score,length,label_noncomp,category_noncomp,score_noncomp"
    assert sum(r["score"] > 0 for r in rows) > 0
