"""fd.dissect decodes a Broden's labels once: packed into the mask cache on first use, read from it by
every later run, packed again when the directory changes; results identical to decoding every run."""

import numpy as np
import pytest

import fastdissect as fd
from fastdissect.datasets import broden as broden_module
from test_pipeline import PLAIN, ColorDetectors
from test_single_pass import assert_same


@pytest.fixture
def concepts(tmp_path):
    return fd.datasets.Broden(fd.datasets.builtin(tmp_path / "concepts", n_images=24, seed=2))


@pytest.fixture
def decodes(monkeypatch):
    """Counts label PNGs decoded."""
    calls = []
    real = broden_module.decode_label_png
    monkeypatch.setattr(broden_module, "decode_label_png", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    return calls


def run(ds, **kw):
    return fd.dissect(ColorDetectors(), ["pool"], ds, batch_size=8, verbose=False, **PLAIN, **kw)


def test_second_run_decodes_no_label_and_results_are_identical(concepts, tmp_path, decodes):
    cache = tmp_path / "cache"
    first = run(concepts, mask_cache=cache)
    packed = len(decodes)
    assert packed > 0
    decodes.clear()
    second = run(concepts, mask_cache=cache)
    assert decodes == []
    third = run(concepts, mask_cache=cache, passes=2)
    assert decodes == []
    decoded_run = run(concepts, mask_cache=False)
    assert len(decodes) == packed  # without the cache every run decodes every label file once
    for r in (second, third, decoded_run):
        assert_same(first, r, ["pool"])
    assert first.identity == decoded_run.identity  # how labels were read is not what was measured
    assert len(list((cache / "masks").iterdir())) == 1


def test_a_changed_data_set_is_packed_again(concepts, tmp_path, decodes):
    cache = tmp_path / "cache"
    run(concepts, mask_cache=cache)
    record = concepts.records[0]
    label = concepts.root / "images" / record["files"][0]
    from PIL import Image

    rgb = np.asarray(Image.open(label).convert("RGB")).copy()
    rgb[:4, :4, :2] = 0  # a corner unlabelled
    Image.fromarray(rgb).save(label)
    changed = fd.datasets.Broden(concepts.root)
    decodes.clear()
    got = run(changed, mask_cache=cache)
    assert decodes  # packed again
    assert_same(got, run(changed, mask_cache=False), ["pool"])


def test_categories_select_their_own_store(concepts, tmp_path):
    cache = tmp_path / "cache"
    some = fd.datasets.Broden(concepts.root, categories=concepts.categories[:1])
    assert_same(run(some, mask_cache=cache), run(some, mask_cache=False), ["pool"])
    assert_same(run(concepts, mask_cache=cache), run(concepts, mask_cache=False), ["pool"])
    assert len(list((cache / "masks").iterdir())) == 2


def test_resume_from_a_checkpoint_made_without_the_cache(concepts, tmp_path):
    ckpt = tmp_path / "ckpt"
    want = run(concepts, mask_cache=False)
    run(concepts, mask_cache=False, checkpoint=ckpt)
    got = run(concepts, mask_cache=tmp_path / "cache", checkpoint=ckpt)  # same identity: resumed, complete
    assert_same(want, got, ["pool"])


def test_bad_mask_cache_is_named(concepts):
    with pytest.raises(ValueError, match="mask_cache must be True, False or a directory, got 1.5"):
        run(concepts, mask_cache=1.5)


def test_default_location_is_the_environment_cache(concepts, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTDISSECT_CACHE", str(tmp_path / "env"))
    run(concepts)
    assert len(list((tmp_path / "env" / "masks").iterdir())) == 1


def test_cli_mask_cache_flags(concepts, tmp_path, capsys):
    from fastdissect.cli import main as cli
    from test_getting_started import MODELS

    toys = tmp_path / "toys.py"
    toys.write_text(MODELS)
    args = ["dissect", "--model", f"{toys}:colors", "--layers", "pool", "--dataset", str(concepts.root),
            "--quantile", "0.05", "--mean", "0", "0", "0", "--std", "1", "1", "1", "--quiet"]
    assert cli.main([*args, "--out", str(tmp_path / "a"), "--mask-cache", str(tmp_path / "cache")]) == 0
    assert len(list((tmp_path / "cache" / "masks").iterdir())) == 1
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--no-mask-cache"]) == 0
    with pytest.raises(SystemExit):
        cli.main([*args, "--out", str(tmp_path / "c"), "--no-mask-cache", "--mask-cache", "x"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_bad_options_are_refused_before_any_packing(concepts, tmp_path, decodes):
    with pytest.raises(ValueError, match="batch_size"):
        fd.dissect(ColorDetectors(), ["pool"], concepts, batch_size=0, verbose=False, mask_cache=tmp_path / "c")
    assert decodes == [] and not (tmp_path / "c").exists()
