"""`fastdissect dissect --labels images|clip`: the command gives what fd.dissect_images and
fd.clip_dissect give for the same inputs (every score, p-value and formula), from each kind of tag
data set (concept data set, folder per class, tags CSV); its files are the results; a flag of another
kind of labels is refused in one line naming it; the labels page renders in a real browser."""

import csv
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import fastdissect as fd
from fastdissect.cli import main as cli
from fastdissect.pipeline.clip_models import TransformersCLIP
from fastdissect.pipeline.image_results import ImageDissection
from fastdissect.pipeline.models import load_model
from test_report import assert_renders

MODELS = '''
import torch

def colours():
    """unit 0 fires where a pixel is redder than green and blue, unit 1 where it is bluer."""
    conv = torch.nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([[1.0, -0.5, -0.5], [-0.5, -0.5, 1.0]])[:, :, None, None]
        conv.bias.zero_()
    return torch.nn.Sequential(conv, torch.nn.ReLU())
'''
WORDS = ["red", "green", "blue", "sky", "grass"]
COLOURS = {"red": (200, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 210)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_labels")
    (root / "toys.py").write_text(MODELS)
    concepts = fd.datasets.builtin(root / "concepts", n_images=24, seed=1)
    rng = np.random.default_rng(0)
    rows = [("image", "tags")]
    for name, rgb in COLOURS.items():  # a folder per class, and the same images in a tags CSV
        (root / "folder" / name).mkdir(parents=True)
        for i in range(6):
            image = np.clip(np.array(rgb) + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / "folder" / name / f"{i}.png")
            rows.append((f"{name}/{i}.png", f"{name};bright" if i % 2 else name))
    with open(root / "tags.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    (root / "words.txt").write_text("\n".join(WORDS) + "\n")
    return root, f"{root / 'toys.py'}:colours", str(concepts)


def dissect(spec, data, out, *extra):
    return cli.main(["dissect", "--model", spec, "--layers", "1", "--dataset", str(data), "--out", str(out),
                     "--quiet", *extra])


def assert_same(cli_result: ImageDissection, api: ImageDissection):
    for name, want in api.items():
        got = cli_result[name]
        for key in ("scores", "values", "p_values"):  # bit for bit; NaN (a tag too rare to rank) where the API has it
            torch.testing.assert_close(getattr(got, key), getattr(want, key), rtol=0, atol=0, equal_nan=True)
        assert got.tag_names == want.tag_names and [str(f) for f in got.formulas] == [str(f) for f in want.formulas]
        if want.formula_values is not None:
            assert torch.equal(got.formula_values, want.formula_values)


def test_optimal_tag_formulas_from_the_command_line_equal_dissect_images(setup, tmp_path):
    root, spec, data = setup
    out = tmp_path / "optimal"
    assert dissect(spec, data, out, "--labels", "images", "--formula-length", "2", "--search", "optimal",
                   "--batch-size", "5") == 0
    api = fd.dissect_images(load_model(spec), ["1"], fd.datasets.Broden(data), formula_length=2, search="optimal",
                            batch_size=5, verbose=False)
    saved = ImageDissection.load(out / "images.safetensors")
    assert_same(saved, api)
    assert saved.identity["search"] == "optimal"
    beam = fd.dissect_images(load_model(spec), ["1"], fd.datasets.Broden(data), formula_length=2, beam_size=1,
                             batch_size=5, verbose=False)
    assert bool((api["1"].formula_values >= beam["1"].formula_values - 1e-12).all())


def test_images_on_a_concept_set_equal_dissect_images(setup, tmp_path, capsys):
    root, spec, data = setup
    out = tmp_path / "images"
    assert dissect(spec, data, out, "--labels", "images", "--formula-length", "2", "--beam-size", "3",
                   "--metric", "auprc", "--reduce", "mean", "--batch-size", "5") == 0
    printed = capsys.readouterr().out
    api = fd.dissect_images(load_model(spec), ["1"], fd.datasets.Broden(data), formula_length=2, beam_size=3,
                            metric="auprc", reduce="mean", batch_size=5, verbose=False)
    saved = ImageDissection.load(out / "images.safetensors")
    assert_same(saved, api)
    assert saved.identity == json.loads(json.dumps(api.identity))
    with open(out / "1-images.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == [u["label"] for u in api["1"].units] and len(rows) == 2
    assert [float(r["auprc"]) for r in rows] == pytest.approx([u["auprc"] for u in api["1"].units], abs=1e-6)
    assert [r["formula"] for r in rows] == [u["formula"] for u in api["1"].units]
    tree = json.loads((out / "labels.json").read_text())
    assert tree["labels"] == "images" and tree["layers"]["1"] == json.loads(json.dumps(api["1"].units))
    assert (out / "report" / "index.html").is_file() and "1: 2 units labelled from tags by auprc" in printed


@pytest.mark.parametrize("source", ["folder", "csv"])
def test_images_from_a_folder_per_class_and_a_tags_csv(setup, tmp_path, source):
    root, spec, _ = setup
    out = tmp_path / source
    if source == "folder":
        tags = fd.datasets.from_image_folder(root / "folder")
        assert dissect(spec, root / "folder", out, "--labels", "images", "--quantile", "0.2", "--metric", "f1") == 0
    else:
        tags = fd.datasets.from_tags_csv(root / "tags.csv", root / "folder")
        assert dissect(spec, root / "tags.csv", out, "--labels", "images", "--images-dir", str(root / "folder"),
                       "--quantile", "0.2", "--metric", "f1") == 0
    api = fd.dissect_images(load_model(spec), ["1"], tags, metric="f1", quantile=0.2, verbose=False)
    saved = ImageDissection.load(out / "images.safetensors")
    assert_same(saved, api)
    assert [u["label"] for u in saved["1"].units] == ["red", "blue"]  # the detectors are what they were built as


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


def tiny_clip(directory):
    """A CLIPModel from a config with random weights and a character-level CLIPTokenizer, saved with
    save_pretrained: what `--clip DIR` loads (nothing is downloaded)."""
    transformers = pytest.importorskip("transformers")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch], vocab[ch + "</w>"] = len(vocab), len(vocab) + 1
    directory.mkdir()
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=8)
    transformers.CLIPModel(cfg).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_clip_equals_clip_dissect_with_the_same_clip(setup, clip_dir, tmp_path, capsys):
    root, spec, data = setup
    out, cache = tmp_path / "clip-out", tmp_path / "emb"
    assert dissect(spec, data, out, "--labels", "clip", "--clip", str(clip_dir), "--concepts",
                   str(root / "words.txt"), "--top-k", "6", "--clip-cache", str(cache)) == 0
    assert "1: 2 units labelled from words by soft_wpmi" in capsys.readouterr().out
    api = fd.clip_dissect(load_model(spec), ["1"], fd.datasets.Broden(data), WORDS,
                          clip=TransformersCLIP.load(str(clip_dir)), top_k=6, verbose=False)
    with open(out / "1-clip.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    want = api["1"].units
    assert [r["label"] for r in rows] == [u["label"] for u in want]
    assert [r["top_words"] for r in rows] == [u["top_words"] for u in want]
    assert [float(r["score"]) for r in rows] == pytest.approx([u["score"] for u in want], abs=1e-6)
    tree = json.loads((out / "labels.json").read_text())
    assert tree["labels"] == "clip" and tree["identity"]["top_k"] == 6 and tree["layers"]["1"] == want
    assert len(list(cache.glob("clip-images-*.safetensors"))) == 1  # the image embeddings, kept for the next run
    again = tmp_path / "again"
    assert dissect(spec, data, again, "--labels", "clip", "--clip", str(clip_dir), "--concepts",
                   str(root / "words.txt"), "--top-k", "6", "--clip-cache", str(cache), "--similarity", "wpmi") == 0
    wpmi = fd.clip_dissect(load_model(spec), ["1"], fd.datasets.Broden(data), WORDS, similarity="wpmi",
                           clip=TransformersCLIP.load(str(clip_dir)), top_k=6, verbose=False)
    assert json.loads((again / "labels.json").read_text())["layers"]["1"] == wpmi["1"].units


class StandInOpenCLIP(torch.nn.Module):
    """An open_clip-shaped model (encode_image, encode_text, visual.image_size) for --clip open_clip:..."""

    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Linear(3, 4)
        self.visual.image_size = (16, 16)
        self.text = torch.nn.Embedding(32, 4)

    def encode_image(self, x):
        return self.visual(x.mean(dim=(2, 3)))

    def encode_text(self, tokens):
        return self.text(tokens).mean(dim=1)


def stand_in_tokenizer(words):
    return torch.tensor([[ord(ch) % 32 for ch in w[:4].ljust(4)] for w in words])


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_open_clip_weights_are_read_from_the_file_without_running_code(setup, tmp_path, monkeypatch, suffix):
    import sys
    import types

    from fastdissect.pipeline.clip_models import OpenCLIP

    root, spec, data = setup
    built = []
    module = types.ModuleType("open_clip")
    module.create_model = lambda arch, pretrained=None: built.append((arch, pretrained)) or StandInOpenCLIP()
    module.get_tokenizer = lambda arch: stand_in_tokenizer
    monkeypatch.setitem(sys.modules, "open_clip", module)
    torch.manual_seed(7)
    trained = StandInOpenCLIP()  # the weights in the file: not the ones create_model starts from
    weights = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        import safetensors.torch
        safetensors.torch.save_file(trained.state_dict(), str(weights))
    else:
        torch.save(trained.state_dict(), weights)
    out = tmp_path / "out"
    assert dissect(spec, data, out, "--labels", "clip", "--clip", f"open_clip:Stand-In:{weights}", "--concepts",
                   str(root / "words.txt"), "--top-k", "6") == 0
    assert built == [("Stand-In", None)]  # open_clip never fetched weights: they came from the file
    api = fd.clip_dissect(load_model(spec), ["1"], fd.datasets.Broden(data), WORDS, top_k=6, verbose=False,
                          clip=OpenCLIP(trained, stand_in_tokenizer, image_size=16))
    assert json.loads((out / "labels.json").read_text())["layers"]["1"] == api["1"].units


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastdissect: error: "), err
    return err[0]


@pytest.mark.parametrize("extra, message", [
    (["--labels", "images", "--union", "lite"], "--union does not apply to --labels images (it is an option of "
                                                "--labels masks)"),
    (["--labels", "images", "--control", "permuted"], "--control does not apply to --labels images"),
    (["--labels", "images", "--formula-length", "2", "--formula-layers", "1"],
     "--formula-layers does not apply to --labels images"),
    (["--labels", "clip", "--search", "optimal"], "--search does not apply to --labels clip"),
    (["--labels", "images", "--metric", "recall"], "--metric recall is not a metric of --labels images"),
    (["--labels", "images", "--clip", "x"], "--clip does not apply to --labels images (it is an option of "
                                            "--labels clip)"),
    (["--reduce", "mean"], "--reduce does not apply to --labels masks (it is an option of --labels images)"),
    (["--metric", "auroc"], "--metric auroc is not a metric of --labels masks"),
    (["--clip", "x", "--concepts", "w.txt"], "--clip does not apply to --labels masks"),
    (["--images-dir", "x"], "--images-dir does not apply to --labels masks"),
    (["--labels", "clip", "--concepts", "w.txt"], "--labels clip needs --clip"),
    (["--labels", "clip", "--clip", "x"], "--labels clip needs --concepts"),
    (["--labels", "clip", "--clip", "x", "--concepts", "w.txt", "--formula-length", "2"],
     "--formula-length does not apply to --labels clip (it is an option of --labels masks or images)"),
    (["--labels", "clip", "--clip", "x", "--concepts", "w.txt", "--checkpoint", "ck"],
     "--checkpoint does not apply to --labels clip"),
])
def test_a_flag_of_other_labels_is_refused_by_name(setup, tmp_path, capsys, extra, message):
    root, spec, data = setup
    assert dissect(spec, data, tmp_path / "out", *extra) == 1
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()  # refused before --out is touched


def test_bad_data_and_clip_are_named(setup, clip_dir, tmp_path, capsys):
    root, spec, data = setup
    assert dissect(spec, root / "tags.csv", tmp_path / "a", "--labels", "images") == 1
    assert "tags CSV needs --images-dir" in one_line_error(capsys)
    assert dissect(spec, root / "folder", tmp_path / "b", "--labels", "images", "--images-dir", str(root)) == 1
    assert "with --images-dir, expected a tags CSV file" in one_line_error(capsys)
    assert dissect(spec, data, tmp_path / "c", "--labels", "clip", "--clip", str(tmp_path / "no-clip"),
                   "--concepts", str(root / "words.txt")) == 1
    assert "no CLIP model" in one_line_error(capsys)
    assert dissect(spec, data, tmp_path / "d", "--labels", "clip", "--clip", "open_clip:ViT-B-32:missing.pt",
                   "--concepts", str(root / "words.txt")) == 1
    assert "open_clip:ARCH:WEIGHTS_FILE with a local weights file" in one_line_error(capsys)
    assert dissect(spec, data, tmp_path / "e", "--labels", "clip", "--clip", str(clip_dir), "--concepts",
                   str(root / "words.txt"), "--top-k", "1000") == 1
    assert "--top-k 1000 is more than the 24 images" in one_line_error(capsys)


def test_masks_stay_todays_dissection(setup, tmp_path):
    root, spec, data = setup
    assert dissect(spec, data, tmp_path / "m", "--labels", "masks") == 0
    d = fd.load(tmp_path / "m")
    want = fd.dissect(load_model(spec), ["1"], fd.datasets.Broden(data), verbose=False)
    assert d["1"].metric == "iou"  # --metric and --quantile left alone: iou and 0.005, as before
    for key in ("thresholds", "iou"):
        assert torch.equal(getattr(d["1"].scores, key), getattr(want["1"].scores, key)), key


def test_the_labels_page_renders_in_a_real_browser(setup, clip_dir, tmp_path):
    root, spec, data = setup
    assert dissect(spec, data, tmp_path / "img", "--labels", "images", "--formula-length", "2") == 0
    page = tmp_path / "img" / "report" / "index.html"
    html = page.read_text()
    units = ImageDissection.load(tmp_path / "img" / "images.safetensors")["1"].units
    rows = re.findall(r'<tr id="unit-1-(\d+)" data-label="([^"]*)"', html)
    assert rows == [(str(u["unit"]), u["label"]) for u in units]
    assert "p-value" in html and "formula (auroc)" in html and all(u["formula"] in html for u in units)
    assert_renders(page, tmp_path, "labels_images")
    assert dissect(spec, data, tmp_path / "clip-out", "--labels", "clip", "--clip", str(clip_dir), "--concepts",
                   str(root / "words.txt"), "--top-k", "5") == 0
    page = tmp_path / "clip-out" / "report" / "index.html"
    assert "best words" in page.read_text() and "soft_wpmi" in page.read_text()
    assert_renders(page, tmp_path, "labels_clip")


def test_write_label_report_refuses_a_mask_dissection(setup, tmp_path):
    root, spec, data = setup
    d = fd.dissect(load_model(spec), ["1"], fd.datasets.Broden(data), verbose=False)
    with pytest.raises(TypeError, match="fd.write_report writes the page of fd.dissect's results"):
        fd.write_label_report(d, tmp_path)


def test_label_counts_most_frequent_first_ties_by_name():
    from collections import Counter

    from fastdissect.report.labels import label_counts

    rng = np.random.default_rng(3)
    units = [{"label": str(label)} for label in rng.choice(list("abcdefg"), size=200)]
    counts = label_counts(units)
    assert dict(counts) == Counter(u["label"] for u in units)
    assert counts == sorted(counts, key=lambda kv: (-kv[1], kv[0]))
    assert label_counts([{"label": "b"}, {"label": "a"}]) == [("a", 1), ("b", 1)]
