"""CLIP-Dissect with a stand-in CLIP whose embedding of an image is its mean colour: a red detector is
labelled "red" from one forward pass of the target model, image embeddings are cached, inputs checked."""

import numpy as np
import pytest
import torch

import fastdissect as fd
from test_dissect_images import red_detector

WORDS = ["red", "green", "blue", "white", "black"]
COLOURS = {"red": (1, -0.5, -0.5), "green": (-0.5, 1, -0.5), "blue": (-0.5, -0.5, 1), "white": (0.3, 0.3, 0.3),
           "black": (-0.3, -0.3, -0.3)}


class MeanColour:
    """A stand-in CLIP: an image's embedding is its centred mean colour, a word's its colour."""

    def __init__(self):
        self.image_calls = 0

    def encode_images(self, images):
        self.image_calls += len(images)
        return torch.tensor(np.stack([im.reshape(-1, 3).mean(0) / 255 - 0.45 for im in images]))

    def encode_texts(self, words):
        return torch.tensor([COLOURS[w] for w in words], dtype=torch.float64)

    def fingerprint(self):
        return "mean-colour-v1"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fd.datasets.Broden(fd.datasets.builtin(tmp_path_factory.mktemp("clip") / "d", n_images=48))


def test_a_red_detector_is_labelled_red(data, tmp_path):
    model, clip = red_detector(), MeanColour()
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    d = fd.clip_dissect(model, ["1"], data, WORDS, clip=clip, top_k=10, cache=tmp_path, verbose=False)
    assert sum(calls) == len(data)
    assert d["1"].units[0]["label"] == "red" and d["1"].units[1]["label"] == "green", d["1"].units
    again = fd.clip_dissect(model, ["1"], data, WORDS, clip=clip, top_k=10, cache=tmp_path, verbose=False)
    assert clip.image_calls == len(data)          # the second run read the cached embeddings
    assert torch.equal(again["1"].values, d["1"].values)
    assert d.to_csv(tmp_path / "csv")[0].read_text().startswith("unit,label,score,top_words")


def test_similarity_choices_and_word_files(data, tmp_path):
    (tmp_path / "words.txt").write_text("red\n\ngreen\nblue\n")
    for similarity in ("wpmi", "cos_cubed"):
        d = fd.clip_dissect(red_detector(), ["1"], data, tmp_path / "words.txt", clip=MeanColour(), top_k=10,
                            similarity=similarity, verbose=False)
        assert d["1"].words == ["red", "green", "blue"] and d["1"].units[0]["label"] == "red"


@pytest.mark.parametrize("kwargs, match", [
    (dict(concepts=[]), "word list is empty"), (dict(concepts=["red", "red"]), "twice"),
    (dict(clip=object()), "clip must have encode_images"), (dict(top_k=10 ** 6), "top_k"),
    (dict(similarity="iou"), "similarity"), (dict(concepts="no-such-file.txt"), "no word list"),
])
def test_bad_arguments(data, kwargs, match):
    args = {"concepts": WORDS, "clip": MeanColour(), **kwargs}
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=match):
        fd.clip_dissect(red_detector(), ["1"], data, args.pop("concepts"), verbose=False, **args)


def tiny_transformers_clip():
    """A CLIPModel built from a config with random weights (nothing downloaded) and a character tokenizer."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=8)

    def tokenizer(words, padding=True, return_tensors="pt"):
        ids = [[0] + [2 + ord(ch) % 60 for ch in w][:12] + [1] for w in words]
        width = max(map(len, ids))
        return {"input_ids": torch.tensor([i + [1] * (width - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])}

    from fastdissect.pipeline.clip_models import TransformersCLIP
    return TransformersCLIP(transformers.CLIPModel(cfg), tokenizer)


def test_with_a_tiny_transformers_clip(data, tmp_path):
    clip = tiny_transformers_clip()
    model = red_detector()
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    d = fd.clip_dissect(model, ["1"], data, WORDS, clip=clip, top_k=10, cache=tmp_path, verbose=False)
    assert sum(calls) == len(data) and d["1"].values.shape == (2, len(WORDS))
    assert torch.isfinite(d["1"].values).all()
    emb = clip.encode_images([data.image(0)])
    assert emb.shape == (1, 8) and clip.fingerprint().startswith("transformers-clip:")
    assert len(list(tmp_path.glob("clip-images-*.safetensors"))) == 1


def test_transformers_clip_never_downloads(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from fastdissect.pipeline.clip_models import TransformersCLIP
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match="allow_download=True"):
        TransformersCLIP.load("openai/clip-vit-base-patch32")
